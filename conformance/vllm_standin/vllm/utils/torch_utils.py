import contextlib
import random
from collections.abc import Iterator

import numpy as np
import torch

from vllm import _standin

__getattr__ = _standin.module_getattr(__name__)


@contextlib.contextmanager
def set_default_torch_num_threads(num_threads: int) -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def set_random_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
