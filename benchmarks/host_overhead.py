"""Host cost per text: everything ``LLM.embed`` does except the model's forward.

The forward is replaced by a slice of a zero buffer made once, so what is left is
tokenising, scheduling, building packed batches, pooling, copying back and
building the output objects. A second measurement hands the tokenizer's batch encode
(Rust, on every core) its result from a cache, which leaves what cenote adds; the
difference is the tokenizer's own part. On a GPU the forward is fast and this is what
bounds throughput (see "CUDA" in benchmarks/README.md); on a CPU it is the
part that does not shrink with a faster matmul. Prints the best of --repeats
passes in microseconds per text, then the top functions of one profiled pass with
the tokenizer cached.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/host_overhead.py
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import pstats
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus import english_paragraphs  # noqa: E402
from offline_embed import timed  # noqa: E402


@contextlib.contextmanager
def tokenizer_cached(llm, texts: list[str]):
    """Within: the tokenizer's batch encode answers ``texts`` from a cache of its output."""
    import cenote.inputs.tokenizer as tokenizer_module

    encode = tokenizer_module._encode_batch
    cached = encode(llm.engine.tokenizer.backend, texts)
    tokenizer_module._encode_batch = lambda backend, inputs, add_special_tokens=True: cached
    try:
        yield
    finally:
        tokenizer_module._encode_batch = encode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model folder (default: bundled MiniLM)")
    parser.add_argument("--texts", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()

    from cenote import LLM
    from cenote.machine import cpu_name

    llm = LLM(args.model)
    tokenizer = llm.get_tokenizer()
    texts = [t for t in english_paragraphs(args.texts + 200)
             if len(tokenizer(t)["input_ids"]) <= llm.config.max_model_len][: args.texts]
    model = llm.engine.runner.model
    hidden_size = llm.config.hf_config.hidden_size
    dtype = llm.config.dtype

    rows = llm.config.max_num_batched_tokens * 2
    output = torch.zeros(rows, hidden_size, dtype=dtype, device=llm.config.device)

    def free_forward(batch):
        return output[:batch.num_seqs if batch.pooled else batch.num_rows]

    model.forward = free_forward
    llm.embed(texts[:256], use_tqdm=False)
    best, _ = timed(lambda: llm.embed(texts, use_tqdm=False), args.repeats)
    with tokenizer_cached(llm, texts):
        rest, _ = timed(lambda: llm.embed(texts, use_tqdm=False), args.repeats)
    print(f"{len(texts)} texts, device {llm.config.device}, torch threads "
          f"{torch.get_num_threads()}, CPU {cpu_name()}: host cost {best * 1e3:.0f} ms = "
          f"{best / len(texts) * 1e6:.1f} us per text ({len(texts) / best:,.0f} texts/s "
          f"ceiling with a free forward): the tokenizer's batch encode "
          f"{(best - rest) / len(texts) * 1e6:.1f} us, the rest {rest / len(texts) * 1e6:.1f} us")
    profiler = cProfile.Profile()
    with tokenizer_cached(llm, texts):
        profiler.enable()
        llm.embed(texts, use_tqdm=False)
        profiler.disable()
    pstats.Stats(profiler).sort_stats("tottime").print_stats(args.top)


if __name__ == "__main__":
    main()
