"""Vision-language rerankers: a query and a document (text or image) in one prompt, one
score from the last token.

``Qwen3VLForSequenceClassification`` (Qwen3-VL-Reranker, served as vLLM's recipe: the
architecture, ``classifier_from_token: ["no", "yes"]`` and ``is_original_qwen3_reranker``
given as ``hf_overrides``): Qwen3-VL (``Qwen3VLEmbedder``) whose classifier is the
LM head's "yes" row minus its "no" row, on the last token; sigmoid gives
``P(yes) / (P(yes) + P(no))``.

``JinaVLForRanking`` (jina-reranker-m0; its code ships with the checkpoint and is never
run here): a Qwen2-VL model whose lm_head is dropped and whose last token's final hidden
state goes through ``score`` (``Linear(h, h)``, ReLU, ``Linear(h, 1)``); the authors'
``forward`` returns ``sigmoid(logit - 2.65)``. The 2.65 is folded into the last linear's
bias at load, so the Score API's sigmoid over the classifier's logit is that score
(vLLM's pooler ``logit_bias``). The vision tower is transformers', the language model
cenote's packed decoder with Qwen2-VL's multimodal positions, as
``Qwen2VLForConditionalGeneration.forward`` (which the authors' class calls) runs them.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from cenote.models.qwen2_vl import Qwen2VLEmbedder, Qwen3VLEmbedder

# The authors' normalisation: sigmoid(score - LOGIT_BIAS).
JINA_VL_LOGIT_BIAS = 2.65
# The score head as saved: ``score.0`` / ``score.2`` (nn.Sequential), or vLLM's names.
_SCORE = re.compile(r"^score\.(0|2|dense|out_proj)\.(weight|bias)$")


class JinaVLScorer(nn.Sequential):
    """``score``: ``Linear(h, h)``, ReLU, ``Linear(h, 1)``."""

    def __init__(self, hidden: int) -> None:
        super().__init__(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1))


class JinaVLRanker(Qwen2VLEmbedder):
    """``JinaVLForRanking``: the score head on the last token's final hidden state."""

    def __init__(self, config: Any, task: str) -> None:
        if task != "classify":
            raise ValueError(f"JinaVLForRanking is a reranker (task 'classify', the Score "
                             f"API); task {task!r} does not apply to it.")
        super().__init__(config, task="embed")  # the decoder without its own head
        self.classifier = JinaVLScorer(config.text_config.hidden_size)
        self.classify_pad_token_id = None  # the score token closes every prompt

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """The score head here (``score.0.*``, ``score.2.*``, the bias shifted by
        -2.65), the rest as a Qwen2-VL checkpoint (its ``lm_head`` unused)."""
        head: dict[str, torch.Tensor] = {}

        def backbone() -> Iterable[tuple[str, torch.Tensor]]:
            for name, tensor in weights:
                found = _SCORE.match(name)
                if found:
                    layer = "0" if found[1] in ("0", "dense") else "2"
                    head[f"{layer}.{found[2]}"] = tensor
                elif not name.startswith("lm_head."):
                    yield name, tensor

        super().load_weights(backbone())
        if "2.bias" in head:
            head["2.bias"] = head["2.bias"].float() - JINA_VL_LOGIT_BIAS
        self.classifier.load_state_dict(head, strict=True)


class Qwen3VLReranker(Qwen3VLEmbedder):
    """``Qwen3VLForSequenceClassification`` with its head built from LM-head rows."""

    builds_head_from_tokens = True

    def __init__(self, config: Any, task: str) -> None:
        if task != "classify":
            raise ValueError(f"Qwen3VLForSequenceClassification is a reranker (task "
                             f"'classify'); task {task!r} does not apply to it.")
        # The labels the head gives (1 for from_2_way_softmax) are set on the top config.
        config = copy.copy(config)
        config.text_config = copy.copy(config.text_config)
        config.text_config.num_labels = config.num_labels
        super().__init__(config, task)

    def use_head_from_tokens(self, method: str, token_ids: list[int]) -> None:
        self.language.use_head_from_tokens(method, token_ids)
        self.classifier = self.language.classifier
        self.classify_pad_token_id = self.language.classify_pad_token_id
