"""Where an offline embedding pass spends its time, by kind of operator.

Runs ``LLM.embed`` over the benchmark paragraphs once under ``torch.profiler``
(CPU, self time per operator) and prints the share of matmuls, attention,
activation, normalisation, layout copies and the rest, then the top operators,
plus the wall time outside torch operators (tokenising, scheduling, pooling
glue in Python; with ``--quantization int8`` also the per-row quantizing kernels,
called through ctypes). The tool behind the profiles quoted in ``benchmarks/README.md``.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/profile_embed.py
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus import english_paragraphs  # noqa: E402

# Operator name fragments -> kind; the first match wins.
KINDS = [
    ("attention", ("native_attention", "scaled_dot_product", "flash_attention", "_softmax",
                   "baddbmm", "bmm")),
    ("matmul", ("addmm", "mm", "linear", "matmul", "qlinear")),
    ("activation", ("gelu", "silu", "tanh", "sigmoid")),
    ("normalisation", ("layer_norm", "rms_norm", "norm")),
    ("layout copies", ("copy_", "index_copy", "index_select", "clone", "contiguous", "cat",
                       "zeros", "fill_", "to_copy", "empty")),
    ("elementwise", ("add", "mul", "div", "sub")),
]


def kind_of(name: str) -> str:
    lowered = name.lower()
    for kind, fragments in KINDS:
        if any(f in lowered for f in fragments):
            return kind
    return "other"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model folder (default: bundled MiniLM)")
    parser.add_argument("--texts", type=int, default=2000)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--quantization", default=None, choices=[None, "int8"])
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args()

    import torch
    from torch.profiler import ProfilerActivity, profile

    from cenote import LLM
    from cenote.config import default_model_path

    llm = LLM(str(args.model or default_model_path()), dtype=args.dtype,
              quantization=args.quantization)
    tokenizer = llm.get_tokenizer()
    texts = [t for t in english_paragraphs(args.texts + 200)
             if len(tokenizer(t)["input_ids"]) <= llm.config.max_model_len][: args.texts]
    llm.embed(texts[:256], use_tqdm=False)
    started = time.perf_counter()
    llm.embed(texts, use_tqdm=False)
    plain_s = time.perf_counter() - started
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        started = time.perf_counter()
        llm.embed(texts, use_tqdm=False)
        profiled_s = time.perf_counter() - started

    # Self time of leaf operators only: an aten op's children are counted once.
    self_us: Counter = Counter()
    for event in prof.key_averages():
        if event.key.startswith(("aten::", "mkldnn", "onednn::", "cenote::")):
            self_us[event.key] += event.self_cpu_time_total
    total_ops_s = sum(self_us.values()) / 1e6
    by_kind: Counter = Counter()
    for name, us in self_us.items():
        by_kind[kind_of(name)] += us
    num_tokens = sum(len(tokenizer(t)["input_ids"]) for t in texts)
    print(f"{len(texts)} texts, {num_tokens} tokens, dtype {llm.config.dtype}, "
          f"{torch.get_num_threads()} threads")
    print(f"wall time: {plain_s:.2f} s unprofiled ({num_tokens / plain_s:,.0f} tokens/s), "
          f"{profiled_s:.2f} s profiled; torch operators {total_ops_s:.2f} s, "
          f"outside them {max(0.0, profiled_s - total_ops_s):.2f} s")
    print()
    print("| kind | seconds | share of operator time |")
    print("|---|---:|---:|")
    for kind, us in by_kind.most_common():
        print(f"| {kind} | {us / 1e6:.2f} | {us / 1e6 / total_ops_s:.0%} |")
    print()
    print("| operator | seconds | share |")
    print("|---|---:|---:|")
    for name, us in self_us.most_common(args.top):
        print(f"| {name} | {us / 1e6:.2f} | {us / 1e6 / total_ops_s:.0%} |")


if __name__ == "__main__":
    main()
