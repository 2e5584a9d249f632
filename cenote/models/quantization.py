"""Opt-in int8 (``quantization="int8"``): every matmul of a natively run model with
weights in int8, one scale per output row, and activations quantized per batch as they
come (fbgemm's dynamic int8 matmul: u8 x s8 products, VNNI where the CPU has it, AVX2
elsewhere; with full 8-bit activations even without VNNI, whose 16-bit pair sums can
saturate: the 7-bit activations that avoid it measured far worse, mean cosine 0.976
against 0.993 on all-MiniLM-L6-v2). Norms, attention, embeddings and the pooling heads stay in fp32.

Activations of transformers have a few channels far larger than the rest, which one
scale per batch would crush; as SmoothQuant does, each input channel is divided by a
factor taken from its range on calibration texts (and the weight's column multiplied
by it), so the int8 range is spent where the values are. The engine runs the
calibration texts with float weights (:func:`observe_inputs`), quantizes, runs them
again to measure the cost, and frees the float weights."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import torch
from torch import nn

from cenote.models.linear import Linear

# How much of each channel's range moves from the activations to the weights. On
# all-MiniLM-L6-v2 over 200 paragraphs (benchmarks/README.md, "int8"): mean cosine to
# float 0.9925 unsmoothed, 0.979 at 0.5, 0.993 at 0.7, 0.990 at 0.8.
SMOOTHING = 0.7


def _linears(model: nn.Module) -> list[Linear]:
    return [m for m in model.modules() if isinstance(m, Linear) and m.weight is not None]


def check_int8_support() -> None:
    if "fbgemm" not in torch.backends.quantized.supported_engines:
        raise ValueError("quantization='int8' needs torch's fbgemm int8 kernels (x86 CPUs); "
                         "this build of torch has none.")


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


def quantize_linears(model: nn.Module) -> int:
    """Give every :class:`Linear` of ``model`` an int8 weight, smoothed by the input
    ranges :func:`observe_inputs` recorded; returns how many (fbgemm's support checked by
    :func:`check_int8_support` at load)."""
    torch.backends.quantized.engine = "fbgemm"
    count = 0
    for layer in _linears(model):
        weight = layer.weight.detach().float()
        observed = layer.int8_observed
        layer.int8_observed = None
        if observed is not None and observed.max() > 0:
            columns = weight.abs().amax(dim=0).clamp(min=1e-5)
            smooth = (observed.clamp(min=1e-5) ** SMOOTHING
                      / columns ** (1 - SMOOTHING)).clamp(min=1e-5)
            weight = weight * smooth
            layer.int8_input_scale = (1 / smooth).contiguous()
        scales = (weight.abs().amax(dim=1) / 127).clamp(min=1e-12)
        with warnings.catch_warnings():  # torch 2.13 marks quantized tensors deprecated
            warnings.simplefilter("ignore", UserWarning)
            qweight = torch.quantize_per_channel(
                weight, scales.double(), torch.zeros(len(scales), dtype=torch.long), 0,
                torch.qint8)
        bias = layer.bias.detach().float() if layer.bias is not None else None
        layer.int8 = torch.ops.quantized.linear_prepack(qweight, bias)
        count += 1
    return count


def drop_float_weights(model: nn.Module) -> None:
    """Free the float weights the int8 layers no longer need."""
    for module in model.modules():
        if isinstance(module, Linear) and module.int8 is not None:
            module.weight = None
