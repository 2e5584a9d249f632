"""Attention alone: cenote's native CPU kernel vs torch SDPA over the padded layout.

Times ``packed_qkv_attention`` (what a BERT layer calls) on random bf16
projections of MiniLM's shape (12 heads x 32) at the batch shapes an offline
run produces (8192-token budget, lengths within 8 of each other), once with
the native kernel and once with it turned off (SDPA plus the copies into and
out of the padded layout). Prints ms per call, the ratio and each path's
largest error against fp32 attention.

    .venv/bin/python benchmarks/attention.py
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from cenote.models import kernels
from cenote.models.batch import PackedBatch
from cenote.models.layers import packed_qkv_attention

SHAPES = [(256, 32), (130, 63), (64, 128), (32, 250), (16, 512), (1, 12), (4, 40)]


def best_ms(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best * 1e3


def fp32_reference(qkv: torch.Tensor, lens: list[int], heads: int, dim: int) -> torch.Tensor:
    outs, start = [], 0
    for n in lens:
        x = qkv[start:start + n].float().view(n, 3, heads, dim).transpose(0, 2)  # [H, 3, n, D]
        out = F.scaled_dot_product_attention(x[:, 0], x[:, 1], x[:, 2])
        outs.append(out.transpose(0, 1).reshape(n, heads * dim))
        start += n
    return torch.cat(outs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--head-dim", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--dtype", choices=["auto", "bfloat16", "float32"], default="auto",
                        help="auto: bf16 where the CPU has native bf16, else fp32 (cenote's "
                             "default dtype there)")
    parser.add_argument("--spread", type=int, default=8,
                        help="lengths in a batch within this many tokens of the longest (8: an "
                             "offline run's sorted batches; a server's mixed batches spread wider)")
    args = parser.parse_args()
    from cenote.machine import cpu_has_native_bf16, cpu_name

    dtype = (getattr(torch, args.dtype) if args.dtype != "auto"
             else torch.bfloat16 if cpu_has_native_bf16() else torch.float32)

    kernel = kernels.native_attention()
    if kernel is None:
        raise SystemExit(f"no native attention here: {kernels._attention_reason}")
    heads, dim = args.heads, args.head_dim
    print(f"{heads} heads x {dim}, {str(dtype).removeprefix('torch.')}, lengths within "
          f"{args.spread} of the longest, torch threads {torch.get_num_threads()}, "
          f"CPU {cpu_name()}, kernel {kernels.kernel_source('attention')}")
    print()
    print("| sequences x longest | SDPA + copies ms | native ms | speed-up | "
          "max error SDPA | max error native |")
    print("|---|---:|---:|---:|---:|---:|")
    generator = torch.Generator().manual_seed(0)
    for num_seqs, longest in SHAPES:
        lens = torch.randint(max(1, longest - args.spread), longest + 1, (num_seqs,),
                             generator=generator).tolist()
        lens[0] = longest
        batch = PackedBatch.build([[1] * n for n in lens], bucket=True)
        qkv = torch.randn(batch.num_rows, 3 * heads * dim, generator=generator).to(dtype)
        expected = fp32_reference(qkv, lens, heads, dim)
        results = {}
        for name, enabled in (("sdpa", False), ("native", True)):
            kernels._attention = kernel if enabled else None
            kernels._attention_reason = None if enabled else "off for this comparison"
            with torch.inference_mode():
                def call(qkv=qkv, batch=batch):
                    return packed_qkv_attention(qkv, batch, heads, heads, causal=False)
                ms = best_ms(call, args.repeats)
                error = (call()[:batch.num_tokens].float() - expected).abs().max().item()
            results[name] = (ms, error)
        kernels._attention, kernels._attention_reason = kernel, None
        (sdpa_ms, sdpa_err), (native_ms, native_err) = results["sdpa"], results["native"]
        print(f"| {num_seqs} x {longest} | {sdpa_ms:.2f} | {native_ms:.2f} | "
              f"{sdpa_ms / native_ms:.2f}x | {sdpa_err:.1e} | {native_err:.1e} |")


if __name__ == "__main__":
    main()
