"""Shared instruction prefixes on a causal embedder: computed once per batch vs per query.

Builds a random causal Qwen3 checkpoint at Qwen3-0.6B's widths (hidden 1024, 16 query
heads and 8 key/value heads of 128, MLP 3072) with --layers layers (default 4; the
real model has 28, which scales both runs alike) and embeds --queries short queries
(default 64, the first words of English paragraphs) behind Qwen3-Embedding's
instruction ``Instruct: Given a web search query, retrieve relevant passages that
answer the query\\nQuery: `` (19 tokens with the MiniLM tokenizer the checkpoint
carries, [CLS] included). The same ``LLM`` runs them with prefix sharing (the default)
and without (``--no-enable-prefix-caching``), alternating, best of --repeats; at the
default dtype and in fp32. Prints queries/s, the ratio and how far the vectors are
apart (min cosine, max abs difference).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/prefix_reuse.py
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from common import embedding_matrix, qwen3_06b_shaped, script_parser
from corpus import english_paragraphs

INSTRUCTION = ("Instruct: Given a web search query, retrieve relevant passages that answer "
               "the query\nQuery: ")


def main() -> None:
    parser = script_parser(__doc__)
    parser.add_argument("--queries", type=int, default=64)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtypes", nargs="+", default=["auto", "float32"])
    args = parser.parse_args()

    from cenote import LLM
    from cenote.machine import cpu_name

    queries = [" ".join(p.split()[:4 + i % 6]) for i, p in
               enumerate(english_paragraphs(args.queries))]
    prompts = [INSTRUCTION + q for q in queries]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = qwen3_06b_shaped(Path(tmp) / "qwen3", args.layers)
        for dtype in args.dtypes:
            llm = LLM(str(path), dtype=dtype)
            runner = llm.engine.runner
            best = {True: float("inf"), False: float("inf")}
            vectors = {}
            for _ in range(args.repeats + 1):  # the first round warms both up
                for share in (True, False):
                    runner.shares_prefixes = share
                    start = time.perf_counter()
                    outs = llm.embed(prompts, use_tqdm=False)
                    best[share] = min(best[share], time.perf_counter() - start)
                    vectors[share] = embedding_matrix(outs)
            tokens = sum(len(o.prompt_token_ids) for o in outs)
            prefix = os.path.commonprefix([o.prompt_token_ids for o in outs])
            cos = F.cosine_similarity(vectors[True], vectors[False]).min().item()
            diff = (vectors[True] - vectors[False]).abs().max().item()
            rows.append((str(llm.config.dtype).removeprefix("torch."), best, cos, diff))
            del llm

    print(f"{len(prompts)} queries sharing a {len(prefix)}-token prefix ([CLS] and the "
          f"instruction; {tokens} tokens in all), Qwen3-0.6B widths, {args.layers} layers, "
          f"torch threads {torch.get_num_threads()}, CPU {cpu_name()}\n")
    print("| dtype | shared prefix (queries/s) | each whole (queries/s) | speed-up | "
          "min cosine | max abs diff |")
    print("|---|---:|---:|---:|---:|---:|")
    for dtype, best, cos, diff in rows:
        print(f"| {dtype} | {len(prompts) / best[True]:,.1f} | {len(prompts) / best[False]:,.1f} "
              f"| {best[False] / best[True]:.2f}x | {cos:.6f} | {diff:.1e} |")


if __name__ == "__main__":
    main()
