"""Bidirectional decoder embedders: cenote vs sentence-transformers fp32 and bf16.

No such checkpoint ships with the project, so this builds a random one (random weights
time the same as trained ones) in the Sentence-Transformers layout, with MiniLM's
tokenizer:

- default: Qwen3 at Qwen3-0.6B's widths (hidden 1024, 16 query heads and 8 key/value
  heads of 128, MLP 3072) with ``is_causal: false``, mean pooling and Normalize;
  --layers layers (default 4; the real model has 28, which scales both systems alike).
- ``--embeddinggemma``: Gemma3 at EmbeddingGemma-300m's widths (``common.py``: hidden
  768, MLP 1152, 3 query heads sharing 1 key/value head of 256, five sliding layers with
  a window of 512 to one full layer, ``use_bidirectional_attention``) with mean pooling,
  Dense 768 -> 3072 -> 768 and Normalize, as EmbeddingGemma ships; --layers layers
  (default 24, the real depth) and MiniLM's 30,522-token vocabulary instead of 262,144
  (the embedding lookup costs no matmul). The texts go in without a prompt.

Both systems embed the same paragraphs (``corpus.py``, each within 256 tokens): cenote
``LLM.embed`` at its defaults and in fp32, sentence-transformers ``encode`` in fp32 and
in bf16 (batches of 32; bf16 only where the CPU has native bf16 unless --st-bf16 yes).
Prints tokens/s, the ratios and the minimum cosine against sentence-transformers fp32.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bidirectional_embed.py
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bidirectional_embed.py --embeddinggemma
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from common import best_of, embeddinggemma_shaped, qwen3_06b_shaped, script_parser
from corpus import english_paragraphs


def build_qwen3(target: Path, layers: int) -> Path:
    """The bidirectional Qwen3-0.6B-shaped checkpoint with mean pooling and Normalize."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import (
        Normalize,
        Pooling,
        Transformer,
    )

    path = qwen3_06b_shaped(target, layers, is_causal=False)
    body = Transformer(str(path), max_seq_length=256)
    SentenceTransformer(modules=[body, Pooling(1024, pooling_mode="mean"), Normalize()],
                        device="cpu").save(str(path / "st"))
    assert json.loads((path / "st" / "config.json").read_text())["is_causal"] is False
    return path / "st"


def main() -> None:
    parser = script_parser(__doc__)
    parser.add_argument("--embeddinggemma", action="store_true",
                        help="an EmbeddingGemma-300m-shaped checkpoint instead of Qwen3")
    parser.add_argument("--texts", type=int, default=200)
    parser.add_argument("--layers", type=int, default=None,
                        help="layers (default: 4 for Qwen3, 24 for EmbeddingGemma)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--st-bf16", choices=["auto", "yes", "no"], default="auto",
                        help="also time sentence-transformers in bf16; auto: only where the "
                             "CPU has native bf16 (elsewhere it is emulated, many times slower)")
    args = parser.parse_args()
    layers = args.layers or (24 if args.embeddinggemma else 4)

    from sentence_transformers import SentenceTransformer

    from cenote import LLM
    from cenote.machine import cpu_has_native_bf16, cpu_name

    with tempfile.TemporaryDirectory() as tmp:
        if args.embeddinggemma:
            shape, st_path = "EmbeddingGemma-300m", embeddinggemma_shaped(
                Path(tmp) / "embeddinggemma", layers)
        else:
            shape, st_path = "Qwen3-0.6B (is_causal: false)", build_qwen3(
                Path(tmp) / "qwen3", layers)
        st = SentenceTransformer(str(st_path), device="cpu")
        texts = [t for t in english_paragraphs(args.texts + 200)
                 if len(st.tokenizer(t)["input_ids"]) <= 256][: args.texts]
        rows = []
        for dtype in ("auto", "float32"):
            llm = LLM(str(st_path), dtype=dtype)
            llm.embed(texts[:32], use_tqdm=False)
            seconds, outs = best_of(lambda llm=llm: llm.embed(texts, use_tqdm=False),
                                    args.repeats)
            num_tokens = sum(len(o.prompt_token_ids) for o in outs)
            name = f"cenote ({str(llm.config.dtype).removeprefix('torch.')})"
            rows.append((name, seconds, torch.tensor([o.outputs.embedding for o in outs])))
            del llm

        def st_encode():
            return st.encode(texts, batch_size=args.batch_size, convert_to_tensor=True)

        st.encode(texts[:32], batch_size=args.batch_size)
        seconds, reference = best_of(st_encode, args.repeats)
        rows.append(("sentence-transformers fp32", seconds, reference.float()))
        if args.st_bf16 == "yes" or (args.st_bf16 == "auto" and cpu_has_native_bf16()):
            st.to(torch.bfloat16)
            st.encode(texts[:32], batch_size=args.batch_size)
            seconds, vecs = best_of(st_encode, args.repeats)
            rows.append(("sentence-transformers bf16", seconds, vecs.float()))

    by_name = {name: seconds for name, seconds, _ in rows}
    st32, st16 = by_name["sentence-transformers fp32"], by_name.get("sentence-transformers bf16")
    print(f"{shape} shape, {layers} layers, random weights; {len(texts)} paragraphs, "
          f"{num_tokens} tokens, torch threads {torch.get_num_threads()}, CPU {cpu_name()}\n")
    print("| system | tokens/s | vs ST fp32 | vs ST bf16 | min cosine vs ST fp32 |")
    print("|---|---:|---:|---:|---:|")
    for name, seconds, vecs in rows:
        cos = F.cosine_similarity(vecs, reference.float()).min().item()
        vs16 = f"{st16 / seconds:.2f}x" if st16 else "-"
        print(f"| {name} | {num_tokens / seconds:,.0f} | {st32 / seconds:.2f}x | {vs16} | "
              f"{cos:.5f} |")


if __name__ == "__main__":
    main()
