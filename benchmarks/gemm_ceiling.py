"""The matmul rate this machine reaches, per dtype, on a model's own layer shapes: the
ceiling an encoder's throughput is measured against (``make bench`` prints each
system's share of it).

The ceiling is oneDNN's packed matmul (what cenote runs on CPU; for int8 its u8 x s8
matmul with fp32 sums, what ``quantization="int8"`` runs) over the four linear
layers of one BERT layer (fused QKV, attention output, FFN in and out) at 4096 rows,
best of 5 passes. A system's matmul rate is its tokens/s times the matmul FLOPs of a
token (2 x the weights of those layers, per layer); attention's own arithmetic is
left out of both.

    .venv/bin/python benchmarks/gemm_ceiling.py          # the bundled MiniLM's shapes
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

ROWS = 4096
DTYPES = (torch.float32, torch.bfloat16, torch.int8)


def layer_shapes(config: dict) -> list[tuple[int, int]]:
    """(in, out) of one BERT-family layer's matmuls."""
    hidden, inner = config["hidden_size"], config["intermediate_size"]
    return [(hidden, 3 * hidden), (hidden, hidden), (hidden, inner), (inner, hidden)]


def flops_per_token(config: dict) -> float:
    """Matmul FLOPs of one token through the model's layers."""
    return 2.0 * config["num_hidden_layers"] * sum(i * o for i, o in layer_shapes(config))


def _float_matmuls(config: dict, dtype: torch.dtype) -> list:
    layers = []
    for fan_in, fan_out in layer_shapes(config):
        weight = (torch.randn(fan_out, fan_in) / fan_in ** 0.5).to(dtype)
        x, packed = (torch.randn(ROWS, fan_in).to(dtype),
                     torch.ops.mkldnn._reorder_linear_weight(weight, None))
        layers.append(lambda x=x, packed=packed: torch.ops.mkldnn._linear_pointwise(
            x, packed, None, "none", [], ""))
    return layers


def _int8_matmuls(config: dict) -> list:
    from cenote.models.quantization import weight_range

    limit = weight_range()
    layers = []
    for fan_in, fan_out in layer_shapes(config):
        codes = torch.randint(-limit, limit + 1, (fan_out, fan_in), dtype=torch.int8)
        x = torch.randint(0, 256, (ROWS, fan_in), dtype=torch.uint8)
        packed, scales = torch.ops.onednn.qlinear_prepack(codes, None), torch.rand(fan_out)
        zeros = torch.zeros(fan_out, dtype=torch.long)
        layers.append(lambda x=x, packed=packed, scales=scales, zeros=zeros:
                      torch.ops.onednn.qlinear_pointwise(x, 1.0, 0, packed, scales, zeros, None,
                                                         1.0, 0, torch.float32, "none", [], ""))
    return layers


def ceiling_gflops(config: dict, dtype: torch.dtype) -> float | None:
    """GFLOP/s (GOP/s for int8) of packed oneDNN matmuls on the model's layer shapes; None
    where this CPU has no packed matmul in ``dtype`` (bf16 without native bf16, int8
    without oneDNN's int8 matmul)."""
    if dtype == torch.bfloat16 and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return None
    torch.manual_seed(0)
    if dtype == torch.int8:
        try:
            layers = _int8_matmuls(config)
        except (RuntimeError, AttributeError):
            return None
    else:
        layers = _float_matmuls(config, dtype)

    def one_pass() -> None:
        for matmul in layers:
            matmul()

    with torch.inference_mode():
        one_pass()
        best = float("inf")
        for _ in range(5):
            start = time.perf_counter()
            one_pass()
            best = min(best, time.perf_counter() - start)
    flops = 2.0 * ROWS * sum(i * o for i, o in layer_shapes(config))
    return flops / best / 1e9


def model_config(folder: Path) -> dict:
    return json.loads((Path(folder) / "config.json").read_text())


def main() -> None:
    from cenote.config import default_model_path
    from cenote.machine import cpu_name

    config = model_config(default_model_path())
    print(f"CPU: {cpu_name()}, {torch.get_num_threads()} threads; "
          f"{flops_per_token(config) / 1e6:.1f} MFLOP of matmuls per token")
    for dtype in DTYPES:
        rate = ceiling_gflops(config, dtype)
        print(f"{str(dtype).removeprefix('torch.')}: "
              + ("no packed matmul on this CPU" if rate is None else f"{rate:.0f} GFLOP/s"))


if __name__ == "__main__":
    main()
