"""A prefix that several sequences of a batch share runs once on causal decoders
(cenote.models.prefix_sharing), and the vectors are those of each sequence run whole."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cenote import LLM
from cenote.arguments import build_parser
from cenote.machine import cpu_has_native_bf16
from cenote.models.batch import PackedBatch
from cenote.models.prefix_sharing import (
    MIN_SHARED_TOKENS,
    DistinctRows,
    attention,
    share_prefixes,
    token_rows,
)

_rng = random.Random(0)
INSTRUCTION = [_rng.randrange(1000, 20000) for _ in range(20)]
OTHER = [_rng.randrange(1000, 20000) for _ in range(12)]


def _ids(n: int) -> list[int]:
    return [_rng.randrange(1000, 20000) for _ in range(n)]


# Several queries behind one instruction, a query behind another, the instruction alone,
# a duplicate, one that shares fewer than MIN_SHARED_TOKENS tokens, short ones, and
# sequences that share a longer prefix than the instruction.
QUERY = _ids(6)
MIXED = [
    INSTRUCTION + _ids(5),
    INSTRUCTION + QUERY + _ids(3),
    _ids(4),
    INSTRUCTION + _ids(9),
    OTHER + _ids(7),
    INSTRUCTION,
    INSTRUCTION[:MIN_SHARED_TOKENS - 3] + _ids(10),
    OTHER + _ids(2),
    INSTRUCTION + QUERY + _ids(4),
    _ids(3),
    INSTRUCTION + _ids(5),
    INSTRUCTION[:MIN_SHARED_TOKENS] + _ids(2),
]
MIXED.append(list(MIXED[0]))  # a duplicate


def _prompts(token_lists):
    return [{"prompt_token_ids": ids} for ids in token_lists]


def test_the_plan_keeps_each_token_and_position_and_computes_each_shared_row_once():
    batch = PackedBatch.build(MIXED)
    distinct = share_prefixes(batch, MIXED)
    assert isinstance(distinct, DistinctRows)
    flat = np.concatenate([np.asarray(ids) for ids in MIXED])
    positions = np.concatenate([np.arange(len(ids)) for ids in MIXED])
    expand = distinct.expand.numpy()
    # Every token reads a distinct row of its own id and position ...
    assert (distinct.input_ids.numpy()[expand] == flat).all()
    assert (distinct.positions.numpy()[expand] == positions).all()
    # ... and each distinct row stands for the tokens it was read from.
    assert (expand[distinct.sources.numpy()] == np.arange(distinct.num_tokens)).all()
    # Distinct rows = the nodes of the token trie, prefixes under MIN_SHARED_TOKENS apart.
    nodes = {tuple(ids[:j + 1]) for ids in MIXED for j in range(len(ids))}
    short = {tuple(ids[:j + 1]) for ids in (MIXED[6], MIXED[11]) for j in range(len(ids))}
    merged = {p for p in short if len(p) <= MIN_SHARED_TOKENS - 3}  # MIXED[6] ran alone
    assert distinct.num_tokens == len(nodes) + len(merged)
    assert distinct.num_tokens < batch.num_tokens - 5 * len(INSTRUCTION)


def test_token_ids_in_tuples_share_with_lists():
    token_lists = [tuple(INSTRUCTION + _ids(4)), INSTRUCTION + _ids(3), INSTRUCTION + _ids(5)]
    distinct = share_prefixes(PackedBatch.build(token_lists), token_lists)
    assert distinct.num_tokens == len(INSTRUCTION) + 12


def test_pooled_rows_bucketed_rows_and_filler():
    batch = PackedBatch.build(MIXED, bucket=True, pooled="last")
    distinct = share_prefixes(batch, MIXED, bucket=True)
    assert isinstance(distinct, DistinctRows)
    assert distinct.num_rows % 16 == 0 and distinct.num_rows >= distinct.num_tokens
    assert len(distinct.expand) == batch.num_rows
    assert len(distinct.pooled_rows) == len(batch.pooled_rows)
    pooled = distinct.pooled_rows[:batch.num_seqs]
    assert torch.equal(distinct.input_ids[pooled], torch.tensor([ids[-1] for ids in MIXED]))
    assert torch.equal(distinct.positions[pooled], torch.tensor([len(ids) - 1 for ids in MIXED]))


@pytest.mark.parametrize("token_lists", [
    [_ids(12), _ids(12), _ids(12)],  # nothing shared
    [INSTRUCTION[:MIN_SHARED_TOKENS - 1] + _ids(3), INSTRUCTION[:MIN_SHARED_TOKENS - 1]],
    [INSTRUCTION + _ids(200), INSTRUCTION + _ids(200)],  # 20 of 440 rows: not worth it
])
def test_batches_that_share_little_run_as_they_are(token_lists):
    batch = PackedBatch.build(token_lists)
    assert share_prefixes(batch, token_lists) is batch
    hidden = torch.randn(batch.num_rows, 4)
    assert token_rows(hidden, batch) == (hidden, batch)


def test_only_causal_attention_runs_on_distinct_rows():
    distinct = share_prefixes(PackedBatch.build(MIXED), MIXED)
    q = torch.randn(distinct.num_rows, 2, 16)
    with pytest.raises(RuntimeError, match="causal"):
        attention(q, q, q, distinct, causal=False)


@pytest.fixture(scope="module", params=["qwen3", "llama"])
def decoder(request, tiny_decoder):
    family = request.param
    arch = {"qwen3": "Qwen3Model", "llama": "LlamaModel"}[family]
    return LLM(str(tiny_decoder(family, arch)), dtype="float32")


def _both_ways(llm, run):
    """``run(llm)`` with sharing and without, and whether the model saw DistinctRows."""
    runner = llm.engine.runner
    assert runner.shares_prefixes
    seen = []
    hook = runner.model.register_forward_pre_hook(
        lambda _, args: seen.append(isinstance(args[0], DistinctRows)))
    try:
        shared = run(llm)
        runner.shares_prefixes = False
        plain = run(llm)
    finally:
        runner.shares_prefixes = True
        hook.remove()
    assert any(seen) and not seen[-1]  # shared the first time, not the second
    return shared, plain


def _embed_both_ways(llm, prompts):
    """(with sharing, without) as [N, dim] tensors."""
    return _both_ways(llm, lambda m: torch.tensor([o.outputs.embedding
                                                   for o in m.embed(prompts)]))


def _assert_same(a: torch.Tensor, b: torch.Tensor, atol: float = 1e-5) -> None:
    assert a.shape == b.shape
    assert F.cosine_similarity(a.float(), b.float(), dim=-1).min() >= 0.99999
    assert (a - b).abs().max() <= atol


def test_embeddings_with_shared_prefixes_equal_each_sequence_run_whole(decoder):
    shared, plain = _embed_both_ways(decoder, _prompts(MIXED))
    _assert_same(shared, plain)


def test_every_tokens_rows_equal_each_sequence_run_whole(decoder):
    outs, plain = _both_ways(decoder, lambda m: [
        o.outputs.data for o in m.encode(_prompts(MIXED), pooling_task="token_embed")])
    for ours, ref, ids in zip(outs, plain, MIXED, strict=True):
        assert ours.shape[0] == len(ids)
        _assert_same(ours, ref)


def test_a_mean_pooling_decoder_reads_the_shared_prefixes_rows(tiny_decoder):
    path = tiny_decoder("qwen3", "Qwen3Model")
    llm = LLM(str(path), dtype="float32", override_pooler_config={"pooling_type": "MEAN"})
    shared, plain = _embed_both_ways(llm, _prompts(MIXED))
    _assert_same(shared, plain)


def test_sliding_window_layers_shorter_than_the_prefix(tiny_decoder):
    llm = LLM(str(tiny_decoder("mistral", "MistralModel")), dtype="float32")  # window 12
    shared, plain = _embed_both_ways(llm, _prompts(MIXED))
    _assert_same(shared, plain)


def test_causal_gemma3_shares_prefixes_too(minilm_path, tmp_path):
    import transformers

    from tests.factories import _save_tokenizer, _widen_

    torch.manual_seed(0)
    config = transformers.Gemma3TextConfig(
        vocab_size=30522, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16,
        layer_types=["sliding_attention", "full_attention"], sliding_window=4,
        max_position_embeddings=256, use_bidirectional_attention=False)
    model = transformers.Gemma3TextModel(config)
    _widen_(model, 0.1)
    model.save_pretrained(tmp_path)
    _save_tokenizer(minilm_path, tmp_path)
    shared, plain = _embed_both_ways(LLM(str(tmp_path), dtype="float32"), _prompts(MIXED))
    _assert_same(shared, plain)


def test_a_classifier_scores_the_same_with_shared_prefixes(tiny_decoder):
    llm = LLM(str(tiny_decoder("qwen3", "Qwen3ForSequenceClassification", num_labels=3)),
              dtype="float32")
    probs, plain = _both_ways(llm, lambda m: torch.tensor(
        [o.outputs.probs for o in m.classify(_prompts(MIXED))]))
    _assert_same(probs, plain)


def test_sdpa_attention_path(decoder, monkeypatch):
    monkeypatch.setattr("cenote.models.layers.native_attention", lambda: None)
    shared, plain = _embed_both_ways(decoder, _prompts(MIXED))
    _assert_same(shared, plain)


def test_bucketed_rows_of_int8_matmuls(tiny_decoder):
    """int8 layers give the matmuls bucketed row counts: filler rows on both batches."""
    from cenote.models.quantization import check_int8_support

    try:
        check_int8_support()
    except ValueError as exc:
        pytest.skip(f"no oneDNN int8 matmul here: {exc}")
    path = tiny_decoder("qwen3", "Qwen3Model", hidden_size=128, num_attention_heads=4,
                        num_key_value_heads=2, head_dim=64)
    llm = LLM(str(path), quantization="int8")
    assert llm.engine.runner.bucket_rows
    shared, plain = _embed_both_ways(llm, _prompts(MIXED))
    _assert_same(shared, plain)


@pytest.mark.skipif(not cpu_has_native_bf16(), reason="this CPU has no native bf16")
def test_bf16_with_shared_prefixes_stays_with_each_sequence_run_whole(tiny_decoder):
    # head_dim 64: the native RMSNorm and rotary kernels run too.
    path = tiny_decoder("qwen3", "Qwen3Model", hidden_size=128, num_attention_heads=4,
                        num_key_value_heads=2, head_dim=64)
    llm = LLM(str(path), dtype="bfloat16")
    shared, plain = _embed_both_ways(llm, _prompts(MIXED))
    assert F.cosine_similarity(shared, plain, dim=-1).min() >= 0.9999


def test_vllms_cache_config_says_whether_prefixes_are_shared(decoder):
    assert decoder.llm_engine.vllm_config.cache_config.enable_prefix_caching is True


def test_bidirectional_decoders_never_share(tiny_decoder):
    path = tiny_decoder("qwen3", "Qwen3Model", is_causal=False)
    llm = LLM(str(path), dtype="float32")
    assert not llm.engine.runner.shares_prefixes
    assert llm.llm_engine.vllm_config.cache_config.enable_prefix_caching is False


def test_vllms_spellings_turn_it_off(tiny_decoder):
    path = tiny_decoder("qwen3", "Qwen3Model")
    llm = LLM(str(path), dtype="float32", enable_prefix_caching=False)
    assert not llm.engine.runner.shares_prefixes
    assert llm.llm_engine.vllm_config.cache_config.enable_prefix_caching is False
    parse = build_parser().parse_args
    assert parse(["serve", "m"]).enable_prefix_caching is True
    assert parse(["serve", "m", "--enable-prefix-caching"]).enable_prefix_caching is True
    assert parse(["serve", "m", "--no-enable-prefix-caching"]).enable_prefix_caching is False
