"""``vllm.lora.request.LoRARequest`` is cenote's own ``LoRARequest``."""

from cenote import LoRARequest

__all__ = ["LoRARequest"]
