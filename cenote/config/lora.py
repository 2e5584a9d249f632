"""LoRA adapters: what asks for one (``LoRARequest``, vLLM's), the serving options
(``--enable-lora``, ``--max-lora-rank``, ``--max-loras``, ``--lora-modules``) and a PEFT
folder's ``adapter_config.json``, read and checked before any tensor is."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
# vLLM's defaults for --max-lora-rank and --max-loras.
DEFAULT_MAX_LORA_RANK = 16
DEFAULT_MAX_LORAS = 1


class LoRAError(ValueError):
    """An adapter that cannot be served (a client error: 400 at the server)."""


@dataclass(frozen=True)
class LoRARequest:
    """vLLM's ``LoRARequest``: an adapter by name, a positive integer id unique to it,
    and its PEFT folder. ``base_model_name``: the model it is served over (``parent``
    in ``/v1/models``; the served model's name when None)."""

    lora_name: str
    lora_int_id: int
    lora_path: str = ""
    base_model_name: str | None = None

    def __post_init__(self) -> None:
        # bool is an int in Python: True must not pass as adapter id 1.
        if (not isinstance(self.lora_int_id, int) or isinstance(self.lora_int_id, bool)
                or self.lora_int_id < 1):
            raise LoRAError(f"lora_int_id must be a positive integer, not {self.lora_int_id!r}.")
        if not self.lora_name:
            raise LoRAError("lora_name must not be empty.")

    # vLLM's older spellings.
    @property
    def name(self) -> str:
        return self.lora_name

    @property
    def path(self) -> str:
        return self.lora_path

    @property
    def adapter_id(self) -> int:
        return self.lora_int_id


@dataclass(frozen=True)
class LoRAOptions:
    """``--enable-lora --max-lora-rank R --max-loras K --lora-modules ...``: ``max_loras``
    adapters may be loaded at once (a load beyond it is refused; nothing is evicted)."""

    enabled: bool = False
    max_lora_rank: int = DEFAULT_MAX_LORA_RANK
    max_loras: int = DEFAULT_MAX_LORAS
    modules: tuple[LoRARequest, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.modules and not self.enabled:
            raise LoRAError("--lora-modules needs --enable-lora.")
        if len(self.modules) > self.max_loras:
            raise LoRAError(f"{len(self.modules)} --lora-modules but --max-loras is "
                            f"{self.max_loras}: raise --max-loras to at least "
                            f"{len(self.modules)}.")


def parse_lora_module(text: str, lora_int_id: int) -> LoRARequest:
    """One ``--lora-modules`` value: ``name=path`` or vLLM's JSON form
    ``{"name": ..., "path": ..., "base_model_name": ...}``."""
    text = text.strip()
    if text.startswith("{"):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise LoRAError(f"--lora-modules {text!r} is not valid JSON ({exc}).") from exc
        if not isinstance(value, dict) or not value.get("name") or not value.get("path"):
            raise LoRAError(f"--lora-modules {text!r}: the JSON form needs \"name\" and "
                            "\"path\".")
        return LoRARequest(str(value["name"]), lora_int_id, str(value["path"]),
                           value.get("base_model_name"))
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise LoRAError(f"--lora-modules {text!r}: expected name=path or a JSON object.")
    return LoRARequest(name, lora_int_id, path)


def _pattern_value(patterns: dict[str, Any], module: str, default: Any) -> Any:
    """PEFT's ``rank_pattern`` / ``alpha_pattern``: the value of the first key that
    matches the end of the module's name."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


@dataclass(frozen=True)
class AdapterConfig:
    """A PEFT LoRA adapter's ``adapter_config.json``, the parts that change its math."""

    path: Path
    r: int
    lora_alpha: float
    use_rslora: bool
    base_model_name_or_path: str | None
    alpha_pattern: dict[str, float]
    rank_pattern: dict[str, int]

    @classmethod
    def load(cls, path: str | Path) -> AdapterConfig:
        """Read and check the config of the PEFT folder ``path``; LoRAError for what
        cenote cannot serve."""
        folder = Path(path)
        config_file = folder / ADAPTER_CONFIG
        if not config_file.is_file():
            raise LoRAError(f"{folder} is not a PEFT adapter folder: it has no {ADAPTER_CONFIG}.")
        if not (folder / ADAPTER_WEIGHTS).is_file():
            raise LoRAError(f"{folder} has no {ADAPTER_WEIGHTS} (the adapter's tensors; "
                            "save it with safe_serialization=True).")
        try:
            raw = json.loads(config_file.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise LoRAError(f"{config_file} cannot be read: {exc}") from exc
        peft_type = str(raw.get("peft_type", "LORA")).upper()
        if peft_type != "LORA":
            raise LoRAError(f"{folder} is a {peft_type} adapter; only LoRA adapters are served.")
        if raw.get("use_dora"):
            raise LoRAError(f"{folder} is a DoRA adapter (use_dora: true); cenote does not "
                            "yet support DoRA, only plain LoRA.")
        init = raw.get("init_lora_weights")
        if isinstance(init, str) and init.lower().startswith("pissa"):
            raise LoRAError(f"{folder} was made with init_lora_weights='pissa' (its base "
                            "weights changed too); convert it to plain LoRA first.")
        if raw.get("bias", "none") != "none":
            raise LoRAError(f"{folder} trains biases (bias: {raw['bias']!r}); only adapters "
                            "with bias 'none' are supported.")
        if raw.get("modules_to_save"):
            raise LoRAError(f"Unsupported modules_to_save {raw['modules_to_save']} in {folder}: "
                            "only LoRA matrices are served, not whole modules.")
        r = raw.get("r")
        if not isinstance(r, int) or r < 1:
            raise LoRAError(f"{config_file}: r must be a positive integer, not {r!r}.")
        return cls(folder, r, float(raw.get("lora_alpha", 8)), bool(raw.get("use_rslora")),
                   raw.get("base_model_name_or_path"), dict(raw.get("alpha_pattern") or {}),
                   dict(raw.get("rank_pattern") or {}))

    def rank(self, module: str) -> int:
        return int(_pattern_value(self.rank_pattern, module, self.r))

    @property
    def max_rank(self) -> int:
        return max([self.r, *map(int, self.rank_pattern.values())])

    def scale(self, module: str) -> float:
        """PEFT's scaling of a module's product: alpha / r, or alpha / sqrt(r) (rsLoRA)."""
        rank = self.rank(module)
        alpha = float(_pattern_value(self.alpha_pattern, module, self.lora_alpha))
        return alpha / math.sqrt(rank) if self.use_rslora else alpha / rank
