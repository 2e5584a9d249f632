"""Opt-in int8 (``quantization="int8"``): every matmul of a natively run model with
weights in int8 (one scale per output row) and activations in uint8 with one scale and
offset per token, on oneDNN's int8 matmul (u8 x s8 products, int32 sums).

Why per token: a few tokens of a transformer's activations are far larger than the rest,
and one scale per batch (torch's dynamic int8 matmuls) crushes all the others; on
all-MiniLM-L6-v2 that cost a mean cosine to float of 0.993, per token 0.998
(benchmarks/README.md, "int8"). oneDNN takes one input scale per matmul, so each row is
quantized here against its own range (``csrc/int8_rows_portable.c``) and the int32 sums
come back through that row's scale and offset.

Norms, embeddings and the pooling heads stay in fp32; the projection that feeds
attention hands it q/k/v in :func:`attention_dtype` (bf16 where the CPU has bf16 dot
products), its sums rounded to bf16 in the dequantizing pass.

Why smoothing: a few input channels are also far larger than the rest; as SmoothQuant
does, each is divided by a factor taken from its range on calibration texts and the
weight's column multiplied by it. The engine runs the calibration texts with float
weights (:func:`observe_inputs`), quantizes, runs them again to measure the cost, and
frees the float weights.

Why 7-bit weights on some CPUs: without VNNI (AVX2, AVX-512 without VNNI) the u8 x s8
products are summed in pairs into int16, which saturates past 32767; 255 * 63 * 2 does
not. Whether it saturates is measured on the CPU (:func:`weight_range`), not guessed."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from cenote.machine import cpu_has_native_bf16
from cenote.models.linear import ACTIVATION_FUNCTIONS, Linear
from cenote.models.native_build import load_kernel

logger = logging.getLogger(__name__)

# How much of each channel's range moves from the activations to the weights. On
# all-MiniLM-L6-v2 with per-token activations, mean cosine to float over 250 paragraphs
# (benchmarks/README.md, "int8"): 0.9968 at 0.3, 0.9983 at 0.5.
SMOOTHING = 0.5

# Activations the dequantizing kernel applies in its pass (csrc/int8_rows_portable.c);
# the others run after it, in torch.
KERNEL_ACTIVATIONS = {None: 0, "gelu": 1, "gelu_tanh": 2, "relu": 3}
_ROW_DTYPES = (torch.float32, torch.bfloat16)  # what the quantizing kernel reads


def check_int8_support() -> None:
    """Raise ValueError where torch has no oneDNN int8 matmul (not an x86 build)."""
    try:
        weight_range()
    except (RuntimeError, AttributeError) as exc:
        raise ValueError("quantization='int8' needs oneDNN's int8 matmul (torch on x86 "
                         f"CPUs); this build of torch has none ({exc}).") from exc


@functools.cache
def weight_range() -> int:
    """127 where this CPU's int8 matmul sums u8 x s8 products exactly, else 63.

    Measured with one product whose 16-bit pair sums would overflow at 127."""
    rows, depth = 4, 64
    x = torch.full((rows, depth), 255, dtype=torch.uint8)
    weight = torch.full((8, depth), 127, dtype=torch.int8)
    packed = torch.ops.onednn.qlinear_prepack(weight, [rows, depth])
    sums = _matmul(x, packed, torch.ones(8), torch.zeros(8, dtype=torch.long))
    return 127 if torch.equal(sums, torch.full((rows, 8), 255.0 * 127 * depth)) else 63


def _matmul(q: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor,
            zero_points: torch.Tensor) -> torch.Tensor:
    """fp32 ``q @ W.T`` times each weight row's scale (``q`` uint8, ``W`` int8)."""
    return torch.ops.onednn.qlinear_pointwise(q, 1.0, 0, packed, scales, zero_points, None,
                                              1.0, 0, torch.float32, "none", [], "")


class Int8Rows:
    """``csrc/int8_rows_portable.c``: per-row quantizing and dequantizing."""

    def __init__(self, library: ctypes.CDLL) -> None:
        i64, ptr, cint = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
        self._quantize = library.cenote_quantize_rows
        self._quantize.restype = cint
        self._quantize.argtypes = [ptr, i64, ptr, ptr, ptr, ptr, i64, i64, cint, cint]
        self._dequantize = library.cenote_dequantize_rows
        self._dequantize.restype = cint
        self._dequantize.argtypes = [ptr, ptr, ptr, ptr, ptr, ptr, i64, ptr, i64, i64, cint,
                                     cint]
        self._requantize = library.cenote_requantize_rows
        self._requantize.restype = cint
        self._requantize.argtypes = [ptr, ptr, ptr, ptr, ptr, cint, ptr, ptr, ptr, ptr, i64,
                                     i64, cint]

    def quantize(self, x: torch.Tensor, smooth: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rows, n = x.shape
        q = torch.empty(rows, n, dtype=torch.uint8)
        scale, low = torch.empty(rows), torch.empty(rows)
        _check(self._quantize(x.data_ptr(), x.stride(0), smooth.data_ptr(), q.data_ptr(),
                              scale.data_ptr(), low.data_ptr(), rows, n,
                              int(x.dtype == torch.float32), torch.get_num_threads()), x)
        return q, scale, low

    def dequantize(self, sums: torch.Tensor, scale: torch.Tensor, low: torch.Tensor,
                   weight_sums: torch.Tensor, bias: torch.Tensor,
                   residual: torch.Tensor | None, activation: str | None,
                   out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
        rows, n = sums.shape
        out = sums if out_dtype == torch.float32 else torch.empty(rows, n, dtype=out_dtype)
        _check(self._dequantize(
            sums.data_ptr(), scale.data_ptr(), low.data_ptr(), weight_sums.data_ptr(),
            bias.data_ptr(), residual.data_ptr() if residual is not None else None,
            residual.stride(0) if residual is not None else 0,
            out.data_ptr() if out is not sums else None, rows, n,
            KERNEL_ACTIVATIONS[activation], torch.get_num_threads()), sums)
        return out

    def requantize(self, sums: torch.Tensor, scale: torch.Tensor, low: torch.Tensor,
                   weight_sums: torch.Tensor, bias: torch.Tensor, activation: str | None,
                   smooth: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rows, n = sums.shape
        q = torch.empty(rows, n, dtype=torch.uint8)
        scale_out, low_out = torch.empty(rows), torch.empty(rows)
        _check(self._requantize(
            sums.data_ptr(), scale.data_ptr(), low.data_ptr(), weight_sums.data_ptr(),
            bias.data_ptr(), KERNEL_ACTIVATIONS[activation], smooth.data_ptr(), q.data_ptr(),
            scale_out.data_ptr(), low_out.data_ptr(), rows, n, torch.get_num_threads()), sums)
        return q, scale_out, low_out


def _check(status: int, rows: torch.Tensor) -> None:
    if status != 0:
        raise RuntimeError(f"int8 rows: unsupported shape {tuple(rows.shape)}")


@functools.cache
def int8_rows() -> Int8Rows | None:
    """The native per-row kernels, built on first call; None where they cannot be
    (the reason logged once; torch's ops do the same work, slower)."""
    try:
        return Int8Rows(load_kernel("int8_rows_portable"))
    except RuntimeError as exc:
        logger.info("int8 rows: torch (native kernel unavailable: %s).", exc)
        return None


def quantize_rows(x: torch.Tensor, smooth: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``x * smooth`` (``[rows, n]`` fp32 or bf16) as uint8 codes with each row's scale
    and offset: ``x * smooth ~= scale[:, None] * q + low[:, None]``."""
    kernel = int8_rows()
    if kernel is not None and x.dtype in _ROW_DTYPES and x.stride(-1) == 1:
        return kernel.quantize(x, smooth)
    y = x * smooth
    low, high = y.aminmax(dim=1)
    scale = torch.where(high > low, (high - low) / 255, torch.ones_like(low))
    q = ((y - low[:, None]) / scale[:, None] + 0.5).clamp_(max=255).to(torch.uint8)
    return q, scale, low


def dequantize_rows(sums: torch.Tensor, scale: torch.Tensor, low: torch.Tensor,
                    weight_sums: torch.Tensor, bias: torch.Tensor,
                    residual: torch.Tensor | None = None,
                    activation: str | None = None,
                    out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``activation(scale * sums + low * weight_sums + bias) (+ residual)`` in
    ``out_dtype`` (fp32: in place on ``sums`` where the kernel runs; bf16: without a
    residual); ``activation`` a key of ``ACTIVATION_FUNCTIONS``."""
    kernel = int8_rows()
    fused = activation if activation in KERNEL_ACTIVATIONS else None
    if kernel is not None and (residual is None or (
            residual.dtype == torch.float32 and residual.stride(-1) == 1)) and (
            out_dtype == torch.float32 or (residual is None and fused == activation)):
        out = kernel.dequantize(sums, scale, low, weight_sums, bias, residual, fused,
                                out_dtype)
        return ACTIVATION_FUNCTIONS[activation](out) if activation != fused else out
    out = sums.mul_(scale[:, None]).addr_(low, weight_sums).add_(bias)
    if activation is not None:
        out = ACTIVATION_FUNCTIONS[activation](out)
    out = out.add_(residual) if residual is not None else out
    return out.to(out_dtype)


def requantize_rows(sums: torch.Tensor, scale: torch.Tensor, low: torch.Tensor,
                    weight_sums: torch.Tensor, bias: torch.Tensor, activation: str | None,
                    smooth: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`quantize_rows` of :func:`dequantize_rows`' output, for the next matmul
    (its ``smooth``), without the fp32 activation written out where the kernel runs."""
    kernel = int8_rows()
    if kernel is not None and activation in KERNEL_ACTIVATIONS and sums.shape[1] <= 16384:
        return kernel.requantize(sums, scale, low, weight_sums, bias, activation, smooth)
    out = dequantize_rows(sums, scale, low, weight_sums, bias, activation=activation)
    return quantize_rows(out, smooth)


@dataclass(frozen=True)
class Int8Weight:
    """A :class:`Linear`'s int8 matmul: oneDNN's packed weight and what turns its sums
    back into the float product."""

    packed: torch.Tensor
    scales: torch.Tensor  # [out] the int8 weight rows' scales
    zero_points: torch.Tensor  # [out] zeros (symmetric weights)
    smooth: torch.Tensor  # [in] each input channel's factor, applied before quantizing
    weight_sums: torch.Tensor  # [out] the (smoothed, quantized) weight rows' sums
    bias: torch.Tensor  # [out] zeros where the layer has none
    # What __call__ returns without a residual: bf16 for attention's q/k/v where the
    # bf16 attention kernel runs (see attention_dtype).
    out_dtype: torch.dtype = torch.float32

    def __call__(self, x: torch.Tensor, residual: torch.Tensor | None = None,
                 activation: str | None = None) -> torch.Tensor:
        """``activation(x @ W.T + b)`` (``+ residual``) for ``x`` of shape ``[..., in]``."""
        shape = x.shape
        out_dtype = self.out_dtype if residual is None else torch.float32
        if x.numel() == 0:
            out = torch.zeros(*shape[:-1], len(self.bias), dtype=out_dtype)
            return out + residual if residual is not None else out
        q, scale, low = quantize_rows(x.reshape(-1, shape[-1]), self.smooth)
        sums = _matmul(q, self.packed, self.scales, self.zero_points)
        if residual is not None:
            residual = residual.reshape(-1, sums.shape[-1])
        out = dequantize_rows(sums, scale, low, self.weight_sums, self.bias, residual,
                              activation, out_dtype)
        return out.reshape(*shape[:-1], out.shape[-1])

    def feed_forward(self, x: torch.Tensor, activation: str | None, then: Int8Weight,
                     residual: torch.Tensor) -> torch.Tensor:
        """``then(activation(self(x))) + residual`` for ``x`` ``[rows, in]``: the
        activation between the two matmuls goes from one's sums to the other's uint8
        codes in one pass (it is the widest of a layer: 4x the hidden size in BERT)."""
        if x.numel() == 0:
            return then(self(x, activation=activation), residual)
        q, scale, low = quantize_rows(x, self.smooth)
        sums = _matmul(q, self.packed, self.scales, self.zero_points)
        q, scale, low = requantize_rows(sums, scale, low, self.weight_sums, self.bias,
                                        activation, then.smooth)
        sums = _matmul(q, then.packed, then.scales, then.zero_points)
        return dequantize_rows(sums, scale, low, then.weight_sums, then.bias, residual)


def attention_dtype() -> torch.dtype:
    """The dtype int8 models hand attention's q/k/v in: bf16 on CPUs with bf16 dot
    products (AVX512-BF16, AMX), else fp32. There the AVX-512 attention kernel takes
    attention 1.9x faster in bf16 (0.29 s against 0.56 s of a 3 s pass of
    all-MiniLM-L6-v2 on an AVX512-BF16 EPYC, benchmarks/README.md, "int8 on an
    AVX512-BF16 CPU"); where SDPA is chosen instead, the model's load measured it in
    this dtype too. bf16 keeps 8 bits of mantissa where the int8 codes around it keep
    8 bits in all."""
    return torch.bfloat16 if cpu_has_native_bf16() else torch.float32


def _linears(model: nn.Module) -> list[Linear]:
    return [m for m in model.modules() if isinstance(m, Linear) and m.weight is not None]


@contextlib.contextmanager
def observe_inputs(model: nn.Module) -> Iterator[None]:
    """Within the block, each :class:`Linear` records the largest magnitude of each of
    its input channels (kept for :func:`quantize_linears`; :func:`stop_observing`
    drops what is left)."""
    for layer in _linears(model):
        layer.int8_observed = torch.zeros(layer.in_features)
    try:
        yield
    except BaseException:
        stop_observing(model)
        raise


def stop_observing(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, Linear):
            module.int8_observed = None


def quantize_linear(weight: torch.Tensor, bias: torch.Tensor | None,
                    observed: torch.Tensor | None,
                    out_dtype: torch.dtype = torch.float32) -> Int8Weight:
    """The int8 form of ``weight`` (``[out, in]``), smoothed by ``observed`` (each input
    channel's largest magnitude on the calibration texts; None or zeros: unsmoothed),
    returning ``out_dtype`` (where no residual is added)."""
    weight = weight.detach().float()
    smooth = torch.ones(weight.shape[1])
    if observed is not None and observed.max() > 0:
        columns = weight.abs().amax(dim=0).clamp(min=1e-5)
        factor = (observed.clamp(min=1e-5) ** SMOOTHING
                  / columns ** (1 - SMOOTHING)).clamp(min=1e-5)
        weight = weight * factor
        smooth = (1 / factor).contiguous()
    limit = weight_range()
    scales = (weight.abs().amax(dim=1) / limit).clamp(min=1e-12)
    codes = torch.round(weight / scales[:, None]).clamp_(-limit, limit).to(torch.int8)
    return Int8Weight(
        packed=torch.ops.onednn.qlinear_prepack(codes, None),
        scales=scales.contiguous(),
        zero_points=torch.zeros(len(scales), dtype=torch.long),
        smooth=smooth,
        weight_sums=(codes.float() * scales[:, None]).sum(dim=1).contiguous(),
        bias=(bias.detach().float().contiguous() if bias is not None
              else torch.zeros(len(scales))),
        out_dtype=out_dtype)


def quantize_linears(model: nn.Module) -> int:
    """Give every :class:`Linear` of ``model`` an int8 weight, smoothed by the input
    ranges :func:`observe_inputs` recorded; returns how many. Those that feed attention
    return its q/k/v in :func:`attention_dtype`."""
    count = 0
    to_attention = attention_dtype()
    for layer in _linears(model):
        observed, layer.int8_observed = layer.int8_observed, None
        layer.int8 = quantize_linear(layer.weight, layer.bias, observed,
                                     to_attention if layer.feeds_attention else torch.float32)
        count += 1
    return count


def drop_float_weights(model: nn.Module) -> None:
    """Free the float weights the int8 layers no longer need."""
    for module in model.modules():
        if isinstance(module, Linear) and module.int8 is not None:
            module.weight = None
