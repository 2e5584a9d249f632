"""Cross-encoder reranking throughput: cenote ``LLM.score`` vs sentence-transformers.

One query against N real English passages (default 1000), one timed run each,
same weights: the MiniLM body with a one-label head (``tests/factories.py``
``build_cross_encoder``), built into a temporary folder. sentence-transformers
runs ``CrossEncoder.predict`` at its defaults (fp32, batch size 32); cenote runs
at its default dtype (bf16 on CPUs with native bf16) and in fp32. Prints
pairs/s, the speed ratio and the largest absolute score difference against
sentence-transformers fp32.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/rerank.py
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT.parent))
from corpus import english_paragraphs  # noqa: E402

QUERY = "How do I configure logging and handle errors when a request times out?"


def timed(fn) -> tuple[float, object]:
    """Wall time of one call (the caller warms up first) and its result."""
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--passages", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads for both systems (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from sentence_transformers import CrossEncoder

    from cenote import LLM
    from cenote.config import default_model_path
    from tests.factories import build_cross_encoder

    with tempfile.TemporaryDirectory() as tmp:
        path = build_cross_encoder(default_model_path(), Path(tmp) / "cross-encoder")
        st = CrossEncoder(str(path), device="cpu")
        # sentence-transformers truncates long pairs silently; keep pairs that fit whole.
        limit = min(st.tokenizer.model_max_length, st.model.config.max_position_embeddings)
        passages = [p for p in english_paragraphs(args.passages + 200, 20, 200)
                    if len(st.tokenizer(QUERY, p)["input_ids"]) <= limit][: args.passages]
        pairs = [(QUERY, p) for p in passages]
        num_tokens = sum(len(ids) for ids in st.tokenizer(
            [QUERY] * len(passages), passages)["input_ids"])
        print(f"1 query x {len(passages)} passages, {num_tokens} tokens "
              f"({num_tokens / len(passages):.1f} tokens/pair), torch threads "
              f"{torch.get_num_threads()}")

        st.predict(pairs[:64])
        st_seconds, st_scores = timed(lambda: st.predict(pairs))
        reference = torch.tensor(st_scores, dtype=torch.float32)
        rows = [("sentence-transformers CrossEncoder.predict (fp32, batch 32)", st_seconds,
                 reference)]

        for dtype in ("auto", "float32"):
            llm = LLM(str(path), dtype=dtype)
            llm.score(QUERY, passages[:64], use_tqdm=False)
            seconds, outs = timed(lambda llm=llm: llm.score(QUERY, passages, use_tqdm=False))
            label = "default: " if dtype == "auto" else ""
            name = f"cenote LLM.score ({label}{str(llm.config.dtype).removeprefix('torch.')})"
            rows.append((name, seconds, torch.tensor([o.outputs.score for o in outs])))
            del llm

    print("\n| system | pairs/s | vs ST fp32 | max abs score diff vs ST fp32 |")
    print("|---|---:|---:|---:|")
    for name, seconds, scores in rows:
        diff = (scores - reference).abs().max().item()
        print(f"| {name} | {len(passages) / seconds:,.0f} | {st_seconds / seconds:.2f}x | "
              f"{diff:.2e} |")


if __name__ == "__main__":
    main()
