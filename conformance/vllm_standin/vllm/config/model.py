"""vLLM's option types, and the dtype its test runner gives transformers."""

from typing import Any, Literal

import torch

from cenote import ModelConfig
from vllm import _standin

__getattr__ = _standin.module_getattr(__name__)

RunnerOption = Literal["auto", "generate", "pooling", "draft"]
ConvertOption = Literal["auto", "none", "embed", "classify"]
TokenizerMode = Literal["auto", "hf", "slow", "mistral", "custom"]
ModelDType = Literal["auto", "half", "float16", "bfloat16", "float", "float32"]
AttnTypeStr = Literal["decoder", "encoder", "encoder_only", "encoder_decoder",
                      "attention_free", "hybrid"]

_DTYPES = {"half": torch.float16, "float16": torch.float16, "bfloat16": torch.bfloat16,
           "float": torch.float32, "float32": torch.float32}


def _get_and_verify_dtype(model: str, config: Any, dtype: Any = "auto", **_: Any) -> torch.dtype:
    """The dtype the reference (transformers) model runs in: float32 for "auto" (the
    stand-in checkpoints are float32), else the one named."""
    if isinstance(dtype, torch.dtype):
        return dtype
    return torch.float32 if dtype == "auto" else _DTYPES[dtype]


__all__ = ["ModelConfig", "RunnerOption", "ConvertOption", "TokenizerMode", "ModelDType",
           "AttnTypeStr"]
