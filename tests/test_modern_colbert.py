"""GTE-ModernColBERT's layout (lightonai/GTE-ModernColBERT-v1: a ModernBERT body and a
PyLate ``Dense`` projection in ``1_Dense``) runs on the native ModernBERT as token_embed
with late-interaction scoring.

The reference is Sentence-Transformers' ``MultiVectorEncoder`` (``encode_query`` /
``encode_document``: prefix marker, [MASK] query expansion not attended, punctuation
left out of documents, Dense, Normalize), on a tiny random ModernBERT; the same weights
laid out as PyLate saves them (``pylate.models.Dense.Dense``, ``query_prefix`` /
``document_prefix`` in config_sentence_transformers.json, as GTE-ModernColBERT-v1 ships)
give the same vectors, which is PyLate's math (PyLate itself is not installed).
"""

from __future__ import annotations

import json
import shutil
import string

import pytest
import torch

from cenote import LLM, PoolingParams
from cenote.models.modernbert import ModernBertModel
from tests.factories import colbert_encoder
from tests.test_modernbert import build_tiny_modernbert

QUERIES = ["what is the capital of france?", "how do glaciers carve valleys"]
DOCUMENTS = ["Paris is the capital of France.", "Glaciers carve valleys, slowly! " * 3,
             "A recipe for apple pie."]


@pytest.fixture(scope="module")
def folders(minilm_path, tmp_path_factory):
    """The MultiVectorEncoder folder (``st``), the same weights as PyLate saves them
    (``pylate``), and the MultiVectorEncoder loaded from the first (``reference``)."""
    from sentence_transformers import MultiVectorEncoder

    body_path = build_tiny_modernbert(minilm_path, tmp_path_factory.mktemp("modern_body"),
                                      "ModernBertModel", seed=5)
    model = colbert_encoder(body_path, 64, 24, seed=6)
    st = tmp_path_factory.mktemp("modern_colbert_st")
    model.save(str(st))
    return {"st": st, "pylate": _as_pylate(st, tmp_path_factory.mktemp("modern_colbert")),
            "reference": MultiVectorEncoder(str(st), device="cpu")}


def _as_pylate(st, target):
    """GTE-ModernColBERT-v1's files: Transformer + ``pylate.models.Dense.Dense``, PyLate's
    options in config_sentence_transformers.json."""
    shutil.copytree(st, target, dirs_exist_ok=True)
    dense_dir = next(p for p in target.iterdir() if p.is_dir() and "Dense" in p.name)
    if dense_dir.name != "1_Dense":
        dense_dir.rename(target / "1_Dense")
    for extra in target.iterdir():
        if extra.is_dir() and extra.name != "1_Dense":
            shutil.rmtree(extra)
    (target / "1_Dense" / "config.json").write_text(json.dumps({
        "in_features": 64, "out_features": 24, "bias": False,
        "activation_function": "torch.nn.modules.linear.Identity", "use_residual": False}))
    (target / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Dense", "type": "pylate.models.Dense.Dense"}]))
    (target / "sentence_bert_config.json").write_text(json.dumps(
        {"max_seq_length": 179, "do_lower_case": False}))
    (target / "config_sentence_transformers.json").write_text(json.dumps({
        "prompts": {}, "default_prompt_name": None, "similarity_fn_name": "MaxSim",
        "query_prefix": "[unused0] ", "document_prefix": "[unused1] ", "query_length": 32,
        "document_length": 180, "attend_to_expansion_tokens": False,
        "skiplist_words": list(string.punctuation), "do_query_expansion": True}))
    return target


def _vectors(llm: LLM, texts, mode: str) -> list[torch.Tensor]:
    outs = llm.encode(texts, PoolingParams(embedding_mode=mode), pooling_task="token_embed")
    return [o.outputs.data.float() for o in outs]


@pytest.mark.parametrize("layout", ["st", "pylate"])
@pytest.mark.parametrize("dtype, min_cosine", [("float32", 0.9999), ("auto", 0.998)])
def test_modern_colbert_token_vectors_match_multi_vector_encoder(folders, layout, dtype,
                                                                 min_cosine):
    llm = LLM(str(folders[layout]), dtype=dtype)
    assert isinstance(llm.engine.runner.model, ModernBertModel)
    st = folders["reference"]
    for mode, texts, reference in (("query", QUERIES, st.encode_query(QUERIES)),
                                   ("document", DOCUMENTS, st.encode_document(DOCUMENTS))):
        mine = _vectors(llm, texts, mode)
        for got, expected in zip(mine, reference, strict=True):
            expected = torch.as_tensor(expected).float()
            assert got.shape == expected.shape, mode
            cosine = torch.nn.functional.cosine_similarity(got, expected, dim=-1)
            assert cosine.min() >= min_cosine, (mode, cosine.min())
    assert all(len(v) == 32 for v in _vectors(llm, QUERIES, "query"))  # expanded


def test_modern_colbert_scores_by_maxsim(folders):
    llm = LLM(str(folders["pylate"]), dtype="float32")
    st = folders["reference"]
    queries, documents = st.encode_query(QUERIES[:1]), st.encode_document(DOCUMENTS)
    q = torch.as_tensor(queries[0]).float()
    expected = [float((q @ torch.as_tensor(d).float().T).max(dim=1).values.sum())
                for d in documents]
    scores = [o.outputs.score for o in llm.score(QUERIES[0], DOCUMENTS)]
    assert scores == pytest.approx(expected, abs=1e-3)
