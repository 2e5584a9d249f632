"""The offline API: ``LLM(model).embed(...)`` and friends."""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from cenote.compat.vllm import (
    ACCEPTED_VLLM_ARGS,
    LLMEngineView,
    TokenizationOptions,
    read_tokenization_kwargs,
    task_from_vllm_options,
    vllm_arg_problem,
)
from cenote.config import ModelConfig, PoolerConfig
from cenote.config.lora import (
    DEFAULT_MAX_LORA_RANK,
    DEFAULT_MAX_LORAS,
    LoRAError,
    LoRAOptions,
    LoRARequest,
)
from cenote.engine.engine import PoolingEngine, request_outputs
from cenote.engine.io_processor import NO_IO_PROCESSOR_PLUGIN, load_io_processor, plugin_prompts
from cenote.engine.lora import with_adapters
from cenote.inputs.prompts import Prompt, SequenceInput, make_score_pairs, normalize_prompts
from cenote.inputs.score_prompts import ScoreOptions
from cenote.models.dummy_weights import dummy_checkpoint
from cenote.outputs import (
    ClassificationRequestOutput,
    EmbeddingRequestOutput,
    PoolingRequestOutput,
    ScoringRequestOutput,
    SparseEmbeddingRequestOutput,
)
from cenote.params import PoolingParams

ParamsArg = PoolingParams | Sequence[PoolingParams] | None
logger = logging.getLogger(__name__)
# Below this many prompts a progress bar is noise.
_TQDM_MIN_PROMPTS = 64


class LLM:
    """A pooling model loaded for offline use.

    >>> llm = LLM()  # the bundled all-MiniLM-L6-v2
    >>> (out,) = llm.embed("Hello, my name is")
    >>> len(out.outputs.embedding)
    384
    """

    def __init__(
        self,
        model: str | os.PathLike | None = None,
        task: str = "auto",
        dtype: str | torch.dtype = "auto",
        max_model_len: int | None = None,
        device: str = "auto",
        override_pooler_config: PoolerConfig | dict | None = None,
        hf_overrides: dict[str, Any] | None = None,
        max_num_batched_tokens: int | None = None,
        trust_remote_code: bool = False,
        revision: str | None = None,
        runner: str = "auto",
        convert: str = "auto",
        tokenizer: str | os.PathLike | None = None,
        pooler_config: PoolerConfig | dict | None = None,
        quantization: str | None = None,
        io_processor_plugin: str | None = None,
        enable_lora: bool = False,
        max_lora_rank: int = DEFAULT_MAX_LORA_RANK,
        max_loras: int = DEFAULT_MAX_LORAS,
        enable_prefix_caching: bool = True,
        **vllm_engine_args: Any,
    ) -> None:
        if pooler_config is not None:  # vLLM's newer name for override_pooler_config
            if override_pooler_config is not None:
                raise ValueError("Give pooler_config or override_pooler_config, not both.")
            override_pooler_config = pooler_config
        # vLLM's newer spelling of the task: LLM(model, runner="pooling", convert="embed").
        task = task_from_vllm_options(task, runner, convert)
        unknown = sorted(set(vllm_engine_args) - ACCEPTED_VLLM_ARGS)
        if unknown:
            raise TypeError(f"LLM() got an unexpected keyword argument {unknown[0]!r}")
        for name, value in vllm_engine_args.items():
            if problem := vllm_arg_problem(name, value):
                raise ValueError(problem)
        if vllm_engine_args.get("load_format") == "dummy":  # random weights, as vLLM's
            model = dummy_checkpoint(model, revision, trust_remote_code)
        if vllm_engine_args:
            logger.info("Ignoring vLLM engine arguments that do not apply here: %s",
                        ", ".join(sorted(vllm_engine_args)))
        self.config = ModelConfig.from_args(
            model=model,
            task=task,
            dtype=dtype,
            max_model_len=max_model_len,
            device=device,
            override_pooler_config=override_pooler_config,
            hf_overrides=hf_overrides,
            max_num_batched_tokens=max_num_batched_tokens,
            trust_remote_code=trust_remote_code,
            revision=revision,
            tokenizer=tokenizer,
            runner=runner,
            quantization=quantization,
            enable_prefix_caching=enable_prefix_caching,
        )
        # LoRA adapters: each LoRARequest's loads on its first use (at most max_loras).
        self.engine = PoolingEngine(self.config, lora=LoRAOptions(enable_lora, max_lora_rank,
                                                                  max_loras))
        # vLLM's io_processor_plugin: what answers encode(..., pooling_task="plugin").
        self.io_processor = (load_io_processor(io_processor_plugin, self.config,
                                               self.engine.tokenizer.hf)
                             if io_processor_plugin else None)
        self._request_counter = itertools.count()
        self._vllm_engine_args = dict(vllm_engine_args)

    @property
    def model_config(self) -> ModelConfig:
        """The loaded model's configuration (vLLM's ``LLM.model_config``)."""
        return self.config

    @property
    def llm_engine(self) -> LLMEngineView:
        """vLLM's ``LLM.llm_engine``, as code written for vLLM reads it."""
        return LLMEngineView(self.engine, self._vllm_engine_args)

    def get_tokenizer(self):
        return self.engine.tokenizer.hf

    def encode(
        self,
        prompts: Prompt | Sequence[Prompt],
        pooling_params: ParamsArg = None,
        *,
        truncate_prompt_tokens: int | None = None,
        use_tqdm: bool | Callable[..., tqdm] = True,
        lora_request: Any = None,
        pooling_task: str | None = "encode",
        prompt_name: str | None = None,
        tokenization_kwargs: dict[str, Any] | None = None,
    ) -> list[PoolingRequestOutput]:
        """Pooled hidden states (``ALL`` by default: ``[num_tokens, hidden]`` per prompt).
        ``pooling_task=None``: the model's default task (``PoolerConfig(task=...)``),
        else embed where the model embeds, else encode. ``tokenization_kwargs``: vLLM's
        overrides of the tokenisation (``truncate_prompt_tokens``, ``truncation_side``,
        ``add_special_tokens``, ``truncation``/``padding`` with ``max_length``)."""
        if pooling_task is None:
            pooling_task = self.config.default_pooling_task or (
                "embed" if "embed" in self.config.supported_pooling_tasks else "encode")
        if pooling_task == "plugin":
            return self._run_plugin(prompts, use_tqdm)
        return self._pool(prompts, pooling_params, truncate_prompt_tokens, use_tqdm,
                          lora_request, pooling_task, prompt_name,
                          tokenization_kwargs=tokenization_kwargs)

    def _pool(self, prompts: Prompt | Sequence[Prompt], pooling_params: ParamsArg,
              truncate_prompt_tokens: int | None, use_tqdm: bool | Callable[..., tqdm],
              lora_request: Any, pooling_task: str, prompt_name: str | None = None,
              kind: type[PoolingRequestOutput] = PoolingRequestOutput,
              tokenization_kwargs: dict[str, Any] | None = None) -> list:
        """``kind`` of output per prompt, for ``pooling_task``."""
        options = self._tokenization(tokenization_kwargs, truncate_prompt_tokens)
        prompts = normalize_prompts(prompts)
        adapters = self._adapter_ids(lora_request, len(prompts))
        seqs = self.engine.prepare(prompts, pooling_task,
                                   _with_tokenization(pooling_params, options),
                                   options.truncate_prompt_tokens,
                                   add_special_tokens=options.add_special_tokens,
                                   prompt_name=prompt_name)
        if adapters is not None:
            seqs = with_adapters(seqs, adapters)
        data = self._run_data(seqs, pooling_task, use_tqdm)
        return request_outputs(seqs, data, lambda _: self._next_id(), kind)

    def _run_plugin(self, prompts: Any, use_tqdm: bool | Callable[..., tqdm]
                    ) -> list[PoolingRequestOutput]:
        """Each prompt's ``data`` (``{"data": ...}``) through the IO processor plugin: one
        output per prompt, whose ``outputs`` is the plugin's answer (as vLLM)."""
        processor = self.io_processor
        if processor is None:
            raise ValueError(NO_IO_PROCESSOR_PLUGIN)
        answers = []
        for prompt in prompts if isinstance(prompts, list) else [prompts]:
            data = prompt["data"] if isinstance(prompt, dict) and "data" in prompt else prompt
            request_id = self._next_id()
            texts, params = plugin_prompts(processor, data, request_id)
            outputs = {task: self._pool(texts, params, None, use_tqdm, None, task)
                       for task in processor.pooling_tasks}
            answers.append(PoolingRequestOutput(
                request_id, processor.post_process(outputs, request_id=request_id), [],
                num_input_tokens=0))
        return answers

    def _tokenization(self, tokenization_kwargs: dict[str, Any] | None,
                      truncate_prompt_tokens: int | None) -> TokenizationOptions:
        """vLLM's ``tokenization_kwargs`` read, with ``truncate_prompt_tokens`` given
        as an argument (the two must agree)."""
        options = read_tokenization_kwargs(tokenization_kwargs, self.config.max_model_len)
        if truncate_prompt_tokens is not None:
            if options.truncate_prompt_tokens not in (None, truncate_prompt_tokens):
                raise ValueError(f"truncate_prompt_tokens={truncate_prompt_tokens} and "
                                 "tokenization_kwargs truncate_prompt_tokens="
                                 f"{options.truncate_prompt_tokens} disagree.")
            options.truncate_prompt_tokens = truncate_prompt_tokens
        return options

    def embed(
        self,
        prompts: Prompt | Sequence[Prompt],
        *,
        pooling_params: ParamsArg = None,
        truncate_prompt_tokens: int | None = None,
        use_tqdm: bool | Callable[..., tqdm] = True,
        lora_request: Any = None,
        prompt_name: str | None = None,
        tokenization_kwargs: dict[str, Any] | None = None,
    ) -> list[EmbeddingRequestOutput] | list[PoolingRequestOutput]:
        """One embedding vector per prompt. ``prompt_name``: the model's instruction
        to put before each text (Sentence-Transformers' ``prompts``; by default its
        ``default_prompt_name``). With ``PoolerConfig(task="token_embed")``, as in vLLM:
        one vector per token (``PoolingRequestOutput``, ``outputs.data``)."""
        if self.config.default_pooling_task == "token_embed":
            return self._pool(prompts, pooling_params, truncate_prompt_tokens, use_tqdm,
                              lora_request, "token_embed", prompt_name,
                              tokenization_kwargs=tokenization_kwargs)
        return self._pool(prompts, pooling_params, truncate_prompt_tokens, use_tqdm,
                          lora_request, "embed", prompt_name, EmbeddingRequestOutput,
                          tokenization_kwargs)

    def embed_sparse(
        self,
        prompts: Prompt | Sequence[Prompt],
        *,
        pooling_params: ParamsArg = None,
        truncate_prompt_tokens: int | None = None,
        use_tqdm: bool | Callable[..., tqdm] = True,
        lora_request: Any = None,
        prompt_name: str | None = None,
        tokenization_kwargs: dict[str, Any] | None = None,
    ) -> list[SparseEmbeddingRequestOutput]:
        """One sparse vector per prompt (SPLADE, BGE-M3's lexical weights):
        ``outputs.indices`` (vocabulary ids, ascending) and ``outputs.values``."""
        return self._pool(prompts, pooling_params, truncate_prompt_tokens, use_tqdm,
                          lora_request, "embed_sparse", prompt_name,
                          SparseEmbeddingRequestOutput, tokenization_kwargs)

    def classify(
        self,
        prompts: Prompt | Sequence[Prompt],
        *,
        pooling_params: ParamsArg = None,
        truncate_prompt_tokens: int | None = None,
        use_tqdm: bool | Callable[..., tqdm] = True,
        lora_request: Any = None,
        tokenization_kwargs: dict[str, Any] | None = None,
    ) -> list[ClassificationRequestOutput]:
        """Class probabilities per prompt."""
        return self._pool(prompts, pooling_params, truncate_prompt_tokens, use_tqdm,
                          lora_request, "classify", None, ClassificationRequestOutput,
                          tokenization_kwargs)

    def reward(
        self,
        prompts: Prompt | Sequence[Prompt],
        *,
        pooling_params: ParamsArg = None,
        truncate_prompt_tokens: int | None = None,
        use_tqdm: bool | Callable[..., tqdm] = True,
        lora_request: Any = None,
        tokenization_kwargs: dict[str, Any] | None = None,
    ) -> list[PoolingRequestOutput]:
        """Reward model outputs (the ``encode`` task of a reward model)."""
        return self.encode(prompts, pooling_params, truncate_prompt_tokens=truncate_prompt_tokens,
                           use_tqdm=use_tqdm, lora_request=lora_request, pooling_task="encode",
                           tokenization_kwargs=tokenization_kwargs)

    def score(
        self,
        text_1: str | Sequence[str],
        text_2: str | Sequence[str],
        *,
        pooling_params: ParamsArg = None,
        truncate_prompt_tokens: int | None = None,
        use_tqdm: bool | Callable[..., tqdm] = True,
        lora_request: Any = None,
        chat_template: str | None = None,
        chat_template_kwargs: dict[str, Any] | None = None,
    ) -> list[ScoringRequestOutput]:
        """Relevance of each (text_1, text_2) pair: 1:1, 1:N or N:N.

        Cross-encoders score each pair jointly (through ``chat_template``, when given,
        as the messages ``query`` and ``document``); embedding models return the
        cosine similarity of the two embeddings.
        """
        pairs = make_score_pairs(text_1, text_2)
        adapters = self._adapter_ids(lora_request, len(pairs))
        if adapters is not None and len(set(adapters)) > 1:
            raise ValueError("score() takes one lora_request for all its pairs.")
        extra = (pooling_params.extra_kwargs or {}) if isinstance(
            pooling_params, PoolingParams) else {}  # vLLM passes side limits here
        options = ScoreOptions(chat_template=chat_template,
                               chat_template_kwargs=chat_template_kwargs,
                               max_tokens_per_query=extra.get("max_tokens_per_query", 0),
                               max_tokens_per_doc=extra.get("max_tokens_per_doc", 0))
        job = self.engine.prepare_score(pairs, pooling_params, truncate_prompt_tokens, options)
        if adapters is not None:
            job.seqs = with_adapters(job.seqs, adapters[:1] * len(job.seqs))
        data = self._run_data(job.seqs, job.pooling_task, use_tqdm)
        return job.finish(data, lambda _: self._next_id())

    def _adapter_ids(self, lora_request: Any, count: int) -> list[int] | None:
        """Each prompt's LoRA adapter id (0: the base) from vLLM's ``lora_request``: one
        ``LoRARequest`` for all, or a list with one (or None) per prompt."""
        if lora_request is None:
            return None
        requests = (list(lora_request) if isinstance(lora_request, (list, tuple))
                    else [lora_request] * count)
        if len(requests) != count:
            raise ValueError(f"Got {len(requests)} lora_request for {count} prompts; give one "
                             "or one each.")
        for request in requests:
            if request is not None and not isinstance(request, LoRARequest):
                raise LoRAError("lora_request must be a LoRARequest (from cenote or "
                                f"vllm.lora.request), not {type(request).__name__}.")
        return [0 if r is None else self.engine.loras.resolve(r) for r in requests]

    def _next_id(self) -> str:
        return str(next(self._request_counter))

    def _run_data(self, seqs: list[SequenceInput], pooling_task: str,
                  use_tqdm: bool | Callable[..., tqdm]) -> list[torch.Tensor]:
        records, merge = self.engine.split(seqs, pooling_task)
        show = bool(use_tqdm) and len(records) >= _TQDM_MIN_PROMPTS
        # As vLLM, use_tqdm may also be a tqdm-like class to draw the bar with.
        bar_class = use_tqdm if callable(use_tqdm) else tqdm
        # The bar counts what runs: a long input in chunks counts each chunk.
        with bar_class(total=len(records), desc=f"Processed prompts ({pooling_task})",
                       unit="prompt", disable=not show) as bar:
            return merge(self.engine.run(records, pooling_task, on_batch_done=bar.update))


def _with_tokenization(params: ParamsArg, options: TokenizationOptions) -> ParamsArg:
    """``params`` with the truncation side and padding ``tokenization_kwargs`` asked for
    (copies; a params object that says otherwise is an error)."""
    asked = {name: value for name, value in (("truncation_side", options.truncation_side),
                                              ("padding", options.padding))
             if value is not None}
    if not asked:
        return params

    def with_asked(p: PoolingParams | None) -> PoolingParams:
        p = (p or PoolingParams()).merged_over(None)
        for name, value in asked.items():
            if getattr(p, name) not in (None, value):
                raise ValueError(f"tokenization_kwargs {name}={value!r} and pooling_params "
                                 f"{name}={getattr(p, name)!r} disagree.")
            setattr(p, name, value)
        return p

    if params is None or isinstance(params, PoolingParams):
        return with_asked(params)
    # Anything but PoolingParams is left for the engine to refuse.
    return [with_asked(p) if isinstance(p, PoolingParams) else p for p in params]
