"""The binary embedding format of vLLM's ``bytes`` and base64 outputs, decoded.

Written from the format's description (SPEC §12): ``embed_dtype`` names the element
type on the wire (bfloat16 travels as its 16 raw bits, fp8 as one byte) and
``endianness`` its byte order.
"""

import sys
from typing import Literal, get_args

import numpy as np
import torch

from vllm import _standin

__getattr__ = _standin.module_getattr(__name__)

EmbedDType = Literal["float32", "float16", "bfloat16", "fp8_e4m3", "fp8_e5m2"]
Endianness = Literal["native", "big", "little"]

# embed_dtype -> (torch dtype of the values, numpy dtype of the raw bits on the wire)
EMBED_DTYPES: dict[str, tuple[torch.dtype, type]] = {
    "float32": (torch.float32, np.float32),
    "float16": (torch.float16, np.float16),
    "bfloat16": (torch.bfloat16, np.int16),
    "fp8_e4m3": (torch.float8_e4m3fn, np.uint8),
    "fp8_e5m2": (torch.float8_e5m2, np.uint8),
}
ENDIANNESS: tuple[str, ...] = get_args(Endianness)


def binary2tensor(binary: bytes, shape: tuple[int, ...], embed_dtype: str,
                  endianness: str) -> torch.Tensor:
    torch_dtype, wire_dtype = EMBED_DTYPES[embed_dtype]
    array = np.frombuffer(binary, dtype=wire_dtype).reshape(shape)
    if endianness not in ("native", sys.byteorder):
        array = array.byteswap()
    return torch.from_numpy(array.copy()).view(torch_dtype)
