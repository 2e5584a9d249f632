"""The CUDA path: runs only where a GPU is present (CI has none and skips)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cenote import LLM

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

TEXTS = ["GPU embeddings should match the CPU.", "short", "a longer sentence " * 12]


@requires_cuda
def test_cuda_embeddings_match_cpu_fp32(minilm_path, minilm_fp32):
    llm = LLM(str(minilm_path), device="cuda")
    assert llm.config.dtype in (torch.float16, torch.bfloat16)
    ours = torch.tensor([o.outputs.embedding for o in llm.embed(TEXTS)])
    ref = torch.tensor([o.outputs.embedding for o in minilm_fp32.embed(TEXTS)])
    assert F.cosine_similarity(ours, ref).min() >= 0.998


@requires_cuda
def test_cuda_cross_encoder_scores_match_cpu_fp32(cross_encoder_path):
    gpu = LLM(str(cross_encoder_path), device="cuda", dtype="float32")
    cpu = LLM(str(cross_encoder_path), dtype="float32")
    docs = ["Paris is the capital of France.", "Bananas are yellow."]
    ours = [o.outputs.score for o in gpu.score("capital of France?", docs)]
    ref = [o.outputs.score for o in cpu.score("capital of France?", docs)]
    assert ours == pytest.approx(ref, abs=1e-4)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_asking_for_cuda_without_a_gpu_is_a_clear_error(minilm_path):
    with pytest.raises(ValueError, match="CUDA is not available"):
        LLM(str(minilm_path), device="cuda")


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("causal,window,kv_heads", [
    (False, None, 4), (True, None, 4), (True, None, 2), (True, 5, 2)])
def test_flash_varlen_matches_padded_sdpa(dtype, causal, window, kv_heads, monkeypatch):
    from cenote.models import layers

    lens = [1, 7, 19, 33, 4]
    batch = layers.PackedBatch.build([[1] * n for n in lens], device="cuda", pooled="last")
    tokens, heads, dim = sum(lens), 4, 32
    torch.manual_seed(0)
    q = torch.randn(tokens, heads, dim, device="cuda", dtype=dtype)
    k = torch.randn(tokens, kv_heads, dim, device="cuda", dtype=dtype)
    v = torch.randn(tokens, kv_heads, dim, device="cuda", dtype=dtype)
    assert layers.flash_varlen_supported(q, batch)
    flash = layers.packed_attention(q, k, v, batch, causal, window)
    flash_pooled = layers.packed_attention(q, k, v, batch, causal, window, pooled_only=True)
    monkeypatch.setattr(layers, "_flash_varlen_failed", True)  # the padded SDPA path
    padded = layers.packed_attention(q, k, v, batch, causal, window)
    assert not layers.flash_varlen_supported(q, batch)
    torch.testing.assert_close(flash.float(), padded.float(), atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(flash_pooled, flash[batch.pooled_rows])


@requires_cuda
def test_flash_varlen_reads_fused_qkv_rows(monkeypatch):
    from cenote.models import layers

    lens = [3, 11, 6]
    batch = layers.PackedBatch.build([[1] * n for n in lens], device="cuda")
    qkv = torch.randn(sum(lens), (4 + 2 * 2) * 16, device="cuda", dtype=torch.float16)
    flash = layers.packed_qkv_attention(qkv, batch, 4, 2, causal=True)
    monkeypatch.setattr(layers, "_flash_varlen_failed", True)
    padded = layers.packed_qkv_attention(qkv, batch, 4, 2, causal=True)
    torch.testing.assert_close(flash.float(), padded.float(), atol=2e-3, rtol=2e-3)


@requires_cuda
@pytest.mark.parametrize("model_type,architecture", [
    ("qwen3", "Qwen3Model"), ("mistral", "MistralModel")])
def test_cuda_decoder_embeddings_match_cpu_fp32(tiny_decoder, model_type, architecture):
    path = str(tiny_decoder(model_type, architecture))
    texts = TEXTS + ["one two three four five six seven eight nine ten eleven twelve " * 2]
    gpu = torch.tensor([o.outputs.embedding
                        for o in LLM(path, device="cuda", dtype="bfloat16").embed(texts)])
    cpu = torch.tensor([o.outputs.embedding
                        for o in LLM(path, dtype="float32").embed(texts)])
    assert F.cosine_similarity(gpu, cpu).min() >= 0.995


@requires_cuda
def test_cuda_token_embeddings_come_back_whole(minilm_path, minilm_fp32):
    gpu = LLM(str(minilm_path), device="cuda").encode(TEXTS, use_tqdm=False)
    cpu = minilm_fp32.encode(TEXTS, use_tqdm=False)
    for ours, ref in zip(gpu, cpu, strict=True):
        assert ours.outputs.data.device.type == "cpu"
        assert ours.outputs.data.shape == ref.outputs.data.shape
        assert F.cosine_similarity(ours.outputs.data.float(), ref.outputs.data).min() >= 0.99


def test_a_refusing_flash_kernel_falls_back_to_sdpa_for_good(monkeypatch, caplog):
    """Runs anywhere: torch's flash op refuses CPU tensors, like a GPU build without it."""
    from cenote.models import layers

    monkeypatch.setattr(layers, "native_attention", lambda: None)
    monkeypatch.setattr(layers, "_flash_varlen_failed", False)
    monkeypatch.setattr(layers, "flash_varlen_supported",
                        lambda q, batch: not layers._flash_varlen_failed)
    batch = layers.PackedBatch.build([[1] * 5, [1] * 9])
    q, k, v = (torch.randn(14, 4, 16) for _ in range(3))
    with caplog.at_level("WARNING", logger="cenote.models.layers"):
        out = layers.packed_attention(q, k, v, batch, causal=False)
    assert layers._flash_varlen_failed
    assert "flash varlen kernel unavailable" in caplog.text
    torch.testing.assert_close(out, layers.packed_attention(q, k, v, batch, causal=False))
    ref = torch.cat([F.scaled_dot_product_attention(
        q[a:b].transpose(0, 1), k[a:b].transpose(0, 1), v[a:b].transpose(0, 1)
    ).transpose(0, 1).reshape(b - a, -1) for a, b in ((0, 5), (5, 14))])
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


@requires_cuda
def test_a_batch_goes_to_the_gpu_without_waiting_for_queued_kernels():
    # Pinned memory and non-blocking copies: the next batch is prepared while one runs
    # (cenote/engine/pipeline.py). A copy that waits for the device raises here.
    from cenote.models.batch import PackedBatch

    busy = torch.randn(4096, 4096, device="cuda")
    torch.cuda.set_sync_debug_mode("error")
    try:
        busy @ busy  # queued, still running while the batch is built
        batch = PackedBatch.build([[101, 7, 8, 102], [101, 102]], [[0, 0, 1, 1], [0, 0]],
                                  device="cuda", bucket=True, pooled="first")
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert batch.input_ids.device.type == "cuda"
    assert batch.input_ids[:6].tolist() == [101, 7, 8, 102, 101, 102]
    assert batch.key_padding_mask.dtype == torch.bool
    assert batch.pooled_rows[:2].tolist() == [0, 4]


@requires_cuda
def test_one_batch_ahead_on_the_gpu_gives_the_outputs_of_one_at_a_time(minilm_path):
    llm = LLM(str(minilm_path), device="cuda", max_num_batched_tokens=64)
    texts = [f"Sentence number {i} about a topic." * (1 + i % 3) for i in range(40)]
    ahead = torch.stack([o.outputs.data for o in llm.embed(texts)])
    runner = llm.engine.runner
    alone = torch.stack([runner.execute(s, "embed")[0]
                         for s in ([seq] for seq in llm.engine.prepare(texts, "embed"))])
    assert F.cosine_similarity(ahead.float(), alone.float()).min() >= 0.999
