"""Reading checkpoint tensors from a model folder (safetensors or pytorch_model.bin)."""

from __future__ import annotations

import json
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
