"""Any architecture transformers can load, run padded through ``AutoModel``.

The fallback keeps the packed-token contract: it pads the batch for the
transformers model and hands back ``[num_tokens, hidden]``, so the same
poolers apply. For classification it runs the full
``AutoModelForSequenceClassification`` and gives every token of a sequence
that sequence's logits, so any row the pooler picks holds them.
"""

from __future__ import annotations

import inspect
import itertools
import logging

import torch
from torch import nn

from cenote.config.token_classification import is_token_classifier
from cenote.models.batch import PackedBatch
from cenote.models.interface import PoolingModel

logger = logging.getLogger(__name__)


def _embedding_class(hf_config):
    """The checkpoint's own headless class where it names one transformers has (e.g.
    ``T5EncoderModel``, which ``AutoModel`` would load as the whole encoder-decoder),
    else ``AutoModel`` (also for a ``*LMHeadModel``, e.g. GPT-2's: a body with a head)."""
    import transformers

    for name in getattr(hf_config, "architectures", None) or []:
        cls = getattr(transformers, name, None)
        if (cls is not None and name.endswith("Model") and "For" not in name
                and "LMHead" not in name):
            return cls
    return transformers.AutoModel


class TransformersFallbackModel(PoolingModel):
    def __init__(self, config, classify: bool) -> None:
        super().__init__()
        from transformers import (
            AutoModelForSequenceClassification,
            AutoModelForTokenClassification,
        )

        # A *ForTokenClassification checkpoint (task reward): its logits on every token.
        self.token_logits = config.task == "reward" and is_token_classifier(config.architecture)
        factory = (AutoModelForSequenceClassification if classify
                   else AutoModelForTokenClassification if self.token_logits
                   else _embedding_class(config.hf_config))
        self.hf_model, info = factory.from_pretrained(
            config.path,
            config=config.hf_config,
            dtype=torch.float32,
            trust_remote_code=config.trust_remote_code,
            output_loading_info=True,
        )
        missing = sorted(info.get("missing_keys") or [])
        if missing and (classify or self.token_logits):
            # transformers fills a missing head with random weights: every load would
            # answer differently.
            raise ValueError(
                f"{config.architecture} at {config.path} has no trained weights for "
                f"{', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}; as a "
                "classifier it would answer with a randomly initialised head.")
        if missing:
            logger.warning("Weights missing from the checkpoint (randomly initialised by "
                           "transformers): %s", ", ".join(missing))
        if getattr(self.hf_model.config, "is_encoder_decoder", False) and not classify:
            self.hf_model = self.hf_model.get_encoder()  # an embedder reads the encoder
        self.hf_model.eval()
        self.classify = classify
        self.pad_token_id = getattr(config.hf_config, "pad_token_id", None)
        # signature() sees through the decorators transformers wraps forward in.
        self.accepts_token_types = ("token_type_ids"
                                    in inspect.signature(self.hf_model.forward).parameters)
        # The classifier lives inside hf_model; the pooler applies only the activation.
        self.classifier = nn.Identity() if classify else None
        self.token_head = nn.Identity() if self.token_logits else None

    def forward(self, batch: PackedBatch) -> torch.Tensor:
        if self.classify and self.pad_token_id is None and batch.num_seqs > 1:
            # A classifier without a padding token (GPT-2's) finds each sequence's last
            # token only in a batch without padding: one sequence at a time.
            bounds = batch.cu_seqlens.tolist()
            singles = []
            for start, end in itertools.pairwise(bounds):
                types = batch.token_type_ids
                singles.append(self._forward(PackedBatch.build(
                    [batch.input_ids[start:end].tolist()],
                    None if types is None else [types[start:end].tolist()],
                    device=batch.input_ids.device)))
            return torch.cat(singles)
        return self._forward(batch)

    def _forward(self, batch: PackedBatch) -> torch.Tensor:
        ids = batch.to_padded(batch.input_ids.unsqueeze(1)).squeeze(-1)
        if batch.padded_index is not None:  # the padding only, not tokens hidden from keys
            lens = torch.tensor(batch.seq_lens, device=ids.device)
            padding = torch.arange(batch.max_len, device=ids.device)[None, :] >= lens[:, None]
            ids = ids.masked_fill(padding, self.pad_token_id or 0)
        mask = (batch.key_padding_mask[:, 0, 0, :].long() if batch.key_padding_mask is not None
                else torch.ones_like(ids))
        kwargs = {"input_ids": ids, "attention_mask": mask}
        if batch.token_type_ids is not None and self.accepts_token_types:
            types = batch.to_padded(batch.token_type_ids.unsqueeze(1)).squeeze(-1)
            kwargs["token_type_ids"] = types
        out = self.hf_model(**kwargs)
        if self.classify:
            lens = torch.tensor(batch.seq_lens, device=out.logits.device)
            return torch.repeat_interleave(out.logits, lens, dim=0)
        return batch.from_padded(out.logits if self.token_logits else out.last_hidden_state)
