"""Dual encoders (CLIP, SigLIP, SigLIP 2): a text tower and a vision tower projected into
one space, run through transformers' own towers (``get_text_features`` and
``get_image_features``).

Texts arrive as a packed batch and are laid out padded, as each model's processor
pads them: CLIP with an attention mask over the real tokens (it pools its EOS
token), SigLIP padded with the pad token to the processor's ``max_length`` and no
mask (it pools the last position, pad or not). Images arrive as a stack of
pre-processed pixel values.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from cenote.models.batch import PackedBatch
from cenote.models.interface import PoolingModel

# Processors that pad every text to max_length (and send no attention mask).
_PADS_TO_MAX_LENGTH = ("siglip", "siglip2")


class DualEncoderModel(PoolingModel):
    returns_pooled_rows = True
    embeds_images = True

    def __init__(self, config: Any) -> None:
        super().__init__()
        from transformers import AutoModel

        self.hf_model = AutoModel.from_pretrained(config.path, config=config.hf_config,
                                                  dtype=torch.float32,
                                                  trust_remote_code=config.trust_remote_code)
        self.hf_model.eval()
        text_config = config.hf_config.text_config
        self.pad_token_id = getattr(text_config, "pad_token_id", None) or 0
        self.pads_to = (config.max_model_len if config.model_type in _PADS_TO_MAX_LENGTH
                        else None)

    def forward(self, batch: PackedBatch) -> torch.Tensor:
        """The projected text features, one row per sequence."""
        ids = batch.to_padded(batch.input_ids.unsqueeze(1)).squeeze(-1)
        lens = torch.tensor(batch.seq_lens, device=ids.device)
        mask = torch.arange(batch.max_len, device=ids.device)[None, :] < lens[:, None]
        ids = ids.masked_fill(~mask, self.pad_token_id)
        if self.pads_to:  # SigLIP: every text padded to max_length, no mask
            ids = F.pad(ids, (0, self.pads_to - batch.max_len), value=self.pad_token_id)
            return _features(self.hf_model.get_text_features(input_ids=ids))
        return _features(self.hf_model.get_text_features(input_ids=ids,
                                                         attention_mask=mask.long()))

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The projected image features, one row per image."""
        weight = next(self.hf_model.parameters())
        return _features(self.hf_model.get_image_features(
            pixel_values=pixel_values.to(weight.device, weight.dtype)))


def _features(output: Any) -> torch.Tensor:
    # transformers 5 returns a model output with the projection in pooler_output.
    return output if isinstance(output, torch.Tensor) else output.pooler_output
