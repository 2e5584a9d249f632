"""Building blocks shared by the native models: attention over a packed batch, norms and
linear layers."""

from __future__ import annotations

import functools
import logging
import time
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from cenote.machine import cpu_flags
from cenote.models.batch import PackedBatch
from cenote.models.kernels import (
    decline_native_attention,
    native_attention,
    native_kernels_forced,
    rowwise_for,
)

if TYPE_CHECKING:
    from cenote.models.linear import Linear

logger = logging.getLogger(__name__)


def packed_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    batch: PackedBatch,
    causal: bool,
    sliding_window: int | None = None,
    pooled_only: bool = False,
) -> torch.Tensor:
    """Attention within each sequence of a packed batch.

    ``q``: ``[T, num_heads, head_dim]``; ``k``, ``v``: ``[T, num_kv_heads, head_dim]``.
    Returns ``[T, num_heads * head_dim]``, or with ``pooled_only`` just the rows
    of ``batch.pooled_rows``. With ``sliding_window`` w, a query attends to the keys
    less than w away: causal, itself and the w - 1 before it; otherwise also the
    w - 1 after it (ModernBERT's local layers).
    The native kernel runs it when it can (bf16 or fp32 on CPU); otherwise SDPA
    over a padded layout.
    """
    num_heads, head_dim = q.shape[1], q.shape[2]
    kernel = None if batch.hides_keys else native_attention()
    if (kernel is not None and kernel.supports(q, head_dim, batch.max_len)
            and kernel.suits(batch)):
        rows, kv_heads = q.shape[0], k.shape[1]
        return kernel(q.reshape(rows, -1), k.reshape(rows, -1), v.reshape(rows, -1), batch,
                      num_heads, kv_heads, head_dim, causal, sliding_window, pooled_only)
    if flash_varlen_supported(q, batch):
        out = flash_varlen_attention(q, k, v, batch, causal, sliding_window)
    else:
        out = padded_sdpa_attention(q, k, v, batch, causal, sliding_window)
    return out[batch.pooled_rows] if pooled_only else out


def padded_sdpa_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    batch: PackedBatch,
    causal: bool,
    sliding_window: int | None = None,
) -> torch.Tensor:
    """torch's SDPA over the padded ``[B, heads, max_len, head_dim]`` layout (two
    copies: packed -> padded -> packed); returns ``[R, heads * head_dim]``."""
    return _sdpa_on_padded(*(batch.to_padded(t).transpose(1, 2) for t in (q, k, v)), batch,
                           causal, sliding_window)


def _sdpa_on_padded(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    batch: PackedBatch,
    causal: bool,
    sliding_window: int | None = None,
) -> torch.Tensor:
    """SDPA on padded ``[B, heads, max_len, head_dim]`` q and ``[B, kv_heads, ...]`` k, v;
    returns the packed ``[R, heads * head_dim]``."""
    num_heads, head_dim = q.shape[1], q.shape[3]
    # Right padding: a causal mask already hides padded keys from every real query.
    mask = None if causal else batch.key_padding_mask
    if sliding_window is not None and batch.max_len > sliding_window:
        pos = torch.arange(batch.max_len, device=q.device)
        distance = pos.unsqueeze(1) - pos.unsqueeze(0)  # query - key
        if causal:
            mask = (distance >= 0) & (distance < sliding_window)
        else:
            band = distance.abs() < sliding_window
            mask = band if mask is None else mask & band
    out = F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, is_causal=causal and mask is None,
        enable_gqa=k.shape[1] != num_heads,
    )
    out = out.transpose(1, 2).reshape(batch.num_seqs, batch.max_len, num_heads * head_dim)
    return batch.from_padded(out)


# The load-time check of the native kernel against SDPA: 16 sequences of 96 to 126
# tokens, 1,776 in all; like the scheduler's batches (sorted by length, so little
# padding for SDPA), at a length between short queries and long passages.
_CHECK_LENGTHS = [96 + 2 * i for i in range(16)]


def time_cpu_attention(num_heads: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype,
                       causal: bool, repeats: int = 3) -> dict[str, tuple[float, float]]:
    """Best-of-``repeats`` seconds of the native kernel and of padded SDPA on one test
    batch of this model's attention shape: ``{"kernel": (wall, cpu), "sdpa": (wall,
    cpu)}``, cpu being the process's CPU time. The two alternate, so both see the same
    machine load."""
    kernel = native_attention()
    if kernel is None:
        raise RuntimeError("the native attention kernel is not available")
    batch = PackedBatch.build([[0] * n for n in _CHECK_LENGTHS])
    generator = torch.Generator().manual_seed(0)
    rows = batch.num_tokens
    q = torch.randn(rows, num_heads, head_dim, generator=generator).to(dtype)
    k, v = (torch.randn(rows, num_kv_heads, head_dim, generator=generator).to(dtype)
            for _ in range(2))
    runs = {
        "kernel": lambda: kernel(q.view(rows, -1), k.view(rows, -1), v.view(rows, -1), batch,
                                 num_heads, num_kv_heads, head_dim, causal),
        "sdpa": lambda: padded_sdpa_attention(q, k, v, batch, causal),
    }
    best = {name: (float("inf"), float("inf")) for name in runs}
    for _ in range(repeats + 1):  # the first round warms both up
        for name, run in runs.items():
            wall, cpu = time.perf_counter(), time.process_time()
            run()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            best[name] = (min(best[name][0], wall), min(best[name][1], cpu))
    return best


def settle_cpu_attention(num_heads: int, num_kv_heads: int, head_dim: int,
                         dtype: torch.dtype, causal: bool) -> None:
    """At model load on CPU: keep the native kernel only if it beats SDPA here.

    It does by 3-7x on CPUs with AVX512-BF16 and no AMX (benchmarks/README.md,
    "Native attention kernel"), so there it is kept unmeasured. On CPUs whose
    matrix units serve SDPA's matmuls (AMX), or without bf16 dot products, that is
    not a given, so it is measured (~40 ms) rather than assumed. SDPA must win by
    10 % in wall time and in CPU time to be chosen: on a busy machine a thread of
    the kernel's one long parallel region that loses its core stalls the whole
    region, which inflates its wall time but not the work it does. The choice
    holds for the whole process (every model loaded after it).
    ``CENOTE_NATIVE_KERNELS=1`` keeps the kernel unmeasured.
    """
    kernel = native_attention()
    if (kernel is None or native_kernels_forced() or head_dim % 16
            or dtype not in (torch.bfloat16, torch.float32)):
        return
    flags = cpu_flags().split()
    if "avx512_bf16" in flags and "amx_bf16" not in flags:
        logger.info("Attention: native CPU kernel (AVX512-BF16 without AMX, where it is "
                    "several times faster than SDPA).")
        return
    times = time_cpu_attention(num_heads, num_kv_heads, head_dim, dtype, causal)
    (kernel_wall, kernel_cpu), (sdpa_wall, sdpa_cpu) = times["kernel"], times["sdpa"]
    timing = (f"{kernel_wall * 1e3:.2f} ms native vs {sdpa_wall * 1e3:.2f} ms SDPA, CPU time "
              f"{kernel_cpu * 1e3:.2f} vs {sdpa_cpu * 1e3:.2f} ms, on a "
              f"{len(_CHECK_LENGTHS)}-sequence test batch")
    if sdpa_wall < 0.9 * kernel_wall and sdpa_cpu < 0.9 * kernel_cpu:
        decline_native_attention(f"measured faster than the native kernel here: {timing}")
    else:
        logger.info("Attention: native CPU kernel kept (%s).", timing)


# CUDA: flash attention over the packed rows (cu_seqlens), no padded copies.
_flash_varlen_failed = False


def flash_varlen_supported(q: torch.Tensor, batch: PackedBatch) -> bool:
    """Whether ``flash_varlen_attention`` can run ``q`` (``[T, heads, head_dim]``):
    fp16/bf16 on an Ampere or newer GPU, head_dim a multiple of 8 up to 256, no
    filler rows."""
    return (q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and not batch.hides_keys
            and not _flash_varlen_failed and batch.num_rows == batch.num_tokens
            and q.shape[-1] % 8 == 0 and q.shape[-1] <= 256
            and torch.backends.cuda.flash_sdp_enabled()
            and _cuda_capability(q.device.index) >= (8, 0))


@functools.cache
def _cuda_capability(index: int | None) -> tuple[int, int]:
    return torch.cuda.get_device_capability(index)


def flash_varlen_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    batch: PackedBatch,
    causal: bool,
    sliding_window: int | None = None,
) -> torch.Tensor:
    """Flash attention within each sequence of the packed ``[T, heads, head_dim]``
    q and ``[T, kv_heads, head_dim]`` k, v (GQA when kv_heads < heads); returns
    ``[T, heads * head_dim]``. Falls back to SDPA for good if torch's kernel refuses."""
    global _flash_varlen_failed
    window = {}
    if sliding_window is not None and batch.max_len > sliding_window:
        window = {"window_size_left": sliding_window - 1,
                  "window_size_right": 0 if causal else sliding_window - 1}
    cu = batch.cu_seqlens_i32
    try:
        out = torch.ops.aten._flash_attention_forward(
            q, k, v, cu, cu, batch.max_len, batch.max_len, 0.0, causal, False, **window)[0]
    except torch.OutOfMemoryError:
        raise
    except RuntimeError as exc:
        logger.warning("Attention: flash varlen kernel unavailable (%s); using SDPA.", exc)
        _flash_varlen_failed = True
        return packed_attention(q, k, v, batch, causal, sliding_window)
    return out.reshape(q.shape[0], -1)


def packed_qkv_attention(
    qkv: torch.Tensor,
    batch: PackedBatch,
    num_heads: int,
    num_kv_heads: int,
    causal: bool,
    pooled_only: bool = False,
) -> torch.Tensor:
    """Attention within each sequence, from a fused ``[T, (heads + 2 * kv_heads) * head_dim]``
    projection. Returns ``[T, heads * head_dim]``, or with ``pooled_only`` just the
    rows of ``batch.pooled_rows``.

    The native kernel (bf16 or fp32 on CPU, see ``kernels.py``) reads q, k and v straight
    from the fused rows. Otherwise the fused tensor is laid out padded once (one
    copy instead of one per q, k, v) for SDPA; q, k and v are strided views of it.
    """
    head_dim = qkv.shape[-1] // (num_heads + 2 * num_kv_heads)
    kernel = None if batch.hides_keys else native_attention()
    if (kernel is not None and kernel.supports(qkv, head_dim, batch.max_len)
            and kernel.suits(batch)):
        q_end, k_end = num_heads * head_dim, (num_heads + num_kv_heads) * head_dim
        return kernel(qkv[:, :q_end], qkv[:, q_end:k_end], qkv[:, k_end:], batch, num_heads,
                      num_kv_heads, head_dim, causal, pooled_only=pooled_only)
    fused = qkv.view(qkv.shape[0], num_heads + 2 * num_kv_heads, head_dim)
    if flash_varlen_supported(fused, batch):
        q, k, v = fused.split([num_heads, num_kv_heads, num_kv_heads], dim=1)
        out = flash_varlen_attention(q, k, v, batch, causal)
        return out[batch.pooled_rows] if pooled_only else out
    padded = batch.to_padded(qkv)  # [B, L, (h + 2kv) * d]
    padded = padded.view(batch.num_seqs, batch.max_len, num_heads + 2 * num_kv_heads, head_dim)
    padded = padded.transpose(1, 2)  # [B, h + 2kv, L, d]
    q, k, v = padded.split([num_heads, num_kv_heads, num_kv_heads], dim=1)
    out = _sdpa_on_padded(q, k, v, batch, causal)
    return out[batch.pooled_rows] if pooled_only else out


def pooled_query_attention(
    q_proj: Linear,
    kv_proj: Linear,
    x: torch.Tensor,
    batch: PackedBatch,
    num_heads: int,
    num_kv_heads: int,
    causal: bool,
) -> torch.Tensor | None:
    """``packed_qkv_attention(..., pooled_only=True)`` with the queries projected for the
    pooled rows alone (``q_proj``) and keys and values for every row (``kv_proj``):
    a last layer's query projection is 1/3 of its QKV matmul, and only the pooled
    rows' queries are used. Native CPU kernel only; None elsewhere (the caller then
    projects q, k and v together)."""
    head_dim = q_proj.out_features // num_heads
    kernel = None if batch.hides_keys else native_attention()
    if kernel is None or not kernel.supports(x, head_dim, batch.max_len):
        return None
    kv = kv_proj(x)
    # The kernel reads sequence b's query from its pooled token's row; no other row.
    q = kv.new_empty(x.shape[0], q_proj.out_features)  # kv's dtype: bf16 from int8 layers
    q[batch.pooled_rows] = q_proj(x[batch.pooled_rows])
    k_end = num_kv_heads * head_dim
    return kernel(q, kv[:, :k_end], kv[:, k_end:], batch, num_heads, num_kv_heads, head_dim,
                  causal, pooled_only=True)


def fp32_copies(module: nn.Module, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """fp32 copies of ``module``'s (bf16) parameters for the native norms, cached on the
    module and made again only when a parameter changes (``to()``, in-place edits)."""
    # Inference tensors (a model loaded under torch.inference_mode) keep no version.
    key = tuple((t.data_ptr(), t.dtype, None if t.is_inference() else t._version)
                for t in tensors)
    cached = module.__dict__.get("_fp32_copies")
    if cached is None or cached[0] != key:
        cached = (key, tuple(t.detach().float().contiguous() for t in tensors))
        module.__dict__["_fp32_copies"] = cached
    return cached[1]


class LayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` that runs the native kernel (``csrc/rowwise.c``) on CPU rows:
    1.4-1.9x torch's at embedding widths, the same results (fp32 arithmetic, one
    rounding). Anything the kernel does not take goes to torch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kernel = rowwise_for(x)
        if (kernel is None or x.dim() != 2 or self.weight is None or self.bias is None
                or x.shape[-1:] != self.normalized_shape):
            return super().forward(x)
        return kernel.layer_norm(x, *fp32_copies(self, self.weight, self.bias), self.eps)
