"""vLLM's bodies for loading and unloading LoRA adapters at run time."""

from __future__ import annotations

from pydantic import StrictBool, StrictInt, StrictStr

from cenote.server.protocol_base import APIModel


class LoadLoRAAdapterRequest(APIModel):
    lora_name: StrictStr
    lora_path: StrictStr
    # Replace the weights of an adapter already loaded under this name.
    load_inplace: StrictBool = False


class UnloadLoRAAdapterRequest(APIModel):
    lora_name: StrictStr
    lora_int_id: StrictInt | None = None
