"""The platform as vLLM's tests ask about it: CUDA when torch sees a GPU, else CPU."""

from typing import Any

import torch

from vllm import _standin

__getattr__ = _standin.module_getattr(__name__)


class _Platform:
    def is_cuda(self) -> bool:
        return torch.cuda.is_available()

    def is_cpu(self) -> bool:
        return not torch.cuda.is_available()

    @property
    def device_type(self) -> str:
        return "cuda" if torch.cuda.is_available() else "cpu"

    @property
    def device_name(self) -> str:
        return self.device_type

    @property
    def dist_backend(self) -> str:
        return "nccl" if torch.cuda.is_available() else "gloo"

    def device_count(self) -> int:
        return torch.cuda.device_count()

    def fp8_dtype(self) -> torch.dtype:
        return torch.float8_e4m3fn

    def supports_fp8(self) -> bool:
        return False

    def get_device_total_memory(self, device_id: int = 0) -> int:
        return torch.cuda.get_device_properties(device_id).total_memory

    def __getattr__(self, name: str) -> Any:
        # is_rocm, is_xpu, is_tpu, has_device_capability, ...: not this platform.
        if name.startswith(("is_", "has_", "supports_")):
            return lambda *args, **kwargs: False
        raise _standin.VllmInternalError(f"vLLM internal current_platform.{name}")


current_platform = _Platform()
