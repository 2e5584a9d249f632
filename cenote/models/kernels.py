"""Native CPU kernels: C sources in ``csrc/``, built once per machine, loaded with ctypes.

The build uses the system C compiler (``$CC``, else ``cc``/``gcc``) with
``-march=native`` and OpenMP, and is cached under ``$CENOTE_CACHE_DIR`` (default
``~/.cache/cenote``), keyed by the source, the compiler and the CPU's feature
flags, so a second start loads the cached library in milliseconds. When a kernel
cannot be built or loaded (no compiler, no AVX-512, a different OpenMP runtime
in torch), callers fall back to torch. ``CENOTE_NATIVE_KERNELS``: ``0`` turns
the kernels off; ``auto`` (the default) lets a model's load measure the
attention kernel against SDPA and keep the faster (``layers.settle_cpu_attention``);
``1`` keeps the kernel unmeasured.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import threading
from typing import TYPE_CHECKING

import torch

from cenote.models.native_build import (  # noqa: F401  (build: what tests and tools call)
    build,
    kernel_source,
    native_kernels_forced,
)
from cenote.models.native_build import load_kernel as _load
from cenote.models.native_build import openmp_runtimes as _openmp_runtimes  # noqa: F401

if TYPE_CHECKING:
    from cenote.models.batch import PackedBatch

logger = logging.getLogger(__name__)

# Longer sequences go to torch's flash attention, whose memory does not grow with length.
MAX_NATIVE_ATTENTION_LEN = 2048

_QUERY_MODES = {"first": 1, "last": 2}  # PackedBatch.pooled -> the kernel's query_mode
_DTYPES = (torch.bfloat16, torch.float32)

_lock = threading.Lock()
_attention: NativeAttention | None = None
_attention_reason: str | None = None  # why there is no native attention, once tried
_rowwise: NativeRowwise | None = None
_rowwise_reason: str | None = None


class NativeAttention:
    """``csrc/attention.c`` (or ``attention_portable.c``): attention within each sequence
    of a packed bf16 or fp32 batch."""

    # The portable kernel against SDPA on an AVX2-only EPYC (benchmarks/README.md,
    # "Portable attention kernel"): with lengths alike ahead up to 250 tokens
    # (1.1-2.0x), even at 512 (0.96-0.99x); with lengths mixed ahead at every length
    # (2.8-3.8x).
    PORTABLE_MAX_ALIKE_LEN = 256
    PORTABLE_MIN_PADDING = 1.5  # SDPA's padded size over the tokens, past which it loses

    def __init__(self, library: ctypes.CDLL, portable: bool = False) -> None:
        self.portable = portable
        self._fn = library.cenote_attention
        i64, ptr = ctypes.c_int64, ctypes.c_void_p
        self._fn.restype = ctypes.c_int
        self._fn.argtypes = [ptr, ptr, ptr, i64, i64, i64, ptr, i64, ptr, i64, i64, i64, i64,
                             ctypes.c_float, ctypes.c_int, i64, ctypes.c_int, ctypes.c_int,
                             ptr, i64, ctypes.c_int]
        self._workspace = library.cenote_attention_workspace
        self._workspace.restype = i64
        self._workspace.argtypes = [i64, i64, i64]

    @staticmethod
    def supports(x: torch.Tensor, head_dim: int, max_len: int) -> bool:
        return (x.device.type == "cpu" and x.dtype in _DTYPES and head_dim % 16 == 0
                and max_len <= MAX_NATIVE_ATTENTION_LEN)

    def suits(self, batch: PackedBatch) -> bool:
        """Whether this kernel beats SDPA on ``batch``: the AVX-512 one on every batch,
        the portable one on short sequences or mixed lengths."""
        return (not self.portable or batch.max_len <= self.PORTABLE_MAX_ALIKE_LEN
                or batch.num_seqs * batch.max_len > self.PORTABLE_MIN_PADDING
                * batch.num_tokens)

    def __call__(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        batch: PackedBatch,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        causal: bool,
        sliding_window: int | None = None,
        pooled_only: bool = False,
    ) -> torch.Tensor:
        """``q``: ``[rows, num_heads * head_dim]``, ``k``/``v``: ``[rows, num_kv_heads *
        head_dim]`` (each row contiguous; rows may be strided views of one fused
        projection); rows past ``batch.num_tokens`` are not read.

        Returns ``[rows, num_heads * head_dim]``, row t token t's; with ``pooled_only``
        ``[len(batch.pooled_rows), num_heads * head_dim]``, row b the pooled token of
        sequence b (only those queries are computed). Rows past the written ones
        are zero.
        """
        dtype = q.dtype
        for name, t, heads in (("q", q, num_heads), ("k", k, num_kv_heads), ("v", v, num_kv_heads)):
            if (dtype not in _DTYPES or t.dtype != dtype or t.stride(-1) != 1
                    or t.shape[-1] != heads * head_dim):
                # A caller's bug, not a client's: RuntimeError, so a server answers 500.
                raise RuntimeError(f"native attention: q, k and v must be bf16 or fp32, all the "
                                   f"same; {name} [rows, {heads * head_dim}] with contiguous rows")
        if pooled_only:
            if batch.pooled is None:
                raise RuntimeError("pooled_only needs a batch built with pooled='first' or 'last'")
            mode, out_rows, written = _QUERY_MODES[batch.pooled], len(batch.pooled_rows), \
                batch.num_seqs
        else:
            mode, out_rows, written = 0, q.shape[0], batch.num_tokens
        out = torch.empty(out_rows, num_heads * head_dim, dtype=dtype)
        if out_rows > written:
            out[written:].zero_()
        # Work space from torch, on this thread: the kernel's OpenMP threads never allocate.
        threads = torch.get_num_threads()
        per_thread = self._workspace(batch.max_len, head_dim, num_kv_heads)
        workspace = torch.empty(threads * per_thread + 16, dtype=torch.float32)
        skip = (-workspace.data_ptr() // 4) % 16  # to a 64-byte boundary
        cu = batch.cu_seqlens
        with _profiled("cenote::native_attention"):
            status = self._fn(
                q.data_ptr(), k.data_ptr(), v.data_ptr(), q.stride(0), k.stride(0), v.stride(0),
                out.data_ptr(), out.stride(0), cu.data_ptr(), batch.num_seqs,
                num_heads, num_kv_heads, head_dim, head_dim ** -0.5, int(causal),
                sliding_window or 0, mode, int(dtype == torch.float32),
                workspace.data_ptr() + 4 * skip, workspace.numel() - skip, threads,
            )
        if status != 0:
            raise RuntimeError(f"native attention: unsupported shape or work space "
                               f"(status {status})")
        return out


def native_attention() -> NativeAttention | None:
    """The native attention kernel, built and loaded on first call; None when unavailable
    (the reason is logged once)."""
    global _attention, _attention_reason
    if _attention is not None or _attention_reason is not None:
        return _attention
    with _lock:
        if _attention is None and _attention_reason is None:
            try:
                source = kernel_source("attention")
                portable = source.endswith("_portable")
                _attention = NativeAttention(_load(source), portable)
                logger.info("Attention: native CPU kernel (%s).",
                            "portable C" if portable else "AVX-512")
            except RuntimeError as exc:
                _attention_reason = str(exc)
                logger.info("Attention: torch SDPA (native kernel unavailable: %s).", exc)
    return _attention


class NativeRowwise:
    """``csrc/rowwise.c``: LayerNorm, RMSNorm, the rotary embedding and the gated MLP's
    activation over the rows of bf16 or fp32 activations."""

    def __init__(self, library: ctypes.CDLL) -> None:
        i64, ptr, f32, cint = ctypes.c_int64, ctypes.c_void_p, ctypes.c_float, ctypes.c_int
        self._layer = library.cenote_layer_norm
        self._layer.restype = cint
        self._layer.argtypes = [ptr, i64, ptr, i64, ptr, ptr, i64, i64, f32, cint, cint]
        self._rms = library.cenote_rms_norm
        self._rms.restype = cint
        self._rms.argtypes = [ptr, i64, ptr, ptr, i64, i64, i64, f32, cint, cint]
        self._rotary = library.cenote_rotary
        self._rotary.restype = cint
        self._rotary.argtypes = [ptr, i64, ptr, ptr, ptr, i64, i64, i64, cint, cint]
        self._silu_mul = library.cenote_silu_mul
        self._silu_mul.restype = cint
        self._silu_mul.argtypes = [ptr, i64, ptr, i64, i64, cint, cint]

    @staticmethod
    def supports(x: torch.Tensor) -> bool:
        """2-D or 3-D bf16/fp32 on CPU, last dim a multiple of 16 and contiguous with
        the one before it (rows may be strided)."""
        return (x.device.type == "cpu" and x.dtype in _DTYPES and x.dim() in (2, 3)
                and x.shape[-1] % 16 == 0 and x.stride(-1) == 1
                and (x.dim() == 2 or x.stride(1) == x.shape[-1]))

    @staticmethod
    def _check(x: torch.Tensor, *params: torch.Tensor) -> None:
        if not NativeRowwise.supports(x) or any(
                t.dtype != torch.float32 or t.shape != x.shape[-1:] or not t.is_contiguous()
                for t in params):
            raise RuntimeError("native norm: x [rows, (groups,) n] bf16/fp32 with n % 16 == 0 "
                               "and contiguous rows; weight (and bias) [n] fp32")

    def layer_norm(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                   eps: float) -> torch.Tensor:
        """``x``: ``[rows, n]``; ``weight``, ``bias``: ``[n]`` fp32."""
        self._check(x, weight, bias)
        if x.dim() != 2:
            raise RuntimeError("native layer norm: x must be [rows, n]")
        out = torch.empty(x.shape, dtype=x.dtype)
        with _profiled("cenote::native_layer_norm"):
            status = self._layer(x.data_ptr(), x.stride(0), out.data_ptr(), out.stride(0),
                                 weight.data_ptr(), bias.data_ptr(), x.shape[0], x.shape[1],
                                 eps, int(x.dtype == torch.float32), torch.get_num_threads())
        if status != 0:
            raise RuntimeError(f"native layer norm: unsupported shape (status {status})")
        return out

    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        """``x``: ``[rows, n]`` or ``[rows, groups, n]`` (each n-vector normalised);
        ``weight``: ``[n]`` fp32 (the model's weight, exact in fp32). Returns a new
        contiguous tensor of ``x``'s shape and type."""
        self._check(x, weight)
        groups = x.shape[1] if x.dim() == 3 else 1
        out = torch.empty(x.shape, dtype=x.dtype)
        with _profiled("cenote::native_rms_norm"):
            status = self._rms(x.data_ptr(), x.stride(0), out.data_ptr(), weight.data_ptr(),
                               x.shape[0], groups, x.shape[-1], eps,
                               int(x.dtype == torch.float32), torch.get_num_threads())
        if status != 0:
            raise RuntimeError(f"native rms norm: unsupported shape (status {status})")
        return out

    def rotary(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """``x``: ``[rows, heads, n]`` (n a multiple of 32); ``cos``, ``sin``: ``[rows, 1,
        n]`` contiguous, of ``x``'s type. Returns a new contiguous ``[rows, heads, n]``."""
        if (not self.supports(x) or x.dim() != 3 or x.shape[-1] % 32
                or any(t.dtype != x.dtype or t.shape != (x.shape[0], 1, x.shape[-1])
                       or not t.is_contiguous() for t in (cos, sin))):
            raise RuntimeError("native rotary: x [rows, heads, n] with n % 32 == 0; cos and "
                               "sin [rows, 1, n] contiguous, of x's type")
        out = torch.empty(x.shape, dtype=x.dtype)
        with _profiled("cenote::native_rotary"):
            status = self._rotary(x.data_ptr(), x.stride(0), out.data_ptr(), cos.data_ptr(),
                                  sin.data_ptr(), x.shape[0], x.shape[1], x.shape[2],
                                  int(x.dtype == torch.float32), torch.get_num_threads())
        if status != 0:
            raise RuntimeError(f"native rotary: unsupported shape (status {status})")
        return out

    def silu_mul(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``[rows, 2n]``, the fused gate and up projections; returns
        ``silu(x[:, :n]) * x[:, n:]`` as a new ``[rows, n]``."""
        if not self.supports(x) or x.dim() != 2 or x.shape[-1] % 32:
            raise RuntimeError("native silu_mul: x [rows, 2n] bf16/fp32 with n % 16 == 0 "
                               "and contiguous rows")
        n = x.shape[-1] // 2
        out = torch.empty(x.shape[0], n, dtype=x.dtype)
        with _profiled("cenote::native_silu_mul"):
            status = self._silu_mul(x.data_ptr(), x.stride(0), out.data_ptr(), x.shape[0], n,
                                    int(x.dtype == torch.float32), torch.get_num_threads())
        if status != 0:
            raise RuntimeError(f"native silu_mul: unsupported shape (status {status})")
        return out


def _profiled(name: str):
    """A named range for torch.profiler around a kernel call, only while one records
    (``record_function`` costs ~6 us per call even with no profiler running)."""
    # A private flag of torch's (2.x); were it gone, always name the range, as before.
    if getattr(torch.autograd.profiler, "_is_profiler_enabled", True):
        return torch.profiler.record_function(name)
    return contextlib.nullcontext()


def native_rowwise() -> NativeRowwise | None:
    """The native row-wise kernels (LayerNorm, RMSNorm, rotary, SiLU gate), built and
    loaded on first call; None when unavailable (the reason is logged once)."""
    global _rowwise, _rowwise_reason
    if _rowwise is not None or _rowwise_reason is not None:
        return _rowwise
    with _lock:
        if _rowwise is None and _rowwise_reason is None:
            try:
                source = kernel_source("rowwise")
                _rowwise = NativeRowwise(_load(source))
                logger.info("Norms and rotary: native CPU kernels (%s).",
                            "portable C" if source.endswith("_portable") else "AVX-512")
            except RuntimeError as exc:
                _rowwise_reason = str(exc)
                logger.info("Norms and rotary: torch (native kernels unavailable: %s).", exc)
    return _rowwise


def rowwise_for(x: torch.Tensor) -> NativeRowwise | None:
    """The row-wise kernels if they can take ``x`` (see ``NativeRowwise.supports``), else
    None: the one check the layers make before a native norm, rotary or gate."""
    if x.device.type != "cpu":
        return None
    kernel = native_rowwise()
    return kernel if kernel is not None and kernel.supports(x) else None


def decline_native_attention(reason: str) -> None:
    """Run attention on SDPA from now on in this process (``reason`` is logged)."""
    global _attention, _attention_reason
    with _lock:
        _attention, _attention_reason = None, reason
    logger.info("Attention: torch SDPA (%s).", reason)


