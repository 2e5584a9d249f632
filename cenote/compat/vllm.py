"""Every vLLM spelling cenote accepts, ignores or refuses, declared once.

cenote speaks vLLM's pooling API, so vLLM code and command lines must run unchanged:
vLLM's engine arguments that mean nothing here (CUDA graphs, the KV cache, sampling
seeds, parallelism of one) are accepted and logged; those that ask for something
cenote cannot do are refused with the reason.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cenote.tasks import CONVERTIBLE_TASKS

logger = logging.getLogger(__name__)

# vLLM's other names for dtypes (``--dtype half``, ``LLM(dtype="float")``): cenote's names.
DTYPE_ALIASES = {"half": "float16", "float": "float32"}

# Keyword arguments of vLLM's ``LLM()`` (its ``EngineArgs``, as vLLM's own test runner
# passes them) that are accepted and ignored offline: CUDA graphs and kernels, the KV
# cache, chunked prefill (cenote runs whole inputs), sampling seeds, scheduling limits
# of a generator, logging. (enable_prefix_caching is LLM()'s own argument.)
IGNORED_VLLM_ARGS = frozenset({
    "seed", "enforce_eager", "gpu_memory_utilization", "swap_space", "cpu_offload_gb",
    "max_num_seqs", "max_seq_len_to_capture", "disable_log_stats", "disable_custom_all_reduce",
    "block_size", "kv_cache_dtype", "compilation_config",
    "tensor_parallel_size", "pipeline_parallel_size", "distributed_executor_backend",
    "enable_chunked_prefill", "kernel_config", "attention_config", "kv_cache_memory_bytes",
    "download_dir", "max_logprobs", "async_scheduling", "enable_sleep_mode",
})

# ``vllm serve`` options accepted and ignored by ``cenote serve``: (name, takes a value).
IGNORED_VLLM_OPTIONS = (
    ("--seed", True), ("--gpu-memory-utilization", True), ("--max-num-seqs", True),
    ("--swap-space", True), ("--cpu-offload-gb", True), ("--block-size", True),
    ("--kv-cache-dtype", True), ("--max-seq-len-to-capture", True),
    ("--distributed-executor-backend", True), ("--compilation-config", True),
    ("--uvicorn-log-level", True), ("--tensor-parallel-size", True),
    ("--pipeline-parallel-size", True), ("--enforce-eager", False),
    ("--disable-log-requests", False), ("--enable-log-requests", False),
    ("--disable-log-stats", False), ("--disable-custom-all-reduce", False),
    ("--disable-uvicorn-access-log", False), ("--enable-chunked-prefill", False),
    ("--no-enable-chunked-prefill", False),
    ("--download-dir", True), ("--tokenizer-mode", True), ("--load-format", True),
    ("--disable-fastapi-docs", False),
    ("--enable-request-id-headers", False),
    ("--attention-config", True), ("--kernel-config", True), ("--kv-cache-memory-bytes", True),
    ("--enable-flash-late-interaction", False), ("--no-enable-flash-late-interaction", False),
)

# vLLM arguments accepted only with a value that asks for nothing cenote lacks (one
# unquantised model on one device, its own weights and tokenizer), and why others are
# refused.
_TRIVIAL_VLLM_VALUES = {"tensor_parallel_size": ("1",), "pipeline_parallel_size": ("1",),
                        "data_parallel_size": ("1",),
                        "load_format": ("auto", "safetensors", "pt", "hf", "dummy"),
                        "tokenizer_mode": ("auto", "hf"),
                        "skip_tokenizer_init": ("False",),
                        "model_impl": ("auto",)}
_REFUSAL_REASONS = {
    "data_parallel_size": "the offline LLM runs one engine (serve with --data-parallel-size, "
                          "or embed a dataset with cenote.integrations.ray)",
    "load_format": "cenote loads the checkpoint's own weights (safetensors or "
                   "pytorch_model.bin), or random ones (dummy); no other formats",
    "tokenizer_mode": "cenote tokenizes with the model's Hugging Face tokenizer (auto)",
    "skip_tokenizer_init": "cenote tokenizes text prompts itself and needs the tokenizer",
    "model_impl": "cenote picks its implementation itself (native where it has one, else "
                  "transformers)",
}
# Every vLLM engine argument LLM() takes beside its own.
ACCEPTED_VLLM_ARGS = IGNORED_VLLM_ARGS | frozenset(_TRIVIAL_VLLM_VALUES)

# Architectures cenote runs that are not transformers classes (vLLM's registry names,
# given in config.json or through hf_overrides), and the layout each one means.
ARCHITECTURE_LAYOUTS = {
    "BertSpladeSparseEmbeddingModel": "splade",  # a masked-LM folder as SPLADE (vLLM)
    "HF_ColBERT": "stanford-colbert",  # Stanford ColBERT: bert.* plus linear.weight
    "BgeM3EmbeddingModel": "bge-m3",  # its heads are read from the folder's files
    # vLLM's Qwen3-VL-Reranker recipe names it in hf_overrides (no transformers class)
    "Qwen3VLForSequenceClassification": "vl-reranker",
}

RUNNERS = ("auto", "pooling", "generate")
CONVERTS = ("auto", "none", *CONVERTIBLE_TASKS)


def vllm_arg_problem(name: str, value: Any, label: str | None = None) -> str | None:
    """Why cenote cannot honour vLLM's ``name=value`` (``label`` names it in the message;
    default ``name=value``), or None when it may be ignored."""
    trivial = _TRIVIAL_VLLM_VALUES.get(name)
    if trivial is None or str(value) in trivial:
        return None
    what = _REFUSAL_REASONS.get(name, "cenote runs a model on one device")
    return f"{label or f'{name}={value!r}'}: {what}."


def check_architecture_override(overrides: dict[str, Any], hf_config: Any,
                                trust_remote_code: bool) -> None:
    """Refuse an ``hf_overrides`` ``architectures`` that names an architecture cenote
    does not know (not a transformers class, not one of :data:`ARCHITECTURE_LAYOUTS`,
    not the checkpoint's own trusted code): it would otherwise run as something else."""
    names = overrides.get("architectures")
    if names is None:
        return
    if (not isinstance(names, list) or not names
            or not all(isinstance(n, str) and n for n in names)):
        raise ValueError(f"hf_overrides architectures must be a list of architecture names, "
                         f"not {names!r}.")
    import transformers

    own_code = set()
    if trust_remote_code:
        for target in (getattr(hf_config, "auto_map", None) or {}).values():
            for ref in target if isinstance(target, (list, tuple)) else [target]:
                if isinstance(ref, str):
                    own_code.add(ref.rsplit(".", 1)[-1])
    for name in names:
        if name in ARCHITECTURE_LAYOUTS or name in own_code or hasattr(transformers, name):
            continue
        raise ValueError(
            f"hf_overrides architectures: {name!r} is not an architecture cenote knows; it "
            f"runs transformers' classes and {', '.join(sorted(ARCHITECTURE_LAYOUTS))}.")


def expand_dotted_options(argv: Sequence[str]) -> list[str]:
    """vLLM's dotted config options as the JSON options they stand for:
    ``--pooler-config.task token_embed`` (or ``=token_embed``) is ``--pooler-config
    '{"task": "token_embed"}'``; deeper keys nest (``--a.b.c 1``); a value is JSON where
    it parses, else text; ``--x.items+ a,b`` is a list. The fields of one option merge,
    and into the option's whole JSON form where that is given too (the dotted fields
    win)."""
    out: list[str] = []
    dotted: dict[str, dict[str, Any]] = {}
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            out.extend(args[i:])
            break
        name, eq, value = arg.partition("=")
        if not name.startswith("--") or "." not in name or (not eq and i + 1 >= len(args)):
            out.append(arg)
            i += 1
            continue
        if not eq:
            value = args[i + 1]
        i += 1 if eq else 2
        option, *keys = name.split(".")
        parsed: Any
        if keys[-1].endswith("+"):
            keys[-1] = keys[-1][:-1]
            parsed = value.split(",")
        else:
            parsed = _json_or_text(value)
        for key in reversed(keys):
            parsed = {key: parsed}
        _merge_into(dotted.setdefault(option, {}), parsed)
    for option, fields in dotted.items():
        whole = _whole_option(out, option)
        if whole is None:
            out += [option, json.dumps(fields)]
            continue
        index, base = whole
        _merge_into(base, fields)
        out[index] = json.dumps(base)
    return out


def _json_or_text(value: str) -> Any:
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def _merge_into(base: dict[str, Any], update: dict[str, Any]) -> None:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge_into(base[key], value)
        else:
            base[key] = value


def _whole_option(args: list[str], option: str) -> tuple[int, dict[str, Any]] | None:
    """Where ``option``'s JSON-object value sits in ``args`` (rewritten as two
    arguments where it was ``--option=VALUE``), with that object."""
    for i, arg in enumerate(args):
        if arg.partition("=")[0] != option:
            continue
        if "=" in arg:
            args[i:i + 1] = [option, arg.partition("=")[2]]
        value = _json_or_text(args[i + 1]) if i + 1 < len(args) else None
        if isinstance(value, dict):
            return i + 1, value
    return None


def task_from_vllm_options(task: str, runner: str = "auto", convert: str = "auto") -> str:
    """``task`` after vLLM's newer ``runner``/``convert`` options (``runner="pooling",
    convert="embed"`` is ``task="embed"``); ``ValueError`` for what cenote cannot do."""
    if runner not in RUNNERS:
        raise ValueError(f"Unknown runner {runner!r}; cenote runs pooling models (runner "
                         "'pooling').")
    if runner == "generate":
        raise ValueError("runner 'generate': cenote serves pooling models only (runner "
                         "'pooling').")
    if convert in ("auto", "none"):
        return task
    if convert not in CONVERTIBLE_TASKS:
        raise ValueError(f"Unknown convert {convert!r}; choose embed, classify or reward.")
    if task not in ("auto", convert):
        raise ValueError(f"task {task!r} and convert {convert!r} disagree.")
    return convert


@dataclass
class TokenizationOptions:
    """What vLLM's ``tokenization_kwargs`` ask of cenote's tokenisation."""

    truncate_prompt_tokens: int | None = None
    truncation_side: str | None = None
    padding: str | None = None
    add_special_tokens: bool = True


# tokenization_kwargs vLLM reads and cenote has no use for (it never detokenizes).
_IGNORED_TOKENIZATION_KWARGS = frozenset({"needs_detokenization"})


def read_tokenization_kwargs(kwargs: dict[str, Any] | None,
                             max_model_len: int) -> TokenizationOptions:
    """vLLM's ``tokenization_kwargs`` (overrides of ``tokenizer.encode``, as its
    renderer maps them): ``truncate_prompt_tokens``, ``truncation_side``,
    ``add_special_tokens``; Hugging Face's ``truncation=True`` (cut to ``max_length``,
    default the model's length) and ``padding="max_length"`` (to the model's length).
    ``ValueError`` for what cenote cannot do; keys vLLM ignores are logged."""
    options = TokenizationOptions()
    if not kwargs:
        return options
    rest = dict(kwargs)
    max_length = rest.pop("max_length", None)
    options.truncate_prompt_tokens = rest.pop("truncate_prompt_tokens", None)
    options.truncation_side = rest.pop("truncation_side", None)
    options.add_special_tokens = rest.pop("add_special_tokens", True)
    if not isinstance(options.add_special_tokens, bool):
        raise ValueError(f"tokenization_kwargs add_special_tokens must be true or false, not "
                         f"{options.add_special_tokens!r}.")
    truncation = rest.pop("truncation", None)
    if truncation in (True, "longest_first"):
        options.truncate_prompt_tokens = max_length if max_length is not None else -1
    elif truncation not in (None, False, "do_not_truncate"):
        raise ValueError(f"tokenization_kwargs truncation={truncation!r}: cenote truncates "
                         "one text (true or 'longest_first'), or not at all.")
    padding = rest.pop("padding", None)
    if padding == "max_length":
        if max_length not in (None, max_model_len):
            raise ValueError(f"tokenization_kwargs padding='max_length' pads to the model's "
                             f"length ({max_model_len}), not max_length={max_length}.")
        options.padding = "max_length"
    elif padding not in (None, False, "do_not_pad"):
        raise ValueError(f"tokenization_kwargs padding={padding!r}: cenote pads to "
                         "'max_length' (the model's length) or not at all.")
    if max_length is not None and truncation is None and padding is None:
        raise ValueError("tokenization_kwargs max_length applies with truncation=True (cut "
                         "to it) or padding='max_length'; inputs are checked against "
                         f"max_model_len ({max_model_len}).")
    if rest.pop("do_lower_case", False):
        raise ValueError("tokenization_kwargs do_lower_case: cenote tokenizes with the "
                         "model's own tokenizer settings.")
    ignored = sorted(set(rest) - _IGNORED_TOKENIZATION_KWARGS)
    if ignored:
        logger.warning("Ignoring tokenization_kwargs cenote does not read (as vLLM ignores "
                       "them): %s", ", ".join(ignored))
    return options


@dataclass
class CacheConfigView:
    """vLLM's cache settings: cenote keeps no KV cache between batches;
    ``enable_prefix_caching`` says whether a prefix that several sequences of a batch
    share runs once, as vLLM says whether it caches prefixes: asked for (the default)
    and the model causal (a native decoder)."""

    gpu_memory_utilization: float | None = None
    block_size: int | None = None
    enable_prefix_caching: bool = True


@dataclass
class SchedulerConfigView:
    max_num_batched_tokens: int
    max_model_len: int
    max_num_seqs: int | None = None


@dataclass
class VllmConfigView:
    model_config: Any
    cache_config: CacheConfigView
    scheduler_config: SchedulerConfigView


class LLMEngineView:
    """``LLM.llm_engine`` as code written for vLLM reads it: ``model_config`` (cenote's
    :class:`~cenote.config.ModelConfig`, which has vLLM's attribute names),
    ``vllm_config`` (the model, cache and scheduler settings) and ``engine_core``, whose
    ``shutdown`` has nothing to stop (the offline engine runs in the caller's process).
    ``engine_args``: the vLLM engine arguments ``LLM()`` accepted and ignored."""

    def __init__(self, engine: Any, engine_args: dict[str, Any]) -> None:
        self.engine = engine
        config = engine.config
        self.vllm_config = VllmConfigView(
            model_config=config,
            cache_config=CacheConfigView(
                gpu_memory_utilization=engine_args.get("gpu_memory_utilization"),
                block_size=engine_args.get("block_size"),
                enable_prefix_caching=bool(engine.runner and engine.runner.shares_prefixes)),
            scheduler_config=SchedulerConfigView(
                max_num_batched_tokens=config.max_num_batched_tokens,
                max_model_len=config.max_model_len,
                max_num_seqs=engine_args.get("max_num_seqs")))

    @property
    def model_config(self) -> Any:
        return self.engine.config

    @property
    def engine_core(self) -> LLMEngineView:
        return self

    def shutdown(self, timeout: float | None = None) -> None:
        """Nothing to stop: no engine process runs beside the caller's."""

    def get_tokenizer(self) -> Any:
        return self.engine.tokenizer.hf

    def has_unfinished_requests(self) -> bool:
        """False: the offline ``LLM`` answers (or refuses) every request before its call
        returns, so none is ever left in flight."""
        return False
