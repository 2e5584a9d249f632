"""Running one scheduled batch in three steps: ``prepare`` (pack the input records into
device tensors), ``launch`` (model and pooler; on a GPU this only queues kernels) and
``collect`` (the outputs on the CPU, in one copy). ``execute`` does all three; the
steps are apart so that the next batch is prepared while one is in flight
(:mod:`cenote.engine.pipeline`)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from cenote.config import ModelConfig, PoolingType
from cenote.config.lora import LoRAOptions
from cenote.inputs.prompts import SequenceInput
from cenote.models import load_model
from cenote.models.batch import PackedBatch, upload
from cenote.models.interface import Vocabulary
from cenote.models.linear import Linear
from cenote.models.lora import ModelAdapters, by_adapter
from cenote.models.prefix_sharing import share_prefixes, token_rows
from cenote.params import PoolingParams
from cenote.pooling.methods import PoolingMetadata

_POOLED_TOKEN = {PoolingType.CLS: "first", PoolingType.LAST: "last"}
_IMAGES_PER_FORWARD = 16


@dataclass
class PreparedBatch:
    """A batch on the model's device, ready to launch: its texts packed (``batch``, the
    records at ``text_rows``) and its images stacked (``pixel_values``, the records at
    ``image_rows``)."""

    batch: PackedBatch | None
    pooling_task: str
    params: list[PoolingParams]
    pool_skip: list[int] | None = None
    text_rows: list[int] | None = None
    image_rows: list[int] | None = None
    pixel_values: torch.Tensor | None = None
    # Each packed sequence's LoRA adapter id (0: the base), when one asks for an adapter;
    # the batch packs record ``lora_order[k]`` as its sequence k.
    lora_ids: list[int] | None = None
    lora_order: list[int] | None = None


class ModelRunner:
    """Owns the model and its pooler; runs batches of one pooling task."""

    def __init__(self, config: ModelConfig, vocabulary: Vocabulary,
                 lora: LoRAOptions | None = None) -> None:
        self.config = config
        loaded = load_model(config, vocabulary)
        self.model, self.pooler, self.policy = loaded.model, loaded.pooler, loaded.policy
        # --enable-lora: the adapters' weights, added per batch to the rows that ask.
        self.adapters = (ModelAdapters(self.model, config.dtype, config.device,
                                       config.served_model_name or config.model)
                         if lora is not None and lora.enabled else None)
        # oneDNN's matmuls, packed float or int8 (quantized after calibration, so not yet
        # here), cache a kernel per row count: give them few row counts.
        self.bucket_rows = config.quantization == "int8" or any(
            isinstance(m, Linear) and m.packed is not None for m in self.model.modules())
        # Whether a one-token pooler runs the last layer for the pooled rows only.
        self.prunes_last_layer = self.model.computes_pooled_rows_only
        # Whether the prefixes a batch's sequences share run once (causal decoders).
        self.shares_prefixes = self.model.shares_prefixes and config.enable_prefix_caching
        self.one_thread = self.model.single_threaded and config.device.type == "cpu"
        if self.adapters is not None:
            self.adapters.rows.bucket = self.bucket_rows

    @property
    def launches_async(self) -> bool:
        """Whether :meth:`launch` returns before the batch has run (it queues a GPU's
        kernels; on a CPU it computes)."""
        return torch.device(self.config.device).type == "cuda"

    @torch.inference_mode()
    def execute(self, seqs: Sequence[SequenceInput], pooling_task: str) -> list[torch.Tensor]:
        """The pooled output of each record, on the CPU, in order."""
        return self.collect(self.launch(self.prepare(seqs, pooling_task)))

    def prepare(self, seqs: Sequence[SequenceInput], pooling_task: str) -> PreparedBatch:
        image_rows = [i for i, s in enumerate(seqs) if s.pixel_values is not None]
        if not image_rows:
            return self._prepare_texts(seqs, pooling_task)
        text_rows = [i for i, s in enumerate(seqs) if s.pixel_values is None]
        prepared = (self._prepare_texts([seqs[i] for i in text_rows], pooling_task)
                    if text_rows else PreparedBatch(None, pooling_task, []))
        prepared.text_rows, prepared.image_rows = text_rows, image_rows
        prepared.params = [s.params for s in seqs]
        prepared.pixel_values = upload(torch.stack([seqs[i].pixel_values for i in image_rows]),
                                       self.config.device)
        return prepared

    def _prepare_texts(self, seqs: Sequence[SequenceInput], pooling_task: str) -> PreparedBatch:
        params = [s.params for s in seqs]
        # With adapters, each adapter's sequences side by side: its rows are one range.
        order = by_adapter([s.lora_id for s in seqs])
        if order is not None:
            seqs = [seqs[i] for i in order]
        types = None
        if any(s.token_type_ids is not None for s in seqs):
            types = [s.token_type_ids or [0] * len(s.token_ids) for s in seqs]
        pooling_type = self.pooler.methods[pooling_task]
        token_ids = [s.token_ids for s in seqs]
        pad = self.model.classify_pad_token_id
        if pad is not None and pooling_type is PoolingType.LAST:
            token_ids = [before_trailing(ids, pad) for ids in token_ids]
        skip = [s.pool_skip for s in seqs] if any(s.pool_skip for s in seqs) else None
        lora_ids = [s.lora_id for s in seqs] if any(s.lora_id for s in seqs) else None
        # A pooler that keeps one token per sequence needs only that row of the last layer
        # (not with adapters: their products are added to every row, see models/lora.py).
        pooled = (_POOLED_TOKEN.get(pooling_type)
                  if self.prunes_last_layer and lora_ids is None else None)
        if pooling_type is PoolingType.MEAN and self.model.computes_mean_rows and skip is None:
            pooled = "mean"
        visible = ([s.visible_len for s in seqs] if any(s.visible_len is not None for s in seqs)
                   else None)
        batch = PackedBatch.build(token_ids, types, self.config.device,
                                  bucket=self.bucket_rows, pooled=pooled, visible_lens=visible)
        if self.shares_prefixes and lora_ids is None:  # adapters change a prefix's rows
            batch = share_prefixes(batch, token_ids, self.bucket_rows)
        if any(s.multimodal is not None for s in seqs):  # a vision-language model's pixels
            batch.multimodal = [s.multimodal and s.multimodal.to(self.config.device)
                                for s in seqs]
        return PreparedBatch(batch, pooling_task, params, skip, lora_ids=lora_ids,
                             lora_order=order)

    @torch.inference_mode()
    def launch(self, prepared: PreparedBatch) -> list[torch.Tensor]:
        if self.one_thread:
            with one_intra_op_thread():
                return self._launch(prepared)
        return self._launch(prepared)

    def _launch(self, prepared: PreparedBatch) -> list[torch.Tensor]:
        if prepared.image_rows is None:
            return self._launch_texts(prepared.batch, prepared)
        outputs: list[torch.Tensor | None] = [None] * len(prepared.params)
        if prepared.batch is not None:
            text_params = [prepared.params[i] for i in prepared.text_rows]
            for i, out in zip(prepared.text_rows,
                              self._launch_texts(prepared.batch, prepared, text_params),
                              strict=True):
                outputs[i] = out
        # Images go through the vision tower a few at a time: on a CPU a 96-image pass of
        # a ViT-B/32 ran at 10.3 images/s in one forward, 11.5 in forwards of 16.
        features = torch.cat([self.model.image_features(part) for part in
                              prepared.pixel_values.split(_IMAGES_PER_FORWARD)])
        image_params = [prepared.params[i] for i in prepared.image_rows]
        for i, out in zip(prepared.image_rows,
                          self.pooler(features, _one_row_each(features), prepared.pooling_task,
                                      image_params), strict=True):
            outputs[i] = out
        return outputs

    def _launch_texts(self, batch: PackedBatch, prepared: PreparedBatch,
                      params: list[PoolingParams] | None = None) -> list[torch.Tensor]:
        params = prepared.params if params is None else params
        if prepared.lora_ids is not None:
            if self.adapters is None:
                raise ValueError("LoRA adapters were asked for, but LoRA is not enabled.")
            with self.adapters.active(prepared.lora_ids, batch):
                hidden, meta = self._hidden(batch, prepared)
            order = prepared.lora_order
            packed = self.pooler(hidden, meta, prepared.pooling_task, [params[i] for i in order])
            outputs: list[torch.Tensor | None] = [None] * len(order)
            for k, i in enumerate(order):
                outputs[i] = packed[k]
            return outputs
        else:
            hidden, meta = self._hidden(batch, prepared)
        return self.pooler(hidden, meta, prepared.pooling_task, params)

    def _hidden(self, batch: PackedBatch, prepared: PreparedBatch
                ) -> tuple[torch.Tensor, PoolingMetadata]:
        """The model's rows of ``batch`` for the pooler, and their metadata."""
        if batch.pooled is None and not self.model.returns_pooled_rows:
            hidden, batch = token_rows(self.model(batch), batch)  # every token's row
            tokens = batch.num_tokens
            hidden = hidden[:tokens]
            meta = PoolingMetadata(batch.seq_lens, batch.cu_seqlens, batch.input_ids[:tokens],
                                   prepared.pool_skip)
        else:  # row b is sequence b's pooled token: hand the pooler one-token sequences
            hidden = self.model(batch)[:batch.num_seqs]
            rows = (batch.pooled_rows[:batch.num_seqs] if batch.pooled_rows is not None
                    else batch.cu_seqlens[1:] - 1)
            meta = _one_row_each(hidden, batch.input_ids[rows])
        return hidden, meta

    @staticmethod
    def collect(outputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The batch's outputs on the CPU, in one device-to-host copy (one per output
        would wait for the device once per sequence)."""
        if not outputs or outputs[0].device.type == "cpu":  # one device for a whole batch
            return list(outputs)
        if len({out.dtype for out in outputs}) > 1 or any(out.is_sparse for out in outputs):
            return [out.cpu() for out in outputs]
        flat = torch.cat([out.reshape(-1) for out in outputs]).cpu()
        return [part.view(out.shape)
                for part, out in zip(flat.split([out.numel() for out in outputs]), outputs,
                                     strict=True)]


@contextlib.contextmanager
def one_intra_op_thread() -> Iterator[None]:
    """Torch's CPU ops on one thread within the block. The count is the process's: a
    batch of another model served beside this one (``--model`` twice) runs the ops it
    starts within the block on one thread too; a static model's block lasts well under
    a millisecond."""
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def before_trailing(token_ids: list[int], pad_token_id: int) -> list[int]:
    """``token_ids`` up to the last token that is not ``pad_token_id`` (the first token
    if all are). A causal model's row there does not depend on the tokens after it, so
    pooling the last row of this prefix is what transformers' decoder classifiers
    score, with less work."""
    end = len(token_ids)
    while end > 1 and token_ids[end - 1] == pad_token_id:
        end -= 1
    return token_ids if end == len(token_ids) else token_ids[:end]


def _one_row_each(rows: torch.Tensor, input_ids: torch.Tensor | None = None) -> PoolingMetadata:
    """Metadata that makes each row its own one-token sequence."""
    count = len(rows)
    if input_ids is None:
        input_ids = torch.zeros(count, dtype=torch.long, device=rows.device)
    return PoolingMetadata([1] * count, torch.arange(count + 1, device=rows.device), input_ids)
