"""Embeddings match sentence-transformers / transformers on the same weights."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cenote import LLM, PoolingParams

TEXTS = [
    "Hello, my name is",
    "The capital of France is Paris.",
    "a",
    "Vector search finds the passages nearest to a query in embedding space, which makes "
    "retrieval-augmented generation work on documents a model has never seen.",
    "Rust's borrow checker rejects programs with data races at compile time.",
    "¿Dónde está la biblioteca? 東京は日本の首都です。 Emoji too: 🚀🔥",
    "short one",
    "The quick brown fox jumps over the lazy dog. " * 8,
]


def _embeddings(outputs) -> torch.Tensor:
    return torch.tensor([o.outputs.embedding for o in outputs])


def test_fp32_embeddings_match_sentence_transformers(minilm_fp32, st_minilm):
    ours = _embeddings(minilm_fp32.embed(TEXTS))
    ref = st_minilm.encode(TEXTS, convert_to_tensor=True)
    assert F.cosine_similarity(ours, ref).min().item() >= 0.9999


def test_default_dtype_embeddings_match_sentence_transformers(minilm_bf16, st_minilm):
    ours = _embeddings(minilm_bf16.embed(TEXTS))
    ref = st_minilm.encode(TEXTS, convert_to_tensor=True)
    assert F.cosine_similarity(ours, ref).min().item() >= 0.998


def test_prompt_token_ids_equal_the_tokenizers(minilm_fp32, st_minilm):
    outs = minilm_fp32.embed(TEXTS)
    for text, out in zip(TEXTS, outs, strict=True):
        assert out.prompt_token_ids == st_minilm.tokenizer(text)["input_ids"]


def test_an_embedding_is_a_list_made_from_its_tensor_when_read(minilm_fp32):
    from cenote.outputs import EmbeddingOutput

    (out,) = minilm_fp32.embed(TEXTS[:1])
    vector = out.outputs
    assert isinstance(vector.data, torch.Tensor) and vector.data.shape == (384,)
    assert isinstance(vector.embedding, list) and vector.embedding == vector.data.tolist()
    assert vector.embedding is vector.embedding  # made once
    assert vector.hidden_size == 384
    assert vector == EmbeddingOutput(vector.embedding)  # as vLLM's dataclass compares
    assert vector != EmbeddingOutput([0.0] * 384)
    with pytest.raises(ValueError, match="1-D"):
        EmbeddingOutput(torch.zeros(2, 3))


def test_embeddings_are_unit_length_by_default(minilm_fp32):
    norms = _embeddings(minilm_fp32.embed(TEXTS)).norm(dim=-1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)


def test_normalize_false_returns_the_raw_mean(minilm_fp32, minilm_path):
    outs = minilm_fp32.embed(TEXTS, pooling_params=PoolingParams(normalize=False))
    ours = _embeddings(outs)
    raw = torch.stack([h.mean(0) for h in _hidden_states(minilm_path, TEXTS)])
    assert not torch.allclose(ours.norm(dim=-1), torch.ones(len(TEXTS)), atol=1e-3)
    assert torch.allclose(ours, raw, atol=1e-4)


def _hidden_states(minilm_path, texts):
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(minilm_path)
    model = AutoModel.from_pretrained(minilm_path, dtype=torch.float32).eval()
    with torch.no_grad():
        return [model(**tok(t, return_tensors="pt")).last_hidden_state[0] for t in texts]


@pytest.mark.parametrize(
    "pooling_type, pool",
    [
        ("CLS", lambda h: h[0]),
        ("MEAN", lambda h: h.mean(0)),
        ("LAST", lambda h: h[-1]),
    ],
)
def test_override_pooler_config_selects_the_pooling(minilm_path, pooling_type, pool):
    llm = LLM(str(minilm_path), dtype="float32",
              override_pooler_config={"pooling_type": pooling_type, "normalize": False})
    ours = _embeddings(llm.embed(TEXTS[:4]))
    ref = torch.stack([pool(h) for h in _hidden_states(minilm_path, TEXTS[:4])])
    assert torch.allclose(ours, ref, atol=1e-4)


def test_all_pooling_returns_one_row_per_token(minilm_fp32, minilm_path):
    outs = minilm_fp32.encode(TEXTS[:3])
    refs = _hidden_states(minilm_path, TEXTS[:3])
    for out, ref in zip(outs, refs, strict=True):
        assert out.outputs.data.shape == (len(out.prompt_token_ids), 384)
        assert torch.allclose(out.outputs.data, ref, atol=1e-4)


def test_matryoshka_dimensions_truncate_then_normalize(minilm_path, minilm_fp32):
    llm = LLM(str(minilm_path), dtype="float32", hf_overrides={"matryoshka_dimensions": [128]})
    short = _embeddings(llm.embed(TEXTS, pooling_params=PoolingParams(dimensions=128)))
    full = _embeddings(minilm_fp32.embed(TEXTS, pooling_params=PoolingParams(normalize=False)))
    assert short.shape == (len(TEXTS), 128)
    assert torch.allclose(short, F.normalize(full[:, :128], dim=-1), atol=1e-5)


def test_is_matryoshka_allows_any_positive_dimension(minilm_path):
    llm = LLM(str(minilm_path), dtype="float32", hf_overrides={"is_matryoshka": True})
    (out,) = llm.embed("hello", pooling_params=PoolingParams(dimensions=7))
    assert len(out.outputs.embedding) == 7


def test_batch_equals_items_one_by_one(minilm_fp32):
    together = _embeddings(minilm_fp32.embed(TEXTS))
    alone = torch.cat([_embeddings(minilm_fp32.embed(t)) for t in TEXTS])
    assert torch.allclose(together, alone, atol=1e-5)


def test_shuffled_lengths_come_back_in_input_order(minilm_path):
    llm = LLM(str(minilm_path), dtype="float32", max_num_batched_tokens=256)
    texts = [("word " * n).strip() for n in (50, 3, 120, 1, 77, 9, 200, 30, 2, 64)]
    outs = llm.embed(texts)
    assert [len(o.prompt_token_ids) for o in outs] == [n + 2 for n in
                                                       (50, 3, 120, 1, 77, 9, 200, 30, 2, 64)]
    alone = [llm.embed(t)[0].outputs.embedding for t in texts]
    for out, ref in zip(outs, alone, strict=True):
        assert torch.allclose(torch.tensor(out.outputs.embedding), torch.tensor(ref), atol=1e-5)


def test_token_id_prompts_embed_like_their_text(minilm_fp32):
    (text_out,) = minilm_fp32.embed(TEXTS[1])
    (ids_out,) = minilm_fp32.embed({"prompt_token_ids": text_out.prompt_token_ids})
    assert torch.allclose(torch.tensor(ids_out.outputs.embedding),
                          torch.tensor(text_out.outputs.embedding), atol=1e-6)


def test_truncate_prompt_tokens_keeps_the_last_tokens(minilm_fp32):
    ids = minilm_fp32.embed("one two three four five six seven")[0].prompt_token_ids
    (out,) = minilm_fp32.embed({"prompt_token_ids": ids}, truncate_prompt_tokens=4)
    assert out.prompt_token_ids == ids[-4:]


def test_truncate_prompt_tokens_on_text_keeps_special_tokens(minilm_fp32):
    (out,) = minilm_fp32.embed("one two three four five six seven", truncate_prompt_tokens=5)
    tok = minilm_fp32.get_tokenizer()
    assert len(out.prompt_token_ids) == 5
    assert out.prompt_token_ids[0] == tok.cls_token_id
    assert out.prompt_token_ids[-1] == tok.sep_token_id
    assert tok.decode(out.prompt_token_ids[1:-1]) == "five six seven"


@pytest.mark.parametrize("keep", [1, 2])
def test_truncate_prompt_tokens_down_to_the_special_tokens(minilm_fp32, keep):
    # 2 keeps [CLS] [SEP] and no text. Below that the tokenizer truncates nothing at
    # all (it cannot drop the tokens it adds); the prompt still ends up `keep` long.
    tok = minilm_fp32.get_tokenizer()
    (out,) = minilm_fp32.embed("what is a cat", truncate_prompt_tokens=keep)
    assert out.prompt_token_ids == [tok.cls_token_id, tok.sep_token_id][-keep:]


def test_truncate_prompt_tokens_minus_one_means_max_model_len(minilm_fp32):
    (out,) = minilm_fp32.embed("word " * 600, truncate_prompt_tokens=-1)
    assert len(out.prompt_token_ids) == minilm_fp32.config.max_model_len == 256


def test_bi_encoder_score_is_cosine_of_embeddings(minilm_fp32):
    query, docs = "Where is Paris?", ["Paris is in France.", "Bananas are yellow."]
    scores = [o.outputs.score for o in minilm_fp32.score(query, docs)]
    q = torch.tensor(minilm_fp32.embed(query)[0].outputs.embedding)
    for doc, score in zip(docs, scores, strict=True):
        d = torch.tensor(minilm_fp32.embed(doc)[0].outputs.embedding)
        assert score == pytest.approx(F.cosine_similarity(q, d, dim=0).item(), abs=1e-5)
    assert scores[0] > scores[1]


def test_score_pairs_n_to_n_are_zipped(minilm_fp32):
    a, b = ["cats", "dogs"], ["cats", "dogs"]
    zipped = [o.outputs.score for o in minilm_fp32.score(a, b)]
    assert zipped == pytest.approx([1.0, 1.0], abs=1e-5)
    assert len(minilm_fp32.score("cats", ["cats", "dogs", "fish"])) == 3
