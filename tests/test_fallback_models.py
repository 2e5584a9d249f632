"""An architecture with no native implementation (DistilBERT) runs through transformers
with the same poolers."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cenote import LLM
from cenote.models.fallback import TransformersFallbackModel

TEXTS = [
    "hello world",
    "a somewhat longer sentence about search engines and ranking",
    "x",
    "the quick brown fox jumps over the lazy dog " * 3,
]


@torch.no_grad()
def _hf_rows(model, path, texts) -> list[torch.Tensor]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    return [model(**tok(t, return_tensors="pt", return_token_type_ids=False)) for t in texts]


def test_fallback_embeds_like_transformers(tiny_distilbert):
    from transformers import DistilBertModel

    path = tiny_distilbert()
    llm = LLM(str(path), dtype="float32")
    assert isinstance(llm.engine.runner.model, TransformersFallbackModel)
    ours = torch.tensor([o.outputs.embedding for o in llm.embed(TEXTS)])
    ref = DistilBertModel.from_pretrained(path, dtype=torch.float32).eval()
    # Not a BERT-family model type, so the default embed pooler is LAST + normalise.
    expected = F.normalize(torch.stack([o.last_hidden_state[0, -1]
                                        for o in _hf_rows(ref, path, TEXTS)]), dim=-1)
    assert F.cosine_similarity(ours, expected).min() >= 0.9999


def test_fallback_encodes_every_token_like_transformers(tiny_distilbert):
    from transformers import DistilBertModel

    path = tiny_distilbert()
    llm = LLM(str(path), dtype="float32")
    ref = DistilBertModel.from_pretrained(path, dtype=torch.float32).eval()
    for out, expected in zip(llm.encode(TEXTS), _hf_rows(ref, path, TEXTS), strict=True):
        assert torch.allclose(out.outputs.data, expected.last_hidden_state[0], atol=1e-4)


def test_fallback_classifies_like_transformers(tiny_distilbert):
    from transformers import DistilBertForSequenceClassification

    path = tiny_distilbert(num_labels=3)
    llm = LLM(str(path), dtype="float32")
    assert llm.config.task == "classify"
    probs = torch.tensor([o.outputs.probs for o in llm.classify(TEXTS)])
    ref = DistilBertForSequenceClassification.from_pretrained(path, dtype=torch.float32).eval()
    expected = torch.stack([o.logits[0] for o in _hf_rows(ref, path, TEXTS)]).softmax(-1)
    assert torch.allclose(probs, expected, atol=1e-4)


def test_fallback_batch_gives_the_same_result_as_one_by_one(tiny_distilbert):
    llm = LLM(str(tiny_distilbert(num_labels=3)), dtype="float32")
    batched = torch.tensor([o.outputs.probs for o in llm.classify(TEXTS)])
    single = torch.tensor([llm.classify(t)[0].outputs.probs for t in TEXTS])
    assert torch.allclose(batched, single, atol=1e-5)
