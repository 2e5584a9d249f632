"""``cenote run-batch`` against ``LLM.embed`` in one process, on the same texts.

Writes N texts as an OpenAI batch file (one ``/v1/embeddings`` request per line, as
batch jobs usually are), runs ``cenote run-batch`` on it (a new process: its time
includes starting and loading the model, measured apart on a one-line file and also
left out), and times ``LLM.embed`` on the same texts here. Checks that every output
line is a 200 whose vector matches ``LLM.embed``'s.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/run_batch.py [--texts 20000]
        [--data-parallel-sizes 1,2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus import english_paragraphs  # noqa: E402


def write_requests(path: Path, texts: list[str]) -> None:
    with path.open("w") as file:
        for i, text in enumerate(texts):
            file.write(json.dumps({"custom_id": f"t{i}", "method": "POST",
                                   "url": "/v1/embeddings", "body": {"input": text}}) + "\n")


def run_batch(model: str, source: Path, target: Path, size: int) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "cenote", "run-batch", model, "-i", str(source),
                    "-o", str(target), "--data-parallel-size", str(size)],
                   check=True, stderr=subprocess.DEVNULL,
                   env=dict(os.environ, HF_HUB_OFFLINE="1"))
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model folder (default: bundled MiniLM)")
    parser.add_argument("--texts", type=int, default=20000)
    parser.add_argument("--data-parallel-sizes", default="1",
                        help="run-batch once per --data-parallel-size, e.g. '1,2'")
    args = parser.parse_args()

    from cenote import LLM
    from cenote.config import default_model_path
    from cenote.machine import cpu_flags, cpu_name

    model = str(args.model or default_model_path())
    llm = LLM(model)
    tokenizer = llm.get_tokenizer()
    pool = [t for t in english_paragraphs(5000)
            if len(tokenizer(t)["input_ids"]) <= llm.config.max_model_len]
    texts = [pool[i % len(pool)] for i in range(args.texts)]
    flags = sorted({"avx2", "avx512f", "avx512_bf16", "amx_tile"} & set(cpu_flags().split()))
    print(f"CPU: {cpu_name()} ({', '.join(flags)}), {os.cpu_count()} cores; "
          f"{len(texts)} texts ({len(pool)} distinct paragraphs)")
    llm.embed(texts[:256], use_tqdm=False)  # warm-up
    started = time.perf_counter()
    reference = np.array([o.outputs.embedding for o in llm.embed(texts, use_tqdm=False)])
    offline = time.perf_counter() - started
    del llm
    rows = [("LLM.embed, one process", offline, offline)]
    with tempfile.TemporaryDirectory() as tmp:
        source, target = Path(tmp) / "in.jsonl", Path(tmp) / "out.jsonl"
        write_requests(source, texts)
        write_requests(Path(tmp) / "one.jsonl", texts[:1])
        for size in map(int, args.data_parallel_sizes.split(",")):
            startup = run_batch(model, Path(tmp) / "one.jsonl", Path(tmp) / "one.out", size)
            seconds = run_batch(model, source, target, size)
            lines = [json.loads(line) for line in target.read_text().splitlines()]
            assert [line["custom_id"] for line in lines] == [f"t{i}" for i in range(len(texts))]
            got = np.array([line["response"]["body"]["data"][0]["embedding"] for line in lines])
            cosine = (got * reference).sum(1).min()
            print(f"run-batch -dp {size}: min cosine to LLM.embed {cosine:.6f}")
            rows.append((f"cenote run-batch --data-parallel-size {size}", seconds,
                         seconds - startup))
            target.unlink()
    print()
    print("| run | seconds | texts/s | vs LLM.embed | texts/s without start-up | vs LLM.embed |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, seconds, steady in rows:
        print(f"| {name} | {seconds:.1f} | {len(texts) / seconds:.0f} | {offline / seconds:.2f}x "
              f"| {len(texts) / steady:.0f} | {offline / steady:.2f}x |")


if __name__ == "__main__":
    main()
