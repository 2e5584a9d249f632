"""Retrieval beyond one vector, offline: token_embed / token_classify, ColBERT late
interaction (MaxSim), SPLADE and BGE-M3 sparse vectors; parity with
sentence-transformers 6 (SparseEncoder, MultiVectorEncoder) and, for BGE-M3, with a
hand-written reference of FlagEmbedding's three outputs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cenote import LLM, PoolingParams

QUERIES = ["what is the capital of france?", "who wrote hamlet"]
DOCUMENTS = ["Paris is the capital of France!",
             "Hamlet, a tragedy, was written by William Shakespeare (c. 1600). " * 30]
RIGHT = PoolingParams(truncation_side="right")  # cut long inputs as the libraries do


# ---- token_embed / token_classify ---------------------------------------------


def test_token_embed_gives_one_normalised_vector_per_token(minilm_fp32):
    (out,) = minilm_fp32.encode("hello world", pooling_task="token_embed")
    (raw,) = minilm_fp32.encode("hello world")  # encode: the rows as they are
    assert out.outputs.data.shape == raw.outputs.data.shape
    assert torch.allclose(out.outputs.data, F.normalize(raw.outputs.data, dim=-1), atol=1e-6)


def test_token_classify_gives_the_reward_heads_output_per_token(qwen2_reward_model):
    llm = LLM(str(qwen2_reward_model(num_labels=1)), dtype="float32")
    (per_token,) = llm.encode("a step", pooling_task="token_classify")
    (reward,) = llm.reward("a step")
    assert per_token.outputs.data.shape == (len(per_token.prompt_token_ids), 1)
    assert torch.allclose(per_token.outputs.data, reward.outputs.data)


def test_a_token_task_the_model_cannot_serve_names_the_tasks_it_can(minilm_fp32):
    with pytest.raises(ValueError, match=r"Token Classification API is not supported.*"
                                         r"encode, embed, token_embed"):
        minilm_fp32.encode("hello", pooling_task="token_classify")
    with pytest.raises(ValueError, match=r"Sparse Embedding API is not supported.*"
                                         r"\(embed_sparse\).*no output"):
        minilm_fp32.embed_sparse("hello")


def test_dimensions_on_a_token_task_is_refused(minilm_fp32):
    with pytest.raises(ValueError, match="dimensions is not a valid parameter for the "
                                         "'token_embed' pooling task"):
        minilm_fp32.encode("hello", PoolingParams(dimensions=8), pooling_task="token_embed")


# ---- ColBERT -------------------------------------------------------------------


@pytest.fixture(scope="module")
def colbert(colbert_path):
    from sentence_transformers import MultiVectorEncoder

    return LLM(str(colbert_path), dtype="float32"), MultiVectorEncoder(str(colbert_path),
                                                                      device="cpu")


def test_colbert_scores_by_maxsim_as_sentence_transformers(colbert):
    llm, st = colbert
    reference = st.similarity(st.encode_query(QUERIES), st.encode_document(DOCUMENTS))
    for i, query in enumerate(QUERIES):
        scores = [o.outputs.score for o in llm.score(query, DOCUMENTS)]
        assert torch.allclose(torch.tensor(scores), reference[i].float(), atol=1e-4)


def test_colbert_token_embed_is_sentence_transformers_encode(colbert):
    llm, st = colbert
    outs = llm.encode(DOCUMENTS, RIGHT, truncate_prompt_tokens=-1, pooling_task="token_embed")
    for out, reference in zip(outs, st.encode(DOCUMENTS), strict=True):
        assert out.outputs.data.shape == reference.shape  # punctuation left out
        assert torch.allclose(out.outputs.data, reference, atol=1e-5)


def test_colbert_has_no_single_vector(colbert):
    llm, _ = colbert
    with pytest.raises(ValueError, match=r"Embedding API is not supported.*\(embed\).*"
                                         r"encode, token_embed"):
        llm.embed("hello")


def test_a_colbert_query_over_the_query_length_is_cut_not_an_error(colbert):
    llm, st = colbert
    long_query = "capital " * 100
    (score,) = llm.score(long_query, DOCUMENTS[0])
    reference = st.similarity(st.encode_query([long_query]), st.encode_document(DOCUMENTS[:1]))
    assert abs(score.outputs.score - reference.item()) < 1e-4


def test_a_document_with_nothing_to_match_ranks_last(colbert):
    llm, _ = colbert
    scores = [o.outputs.score for o in llm.score(QUERIES[0], ["!!!", DOCUMENTS[0]])]
    assert scores[0] < scores[1]


# ---- SPLADE ------------------------------------------------------------------


def dense_of(output, size: int) -> torch.Tensor:
    vector = torch.zeros(size)
    vector[output.outputs.indices] = torch.tensor(output.outputs.values)
    return vector


def test_splade_sparse_vectors_are_sentence_transformers_sparse_encoder(splade_path):
    from sentence_transformers import SparseEncoder

    st = SparseEncoder(str(splade_path), device="cpu")
    texts = [QUERIES[0], DOCUMENTS[1]]
    reference = st.encode(texts).coalesce().to_dense()
    llm = LLM(str(splade_path), dtype="float32")
    outs = llm.embed_sparse(texts, pooling_params=RIGHT, truncate_prompt_tokens=-1)
    for out, ref in zip(outs, reference, strict=True):
        assert out.outputs.indices == sorted(out.outputs.indices)
        assert len(out.outputs.indices) == 64  # max_active_dims
        mine = dense_of(out, ref.shape[0])
        assert torch.equal(mine != 0, ref != 0)
        assert torch.allclose(mine, ref, atol=1e-4)


def test_splade_scores_by_the_dot_product_of_sparse_vectors(splade_path):
    from sentence_transformers import SparseEncoder

    st = SparseEncoder(str(splade_path), device="cpu")
    llm = LLM(str(splade_path), dtype="float32")
    (score,) = llm.score(QUERIES[0], DOCUMENTS[0])
    reference = st.similarity(st.encode([QUERIES[0]]), st.encode([DOCUMENTS[0]]))
    assert abs(score.outputs.score - reference.item()) < 1e-3


def test_splade_has_no_dense_vector(splade_path):
    llm = LLM(str(splade_path), dtype="float32")
    with pytest.raises(ValueError, match=r"encode, embed_sparse"):
        llm.embed("hello")


# ---- BGE-M3 ------------------------------------------------------------------


def m3_reference(path, text: str):
    """FlagEmbedding's three outputs: CLS dense (normalised); relu(sparse_linear) per token,
    the largest per id, [CLS]/EOS/pad/unk left out; colbert_linear on every row but [CLS],
    normalised."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path)
    colbert = torch.load(path / "colbert_linear.pt")
    sparse = torch.load(path / "sparse_linear.pt")
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        hidden = model(input_ids=ids).last_hidden_state[0]
    skip = {i for i in (tokenizer.cls_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id,
                        tokenizer.unk_token_id) if i is not None}
    weights = torch.relu(hidden @ sparse["weight"].T + sparse["bias"]).squeeze(-1)
    lexical: dict[int, float] = {}
    for token, weight in zip(ids[0].tolist(), weights.tolist(), strict=True):
        if token not in skip and weight > 0:
            lexical[token] = max(lexical.get(token, 0.0), weight)
    vectors = F.normalize(hidden[1:] @ colbert["weight"].T + colbert["bias"], dim=-1)
    return F.normalize(hidden[0], dim=-1), lexical, vectors


@pytest.fixture(scope="module")
def bge_m3(bge_m3_path):
    return LLM(str(bge_m3_path), dtype="float32")


def test_bge_m3_gives_dense_sparse_and_multi_vector_outputs(bge_m3, bge_m3_path):
    texts = [QUERIES[0], "Paris is the capital and largest city of France, the the the."]
    dense, sparse = bge_m3.embed(texts), bge_m3.embed_sparse(texts)
    multi = bge_m3.encode(texts, pooling_task="token_embed")
    for i, text in enumerate(texts):
        ref_dense, ref_lexical, ref_vectors = m3_reference(bge_m3_path, text)
        assert F.cosine_similarity(torch.tensor(dense[i].outputs.embedding), ref_dense,
                                   dim=0) >= 0.9999
        mine = dict(zip(sparse[i].outputs.indices, sparse[i].outputs.values, strict=True))
        assert set(mine) == set(ref_lexical)
        assert max(abs(mine[k] - ref_lexical[k]) for k in mine) < 1e-4
        assert multi[i].outputs.data.shape == ref_vectors.shape
        assert torch.allclose(multi[i].outputs.data, ref_vectors, atol=1e-5)


def test_bge_m3_scores_by_its_colbert_score(bge_m3, bge_m3_path):
    _, _, query = m3_reference(bge_m3_path, QUERIES[0])
    _, _, document = m3_reference(bge_m3_path, DOCUMENTS[0])
    expected = (query @ document.T).amax(dim=1).mean()
    (score,) = bge_m3.score(QUERIES[0], DOCUMENTS[0])
    assert abs(score.outputs.score - expected.item()) < 1e-4


def test_bge_m3_token_classify_gives_its_lexical_weight_per_token(bge_m3, bge_m3_path):
    (out,) = bge_m3.encode(QUERIES[0], pooling_task="token_classify")
    # One weight per token, flat (vLLM's); this stand-in's config names no BOS/EOS ids,
    # so no row is dropped (tests/test_vllm_034_token_classify.py drops them).
    assert out.outputs.data.shape == (len(out.prompt_token_ids),)
    assert bool((out.outputs.data >= 0).all())


def test_a_sparse_batch_equals_its_items_one_by_one(bge_m3):
    texts = [QUERIES[0], QUERIES[1], DOCUMENTS[0]]
    together = bge_m3.embed_sparse(texts)
    for text, out in zip(texts, together, strict=True):
        (alone,) = bge_m3.embed_sparse(text)
        assert alone.outputs.indices == out.outputs.indices
        assert torch.allclose(torch.tensor(alone.outputs.values), torch.tensor(out.outputs.values),
                              atol=1e-5)


def test_a_sentence_transformers_body_saved_under_a_masked_lm_architecture_loads(
        minilm_path, tmp_path):
    """Sentence-Transformers keeps the base model's architecture name (…ForMaskedLM) but
    saves only the body: without SPLADE modules no masked-LM head is wanted."""
    import json
    import shutil

    folder = tmp_path / "body"
    shutil.copytree(minilm_path, folder)
    config = json.loads((folder / "config.json").read_text())
    config["architectures"] = ["BertForMaskedLM"]
    (folder / "config.json").write_text(json.dumps(config))
    (out,) = LLM(str(folder), dtype="float32").embed("hello")
    assert len(out.outputs.embedding) == 384
