"""The native row-wise kernels (LayerNorm, RMSNorm, SiLU gate, rotary) against the torch
expressions they replace, fp32 and bf16, with the largest difference; on this CPU's
kernel (AVX-512, or the portable C elsewhere).

    .venv/bin/python benchmarks/rowwise.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from attention import best_ms  # noqa: E402


def cases(native, dtype: torch.dtype) -> list:
    """(name, the torch expression, the kernel call) for each op in ``dtype``."""
    x = torch.randn(8192, 384).to(dtype)
    w, b = torch.randn(384), torch.randn(384)
    out = [("LayerNorm 8192 x 384",
           lambda: F.layer_norm(x, (384,), w.to(dtype), b.to(dtype), 1e-12),
           lambda: native.layer_norm(x, w, b, 1e-12))]
    r = torch.randn(4096, 1024).to(dtype)
    rw = torch.randn(1024)

    def rms():
        v = r.float()
        return rw.to(dtype) * (v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + 1e-6)
                               ).to(dtype)
    out.append(("RMSNorm 4096 x 1024", rms, lambda: native.rms_norm(r, rw, 1e-6)))
    g = torch.randn(4096, 2 * 2816).to(dtype)

    def silu_gate():
        gate, up = g.chunk(2, dim=-1)
        return F.silu(gate) * up
    out.append(("SiLU gate 4096 x 2 x 2816", silu_gate, lambda: native.silu_mul(g)))
    q = torch.randn(4096, 16, 64).to(dtype)
    angles = torch.rand(4096, 1, 32) * 50
    angles = torch.cat((angles, angles), dim=-1)
    cos, sin = angles.cos().to(dtype), angles.sin().to(dtype)

    def rotary():
        x1, x2 = q.chunk(2, dim=-1)
        return q * cos + torch.cat((-x2, x1), dim=-1) * sin
    out.append(("rotary 4096 x 16 heads x 64", rotary,
                lambda: native.rotary(q, cos, sin)))
    return out


def main() -> None:
    from cenote.machine import cpu_name
    from cenote.models import kernels
    from cenote.models.native_build import kernel_source

    native = kernels.native_rowwise()
    if native is None:
        raise SystemExit(f"no native row-wise kernels here: {kernels._rowwise_reason}")
    print(f"CPU {cpu_name()}, kernel {kernel_source('rowwise')}, "
          f"torch threads {torch.get_num_threads()}\n")
    print("| op, shape | dtype | torch ms | native ms | speed-up | max difference |")
    print("|---|---|---:|---:|---:|---:|")
    torch.manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):
        for name, reference, kernel in cases(native, dtype):
            ms_torch, ms_native = best_ms(reference, 30), best_ms(kernel, 30)
            difference = (kernel().float() - reference().float()).abs().max().item()
            print(f"| {name} | {str(dtype).removeprefix('torch.')} | {ms_torch:.2f} | "
                  f"{ms_native:.2f} | {ms_torch / ms_native:.2f}x | {difference:.1e} |")


if __name__ == "__main__":
    main()
