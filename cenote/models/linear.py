"""Linear layers on oneDNN's pre-laid-out weights, the activations they apply, and the
opt-in int8 path's hooks (``cenote.models.quantization``)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

# Activations oneDNN can apply to a matmul's output in the same pass:
# name -> (its post-op, algorithm, the same function for an unpacked layer).
_FUSED_ACTIVATIONS = {
    "gelu": ("gelu", "none", F.gelu),
    "gelu_tanh": ("gelu", "tanh", lambda x: F.gelu(x, approximate="tanh")),
    "relu": ("relu", "", F.relu),
    "silu": ("swish", "", F.silu),
}
# Activations applied after the matmul: oneDNN's swish post-op takes no slope, so CLIP's
# quick GELU (x * sigmoid(1.702 x)) cannot ride on it (see PreNormLayer.fold_quick_gelu).
QUICK_GELU_SLOPE = 1.702
_UNFUSED_ACTIVATIONS = {"quick_gelu": lambda x: x * torch.sigmoid(QUICK_GELU_SLOPE * x)}

# Every activation ``Linear`` applies, as a plain function.
ACTIVATION_FUNCTIONS = {**{name: fn for name, (_, _, fn) in _FUSED_ACTIVATIONS.items()},
                        **_UNFUSED_ACTIVATIONS}
# A config's hidden_act -> the activation ``Linear`` applies to its output.
HIDDEN_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
                      "relu": "relu", "silu": "silu", "swish": "silu",
                      "quick_gelu": "quick_gelu"}


def hidden_activation(config: Any) -> str:
    """The activation ``Linear`` applies for ``config.hidden_act`` (ValueError if none)."""
    if config.hidden_act not in HIDDEN_ACTIVATIONS:
        raise ValueError(f"Unsupported hidden_act {config.hidden_act!r}.")
    return HIDDEN_ACTIVATIONS[config.hidden_act]


def can_pack(weight: torch.Tensor) -> bool:
    """Whether oneDNN can hold this weight pre-laid-out: fp32, or bf16 on a CPU with
    bf16 support."""
    if (weight.device.type != "cpu" or not torch.backends.mkldnn.is_available()
            or not hasattr(torch.ops.mkldnn, "_reorder_linear_weight")):
        return False
    if weight.dtype == torch.float32:
        return True
    return weight.dtype == torch.bfloat16 and torch.ops.mkldnn._is_mkldnn_bf16_supported()


class Linear(nn.Linear):
    """``nn.Linear`` that, once :meth:`pack` ed, multiplies with a weight kept in
    oneDNN's own blocked layout, and can fuse an activation or a residual add.

    Why: a plain bf16 ``F.linear`` on CPU lays the weight out again on every
    call. That costs ~40 us per matmul, a third of a short sequence's forward
    pass, and 5-10 % of a long batch's (benchmarks/README.md, "Profile and
    packed weights"). In fp32 oneDNN with the activation fused beats MKL's
    matmul plus a separate GELU by ~25 %. Packing frees the plain weight, so
    memory does not double.
    """

    packed: torch.Tensor | None = None
    # Whether the output is attention's q/k/v (see cenote.models.quantization's
    # attention_dtype): set by the model, kept by split_rows.
    feeds_attention: bool = False
    # Opt-in int8: a cenote.models.quantization.Int8Weight, which then does the matmul.
    int8: Any = None
    int8_observed: torch.Tensor | None = None  # per input channel |max|, while calibrating
    # LoRA adapters (a cenote.models.lora.LinearLoRA): while a batch with adapters runs,
    # their low-rank products are added to the output rows of the sequences that asked.
    lora: Any = None

    def pack(self) -> None:
        if self.packed is None and can_pack(self.weight):
            self.packed = torch.ops.mkldnn._reorder_linear_weight(self.weight.detach(), None)
            self.weight = None  # the packed copy is the only one used from now on

    def forward(self, x: torch.Tensor, activation: str | None = None) -> torch.Tensor:
        """``activation(x @ W.T + b)``; ``activation`` is a key of ``ACTIVATION_FUNCTIONS``."""
        if self.lora is not None and self.lora.active:
            out = self.lora.add_to(x, self._forward(x))
            return ACTIVATION_FUNCTIONS[activation](out) if activation else out
        return self._forward(x, activation)

    def _forward(self, x: torch.Tensor, activation: str | None = None) -> torch.Tensor:
        if activation in _UNFUSED_ACTIVATIONS:
            return _UNFUSED_ACTIVATIONS[activation](self._forward(x))
        if self.int8 is not None:
            return self.int8(x, activation=activation)
        if self.int8_observed is not None:
            torch.maximum(self.int8_observed, x.detach().abs().amax(dim=0).float(),
                          out=self.int8_observed)
        if self.packed is None:
            out = F.linear(x, self.weight, self.bias)
            return ACTIVATION_FUNCTIONS[activation](out) if activation else out
        attr, algorithm, _ = _FUSED_ACTIVATIONS[activation] if activation else ("none", "", None)
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, attr, [],
                                                  algorithm)

    def feed_forward(self, x: torch.Tensor, activation: str | None, then: Linear,
                     residual: torch.Tensor) -> torch.Tensor:
        """``then(activation(self(x))) + residual``: a feed-forward block's two matmuls
        (with int8 weights, the activation between them never leaves uint8 in full)."""
        if (self.int8 is not None and then.int8 is not None and x.dim() == 2
                and not _adapting(self) and not _adapting(then)):
            return self.int8.feed_forward(x, activation, then.int8, residual)
        return then.add(self.forward(x, activation), residual)

    def add(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """``x @ W.T + b + residual``, the add fused into the matmul when packed."""
        if _adapting(self):  # the adapters' rows added in place to the sum
            return self.lora.add_to(x, self._add(x, residual))
        return self._add(x, residual)

    def _add(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        if self.int8 is not None:
            return self.int8(x, residual)
        if self.int8_observed is not None:
            return residual + self._forward(x)
        if self.packed is None:
            return residual + F.linear(x, self.weight, self.bias)
        return torch.ops.mkldnn._linear_pointwise.binary(x, residual, self.packed, self.bias,
                                                         "add")


def _adapting(linear: Linear) -> bool:
    """Whether ``linear`` adds LoRA products in the batch that runs now."""
    return linear.lora is not None and linear.lora.active


def split_rows(linear: Linear, first: int) -> tuple[Linear, Linear]:
    """``linear``'s first ``first`` output rows and the rest as two layers of their own
    (a fused QKV projection's queries and its keys/values, for pooled-only passes).
    Before packing."""
    bias = linear.bias is not None
    parts = (Linear(linear.in_features, first, bias=bias),
             Linear(linear.in_features, linear.out_features - first, bias=bias))
    for part in parts:
        part.feeds_attention = linear.feeds_attention
    with torch.no_grad():
        for part, rows in zip(parts, (slice(None, first), slice(first, None)), strict=True):
            part.weight.copy_(linear.weight[rows])
            if bias:
                part.bias.copy_(linear.bias[rows])
    return parts


def pack_linears(model: nn.Module) -> int:
    """Pack every :class:`Linear` of ``model`` that can be; returns how many were."""
    packed = 0
    for module in model.modules():
        if isinstance(module, Linear):
            module.pack()
            packed += module.packed is not None
    return packed
