"""The synchronous core shared by the offline ``LLM`` and the server's async engine:
validate a request, turn it into input records, run their batches, and assemble the
outputs."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from cenote.config import ModelConfig
from cenote.config.lora import LoRAOptions
from cenote.engine.io_processor import NO_IO_PROCESSOR_PLUGIN
from cenote.engine.pipeline import run_one_ahead
from cenote.engine.quantization import Int8Accuracy, measure_int8
from cenote.engine.runner import ModelRunner
from cenote.engine.scheduler import schedule_batches
from cenote.engine.scoring import ScoreJob, distinct
from cenote.engine.task_adapters import adapter_registry
from cenote.exceptions import VLLMValidationError
from cenote.inputs.chunking import Merge, split_into_chunks
from cenote.inputs.colpali import visual_retrieval_inputs
from cenote.inputs.instructions import instruction
from cenote.inputs.late_interaction import LateInteractionInputs, kept_rows
from cenote.inputs.prompts import Prompt, SequenceInput, TokenizedPrompt, is_image_prompt
from cenote.inputs.score_prompts import ScoreOptions, limit_pairs, render_pairs
from cenote.inputs.tokenizer import Tokenizer, Truncation
from cenote.inputs.vision_language import image_inputs
from cenote.inputs.vl_rerankers import vl_reranker_inputs
from cenote.outputs import PoolingRequestOutput
from cenote.params import EMBEDDING_MODES, PoolingParams
from cenote.pooling.compact import calibration_texts
from cenote.pooling.late_chunking import chunk_metadata
from cenote.pooling.policy import PoolingPolicy
from cenote.tasks import OWN_POOLING_TASK
from cenote.tasks import pooling_task as task_named

WARMUP_TEXTS = ("Warm-up.", "A second, slightly longer warm-up sentence.")




class UnsupportedTaskError(ValueError):
    """A pooling task the loaded model does not serve."""


class PoolingEngine:
    """Validates requests, prepares their input records, runs them and assembles the
    outputs. Given a ``policy``, it loads no model (``runner`` is None): the front end
    of engines in other processes, which only prepares records and assembles outputs."""

    def __init__(self, config: ModelConfig, policy: PoolingPolicy | None = None,
                 lora: LoRAOptions | None = None) -> None:
        self.config = config
        self.tokenizer = Tokenizer(config.tokenizer_path or config.path, config.max_model_len,
                                   config.trust_remote_code,
                                   getattr(config.hf_config, "vocab_size", None),
                                   max_embed_len=config.max_embed_len,
                                   special_tokens=not config.is_static)
        self.runner = ModelRunner(config, self.tokenizer, lora) if policy is None else None
        # LoRA adapters (--enable-lora): --lora-modules and the folder's task adapters load now.
        self.loras = adapter_registry(lora, config.path, self.runner and self.runner.adapters)
        self.policy = self.runner.policy if policy is None else policy
        self._prompt_lengths: dict[str, int] = {}
        # ColQwen2's processor makes its queries, documents and image inputs.
        visual = visual_retrieval_inputs(config.path, config.hf_config, self.tokenizer)
        late = config.retrieval.late_interaction
        # jina-reranker-m0's score prompts: query and document, texts or images, in one.
        self.vl_pairs = vl_reranker_inputs(config.path, config.hf_config, self.tokenizer)
        self.images = visual or self.vl_pairs or image_inputs(config, self.tokenizer)
        self.late = visual or (LateInteractionInputs(late, self.tokenizer)
                               if late is not None else None)
        # With quantization="int8": its cosine to the float model's outputs, measured now
        # (last: the calibration texts are prepared as any request's).
        self.int8_accuracy: Int8Accuracy | None = None
        if self.runner is not None and config.quantization == "int8":
            seqs, task = warmup_records(self, calibration_texts())
            self.int8_accuracy = measure_int8(self.runner.model, lambda: self.run(seqs, task),
                                              len(seqs), task)

    def check_task(self, pooling_task: str) -> None:
        if pooling_task in self.config.supported_pooling_tasks:
            return
        if pooling_task == "plugin":  # vLLM's task for IO processor plugins
            raise UnsupportedTaskError(NO_IO_PROCESSOR_PLUGIN)
        task = task_named(pooling_task)
        if pooling_task == "score" and self.config.task == "classify":
            raise UnsupportedTaskError(  # vLLM's words, by its pooler task
                "This model does not support the Scoring API."
                if self.config.default_pooling_task == "token_classify"
                else "Scoring API is only enabled for num_labels == 1.")
        serves = ", ".join(self.config.supported_pooling_tasks)
        if self.config.is_static:
            raise UnsupportedTaskError(f"{task.api} is not supported by this static embedding "
                                       f"model. The pooling tasks it serves: {serves}.")
        if task.model_task == self.config.task:  # the right kind of model, without that output
            raise UnsupportedTaskError(
                f"{task.api} is not supported by this model ({pooling_task}): it has no "
                f"output for it. The pooling tasks it serves: {serves}.")
        raise UnsupportedTaskError(
            f"{task.api} is not supported by this model (its task is {self.config.task!r}). "
            f"Try converting the model using `--task {task.model_task}` "
            f"(task={task.model_task!r} offline). The pooling tasks it serves: {serves}."
        )

    def resolve_params(
        self,
        pooling_task: str,
        params: PoolingParams | Sequence[PoolingParams] | None,
        count: int,
        truncate_prompt_tokens: int | None = None,
    ) -> list[PoolingParams]:
        """One resolved ``PoolingParams`` per prompt."""
        if params is None or isinstance(params, PoolingParams):
            params = [params or PoolingParams()] * count
        elif not isinstance(params, (list, tuple)) or not all(
                isinstance(p, PoolingParams) for p in params):
            raise TypeError("pooling_params must be a PoolingParams or a list of them, one "
                            f"per prompt; got {type(params).__name__}.")
        elif len(params) != count:
            raise VLLMValidationError(
                f"Got {len(params)} pooling_params for {count} prompts; give one or one each.",
                parameter="pooling_params")
        if truncate_prompt_tokens is not None:
            params = [p.merged_over(None) for p in params]
            for p in params:
                p.truncate_prompt_tokens = truncate_prompt_tokens
        resolved: dict[int, PoolingParams] = {}  # one resolution per distinct object
        for p in params:
            if id(p) not in resolved:
                resolved[id(p)] = self.policy.resolve_params(pooling_task, p)
        return [resolved[id(p)] for p in params]

    def prepare(
        self,
        prompts: Sequence[Prompt],
        pooling_task: str,
        params: PoolingParams | Sequence[PoolingParams] | None = None,
        truncate_prompt_tokens: int | None = None,
        add_special_tokens: bool = True,
        prompt_name: str | None = None,
    ) -> list[SequenceInput]:
        """Validate and tokenise prompts for ``pooling_task``. An embedding model's
        instruction (``prompt_name``, else its default prompt) goes before each text."""
        self.check_task(pooling_task)
        resolved = self.resolve_params(pooling_task, params, len(prompts), truncate_prompt_tokens)
        images = [i for i, p in enumerate(prompts) if is_image_prompt(p)]
        if not images:
            return self._text_records(prompts, pooling_task, resolved, add_special_tokens,
                                      prompt_name)
        out: list[SequenceInput | None] = [None] * len(prompts)
        _fill(out, images, lambda idx: self._image_records(
            [prompts[i] for i in idx], pooling_task, [resolved[i] for i in idx],
            add_special_tokens))
        _fill(out, [i for i, seq in enumerate(out) if seq is None],
              lambda idx: self._text_records([prompts[i] for i in idx], pooling_task,
                                             [resolved[i] for i in idx], add_special_tokens,
                                             prompt_name))
        return out

    def _text_records(self, prompts: Sequence[Prompt], pooling_task: str,
                      params: list[PoolingParams], add_special_tokens: bool,
                      prompt_name: str | None) -> list[SequenceInput]:
        """Texts and token-id prompts, tokenised (with the model's instruction); those
        asking for late chunking or a ColBERT ``embedding_mode`` each their own way."""
        prefix = self._instruction(prompt_name)
        out: list[SequenceInput | None] = [None] * len(prompts)

        def pick(idx: list[int]) -> tuple[list[Prompt], list[PoolingParams]]:
            return [prompts[i] for i in idx], [params[i] for i in idx]

        for i, p in enumerate(params):
            if p.late_chunking_params is not None:
                out[i] = self._late_chunked_record(prompts[i], p, prefix, add_special_tokens)
        for mode in EMBEDDING_MODES:
            _fill(out, [i for i, p in enumerate(params) if p.embedding_mode == mode],
                  lambda idx, mode=mode: self._mode_records(*pick(idx), mode))
        _fill(out, [i for i, seq in enumerate(out) if seq is None],
              lambda idx: self._plain_text_records(*pick(idx), pooling_task, add_special_tokens,
                                                   prefix))
        return out

    def _late_chunked_record(self, prompt: Prompt, params: PoolingParams, prefix: str | None,
                             add_special_tokens: bool) -> SequenceInput:
        """A text whose token vectors are averaged per chunk: tokenised whole, with where
        each chunk lies in it (the instruction, if any, counts as tokens, not text)."""
        if not isinstance(prompt, str) or not prompt:
            raise VLLMValidationError("Late chunking requires nonempty plain-text input")
        start = len(prefix or "")
        ids, offsets = self.tokenizer.encode_with_offsets((prefix or "") + prompt,
                                                          add_special_tokens)
        offsets = [(max(a - start, 0), b - start) if b > start else (0, 0) for a, b in offsets]
        chunks = chunk_metadata(prompt, offsets, params.late_chunking_params.chunk_size)
        return SequenceInput(ids, None, params, late_chunking=chunks)

    def _mode_records(self, prompts: Sequence[Prompt], params: list[PoolingParams],
                      mode: str) -> list[SequenceInput]:
        """Texts read as ColBERT queries or documents, as its scoring reads them: their
        marker, length and (queries) expansion."""
        if self.late is None:
            raise VLLMValidationError("embedding_mode is only supported for ColBERT / late "
                                      "interaction models", parameter="embedding_mode")
        return self.late.prepare_each(prompts, params, query=mode == "query")

    def _plain_text_records(self, prompts: Sequence[Prompt], params: list[PoolingParams],
                            pooling_task: str, add_special_tokens: bool,
                            prefix: str | None) -> list[SequenceInput]:
        if prefix is not None:
            prompts = [prefix + p if isinstance(p, str) else p for p in prompts]
        chunked = pooling_task == "embed" and self.config.chunked_processing
        tokenized = self._tokenize_grouped(
            params, lambda idx, cut: self.tokenizer.encode_prompts(
                [prompts[i] for i in idx], cut, add_special_tokens, chunked=chunked)
        )
        skip = self._pool_skip(prefix)
        seqs = [SequenceInput(t.token_ids, t.token_type_ids, p,
                              pool_skip=skip if isinstance(prompt, str) else 0)
                for t, p, prompt in zip(tokenized, params, prompts, strict=True)]
        if pooling_task == "token_embed" and self.late is not None:
            seqs = self.late.documents(seqs)  # plain inputs read as documents, as ST does
        return seqs

    def _image_records(self, prompts: Sequence[Prompt], pooling_task: str,
                       params: list[PoolingParams], add_special_tokens: bool = True
                       ) -> list[SequenceInput]:
        """Prompts with images (or videos) as records with their pre-processed pixels."""
        if self.images is None:
            raise ValueError("This model takes text only; image inputs need a multi-modal "
                             "model (CLIP, SigLIP, Qwen2-VL).")
        return self.images.records(prompts, pooling_task, params, add_special_tokens)

    def _instruction(self, prompt_name: str | None) -> str | None:
        """The instruction an embedding model's inputs start with (None: none)."""
        if self.config.task != "embed":
            if prompt_name is not None:
                raise ValueError("prompt_name applies to embedding models; this model's task "
                                 f"is {self.config.task!r}.")
            return None
        return instruction(self.config.st_config, prompt_name)

    def _pool_skip(self, prefix: str | None) -> int:
        """Leading tokens MEAN pooling leaves out: the instruction's, where the model's
        Pooling excludes it (include_prompt false), as Sentence-Transformers counts them
        (each prompt measured once)."""
        st = self.config.st_config
        if prefix is None or st is None or st.include_prompt:
            return 0
        if prefix not in self._prompt_lengths:
            self._prompt_lengths[prefix] = self.tokenizer.prompt_length(prefix)
        return self._prompt_lengths[prefix]

    def split(self, seqs: Sequence[SequenceInput], pooling_task: str
              ) -> tuple[list[SequenceInput], Merge]:
        """The records to run for ``seqs`` (chunks of long inputs with chunked processing)
        and the function that turns their outputs into one per input."""
        if pooling_task == "embed" and self.config.chunked_processing:
            return split_into_chunks(seqs, self.config.max_model_len)
        if pooling_task == "token_embed" and any(s.drop_token_ids for s in seqs):
            drop_first = self.config.retrieval.late_interaction.drop_first_token

            def leave_out_dropped_rows(outputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
                return [kept_rows(s, rows, drop_first)
                        for s, rows in zip(seqs, outputs, strict=True)]

            return list(seqs), leave_out_dropped_rows
        return list(seqs), list

    def prepare_pairs(
        self,
        pairs: Sequence[tuple[str, str]],
        params: PoolingParams | Sequence[PoolingParams] | None = None,
        truncate_prompt_tokens: int | None = None,
        options: ScoreOptions | None = None,
    ) -> list[SequenceInput]:
        """Validate and tokenise text pairs for a cross-encoder; where ``options`` has a
        chat template, each pair is rendered through it and the text tokenised whole."""
        self.check_task("score")
        resolved = self.resolve_params("score", params, len(pairs), truncate_prompt_tokens)
        if self.vl_pairs is not None:
            return self.vl_pairs.pairs(pairs, resolved, options)
        if options is not None and options.chat_template is not None:
            texts = render_pairs(pairs, options, self.tokenizer.hf)
            tokenized = self._tokenize_grouped(
                resolved, lambda idx, cut: self.tokenizer.encode_prompts(
                    [texts[i] for i in idx], cut))
        else:
            tokenized = self._tokenize_grouped(
                resolved, lambda idx, cut: self.tokenizer.encode_pairs(
                    [pairs[i] for i in idx], cut, as_one_text=self.config.pairs_as_one_text)
            )
        return [SequenceInput(t.token_ids, t.token_type_ids, p)
                for t, p in zip(tokenized, resolved, strict=True)]

    def _tokenize_grouped(
        self,
        params: list[PoolingParams],
        encode: Callable[[list[int], Truncation | None], list[TokenizedPrompt]],
    ) -> list[TokenizedPrompt]:
        # Prompts are tokenised together per truncation setting (nearly always one group),
        # then padded where asked (cut first, as Transformers does).
        groups: dict[tuple[int | None, str | None], list[int]] = {}
        for i, p in enumerate(params):
            groups.setdefault((p.truncate_prompt_tokens, p.truncation_side), []).append(i)
        out: list[TokenizedPrompt | None] = [None] * len(params)
        for (keep, side), idx in groups.items():
            cut = self.tokenizer.resolve_truncation(keep, side)
            for i, tok in zip(idx, encode(idx, cut), strict=True):
                out[i] = self.tokenizer.pad(tok) if params[i].padding == "max_length" else tok
        return out

    def prepare_score(
        self,
        pairs: Sequence[tuple[str, str]],
        params: PoolingParams | Sequence[PoolingParams] | None = None,
        truncate_prompt_tokens: int | None = None,
        options: ScoreOptions | None = None,
    ) -> ScoreJob:
        """What scoring ``pairs`` runs: each pair through a cross-encoder, or every
        distinct text through an embedding model (scored by cosine). ``options``: a
        chat template for the pairs (cross-encoders) and token limits per side."""
        if options is not None:
            options.check(self.config.max_model_len)
            if options.max_tokens_per_query or options.max_tokens_per_doc:
                pairs = limit_pairs(pairs, options, self.tokenizer.hf)
        if self.config.task == "classify":
            return ScoreJob(pairs, self.prepare_pairs(pairs, params, truncate_prompt_tokens,
                                                      options), "score")
        if self.config.task != "embed":  # a reward model has no Score API
            self.check_task("score")
        if self.late is not None:  # late interaction: queries and documents apart
            (resolved,) = self.resolve_params("token_embed", params, 1, truncate_prompt_tokens)
            queries, documents = distinct(a for a, _ in pairs), distinct(b for _, b in pairs)
            seqs = (self.late.prepare(queries, resolved, query=True)
                    + self.late.prepare(documents, resolved, query=False))
            return ScoreJob(pairs, seqs, "token_embed", queries, documents,
                            mean_over_query=self.config.retrieval.late_interaction.mean_over_query)
        task = "embed" if "embed" in self.config.supported_pooling_tasks else "embed_sparse"
        texts = distinct(t for pair in pairs for t in pair)  # images too, by identity
        return ScoreJob(pairs, self.prepare(texts, task, params, truncate_prompt_tokens), task,
                        texts)

    def run(
        self,
        seqs: Sequence[SequenceInput],
        pooling_task: str,
        on_batch_done: Callable[[int], None] | None = None,
    ) -> list[torch.Tensor]:
        """Run prompts in length-sorted, token-budgeted batches, one ahead (the next is
        prepared while one runs on a GPU); outputs in input order."""
        out: list[torch.Tensor | None] = [None] * len(seqs)
        lengths = [s.cost for s in seqs]
        batches = iter(schedule_batches(lengths, self.config.max_num_batched_tokens))

        def next_batch(wait: bool) -> tuple[list[int], list[SequenceInput], str] | None:
            batch = next(batches, None)
            return None if batch is None else (batch, [seqs[i] for i in batch], pooling_task)

        def finish(batch: list[int], outcome: list[torch.Tensor] | Exception) -> None:
            if isinstance(outcome, Exception):
                raise outcome
            for i, result in zip(batch, outcome, strict=True):
                out[i] = result
            if on_batch_done is not None:
                on_batch_done(len(batch))

        run_one_ahead(self.runner, next_batch, finish)
        return out


def _fill(out: list[SequenceInput | None], idx: list[int],
          make: Callable[[list[int]], list[SequenceInput]]) -> None:
    """``out[i]`` for each ``i`` of ``idx``: the records ``make(idx)`` prepares, in order."""
    if idx:
        for i, seq in zip(idx, make(idx), strict=True):
            out[i] = seq


def warmup_records(engine: PoolingEngine, texts: Sequence[str] = WARMUP_TEXTS
                   ) -> tuple[list[SequenceInput], str]:
    """Records of ``texts`` (by default two short ones) for the model's own output task:
    run once before the first client, so it does not pay one-off kernel setup."""
    served = engine.config.supported_pooling_tasks
    task = OWN_POOLING_TASK[engine.config.task]
    if task not in served:  # a model with no dense vector: its own output
        task = next(t for t in ("token_embed", "embed_sparse", "encode") if t in served)
    # Cut to max_model_len (-1), however small it was set.
    seqs = engine.prepare(list(texts), task, truncate_prompt_tokens=-1)
    return seqs, task


def request_outputs(seqs: Sequence[SequenceInput], data: Sequence[torch.Tensor],
                    request_id: Callable[[int], str],
                    kind: type[PoolingRequestOutput] = PoolingRequestOutput
                    ) -> list[PoolingRequestOutput]:
    """One ``kind`` of output per input record; ``request_id(k)`` names the k-th."""
    output_of = kind.output_of
    return [kind(request_id(k), output_of(d), s.token_ids, num_input_tokens=s.cost,
                 late_chunking=s.late_chunking)
            for k, (s, d) in enumerate(zip(seqs, data, strict=True))]
