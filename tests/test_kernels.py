"""The native attention kernel against fp32 attention, its build cache and its fallbacks.

The kernel is the AVX-512 one on CPUs with AVX-512 and the portable C one elsewhere
(AVX2 here, NEON on ARM): each is tested on the machine that builds it."""

from __future__ import annotations

import ast
import subprocess
import sys
import time

import pytest
import torch
import torch.nn.functional as F

from cenote.models import kernels
from cenote.models.batch import PackedBatch
from cenote.models.layers import packed_attention, packed_qkv_attention

KERNEL = kernels.native_attention()
needs_kernel = pytest.mark.skipif(KERNEL is None, reason=f"no native attention here: "
                                                         f"{kernels._attention_reason}")


def reference(q, k, v, lens, causal, window=None):
    """fp32 SDPA sequence by sequence on the same bf16 inputs: ``[T, H, D]`` each."""
    outs, start = [], 0
    group = q.shape[1] // k.shape[1]
    for n in lens:
        qs, ks, vs = (t[start:start + n].float().transpose(0, 1) for t in (q, k, v))
        ks, vs = ks.repeat_interleave(group, 0), vs.repeat_interleave(group, 0)
        mask = None
        pos = torch.arange(n)
        distance = pos[:, None] - pos[None, :]
        if causal:
            mask = distance >= 0
            if window:
                mask &= distance < window
        elif window:  # both ways (ModernBERT's local layers)
            mask = distance.abs() < window
        outs.append(F.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask).transpose(0, 1))
        start += n
    return torch.cat(outs).flatten(1)


def assert_close(got, q, k, v, lens, causal, window=None, rows=slice(None)):
    """``got`` against fp32 attention on the same inputs (``rows`` of it).

    fp32: within summation-order noise. bf16: the kernel rounds the probabilities to
    bf16 for the sum over values (as torch's bf16 SDPA does) and the result once, so
    each element is within 2^-9 of ``|out|`` plus 2^-9 of ``sum_j p_j |v_j|``; checked
    with twice that.
    """
    expected = reference(q, k, v, lens, causal, window)[rows]
    if got.dtype == torch.float32:
        torch.testing.assert_close(got, expected, rtol=2e-5, atol=1e-5)
        return
    assert got.dtype == torch.bfloat16
    spread = reference(q, k, v.abs(), lens, causal, window)[rows]
    bound = 2 ** -8 * (expected.abs() + spread) + 1e-5
    excess = ((got.float() - expected).abs() - bound).max().item()
    assert excess <= 0, f"an element is {excess:.2e} past its bound"


@pytest.fixture
def two_threads():
    """At most two threads: batches of 8+ sequences then take the portable kernel's
    whole-sequence path, fewer its (sequence, head) one, on any machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(min(threads, 2))
    yield
    torch.set_num_threads(threads)


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("heads,kv_heads,dim,causal,window,lens", [
    (12, 12, 32, False, None, [1, 2, 15, 16, 17, 33, 63, 64, 65, 300]),
    (4, 2, 64, True, None, [1, 5, 40, 129]),
    (4, 4, 64, True, 7, [3, 7, 8, 20, 50]),
    (4, 4, 64, False, 7, [3, 7, 8, 20, 50]),
    (2, 1, 128, False, None, [9, 200]),
    (3, 3, 48, True, None, [31, 2]),
    # enough sequences that the portable kernel stages each whole, for all its kv heads
    (8, 2, 32, True, 5, [1, 4, 9, 16, 17, 30, 2, 64, 5, 33, 12, 8]),
    (6, 3, 64, False, None, [7, 1, 19, 40, 3, 26, 11, 2, 65]),
    (6, 3, 64, False, 5, [7, 1, 19, 40, 3, 26, 11, 2, 65]),
])
def test_matches_fp32_attention(heads, kv_heads, dim, causal, window, lens, dtype,
                                two_threads):
    torch.manual_seed(0)
    tokens = sum(lens)
    q = torch.randn(tokens, heads, dim).to(dtype)
    k = torch.randn(tokens, kv_heads, dim).to(dtype)
    v = torch.randn(tokens, kv_heads, dim).to(dtype)
    batch = PackedBatch.build([[1] * n for n in lens])
    got = KERNEL(q.flatten(1), k.flatten(1), v.flatten(1), batch, heads, kv_heads, dim,
                 causal, window)
    assert got.dtype == dtype
    assert_close(got, q, k, v, lens, causal, window)


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("queries", ["first", "last"])
@pytest.mark.parametrize("causal,window", [(False, None), (True, None), (True, 6), (False, 6)])
@pytest.mark.parametrize("lens", [[1, 9, 40, 17], [1, 9, 40, 17, 3, 22, 5, 8, 2]])
def test_only_the_pooled_queries(queries, causal, window, dtype, lens, two_threads):
    torch.manual_seed(3)
    heads, kv_heads, dim = 4, 2, 32
    tokens = sum(lens)
    q = torch.randn(tokens, heads, dim).to(dtype)
    k = torch.randn(tokens, kv_heads, dim).to(dtype)
    v = torch.randn(tokens, kv_heads, dim).to(dtype)
    batch = PackedBatch.build([[1] * n for n in lens], bucket=True, pooled=queries)
    cu = batch.cu_seqlens
    got = KERNEL(q.flatten(1), k.flatten(1), v.flatten(1), batch, heads, kv_heads, dim,
                 causal, window, pooled_only=True)
    assert got.shape == (-(-len(lens) // 16) * 16, heads * dim)
    rows = cu[:-1] if queries == "first" else cu[1:] - 1
    assert got.dtype == dtype
    assert_close(got[:len(lens)], q, k, v, lens, causal, window, rows)
    assert torch.all(got[len(lens):] == 0)


@needs_kernel
def test_reads_strided_fused_rows_and_never_filler_rows():
    torch.manual_seed(1)
    heads, dim, lens = 12, 32, [5, 70, 1, 33]
    batch = PackedBatch.build([[1] * n for n in lens], bucket=True)
    assert batch.num_rows > batch.num_tokens
    qkv = torch.randn(batch.num_rows, 3 * heads * dim).to(torch.bfloat16)
    qkv[batch.num_tokens:] = float("nan")  # a filler row read as a token poisons its sequence
    with torch.inference_mode():
        got = packed_qkv_attention(qkv, batch, heads, heads, causal=False)
    assert got.shape == (batch.num_rows, heads * dim)
    q, k, v = qkv[:batch.num_tokens].view(batch.num_tokens, 3, heads, dim).unbind(1)
    assert_close(got[:batch.num_tokens], q, k, v, lens, causal=False)
    assert torch.all(got[batch.num_tokens:] == 0)


@needs_kernel
@pytest.mark.parametrize("causal,window", [(False, None), (True, None), (True, 4),
                                           (False, 4)])
def test_same_result_as_the_sdpa_path(monkeypatch, causal, window):
    torch.manual_seed(2)
    lens = [3, 17, 40]
    batch = PackedBatch.build([[1] * n for n in lens])
    q = torch.randn(batch.num_rows, 4, 64).to(torch.bfloat16)
    k = torch.randn(batch.num_rows, 2, 64).to(torch.bfloat16)
    v = torch.randn(batch.num_rows, 2, 64).to(torch.bfloat16)
    with torch.inference_mode():
        native = packed_attention(q, k, v, batch, causal, window)
        monkeypatch.setattr(kernels, "_attention", None)
        monkeypatch.setattr(kernels, "_attention_reason", "off for this test")
        sdpa = packed_attention(q, k, v, batch, causal, window)
    # SDPA in bf16 rounds more along the way than the kernel does.
    torch.testing.assert_close(native.float(), sdpa.float(), rtol=2e-2, atol=2e-2)


def test_lengths_past_the_limit_and_other_dtypes_go_to_sdpa():
    x = torch.empty(4, 96, dtype=torch.bfloat16)
    assert kernels.NativeAttention.supports(x, 32, kernels.MAX_NATIVE_ATTENTION_LEN)
    assert kernels.NativeAttention.supports(x.float(), 32, 10)
    assert not kernels.NativeAttention.supports(x, 32, kernels.MAX_NATIVE_ATTENTION_LEN + 1)
    assert not kernels.NativeAttention.supports(x.half(), 32, 10)
    assert not kernels.NativeAttention.supports(x, 40, 10)  # head_dim not a multiple of 16


@needs_kernel
def test_build_is_cached_per_machine(tmp_path, monkeypatch):
    monkeypatch.setenv("CENOTE_CACHE_DIR", str(tmp_path))
    first = kernels.build(kernels.kernel_source("attention"))
    assert first.parent == tmp_path / "kernels" and first.exists()
    built_at = first.stat().st_mtime_ns
    start = time.perf_counter()
    assert kernels.build(kernels.kernel_source("attention")) == first
    assert first.stat().st_mtime_ns == built_at
    assert time.perf_counter() - start < 2  # no compile, just the compiler's --version
    assert [p.name for p in (tmp_path / "kernels").iterdir()] == [first.name]  # no temp left


def test_a_failing_compiler_is_reported(tmp_path, monkeypatch):
    monkeypatch.setenv("CENOTE_CACHE_DIR", str(tmp_path))
    broken = tmp_path / "cc"
    broken.write_text("#!/bin/sh\nif [ \"$1\" = --version ]; then echo broken 1.0; exit 0; fi\n"
                      "echo 'error: no such compiler' >&2; exit 1\n")
    broken.chmod(0o755)
    monkeypatch.setenv("CC", str(broken))
    with pytest.raises(RuntimeError, match="no such compiler"):
        kernels.build("attention")
    assert not list((tmp_path / "kernels").glob("*.so"))


@pytest.mark.parametrize("env", [{"CENOTE_NATIVE_KERNELS": "0"}, {"CC": "/nonexistent/cc"}])
def test_unavailable_kernel_falls_back_to_sdpa(tmp_path, monkeypatch, env):
    monkeypatch.setenv("CENOTE_CACHE_DIR", str(tmp_path))  # nothing cached to load
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(kernels, "_attention", None)
    monkeypatch.setattr(kernels, "_attention_reason", None)
    assert kernels.native_attention() is None
    assert kernels._attention_reason
    batch = PackedBatch.build([[1] * 5, [1] * 3])
    qkv = torch.randn(batch.num_rows, 3 * 2 * 16).to(torch.bfloat16)
    with torch.inference_mode():
        out = packed_qkv_attention(qkv, batch, 2, 2, causal=False)
    q, k, v = qkv.view(batch.num_rows, 3, 2, 16).unbind(1)
    torch.testing.assert_close(out.float(), reference(q, k, v, [5, 3], False),
                               rtol=2e-2, atol=2e-2)


@needs_kernel
def test_the_kernel_shares_torchs_openmp_runtime():
    # A fresh process: other test dependencies (scikit-learn) bring their own libgomp.
    code = ("from cenote.models import kernels; assert kernels.native_attention(); "
            "print(sorted(kernels._openmp_runtimes()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    runtimes = ast.literal_eval(out.strip().splitlines()[-1])
    assert len(runtimes) == 1 and runtimes[0].startswith("libgomp"), runtimes


@needs_kernel
@pytest.mark.parametrize("dtype,min_cosine", [("bfloat16", 0.9999), ("float32", 0.999999)])
def test_minilm_embeddings_same_with_and_without_the_kernel(minilm_path, monkeypatch, dtype,
                                                            min_cosine):
    from cenote import LLM

    texts = ["a short one", "A somewhat longer sentence about the weather in the mountains.",
             "word " * 120]
    llm = LLM(str(minilm_path), dtype=dtype)
    native = torch.tensor([o.outputs.embedding for o in llm.embed(texts, use_tqdm=False)])
    monkeypatch.setattr(kernels, "_attention", None)
    monkeypatch.setattr(kernels, "_attention_reason", "off for this test")
    sdpa = torch.tensor([o.outputs.embedding for o in llm.embed(texts, use_tqdm=False)])
    assert F.cosine_similarity(native, sdpa).min() > min_cosine


@needs_kernel
@pytest.mark.parametrize("kernel,sdpa,kept", [
    ((0.002, 0.004), (0.006, 0.012), True),     # the kernel faster: kept
    ((0.002, 0.004), (0.0019, 0.0038), True),   # SDPA ahead by less than 10 %: kept
    ((0.006, 0.012), (0.002, 0.004), False),    # SDPA clearly faster (AMX?): SDPA from now on
    # SDPA ahead on the clock but not in CPU time: the kernel's threads lost their cores
    # to something else during the check (a busy machine), not a slower kernel.
    ((0.006, 0.004), (0.002, 0.0039), True),
])
def test_model_load_keeps_the_faster_attention(minilm_path, monkeypatch, caplog,
                                               kernel, sdpa, kept):
    from cenote import LLM
    from cenote.models import layers

    native = kernels.native_attention()
    asked = []

    def timed(*shape, **kwargs):
        asked.append(shape)
        return {"kernel": kernel, "sdpa": sdpa}

    monkeypatch.setattr(layers, "time_cpu_attention", timed)
    monkeypatch.setattr(layers, "cpu_flags", lambda: "avx512f avx512_bf16 amx_bf16 amx_tile")
    with caplog.at_level("INFO", logger="cenote.models"):
        llm = LLM(str(minilm_path), dtype="bfloat16")
    assert asked == [(12, 12, 32, torch.bfloat16, False)]  # MiniLM: 12 heads of 32
    assert (kernels.native_attention() is native) is kept
    assert ("kept" if kept else "measured faster than the native kernel") in caplog.text
    # Either way the model still embeds correctly.
    out = llm.embed(["a test of the attention choice"], use_tqdm=False)[0].outputs.embedding
    assert abs(sum(x * x for x in out) - 1) < 1e-3


def test_the_real_check_times_both_paths():
    from cenote.models import layers

    if kernels.native_attention() is None:
        with pytest.raises(RuntimeError, match="not available"):
            layers.time_cpu_attention(4, 2, 32, torch.bfloat16, True)
        return
    times = layers.time_cpu_attention(4, 2, 32, torch.bfloat16, True, repeats=1)
    assert set(times) == {"kernel", "sdpa"}
    for wall, cpu in times.values():
        assert 0 < wall < 5 and 0 <= cpu < 10


@needs_kernel
@pytest.mark.parametrize("flags,measured", [
    ("avx512f avx512_bf16", False),           # e.g. AMD Zen 4: the kernel, unmeasured
    ("avx512f avx512_bf16 amx_bf16", True),   # Sapphire Rapids and later: measured
    ("avx512f", True),                        # no bf16 dot products: measured
])
def test_only_cpus_where_sdpa_may_win_are_measured(monkeypatch, flags, measured):
    from cenote.models import layers

    asked = []
    monkeypatch.setattr(layers, "cpu_flags", lambda: flags)
    monkeypatch.setattr(layers, "time_cpu_attention",
                        lambda *a, **k: asked.append(a) or {"kernel": (1, 1), "sdpa": (2, 2)})
    layers.settle_cpu_attention(12, 12, 32, torch.bfloat16, causal=False)
    assert bool(asked) is measured
    assert kernels.native_attention() is KERNEL


def test_forced_kernels_are_not_measured(monkeypatch):
    from cenote.models import layers

    monkeypatch.setenv("CENOTE_NATIVE_KERNELS", "1")
    monkeypatch.setattr(layers, "time_cpu_attention",
                        lambda *a, **k: pytest.fail("measured although forced"))
    layers.settle_cpu_attention(12, 12, 32, torch.bfloat16, causal=False)


ROWWISE = kernels.native_rowwise()
needs_rowwise = pytest.mark.skipif(ROWWISE is None, reason=f"no native layer norm here: "
                                                     f"{kernels._rowwise_reason}")


@pytest.fixture(params=["machine's", "portable"])
def rowwise_variant(request, monkeypatch):
    """The row-wise kernels the machine loads, and on AVX-512 CPUs the portable C ones
    too (built here and swapped in), so both paths' numerics are checked wherever the
    suite runs."""
    if request.param == "portable":
        from cenote.machine import cpu_flags

        if "avx512f" not in cpu_flags().split():
            pytest.skip("the machine's row-wise kernels are the portable ones here")
        try:
            portable = kernels.NativeRowwise(kernels._load("rowwise_portable"))
        except RuntimeError as exc:
            pytest.skip(f"the portable kernels cannot be built here: {exc}")
        monkeypatch.setattr(kernels, "_rowwise", portable)
    return request.param


@needs_rowwise
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("rows,width", [(1, 384), (7, 768), (300, 1024), (40, 1536), (5000, 384)])
def test_layer_norm_matches_torch(dtype, rows, width, rowwise_variant):
    from cenote.models.layers import LayerNorm

    torch.manual_seed(rows)
    norm = LayerNorm(width, eps=1e-12)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    norm = norm.to(dtype)
    # Rows with a large mean, as residual streams have: the variance is taken around it.
    x = (torch.randn(rows, width) * 3 + 40).to(dtype)
    expected = F.layer_norm(x.float(), (width,), norm.weight.float(), norm.bias.float(), 1e-12)
    with torch.inference_mode():
        got = norm(x)
    assert got.dtype == dtype and got.shape == x.shape
    if dtype == torch.float32:
        torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-5)
    else:  # one rounding to bf16 (plus fp32 noise where w * x_hat + b cancels to ~0)
        torch.testing.assert_close(got.float(), expected, atol=1e-3, rtol=2 ** -8)
        torch.testing.assert_close(got, F.layer_norm(x, (width,), norm.weight, norm.bias, 1e-12),
                                   atol=1e-3, rtol=2 ** -7)


@needs_rowwise
def test_layer_norm_reads_strided_rows_and_follows_weight_changes():
    from cenote.models.layers import LayerNorm

    norm = LayerNorm(32)
    wide = torch.randn(6, 96)
    x = wide[:, 32:64]  # rows 96 apart
    with torch.inference_mode():
        torch.testing.assert_close(norm(x), F.layer_norm(x, (32,)), atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        norm.weight.mul_(2)  # in place: the kernel's fp32 copy must follow
        norm.bias.add_(1)
    with torch.inference_mode():
        torch.testing.assert_close(norm(x), F.layer_norm(x, (32,)) * 2 + 1, atol=1e-5, rtol=1e-5)


def test_layer_norm_shapes_the_kernel_does_not_take_go_to_torch(monkeypatch):
    from cenote.models.layers import LayerNorm

    class Refuse:
        def supports(self, x):
            return kernels.NativeRowwise.supports(x)

        def layer_norm(self, *args):
            raise AssertionError("the kernel was called")

    monkeypatch.setattr(kernels, "native_rowwise", lambda: Refuse())
    for x, norm in ((torch.randn(2, 3, 32), LayerNorm(32)),  # 3-D
                    (torch.randn(4, 24), LayerNorm(24)),  # width not a multiple of 16
                    (torch.randn(4, 32).half(), LayerNorm(32).half()),  # fp16
                    (torch.randn(4, 32), LayerNorm(32, elementwise_affine=False))):
        torch.testing.assert_close(norm(x).float(), F.layer_norm(x.float(), x.shape[-1:]),
                                   atol=2e-3, rtol=2e-3)


def rms_reference(x, weight, eps):
    """The decoders' RMSNorm as transformers writes it."""
    x32 = x.float()
    return weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


@needs_rowwise
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("shape", [(1, 64), (37, 896), (300, 1024), (5, 16, 128)])
def test_rms_norm_matches_the_reference(dtype, shape, rowwise_variant):
    from cenote.models.decoder import RMSNorm

    torch.manual_seed(len(shape))
    norm = RMSNorm(shape[-1], 1e-6)
    with torch.no_grad():
        norm.weight.normal_()
    norm = norm.to(dtype)
    x = (torch.randn(*shape) * 4 + 1).to(dtype)
    with torch.inference_mode():
        got = norm(x)
    expected = rms_reference(x, norm.weight, 1e-6)
    assert got.dtype == dtype and got.shape == x.shape
    # fp32: rounding-level differences; bf16: the same two roundings, so at most an ulp
    # where the fp32 sums differ in the last bit.
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=1e-2, rtol=2 ** -7)
    torch.testing.assert_close(got, expected, **tol)
    if dtype == torch.bfloat16:
        assert (got != expected).float().mean() < 0.01  # nearly all bit-identical


@needs_rowwise
def test_rms_norm_per_head_on_strided_fused_rows():
    """q_norm/k_norm: each head of each token, read from the fused qkv projection."""
    from cenote.models.decoder import RMSNorm

    norm = RMSNorm(32, 1e-6)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    qkv = torch.randn(9, (4 + 2 * 2) * 32)
    q = qkv[:, :4 * 32].view(9, 4, 32)  # rows 256 apart, heads contiguous
    with torch.inference_mode():
        got = norm(q)
    assert got.is_contiguous()
    torch.testing.assert_close(got, rms_reference(q, norm.weight, 1e-6), atol=1e-5, rtol=1e-5)


def rotary_reference(x, cos, sin):
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


@needs_rowwise
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("rows,heads,dim", [(1, 1, 32), (13, 4, 64), (300, 16, 128)])
def test_rotary_matches_the_reference(dtype, rows, heads, dim, rowwise_variant):
    from cenote.models.decoder import apply_rotary

    torch.manual_seed(rows)
    angles = torch.rand(rows, 1, dim // 2) * 50
    angles = torch.cat((angles, angles), dim=-1)
    cos, sin = angles.cos().to(dtype), angles.sin().to(dtype)
    fused = (torch.randn(rows, 3 * heads * dim) * 3).to(dtype)
    x = fused[:, heads * dim:2 * heads * dim].view(rows, heads, dim)  # strided, as k is
    got = apply_rotary(x, cos, sin)
    assert got.is_contiguous() and got.dtype == dtype
    expected = rotary_reference(x, cos, sin)
    if dtype == torch.float32:
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    else:  # the reference's three bf16 roundings, reproduced
        assert torch.equal(got, expected)


def test_a_model_loaded_under_inference_mode_embeds(minilm_path, tiny_decoder):
    """Its parameters are inference tensors, which keep no version counter."""
    from cenote import LLM

    with torch.inference_mode():
        bert = LLM(str(minilm_path))
        decoder = LLM(str(tiny_decoder("qwen3", "Qwen3Model", hidden_size=128,
                                       num_attention_heads=4, num_key_value_heads=2,
                                       head_dim=64)))
        inside = [llm.embed(["hello there"], use_tqdm=False)[0].outputs.embedding
                  for llm in (bert, decoder)]
    outside = [llm.embed(["hello there"], use_tqdm=False)[0].outputs.embedding
               for llm in (bert, decoder)]
    assert inside == outside and len(inside[0]) == 384


@needs_rowwise
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("rows,width", [(1, 16), (9, 96), (400, 3072)])
def test_silu_gate_matches_the_reference(dtype, rows, width, rowwise_variant):
    torch.manual_seed(rows)
    x = (torch.randn(rows, 2 * width) * 6).to(dtype)  # past +-20: exp must not overflow
    x[0, :3] = torch.tensor([-100.0, 0.0, 100.0], dtype=dtype)
    got = kernels.native_rowwise().silu_mul(x)
    gate, up = x.chunk(2, dim=-1)
    expected = F.silu(gate) * up
    assert got.shape == (rows, width) and got.dtype == dtype and torch.isfinite(got).all()
    if dtype == torch.float32:
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    else:  # the reference's two roundings; an ulp apart at most where exp differs
        # (atol: silu(-100) is ~1e-42 exactly, ~1e-36 with exp's input clamped at -87)
        torch.testing.assert_close(got, expected, atol=1e-30, rtol=2 ** -7)
        differs = got != expected
        differs[0, :3] = False  # the planted extremes, checked above
        assert differs.float().mean() < 0.01


@pytest.mark.parametrize("portable, lens, suits", [
    (True, [40] * 8, True),                # short: the portable kernel wins
    (True, [300] * 8, False),              # long and alike: SDPA wins
    (True, [300] + [20] * 15, True),       # mixed: SDPA's padding would waste most work
    (False, [300] * 8, True),              # the AVX-512 kernel takes every batch
])
def test_the_portable_kernel_takes_the_batches_it_wins(portable, lens, suits):
    from types import SimpleNamespace

    batch = PackedBatch.build([[1] * n for n in lens])
    kernel = SimpleNamespace(portable=portable, **{
        name: getattr(kernels.NativeAttention, name)
        for name in ("PORTABLE_MAX_ALIKE_LEN", "PORTABLE_MIN_PADDING")})
    assert kernels.NativeAttention.suits(kernel, batch) is suits


@pytest.mark.parametrize("causal, window", [(False, None), (True, None), (True, 3)])
def test_the_portable_kernel_matches_fp32_attention_on_every_cpu(causal, window):
    # On AVX-512 CPUs the AVX-512 kernel is the one used; the portable one is built here
    # too, so that its numerics are checked on every machine the suite runs on.
    try:
        portable = kernels.NativeAttention(kernels._load("attention_portable"), portable=True)
    except RuntimeError as exc:  # no compiler, kernels turned off, another OpenMP runtime
        pytest.skip(f"the portable kernel cannot be built here: {exc}")
    lens = [7, 19, 1, 33]
    batch = PackedBatch.build([[1] * n for n in lens])
    generator = torch.Generator().manual_seed(1)
    for dtype in (torch.float32, torch.bfloat16):
        q, k, v = (torch.randn(batch.num_rows, 4, 16, generator=generator).to(dtype)
                   for _ in range(3))
        out = portable(q.reshape(batch.num_rows, -1), k.reshape(batch.num_rows, -1),
                       v.reshape(batch.num_rows, -1), batch, 4, 4, 16, causal, window)
        want = reference(q, k, v, lens, causal, window)
        tolerance = 1e-5 if dtype == torch.float32 else 2e-2
        torch.testing.assert_close(out[:batch.num_tokens].float(), want,
                                   rtol=tolerance, atol=tolerance)
