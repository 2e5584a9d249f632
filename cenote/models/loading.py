"""Reading checkpoint tensors from a model folder (safetensors or pytorch_model.bin)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import torch


def checkpoint_files(folder: Path) -> list[Path]:
    """The weight files of a folder, preferring safetensors, following shard indexes."""
    folder = Path(folder)
    for index_name, single in (
        ("model.safetensors.index.json", "model.safetensors"),
        ("pytorch_model.bin.index.json", "pytorch_model.bin"),
    ):
        index = folder / index_name
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            return [folder / shard for shard in shards]
        if (folder / single).is_file():
            return [folder / single]
    found = sorted(folder.glob("*.safetensors"))
    if found:
        return found
    raise FileNotFoundError(
        f"No weights in {str(folder)!r}: looked for model.safetensors, "
        "model.safetensors.index.json, pytorch_model.bin and *.safetensors."
    )


def iter_checkpoint(folder: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(name, tensor)`` for every tensor of the checkpoint, one file at a time."""
    for file in checkpoint_files(folder):
        if file.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(file), framework="pt") as handle:
                for name in handle.keys():
                    yield name, handle.get_tensor(name)
        else:
            state = torch.load(file, map_location="cpu", weights_only=True)
            yield from state.items()


def load_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    return dict(iter_checkpoint(folder))


class ParameterLoader:
    """Copies checkpoint tensors into a module's parameters by name.

    Fused parameters (q/k/v, gate/up) are collected part by part and
    concatenated in ``finish``; every shape is checked, and ``finish`` returns
    the parameters the checkpoint never set.
    """

    def __init__(self, module: torch.nn.Module, owner: str) -> None:
        self.params = dict(module.named_parameters())
        self.owner = owner
        self.loaded: set[str] = set()
        self._parts: dict[str, dict[str, torch.Tensor]] = {}
        self._order: dict[str, tuple[str, ...]] = {}

    def assign(self, name: str, tensor: torch.Tensor) -> None:
        if name not in self.params:
            raise ValueError(f"Unexpected checkpoint tensor {name!r} for {self.owner}.")
        if self.params[name].shape != tensor.shape:
            raise ValueError(f"Checkpoint tensor {name!r} has shape {tuple(tensor.shape)}, "
                             f"expected {tuple(self.params[name].shape)}.")
        self.params[name].data.copy_(tensor)
        self.loaded.add(name)

    def assign_renamed(self, name: str, tensor: torch.Tensor,
                       renames: list[tuple[str, str]]) -> None:
        """``assign`` under the name that ``renames`` (``(pattern, replacement)`` applied
        in turn with ``re.sub``) make of the checkpoint's ``name``."""
        for pattern, replacement in renames:
            name = re.sub(pattern, replacement, name)
        self.assign(name, tensor)

    def add_part(self, name: str, part: str, order: tuple[str, ...],
                 tensor: torch.Tensor) -> None:
        """One piece of the fused parameter ``name``, whose pieces stack in ``order``."""
        self._parts.setdefault(name, {})[part] = tensor
        self._order[name] = order

    def finish(self) -> list[str]:
        """Fuse the collected parts; return the names of parameters still unset."""
        for name, parts in self._parts.items():
            order = self._order[name]
            absent = [p for p in order if p not in parts]
            if absent:
                raise ValueError(f"Checkpoint has only part of {name}: missing {absent}.")
            self.assign(name, torch.cat([parts[p] for p in order]))
        return sorted(set(self.params) - self.loaded)

    def finish_all(self) -> None:
        """``finish``, refusing a checkpoint that left any parameter unset."""
        missing = self.finish()
        if missing:
            raise missing_tensors_error(missing)


def missing_tensors_error(missing: list[str]) -> ValueError:
    return ValueError(f"Checkpoint is missing tensors: {', '.join(missing[:8])}"
                      + (" ..." if len(missing) > 8 else ""))
