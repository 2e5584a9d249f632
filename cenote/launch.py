"""From ``cenote serve`` options to the models a server serves: which models, by which
names, each loaded with its engine (or its data-parallel engines)."""

from __future__ import annotations

import argparse
import dataclasses
import logging
from typing import Any

import torch

from cenote.config import ModelConfig
from cenote.config.lora import LoRAOptions, parse_lora_module
from cenote.engine.async_engine import AsyncPoolingEngine
from cenote.engine.io_processor import load_io_processor
from cenote.server.context import ServedModel

logger = logging.getLogger("cenote")

DEFAULT_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
# The server's batch budget on CPU when none is given. Past a few hundred tokens
# a CPU batch costs time in proportion to its size, so bigger batches add little
# throughput while every other client waits for them (vLLM likewise gives its
# server and its offline class different defaults).
CPU_SERVER_MAX_NUM_BATCHED_TOKENS = 512
# Admission control: by default the queue takes this many batches' worth of tokens,
QUEUED_BATCHES = 128
# and a request bigger than one batch waits behind at most this share of
# --request-timeout of work: sharing the backlog with others, it then still
# finishes in time.
QUEUE_SHARE_OF_TIMEOUT = 0.25


class LaunchError(ValueError):
    """Options that name no servable set of models (the server exits with status 2)."""


def model_names(models: list[str | None], groups: list[list[str]] | None) -> list[list[str]]:
    """The served names of each model. One model takes every ``--served-model-name``
    as an alias; several take one ``--served-model-name`` each, in order. A model
    without one is called as given (the bundled model by its hub id)."""
    if len(models) == 1:
        return [[name for group in groups or () for name in group]
                or [models[0] or DEFAULT_MODEL_NAME]]
    if groups is None:
        return [[model or DEFAULT_MODEL_NAME] for model in models]
    if len(groups) != len(models):
        raise LaunchError(f"{len(models)} models and {len(groups)} --served-model-name "
                          "options: give one --served-model-name per --model, in order.")
    return groups


def load_models(args: argparse.Namespace) -> list[ServedModel]:
    """Load every model ``args`` name with the same options; ``ValueError`` or
    ``OSError`` when one cannot load (the ones loaded so far are shut down)."""
    names = model_names(args.models, args.served_model_name)
    served: list[ServedModel] = []
    try:
        for i, (model, aliases) in enumerate(zip(args.models, names, strict=True)):
            # --enable-lora: the adapters go on the first model served.
            engine = _load_engine(args, model, aliases[0], lora_options(args) if i == 0 else None)
            try:  # vLLM's --io-processor-plugin, made for each model
                processor = (load_io_processor(args.io_processor_plugin, engine.config,
                                               engine.engine.tokenizer.hf)
                             if args.io_processor_plugin else None)
            except BaseException:
                engine.shutdown()
                raise
            served.append(ServedModel(aliases, engine, processor))
    except BaseException:
        for each in served:
            each.engine.shutdown()
        raise
    return served


def lora_options(args: argparse.Namespace) -> LoRAOptions:
    """``--enable-lora --max-lora-rank --max-loras --lora-modules``; LoRAError (a
    ValueError) for a malformed one."""
    modules = tuple(parse_lora_module(text, i + 1)
                    for i, text in enumerate(args.lora_modules or []))
    return LoRAOptions(args.enable_lora, args.max_lora_rank, args.max_loras, modules)


def _load_engine(args: argparse.Namespace, model: str | None, name: str,
                 lora: LoRAOptions | None = None) -> AsyncPoolingEngine:
    options = dict(task=args.task, dtype=args.dtype, max_model_len=args.max_model_len,
                   device=args.device, override_pooler_config=args.override_pooler_config,
                   hf_overrides=args.hf_overrides,
                   max_num_batched_tokens=args.max_num_batched_tokens,
                   trust_remote_code=args.trust_remote_code, revision=args.revision,
                   tokenizer=args.tokenizer, runner=args.runner,
                   quantization=args.quantization, auto_truncate=args.auto_truncate,
                   enable_prefix_caching=args.enable_prefix_caching)
    return load_engine(model, name, options, data_parallel_size=args.data_parallel_size,
                       max_queued_tokens=args.max_queued_tokens,
                       request_timeout_s=args.request_timeout,
                       # A batch file has no client waiting on one answer: the engine's
                       # own (throughput) batch budget, not the server's smaller one.
                       small_cpu_batches=args.command == "serve", lora=lora)


def load_engine(model: str | None, name: str, model_options: dict[str, Any], *,
                data_parallel_size: int = 1, max_queued_tokens: int | None = None,
                request_timeout_s: float = 120.0,
                small_cpu_batches: bool = True,
                lora: LoRAOptions | None = None) -> AsyncPoolingEngine:
    """A server's engine for ``model`` (served as ``name``), as ``cenote serve`` loads
    it: ``model_options`` are ``ModelConfig.from_args``'s; with ``small_cpu_batches``,
    batches on a CPU small enough that concurrent clients take turns; admission control
    from ``max_queued_tokens`` (default: ``QUEUED_BATCHES`` batches) and
    ``request_timeout_s``."""
    config = ModelConfig.from_args(model=model, **model_options)
    max_queued_tokens = max_queued_tokens or QUEUED_BATCHES * config.max_num_batched_tokens
    # After the queue cap: smaller CPU batches must not shrink how much work is admitted.
    if (small_cpu_batches and model_options.get("max_num_batched_tokens") is None
            and config.device.type == "cpu"):
        budget = max(CPU_SERVER_MAX_NUM_BATCHED_TOKENS, config.max_model_len)
        config = dataclasses.replace(config, max_num_batched_tokens=budget)
    config = dataclasses.replace(config, served_model_name=name)
    size = data_parallel_size
    where = str(config.device)
    if config.device.type == "cpu":
        count = torch.get_num_threads()
        where += (f", {count} thread{'s' if count != 1 else ''}" if size == 1
                  else f", {size} engine processes sharing {count} threads")
    elif size > 1:
        where += f", {size} engine processes"
    logger.info("Loading %s (task %s, %s on %s, batches of up to %d tokens)", config.model,
                config.task, str(config.dtype).removeprefix("torch."), where,
                config.max_num_batched_tokens)
    return AsyncPoolingEngine.from_config(
        config, data_parallel_size=size, max_queued_tokens=max_queued_tokens,
        max_queue_seconds=QUEUE_SHARE_OF_TIMEOUT * request_timeout_s, lora=lora)
