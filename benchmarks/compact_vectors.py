"""What int8 and binary vectors cost in retrieval quality, beside the memory they save.

A small labelled set built from real text (corpus.py): each paragraph's first
sentence is a query, the rest of the paragraph its one relevant document, all
other paragraphs the distractors. Documents and queries are embedded once (float),
then compared as float32, int8 (cenote's calibrated per-dimension ranges, the
codes /v2/embed returns) and binary (sign bits, ranked by Hamming distance, and
re-scored with the float query as Sentence-Transformers suggests). Prints
recall@10 and MRR@10 for each beside the bytes per vector.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/compact_vectors.py --pairs 2000
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus import english_paragraphs  # noqa: E402

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def labelled_pairs(count: int) -> tuple[list[str], list[str]]:
    queries, documents = [], []
    for paragraph in english_paragraphs(count * 3, min_words=40):
        parts = _SENTENCE_END.split(paragraph.strip(), maxsplit=1)
        if len(parts) < 2:
            continue
        first, rest = parts
        if len(first.split()) >= 5 and len(rest.split()) >= 20:
            queries.append(first)
            documents.append(rest)
        if len(queries) == count:
            break
    return queries, documents


def ranks(scores: np.ndarray) -> np.ndarray:
    """The rank (0 = best) of each query's own document (the diagonal)."""
    own = np.diag(scores)[:, None]
    return (scores > own).sum(axis=1)


def report(name: str, rank: np.ndarray, bytes_per_vector: float, base: float) -> str:
    recall = (rank < 10).mean()
    mrr = np.where(rank < 10, 1.0 / (rank + 1), 0.0).mean()
    return (f"| {name} | {recall:.4f} | {mrr:.4f} | {bytes_per_vector:g} | "
            f"{base / bytes_per_vector:.0f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model folder (default: bundled MiniLM)")
    parser.add_argument("--pairs", type=int, default=2000)
    args = parser.parse_args()

    from cenote import LLM, PoolingParams
    from cenote.config import default_model_path
    from cenote.machine import cpu_name
    from cenote.pooling.compact import calibration_ranges, calibration_texts, compact

    llm = LLM(str(args.model or default_model_path()))
    queries, documents = labelled_pairs(args.pairs)

    def embed(texts: list[str]) -> np.ndarray:
        outs = llm.embed(texts, truncate_prompt_tokens=-1, use_tqdm=False)
        return np.array([o.outputs.embedding for o in outs], dtype=np.float32)

    q, d = embed(queries), embed(documents)
    raw = llm.embed(calibration_texts(), use_tqdm=False, truncate_prompt_tokens=-1,
                    pooling_params=PoolingParams(truncation_side="right"))
    ranges = calibration_ranges(np.array([o.outputs.embedding for o in raw], dtype=np.float32))
    dim = q.shape[1]
    rows = [report("float32", ranks(q @ d.T), 4 * dim, 4 * dim)]
    qi = compact(q, "int8", ranges).astype(np.float32)
    di = compact(d, "int8", ranges).astype(np.float32)
    rows.append(report("int8 (calibrated ranges)", ranks(qi @ di.T), dim, 4 * dim))
    qb = np.unpackbits(compact(q, "ubinary"), axis=1)[:, :dim].astype(np.float32)
    db = np.unpackbits(compact(d, "ubinary"), axis=1)[:, :dim].astype(np.float32)
    hamming = -(qb @ (1 - db).T + (1 - qb) @ db.T)
    rows.append(report("binary, Hamming", ranks(hamming), dim / 8, 4 * dim))
    # Re-score: the float query against the documents' {-1, 1} bits.
    rows.append(report("binary, float query re-score", ranks(q @ (2 * db - 1).T), dim / 8,
                       4 * dim))
    print(f"{len(queries)} queries (a paragraph's first sentence) against {len(documents)} "
          f"documents (the rest of each paragraph), dim {dim}, CPU: {cpu_name()}\n")
    print("| vectors | recall@10 | MRR@10 | bytes per vector | smaller by |")
    print("|---|---:|---:|---:|---:|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
