"""PEFT LoRA adapters for the LoRA tests: random (not zero) A and B, saved as PEFT does."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch


def build_adapter(base: torch.nn.Module, target: Path, target_modules: list[str],
                  seed: int, r: int = 4, lora_alpha: int = 8, **config) -> torch.nn.Module:
    """``base`` with a random LoRA adapter on ``target_modules`` (saved to ``target``); the
    adapted model (PEFT's own forward) is returned for reference outputs."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    lora = LoraConfig(r=r, lora_alpha=lora_alpha, target_modules=target_modules,
                      init_lora_weights=False, **config)
    model = get_peft_model(copy.deepcopy(base), lora)
    with torch.no_grad():  # PEFT's random B is small: make the adapter's effect plain
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    model.save_pretrained(target)
    return model.eval()


def edit_adapter_config(folder: Path, **changes) -> Path:
    """Change fields of a saved adapter's adapter_config.json (bad-input tests)."""
    path = folder / "adapter_config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))
    return folder
