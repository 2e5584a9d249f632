"""An engine's LoRA adapters at start: ``--lora-modules`` and the task adapters its model's
folder ships (:mod:`cenote.config.task_adapters`), registered and loaded."""

from __future__ import annotations

from pathlib import Path

from cenote.config.lora import LoRAOptions
from cenote.config.task_adapters import with_task_adapters
from cenote.engine.lora import LoRARegistry


def adapter_registry(options: LoRAOptions | None, folder: Path, adapters) -> LoRARegistry:
    """The registry of an engine whose model is ``folder`` (``adapters``: the runner's
    :class:`cenote.models.lora.ModelAdapters`, None without a model or LoRA), with its
    ``--lora-modules`` and task adapters loaded."""
    registry = LoRARegistry(with_task_adapters(options or LoRAOptions(), folder), adapters)
    registry.load_modules()
    return registry
