from typing import Literal

from cenote import PoolerConfig
from vllm import _standin

__getattr__ = _standin.module_getattr(__name__)

SequencePoolingType = Literal["CLS", "LAST", "MEAN"]
TokenPoolingType = Literal["ALL", "STEP"]

__all__ = ["PoolerConfig", "SequencePoolingType", "TokenPoolingType"]
