"""vLLM's ``vllm.lora``: only ``vllm.lora.request.LoRARequest``, which is cenote's."""
