"""Decoders that attend both ways run natively and match transformers on the same weights.

transformers has no bidirectional Qwen3 or Llama class (upstream checkpoints ship remote
code), so the reference is its causal model called with an explicit 4D attention mask
that lets every token see its whole sequence: given a mask, its attention applies that
mask and no causal one. Tiny random checkpoints: 2 layers, hidden 64, 4 query heads
sharing 2 key/value heads (``tests/factories.tiny_decoder_config``).
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from cenote import LLM
from cenote.models.decoder import DecoderModel
from tests.factories import add_tensors_to_checkpoint, build_tiny_decoder

TEXTS = [
    "hello world",
    "a somewhat longer sentence about search engines and ranking",
    "x",
    "the quick brown fox jumps over the lazy dog " * 3,
]
PROJECTION = 24  # the Voyage checkpoint's per-token projection width


@pytest.fixture(scope="module")
def checkpoints(minilm_path, tmp_path_factory):
    """name -> folder: a Qwen3 with ``is_causal: false``, Voyage's Qwen3 with its
    projection, and Llama bidirectional embedder (mean pooling) and classifier."""
    def build(name, model_type, architecture, saved_as, labels=2, **config):
        folder = build_tiny_decoder(minilm_path, tmp_path_factory.mktemp(name), model_type,
                                    architecture, seed=3, num_labels=labels)
        config_file = folder / "config.json"
        values = json.loads(config_file.read_text())
        values.update(architectures=[saved_as], **config)
        config_file.write_text(json.dumps(values, indent=2))
        return folder

    voyage = build("voyage", "qwen3", "Qwen3Model", "VoyageQwen3BidirectionalEmbedModel",
                   num_labels=PROJECTION)
    torch.manual_seed(4)
    add_tensors_to_checkpoint(voyage, {"linear.weight": torch.randn(PROJECTION, 64) * 0.2})
    return {
        "qwen3": build("qwen3", "qwen3", "Qwen3Model", "Qwen3Model", is_causal=False),
        "voyage": voyage,
        "llama": build("llama", "llama", "LlamaModel", "LlamaBidirectionalModel",
                       pooling="avg"),
        "llama_classifier": build("llama_cls", "llama", "LlamaForSequenceClassification",
                                  "LlamaBidirectionalForSequenceClassification",
                                  labels=3, pooling="avg"),
    }


@torch.no_grad()
def _bidirectional_hidden(folder, token_ids: list[int]) -> torch.Tensor:
    """transformers' hidden states ``[T, hidden]`` with every token seeing every token."""
    import transformers

    config = transformers.AutoConfig.from_pretrained(folder)
    body = getattr(transformers, type(config).__name__.replace("Config", "Model"))
    model = body.from_pretrained(folder, dtype=torch.float32).eval()
    ids = torch.tensor([token_ids])
    everything = torch.ones(1, 1, len(token_ids), len(token_ids), dtype=torch.bool)
    return model(input_ids=ids, attention_mask=everything).last_hidden_state[0]


def _checkpoint_tensor(folder, name: str) -> torch.Tensor:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))[name].float()


def _embeddings(outs) -> torch.Tensor:
    return torch.tensor([o.outputs.embedding for o in outs])


def _assert_close(ours: torch.Tensor, ref: torch.Tensor, min_cosine: float) -> None:
    cosine = F.cosine_similarity(ours, F.normalize(ref, dim=-1))
    assert cosine.min() >= min_cosine, cosine


def test_bidirectional_decoders_run_natively(checkpoints):
    for name in ("qwen3", "voyage", "llama", "llama_classifier"):
        llm = LLM(str(checkpoints[name]), dtype="float32")
        assert isinstance(llm.engine.runner.model, DecoderModel), name
        assert llm.engine.runner.model.attention_shape.causal is False
        assert llm.config.attn_type == "encoder_only"


@pytest.mark.parametrize("dtype, min_cosine", [("float32", 0.9999), ("auto", 0.998)])
def test_qwen3_with_is_causal_false_embeds_the_last_token_of_full_attention(
        checkpoints, dtype, min_cosine):
    llm = LLM(str(checkpoints["qwen3"]), dtype=dtype)
    outs = llm.embed(TEXTS)
    ref = [_bidirectional_hidden(checkpoints["qwen3"], o.prompt_token_ids)[-1] for o in outs]
    _assert_close(_embeddings(outs), torch.stack(ref), min_cosine)


def test_bidirectional_attention_differs_from_causal(checkpoints):
    # The same weights run causally give other vectors: the mask really changed.
    folder = checkpoints["qwen3"]
    causal = LLM(str(folder), dtype="float32", hf_overrides={"is_causal": True})
    both_ways = LLM(str(folder), dtype="float32")
    cosine = F.cosine_similarity(_embeddings(causal.embed(TEXTS[:2])),
                                 _embeddings(both_ways.embed(TEXTS[:2])))
    assert cosine.max() < 0.99


@pytest.mark.parametrize("dtype, min_cosine", [("float32", 0.9999), ("auto", 0.998)])
def test_voyage_projects_every_token_then_pools_the_last(checkpoints, dtype, min_cosine):
    folder = checkpoints["voyage"]
    llm = LLM(str(folder), dtype=dtype)
    outs = llm.embed(TEXTS)
    projection = _checkpoint_tensor(folder, "linear.weight")
    ref = [_bidirectional_hidden(folder, o.prompt_token_ids)[-1] @ projection.T for o in outs]
    assert len(outs[0].outputs.embedding) == PROJECTION
    _assert_close(_embeddings(outs), torch.stack(ref), min_cosine)


@pytest.mark.parametrize("dtype, min_cosine", [("float32", 0.9999), ("auto", 0.998)])
def test_llama_bidirectional_mean_pools_as_its_config_says(checkpoints, dtype, min_cosine):
    folder = checkpoints["llama"]
    llm = LLM(str(folder), dtype=dtype)
    outs = llm.embed(TEXTS)
    ref = [_bidirectional_hidden(folder, o.prompt_token_ids).mean(0) for o in outs]
    _assert_close(_embeddings(outs), torch.stack(ref), min_cosine)


def test_llama_bidirectional_pools_last_when_configured(checkpoints, tmp_path):
    import shutil

    folder = shutil.copytree(checkpoints["llama"], tmp_path / "last")
    add_tensors_to_checkpoint(folder, {}, pooling="last")
    outs = LLM(str(folder), dtype="float32").embed(TEXTS)
    ref = [_bidirectional_hidden(folder, o.prompt_token_ids)[-1] for o in outs]
    _assert_close(_embeddings(outs), torch.stack(ref), 0.9999)


def test_llama_bidirectional_without_pooling_is_refused(checkpoints, tmp_path):
    import shutil

    folder = shutil.copytree(checkpoints["llama"], tmp_path / "unset")
    add_tensors_to_checkpoint(folder, {}, pooling=None)
    with pytest.raises(ValueError, match="'pooling'"):
        LLM(str(folder), dtype="float32").embed(TEXTS[:1])


def test_llama_bidirectional_classifier_scores_the_mean_row(checkpoints):
    folder = checkpoints["llama_classifier"]
    llm = LLM(str(folder), dtype="float32")
    assert llm.config.task == "classify"
    outs = llm.classify(TEXTS)
    score = _checkpoint_tensor(folder, "score.weight")
    for out in outs:
        logits = _bidirectional_hidden(folder, out.prompt_token_ids).mean(0) @ score.T
        assert torch.allclose(torch.tensor(out.outputs.probs), logits.softmax(-1), atol=1e-4)


@pytest.mark.parametrize("name", ["qwen3", "voyage", "llama"])
def test_batch_gives_the_same_vectors_as_one_by_one(checkpoints, name):
    llm = LLM(str(checkpoints[name]), dtype="float32")
    batched = _embeddings(llm.embed(TEXTS))
    alone = torch.cat([_embeddings(llm.embed(text)) for text in TEXTS])
    assert torch.allclose(batched, alone, atol=1e-5)
