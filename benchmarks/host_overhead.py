"""Host cost per text: everything ``LLM.embed`` does except the model's forward.

The forward is replaced by zeros of the right shape, so what is left is
tokenising, scheduling, building packed batches, pooling, copying back and
building the output objects. On a GPU the forward is fast and this is what
bounds throughput (see "CUDA" in benchmarks/README.md); on a CPU it is the
part that does not shrink with a faster matmul. Prints the best of --repeats
passes in microseconds per text, then the top functions of one profiled pass.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/host_overhead.py
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus import english_paragraphs  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model folder (default: bundled MiniLM)")
    parser.add_argument("--texts", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()

    from cenote import LLM

    llm = LLM(args.model)
    tokenizer = llm.get_tokenizer()
    texts = [t for t in english_paragraphs(args.texts + 200)
             if len(tokenizer(t)["input_ids"]) <= llm.config.max_model_len][: args.texts]
    model = llm.engine.runner.model
    hidden_size = llm.config.hf_config.hidden_size
    dtype = llm.config.dtype

    def zeros(batch):
        rows = batch.num_seqs if batch.pooled else batch.num_rows
        return torch.zeros(rows, hidden_size, dtype=dtype, device=batch.input_ids.device)

    model.forward = zeros
    llm.embed(texts[:256], use_tqdm=False)
    best = float("inf")
    for _ in range(args.repeats):
        start = time.perf_counter()
        llm.embed(texts, use_tqdm=False)
        best = min(best, time.perf_counter() - start)
    print(f"{len(texts)} texts, device {llm.config.device}, torch threads "
          f"{torch.get_num_threads()}: host cost {best * 1e3:.0f} ms = "
          f"{best / len(texts) * 1e6:.1f} us per text ({len(texts) / best:,.0f} texts/s "
          "ceiling with a free forward)")
    profiler = cProfile.Profile()
    profiler.enable()
    llm.embed(texts, use_tqdm=False)
    profiler.disable()
    pstats.Stats(profiler).sort_stats("tottime").print_stats(args.top)


if __name__ == "__main__":
    main()
