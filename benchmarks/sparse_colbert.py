"""Sparse and late-interaction retrieval: cenote against sentence-transformers 6's
``SparseEncoder.encode`` (SPLADE) and ``MultiVectorEncoder.encode_document`` (ColBERT)
on the same paragraphs, and MaxSim reranking of one query over many documents against
the library's ``encode_query`` + ``encode_document`` + ``similarity``.

The models are built as the test fixtures build them (tests/factories.py): the real
all-MiniLM-L6-v2 body with a seeded masked-LM head (SPLADE) or a seeded 384 -> 128
projection (ColBERT), saved with the libraries' own API. Prints texts/s, the ratio
and the largest difference between the two outputs, with the CPU.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/sparse_colbert.py --texts 2000
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


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=2000)
    parser.add_argument("--rerank-documents", type=int, default=1000)
    args = parser.parse_args()

    from sentence_transformers import MultiVectorEncoder, SparseEncoder

    from cenote import LLM, PoolingParams
    from cenote.config import default_model_path
    from cenote.machine import cpu_name
    from tests.factories import build_colbert, build_splade

    texts = english_paragraphs(args.texts)
    right = PoolingParams(truncation_side="right")  # cut as the libraries cut
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        minilm = default_model_path()
        splade = build_splade(minilm, Path(tmp) / "splade", max_active_dims=256)
        colbert = build_colbert(minilm, Path(tmp) / "colbert")

        llm = LLM(str(splade))
        st = SparseEncoder(str(splade), device="cpu")
        llm.embed_sparse(texts[:64], use_tqdm=False)
        st.encode(texts[:64])
        ours_s, ours = timed(lambda: llm.embed_sparse(texts, pooling_params=right,
                                                      truncate_prompt_tokens=-1, use_tqdm=False))
        theirs_s, theirs = timed(lambda: st.encode(texts).coalesce().to_dense())
        # Compared where both kept a dimension: at the max_active_dims boundary a
        # rounding difference can swap which of two near-equal weights is kept.
        diff, same_support = 0.0, 0
        for out, ref in zip(ours, theirs, strict=True):
            mine = torch.zeros(ref.shape[0]).index_put_((torch.tensor(out.outputs.indices),),
                                                        torch.tensor(out.outputs.values))
            both = (mine != 0) & (ref != 0)
            diff = max(diff, (mine[both] - ref[both]).abs().max().item())
            same_support += int(torch.equal(mine != 0, ref != 0))
        print(f"SPLADE: {same_support} of {len(texts)} vectors keep exactly the library's "
              "dimensions")
        rows.append(("SPLADE embed_sparse", len(texts), ours_s, theirs_s, diff))

        llm = LLM(str(colbert))
        mve = MultiVectorEncoder(str(colbert), device="cpu")
        llm.encode(texts[:64], pooling_task="token_embed", use_tqdm=False)
        mve.encode_document(texts[:64])
        ours_s, _ = timed(lambda: llm.encode(texts, right, truncate_prompt_tokens=-1,
                                             pooling_task="token_embed", use_tqdm=False))
        theirs_s, _ = timed(lambda: mve.encode(texts))
        rows.append(("ColBERT token_embed", len(texts), ours_s, theirs_s, float("nan")))

        query, documents = "how do I install the package?", texts[:args.rerank_documents]
        ours_s, scores = timed(lambda: [o.outputs.score for o in llm.score(query, documents,
                                                                           use_tqdm=False)])

        def library():
            return mve.similarity(mve.encode_query([query]), mve.encode_document(documents))[0]

        theirs_s, reference = timed(library)
        diff = (torch.tensor(scores) - reference.float()).abs().max().item()
        rows.append((f"ColBERT MaxSim rerank, 1 x {len(documents)}", len(documents), ours_s,
                     theirs_s, diff))

    print(f"all-MiniLM-L6-v2 body, default dtype, CPU: {cpu_name()}, "
          f"torch threads {torch.get_num_threads()}\n")
    print("| workload | texts | cenote texts/s | sentence-transformers texts/s | ratio | "
          "max abs diff |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, count, ours_s, theirs_s, diff in rows:
        print(f"| {name} | {count} | {count / ours_s:,.0f} | {count / theirs_s:,.0f} | "
              f"{theirs_s / ours_s:.2f}x | {diff:.2e} |")


if __name__ == "__main__":
    main()
