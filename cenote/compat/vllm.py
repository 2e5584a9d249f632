"""Every vLLM spelling cenote accepts, ignores or refuses, declared once.

cenote speaks vLLM's pooling API, so vLLM code and command lines must run unchanged:
vLLM's engine arguments that mean nothing here (CUDA graphs, the KV cache, sampling
seeds, parallelism of one) are accepted and logged; those that ask for something
cenote cannot do are refused with the reason.
"""

from __future__ import annotations

from typing import Any

from cenote.tasks import CONVERTIBLE_TASKS

# vLLM's other names for dtypes (``--dtype half``, ``LLM(dtype="float")``): cenote's names.
DTYPE_ALIASES = {"half": "float16", "float": "float32"}

# Keyword arguments of vLLM's ``LLM()`` that are accepted and ignored offline.
IGNORED_VLLM_ARGS = frozenset({
    "seed", "enforce_eager", "gpu_memory_utilization", "swap_space", "cpu_offload_gb",
    "max_num_seqs", "max_seq_len_to_capture", "disable_log_stats", "disable_custom_all_reduce",
    "enable_prefix_caching", "block_size", "kv_cache_dtype", "compilation_config",
    "tensor_parallel_size", "pipeline_parallel_size", "distributed_executor_backend",
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
    ("--disable-log-stats", False), ("--enable-prefix-caching", False),
    ("--no-enable-prefix-caching", False), ("--disable-custom-all-reduce", False),
    ("--disable-uvicorn-access-log", False), ("--enable-chunked-prefill", False),
    ("--no-enable-chunked-prefill", False),
    ("--download-dir", True), ("--tokenizer-mode", True), ("--load-format", True),
    ("--disable-fastapi-docs", False),
    ("--enable-request-id-headers", False),
)

# vLLM arguments accepted only with the value that asks for nothing: cenote runs one
# unquantised model on one device.
_TRIVIAL_VLLM_VALUES = {"tensor_parallel_size": ("1",), "pipeline_parallel_size": ("1",),
                        "data_parallel_size": ("1",)}

RUNNERS = ("auto", "pooling", "generate")
CONVERTS = ("auto", "none", *CONVERTIBLE_TASKS)


def vllm_arg_problem(name: str, value: Any, label: str | None = None) -> str | None:
    """Why cenote cannot honour vLLM's ``name=value`` (``label`` names it in the message;
    default ``name=value``), or None when it may be ignored."""
    trivial = _TRIVIAL_VLLM_VALUES.get(name)
    if trivial is None or str(value) in trivial:
        return None
    what = {"data_parallel_size": "the offline LLM runs one engine (serve with "
                                  "--data-parallel-size, or embed a dataset with "
                                  "cenote.integrations.ray)",
            }.get(name, "cenote runs a model on one device")
    return f"{label or f'{name}={value}'}: {what}."


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
