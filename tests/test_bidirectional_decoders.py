"""Decoders that attend both ways run natively and match transformers on the same weights.

The reference for Qwen3 and Llama is transformers' ``Qwen3Model`` / ``LlamaModel`` called
with an explicit 4D attention mask that lets every token see its whole sequence (given
such a mask, its attention applies it and no causal one): the Voyage and
LlamaBidirectional configs do not say ``is_causal: false``, and their upstream classes
are remote code. Gemma3's is transformers' own ``Gemma3TextModel`` with
``use_bidirectional_attention``, and Sentence-Transformers on its layout. Tiny random
checkpoints: hidden 64, 4 query heads sharing 2 key/value heads.
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


def test_llama_bidirectional_remote_code_is_never_run(checkpoints, tmp_path):
    # Upstream's config maps AutoModel to its own modeling file; none exists here, so
    # running it would fail.
    import shutil

    folder = shutil.copytree(checkpoints["llama"], tmp_path / "remote")
    add_tensors_to_checkpoint(folder, {}, auto_map={
        "AutoModel": "llama_bidirectional_model.LlamaBidirectionalModel"})
    llm = LLM(str(folder), dtype="float32", trust_remote_code=True)
    assert isinstance(llm.engine.runner.model, DecoderModel)
    assert torch.allclose(_embeddings(llm.embed(TEXTS[:2])),
                          _embeddings(LLM(str(checkpoints["llama"]), dtype="float32")
                                      .embed(TEXTS[:2])), atol=1e-6)


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


# EmbeddingGemma's layout at a tiny size: sliding, full and sliding layers (a window of 4
# keys either side, shorter than the texts), 4 query heads sharing 2 key/value heads,
# a query scale other than head_dim's, and local and (linearly scaled) global RoPE.
GEMMA3 = dict(
    vocab_size=30522, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
    num_attention_heads=4, num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=24,
    layer_types=["sliding_attention", "full_attention", "sliding_attention"],
    sliding_window=4, max_position_embeddings=256, rms_norm_eps=1e-6,
    hidden_activation="gelu_pytorch_tanh",
    rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                     "full_attention": {"rope_type": "linear", "rope_theta": 1000000.0,
                                        "factor": 2.0}},
)


@pytest.fixture(scope="module")
def gemma3(minilm_path, tmp_path_factory):
    """``gemma3(bidirectional)`` -> a random ``Gemma3TextModel`` folder, and beside it
    (``/st``) the Sentence-Transformers layout EmbeddingGemma ships: mean pooling, two
    Dense layers without bias or activation, then Normalize."""
    import transformers
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import (
        Dense,
        Normalize,
        Pooling,
        Transformer,
    )

    from tests.factories import _save_tokenizer, _widen_

    def build(bidirectional: bool):
        torch.manual_seed(5)
        folder = tmp_path_factory.mktemp("gemma3")
        config = transformers.Gemma3TextConfig(**GEMMA3,
                                               use_bidirectional_attention=bidirectional)
        model = transformers.Gemma3TextModel(config)
        _widen_(model, 0.1)
        model.save_pretrained(folder)
        _save_tokenizer(minilm_path, folder)
        body = Transformer(str(folder))
        st = SentenceTransformer(modules=[
            body, Pooling(64, pooling_mode="mean"),
            Dense(64, 128, bias=False, activation_function=torch.nn.Identity()),
            Dense(128, 64, bias=False, activation_function=torch.nn.Identity()),
            Normalize()], device="cpu")
        st.save(str(folder / "st"))
        return folder

    return {True: build(True), False: build(False)}


def _gemma3_hidden(folder, token_ids: list[int]) -> torch.Tensor:
    import transformers

    model = transformers.Gemma3TextModel.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(input_ids=torch.tensor([token_ids])).last_hidden_state[0]


def test_gemma3_runs_natively(gemma3):
    from cenote.models.gemma3 import Gemma3TextModel

    llm = LLM(str(gemma3[True] / "st"), dtype="float32")
    assert isinstance(llm.engine.runner.model, Gemma3TextModel)
    assert llm.engine.runner.model.attention_shape.causal is False


@pytest.mark.parametrize("bidirectional", [True, False])
def test_gemma3_every_tokens_hidden_state_matches_transformers(gemma3, bidirectional):
    folder = gemma3[bidirectional]
    llm = LLM(str(folder), dtype="float32")
    outs = llm.encode(TEXTS)
    assert len(outs[-1].prompt_token_ids) > 2 * GEMMA3["sliding_window"]
    for out in outs:
        expected = _gemma3_hidden(folder, out.prompt_token_ids)
        assert torch.allclose(out.outputs.data, expected, atol=1e-4)


@pytest.mark.parametrize("dtype, min_cosine", [("float32", 0.9999), ("auto", 0.998)])
def test_embeddinggemma_layout_matches_sentence_transformers(gemma3, dtype, min_cosine):
    from sentence_transformers import SentenceTransformer

    folder = gemma3[True] / "st"
    reference = SentenceTransformer(str(folder), device="cpu").encode(
        TEXTS, convert_to_tensor=True).float()
    llm = LLM(str(folder), dtype=dtype)
    ours = _embeddings(llm.embed(TEXTS))
    assert ours.shape == reference.shape
    _assert_close(ours, reference, min_cosine)
    alone = torch.cat([_embeddings(llm.embed(text)) for text in TEXTS])
    assert torch.allclose(ours, alone, atol=1e-5 if dtype == "float32" else 1e-2)


@pytest.mark.parametrize("bidirectional", [True, False])
def test_gemma3_classifier_matches_transformers(minilm_path, tmp_path, bidirectional):
    import transformers

    from tests.factories import _save_tokenizer, _widen_

    torch.manual_seed(6)
    config = transformers.Gemma3TextConfig(**GEMMA3, num_labels=3,
                                           use_bidirectional_attention=bidirectional)
    reference = transformers.Gemma3TextForSequenceClassification(config)
    _widen_(reference, 0.1)
    reference.save_pretrained(tmp_path)
    _save_tokenizer(minilm_path, tmp_path)
    reference = transformers.Gemma3TextForSequenceClassification.from_pretrained(
        tmp_path, dtype=torch.float32).eval()
    llm = LLM(str(tmp_path), dtype="float32")
    assert llm.config.task == "classify"
    for out in llm.classify(TEXTS):
        with torch.no_grad():
            logits = reference(input_ids=torch.tensor([out.prompt_token_ids])).logits[0]
        assert torch.allclose(torch.tensor(out.outputs.probs), logits.softmax(-1), atol=1e-4)
