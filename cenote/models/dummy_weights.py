"""vLLM's ``load_format="dummy"``: the model built from its config with random weights,
for code that needs only shapes and tokenisation (vLLM's own tests use it so).

The folder is copied without its weight files, the model's transformers class is built
from the config with a fixed seed (transformers' own initialisation) and saved there, and
cenote then loads that folder as any other: the same architecture, tokenizer, heads and
Sentence-Transformers layout, every load of it the same weights."""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import tempfile
from pathlib import Path

import torch

from cenote.config.hub import resolve_model_path, transformer_folder

# The model's own weight files (and their shard indexes), which the dummy copy leaves out.
_WEIGHT_FILES = (".safetensors", ".bin", ".safetensors.index.json", ".bin.index.json")


def dummy_checkpoint(model: str | os.PathLike | None, revision: str | None = None,
                     trust_remote_code: bool = False, seed: int = 0) -> Path:
    """A copy of ``model``'s folder whose transformer weights are random (seeded); it is
    removed when the process exits."""
    import transformers

    source = resolve_model_path(model, revision)
    weights_folder = transformer_folder(source)
    if weights_folder is None or not (weights_folder / "config.json").is_file():
        raise ValueError(f"load_format='dummy' builds the model from its config.json; "
                         f"{str(source)!r} has none (a static embedding model?).")
    target = Path(tempfile.mkdtemp(prefix="cenote-dummy-")) / source.name
    atexit.register(functools.partial(shutil.rmtree, target.parent, ignore_errors=True))
    inner = target / weights_folder.relative_to(source)

    def skip(folder: str, names: list[str]) -> list[str]:
        if Path(folder) != weights_folder:
            return []
        return [n for n in names if n.endswith(_WEIGHT_FILES)]

    shutil.copytree(source, target, ignore=skip)
    config = transformers.AutoConfig.from_pretrained(weights_folder,
                                                     trust_remote_code=trust_remote_code)
    architecture = (getattr(config, "architectures", None) or [""])[0]
    cls = getattr(transformers, architecture, None)
    torch.manual_seed(seed)
    built = (cls(config) if cls is not None else transformers.AutoModel.from_config(
        config, trust_remote_code=trust_remote_code))
    built.save_pretrained(inner)
    return target
