"""Any architecture transformers can load, run padded through ``AutoModel``.

The fallback keeps the packed-token contract: it pads the batch for the
transformers model and hands back ``[num_tokens, hidden]``, so the same
poolers apply. For classification it runs the full
``AutoModelForSequenceClassification`` and gives every token of a sequence
that sequence's logits, so any row the pooler picks holds them.
"""

from __future__ import annotations

import torch
from torch import nn

from cenote.models.layers import PackedBatch


class TransformersFallbackModel(nn.Module):
    def __init__(self, config, classify: bool) -> None:
        super().__init__()
        from transformers import AutoModel, AutoModelForSequenceClassification

        factory = AutoModelForSequenceClassification if classify else AutoModel
        self.hf_model = factory.from_pretrained(
            config.path,
            config=config.hf_config,
            dtype=torch.float32,
            trust_remote_code=config.trust_remote_code,
        )
        self.hf_model.eval()
        self.classify = classify
        self.pad_token_id = getattr(config.hf_config, "pad_token_id", None) or 0
        self.accepts_token_types = "token_type_ids" in self.hf_model.forward.__code__.co_varnames
        # The classifier lives inside hf_model; the pooler applies only the activation.
        self.classifier = nn.Identity() if classify else None

    def forward(self, batch: PackedBatch) -> torch.Tensor:
        ids = batch.to_padded(batch.input_ids.unsqueeze(1)).squeeze(-1)
        if batch.padded_index is not None:
            ids = ids.masked_fill(~batch.key_padding_mask[:, 0, 0, :], self.pad_token_id)
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
        return batch.from_padded(out.last_hidden_state)
