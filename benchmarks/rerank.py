"""Cross-encoder reranking throughput: cenote ``LLM.score`` vs sentence-transformers.

One query against N real English passages (default 1000), same weights: the
MiniLM body with a one-label head (``tests/factories.py``
``build_cross_encoder``), built into a temporary folder. sentence-transformers
runs ``CrossEncoder.predict`` at its defaults (fp32, batch size 32); cenote runs
at its default dtype (bf16 on CPUs with native bf16) and in fp32. Prints
pairs/s, the speed ratio and the largest absolute score difference against
sentence-transformers fp32. The systems are timed in turn, round after round
(default 3), and each keeps its best round: a slow spell on a shared machine
then lands on all of them rather than on whichever ran during it.

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


def best_of_rounds(systems: dict, rounds: int) -> dict:
    """``{name: (best seconds, last result)}``, each system timed once per round."""
    best = {name: (float("inf"), None) for name in systems}
    for _ in range(rounds):
        for name, fn in systems.items():
            seconds, result = timed(fn)
            best[name] = (min(best[name][0], seconds), result)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--passages", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
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

        st_name = "sentence-transformers CrossEncoder.predict (fp32, batch 32)"
        systems = {st_name: lambda: torch.tensor(st.predict(pairs), dtype=torch.float32)}
        for dtype in ("auto", "float32"):
            llm = LLM(str(path), dtype=dtype)
            llm.score(QUERY, passages[:64], use_tqdm=False)  # warm-up
            label = "default: " if dtype == "auto" else ""
            name = f"cenote LLM.score ({label}{str(llm.config.dtype).removeprefix('torch.')})"
            systems[name] = lambda llm=llm: torch.tensor(
                [o.outputs.score for o in llm.score(QUERY, passages, use_tqdm=False)])
        st.predict(pairs[:64])
        best = best_of_rounds(systems, args.rounds)
        st_seconds, reference = best[st_name]
        rows = [(name, seconds, scores) for name, (seconds, scores) in best.items()]

    print("\n| system | pairs/s | vs ST fp32 | max abs score diff vs ST fp32 |")
    print("|---|---:|---:|---:|")
    for name, seconds, scores in rows:
        diff = (scores - reference).abs().max().item()
        print(f"| {name} | {len(passages) / seconds:,.0f} | {st_seconds / seconds:.2f}x | "
              f"{diff:.2e} |")


if __name__ == "__main__":
    main()
