"""A pooler that keeps one token per sequence (CLS, LAST) lets the last layer run for
that token only: same results as the full last layer, chosen only for those poolers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cenote import LLM
from cenote.models.batch import PackedBatch
from cenote.models.kernels import native_attention

TEXTS = ["hello world", "a somewhat longer sentence about search engines and ranking", "x",
         "the quick brown fox jumps over the lazy dog " * 3]


def pooled_modes(llm: LLM, run) -> list[str | None]:
    """``batch.pooled`` of every batch the model ran during ``run()``."""
    model, seen = llm.engine.runner.model, []
    forward = model.forward

    def spy(batch):
        seen.append(batch.pooled)
        return forward(batch)

    model.forward = spy
    try:
        run()
    finally:
        del model.forward
    return seen


def with_and_without_pruning(llm: LLM, run):
    runner = llm.engine.runner
    assert runner.prunes_last_layer
    pruned = run()
    runner.prunes_last_layer = False
    try:
        full = run()
    finally:
        runner.prunes_last_layer = True
    return pruned, full


def test_pruned_only_for_single_token_poolers(minilm_path, cross_encoder_path, tiny_decoder):
    mean = LLM(str(minilm_path))
    assert pooled_modes(mean, lambda: mean.embed(TEXTS, use_tqdm=False)) == [None]
    cls = LLM(str(cross_encoder_path))
    assert pooled_modes(cls, lambda: cls.score("q", TEXTS, use_tqdm=False)) == ["first"]
    decoder = LLM(str(tiny_decoder("qwen3", "Qwen3Model")))
    assert pooled_modes(decoder, lambda: decoder.embed(TEXTS, use_tqdm=False)) == ["last"]
    # Per-token output needs every row.
    assert pooled_modes(decoder, lambda: decoder.encode(TEXTS, use_tqdm=False)) == [None]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_cross_encoder_scores_unchanged(cross_encoder_path, dtype):
    llm = LLM(str(cross_encoder_path), dtype=dtype)
    pruned, full = with_and_without_pruning(
        llm, lambda: torch.tensor([o.outputs.score for o in llm.score("a query", TEXTS,
                                                                       use_tqdm=False)]))
    atol = 1e-5 if dtype == "float32" else 2e-2
    torch.testing.assert_close(pruned, full, rtol=0, atol=atol)


@pytest.mark.skipif(native_attention() is None, reason="needs the native attention kernel")
def test_last_layer_projects_queries_for_the_pooled_rows_only(cross_encoder_path, monkeypatch):
    monkeypatch.setenv("CENOTE_NATIVE_KERNELS", "1")  # the kernel, whatever a timing says
    llm = LLM(str(cross_encoder_path))
    last = llm.engine.runner.model.layers[-1]
    query_rows, project_queries = [], last.q_only.forward

    def spy(x, *args):
        query_rows.append(x.shape[0])
        return project_queries(x, *args)

    monkeypatch.setattr(last.q_only, "forward", spy)
    monkeypatch.setattr(last.qkv, "forward", lambda *args: pytest.fail("fused q/k/v projected"))
    outs = llm.score("a query", TEXTS, use_tqdm=False)
    tokens = sum(len(o.prompt_token_ids) for o in outs)
    assert len(query_rows) == 1 and len(TEXTS) <= query_rows[0] < tokens


@pytest.mark.parametrize("family,dtype", [("qwen3", "float32"), ("qwen3", "bfloat16"),
                                          ("mistral", "bfloat16"), ("llama", "float32")])
def test_last_token_embeddings_unchanged(tiny_decoder, family, dtype):
    from tests.factories import DECODER_PREFIXES

    llm = LLM(str(tiny_decoder(family, DECODER_PREFIXES[family] + "Model")), dtype=dtype)
    pruned, full = with_and_without_pruning(
        llm, lambda: torch.tensor([o.outputs.embedding for o in llm.embed(TEXTS,
                                                                          use_tqdm=False)]))
    if dtype == "float32":
        torch.testing.assert_close(pruned, full, rtol=0, atol=1e-5)
    else:
        assert F.cosine_similarity(pruned, full).min() > 0.999


def test_pooled_rows_are_bucketed_with_filler():
    batch = PackedBatch.build([[1] * 3, [1] * 5, [1]], bucket=True, pooled="last")
    assert batch.pooled_rows.tolist() == [2, 7, 8] + [0] * 13
    batch = PackedBatch.build([[1] * 3, [1] * 5, [1]], pooled="first")
    assert batch.pooled_rows.tolist() == [0, 3, 8]
    with pytest.raises(ValueError, match="pooled"):
        PackedBatch.build([[1]], pooled="middle")
