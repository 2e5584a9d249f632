"""Long documents: cenote's chunked processing against sentence-transformers embedding
the same chunks by hand (the same token windows, the same token-weighted mean).

Documents of --min-tokens to --max-tokens tokens are built by joining real
paragraphs (corpus.py). cenote runs with ``enable_chunked_processing``; for
sentence-transformers the token ids cenote reports for each document are cut into
windows of the model's ``max_seq_length`` tokens, the windows (of all documents,
in batches) go through the model's own modules without its Normalize, and each
document's windows are averaged by token count and normalised, as cenote does.
Prints docs/s, tokens/s, the ratio, and the minimum cosine between the two.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/long_documents.py --documents 200
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus import english_paragraphs  # noqa: E402


def build_documents(tokenizer, count: int, min_tokens: int, max_tokens: int) -> list[str]:
    paragraphs = english_paragraphs(3000)
    rng = random.Random(0)
    documents = []
    for _ in range(count):
        target = rng.randint(min_tokens, max_tokens)
        parts, length = [], 0
        while length < target:
            paragraph = rng.choice(paragraphs)
            parts.append(paragraph)
            length += len(tokenizer(paragraph, add_special_tokens=False)["input_ids"])
        documents.append("\n\n".join(parts))
    return documents


def st_chunked(st, token_ids: list[list[int]], window: int, batch_size: int) -> torch.Tensor:
    """Each document's windows through sentence-transformers, batched across documents."""
    chunks, owners = [], []
    for doc, ids in enumerate(token_ids):
        for start in range(0, len(ids), window):
            chunks.append(ids[start:start + window])
            owners.append(doc)
    vectors = []
    with torch.inference_mode():
        for begin in range(0, len(chunks), batch_size):
            batch = chunks[begin:begin + batch_size]
            width = max(len(c) for c in batch)
            ids = torch.tensor([c + [0] * (width - len(c)) for c in batch])
            mask = torch.tensor([[1] * len(c) + [0] * (width - len(c)) for c in batch])
            out = st.forward({"input_ids": ids, "attention_mask": mask,
                              "token_type_ids": torch.zeros_like(ids)})
            vectors.append(out["sentence_embedding"])  # pooled, not normalised
    vectors = torch.cat(vectors).float()
    weights = torch.tensor([len(c) for c in chunks], dtype=torch.float32)
    sums = torch.zeros(len(token_ids), vectors.shape[1]).index_add_(
        0, torch.tensor(owners), vectors * weights[:, None])
    totals = torch.zeros(len(token_ids)).index_add_(0, torch.tensor(owners), weights)
    return F.normalize(sums / totals[:, None], dim=-1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model folder (default: bundled MiniLM)")
    parser.add_argument("--documents", type=int, default=200)
    parser.add_argument("--min-tokens", type=int, default=2000)
    parser.add_argument("--max-tokens", type=int, default=20000)
    parser.add_argument("--st-batch-size", type=int, default=32)
    args = parser.parse_args()

    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize

    from cenote import LLM
    from cenote.config import default_model_path
    from cenote.machine import cpu_name

    path = str(args.model or default_model_path())
    llm = LLM(path, override_pooler_config={"enable_chunked_processing": True})
    window = llm.config.max_model_len
    documents = build_documents(llm.get_tokenizer(), args.documents, args.min_tokens,
                                args.max_tokens)
    llm.embed(documents[:2], use_tqdm=False)  # warm-up
    start = time.perf_counter()
    outs = llm.embed(documents, use_tqdm=False)
    cenote_s = time.perf_counter() - start
    token_ids = [o.prompt_token_ids for o in outs]
    tokens = sum(len(ids) for ids in token_ids)
    cenote_vecs = torch.tensor([o.outputs.embedding for o in outs])

    st = SentenceTransformer(path, device="cpu")
    if isinstance(st[-1], Normalize):
        st = SentenceTransformer(modules=list(st)[:-1], device="cpu")  # normalise the mean
    st_chunked(st, token_ids[:2], window, args.st_batch_size)  # warm-up
    start = time.perf_counter()
    st_vecs = st_chunked(st, token_ids, window, args.st_batch_size)
    st_s = time.perf_counter() - start

    cos = F.cosine_similarity(cenote_vecs, st_vecs).min().item()
    print(f"{len(documents)} documents, {tokens} tokens ({tokens / len(documents):.0f} per "
          f"document), window {window}, dtype {str(llm.config.dtype).removeprefix('torch.')}, "
          f"CPU: {cpu_name()}\n")
    print("| system | docs/s | tokens/s | vs ST | min cosine vs ST |")
    print("|---|---:|---:|---:|---:|")
    print(f"| sentence-transformers, chunks by hand | {len(documents) / st_s:.2f} | "
          f"{tokens / st_s:,.0f} | 1.00x | 1.00000 |")
    print(f"| cenote, enable_chunked_processing | {len(documents) / cenote_s:.2f} | "
          f"{tokens / cenote_s:,.0f} | {st_s / cenote_s:.2f}x | {cos:.5f} |")


if __name__ == "__main__":
    main()
