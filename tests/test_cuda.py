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
