"""The ``bytes`` output's metadata as vLLM's tests read it (SPEC §12: one item per
input with its index, embed_dtype, endianness, byte range and shape)."""

import math
from dataclasses import dataclass

from vllm import _standin
from vllm.utils.serial_utils import EMBED_DTYPES

__getattr__ = _standin.module_getattr(__name__)


@dataclass
class MetadataItem:
    index: int
    embed_dtype: str
    endianness: str
    start: int
    end: int
    shape: tuple[int, ...]


def build_metadata_items(embed_dtype: str, endianness: str, shape: tuple[int, ...],
                         n_request: int) -> list[MetadataItem]:
    """The items of ``n_request`` outputs of one ``shape`` laid end to end (what a
    ``bytes_only`` client works out for itself)."""
    size = math.prod(shape) * EMBED_DTYPES[embed_dtype][0].itemsize
    return [MetadataItem(i, embed_dtype, endianness, i * size, (i + 1) * size, tuple(shape))
            for i in range(n_request)]


def decode_pooling_output(items: list[MetadataItem], body: bytes) -> list:
    """The tensors of a ``bytes`` body, in the order of their items' ``index``."""
    from vllm.utils.serial_utils import binary2tensor

    return [binary2tensor(body[item.start:item.end], item.shape, item.embed_dtype,
                          item.endianness)
            for item in sorted(items, key=lambda item: item.index)]
