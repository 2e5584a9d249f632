"""SPLADE on the native ModernBERT: a Sentence-Transformers ``SparseEncoder`` folder whose
body is a ``ModernBertForMaskedLM`` (its ``head`` and the ``decoder`` tied to the
embeddings) gives Sentence-Transformers' sparse vectors (max over tokens of
log(1 + relu) of the masked-LM logits) on the same tiny random weights."""

from __future__ import annotations

import pytest
import torch

from cenote import LLM, PoolingParams
from cenote.models.modernbert import ModernBertModel
from tests.test_modernbert import build_tiny_modernbert

TEXTS = ["what is the capital of france?",
         "Glaciers carve valleys, slowly, over thousands of years " * 3]


@pytest.fixture(scope="module")
def splade(minilm_path, tmp_path_factory):
    from sentence_transformers import SparseEncoder
    from sentence_transformers.sparse_encoder.modules import SpladePooling, Transformer

    body = build_tiny_modernbert(minilm_path, tmp_path_factory.mktemp("mlm"),
                                 "ModernBertForMaskedLM", seed=8)
    model = SparseEncoder(modules=[Transformer(str(body), transformer_task="fill-mask",
                                               max_seq_length=256),
                                   SpladePooling(pooling_strategy="max",
                                                 activation_function="relu")],
                          device="cpu")
    folder = tmp_path_factory.mktemp("modern_splade")
    model.save(str(folder))
    return folder, SparseEncoder(str(folder), device="cpu")


@pytest.mark.parametrize("dtype, atol", [("float32", 1e-4), ("auto", 0.05)])
def test_modernbert_splade_is_sentence_transformers_sparse_encoder(splade, dtype, atol):
    folder, st = splade
    reference = st.encode(TEXTS).coalesce().to_dense()
    llm = LLM(str(folder), dtype=dtype)
    assert isinstance(llm.engine.runner.model, ModernBertModel)
    outs = llm.embed_sparse(TEXTS, pooling_params=PoolingParams(truncation_side="right"))
    for out, ref in zip(outs, reference, strict=True):
        mine = torch.zeros_like(ref)
        mine[out.outputs.indices] = torch.tensor(out.outputs.values)
        if dtype == "float32":
            assert torch.equal(mine != 0, ref != 0)
        assert torch.allclose(mine, ref, atol=atol, rtol=0.02)
