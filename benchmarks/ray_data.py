"""Ray Data embedding throughput: ``embed_dataset`` with 1 and 2 engine actors
(``num_cpus=1`` each) vs ``LLM.embed`` in one process with 2 torch threads.

Same texts, same weights (the bundled all-MiniLM-L6-v2 unless --model). Ray runs on
a local single-node cluster started here with 2 CPUs. A Ray time is the whole
dataset run, end to end: it includes starting the actors and loading the model in
each, which a larger dataset amortises; "start-up" is the time of a dataset of one
short row per actor, and the last texts/s column leaves it out. Prints texts/s, the
ratio to ``LLM.embed`` and the minimum cosine similarity of Ray's rows to
``LLM.embed``'s.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/ray_data.py [--texts 2000]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus import english_paragraphs  # noqa: E402


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def run_with_ray(embed_dataset, model_path: str, texts: list[str], actors: int,
                 batch_size: int) -> tuple[float, np.ndarray]:
    """Seconds to embed ``texts`` with Ray Data, end to end, and the rows in order."""
    import ray

    ds = ray.data.from_items([{"id": i, "text": t} for i, t in enumerate(texts)])
    start = time.perf_counter()
    # In memory, no read task: the actors may take every CPU.
    done = embed_dataset(ds, model_path, concurrency=actors, num_cpus=1, reserve_cpus=0,
                         batch_size=batch_size).take_all()
    seconds = time.perf_counter() - start
    done.sort(key=lambda row: row["id"])
    return seconds, np.stack([row["embedding"] for row in done])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model folder (default: bundled MiniLM)")
    parser.add_argument("--texts", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=256,
                        help="rows per Ray Data batch (each actor embeds one batch at a time)")
    args = parser.parse_args()

    import ray

    from cenote import LLM
    from cenote.config import default_model_path
    from cenote.integrations.ray import embed_dataset
    from cenote.machine import cpu_name

    model_path = str(args.model or default_model_path())
    torch.set_num_threads(2)
    llm = LLM(model_path)
    tokenizer = llm.get_tokenizer()
    texts = [t for t in english_paragraphs(args.texts + 200)
             if len(tokenizer(t)["input_ids"]) <= llm.config.max_model_len][: args.texts]
    llm.embed(texts[:256], use_tqdm=False)  # warm-up
    start = time.perf_counter()
    outs = llm.embed(texts, use_tqdm=False)
    rows = [("LLM.embed, one process, 2 threads", 0.0, time.perf_counter() - start, 1.0)]
    reference = np.array([o.outputs.embedding for o in outs], dtype=np.float32)

    ray.init(num_cpus=2, log_to_driver=False, include_dashboard=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        for actors in (1, 2):
            startup = run_with_ray(embed_dataset, model_path, ["Hello."] * actors, actors, 1)[0]
            seconds, vecs = run_with_ray(embed_dataset, model_path, texts, actors,
                                         args.batch_size)
            rows.append((f"Ray Data, {actors} actor{'s' if actors > 1 else ''} x 1 CPU",
                         startup, seconds, float(cosines(vecs, reference).min())))
    finally:
        ray.shutdown()

    print(f"\n{len(texts)} paragraphs, model {model_path}, batch size {args.batch_size}, "
          f"Ray {ray.__version__}, CPU: {cpu_name()}\n")
    print("| system | seconds | texts/s | vs LLM.embed | start-up s | texts/s after start-up "
          "| min cosine vs LLM.embed |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    base = rows[0][2]
    for name, startup, seconds, cos in rows:
        print(f"| {name} | {seconds:.1f} | {len(texts) / seconds:,.0f} | "
              f"{base / seconds:.2f}x | {startup:.1f} | "
              f"{len(texts) / max(seconds - startup, 1e-9):,.0f} | {cos:.6f} |")


if __name__ == "__main__":
    main()
