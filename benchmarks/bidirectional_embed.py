"""A bidirectional Qwen3 embedder (``is_causal: false``): cenote vs sentence-transformers.

No such checkpoint ships with the project, so this builds a random Qwen3 model at
Qwen3-0.6B's widths (hidden 1024, 16 query heads and 8 key/value heads of 128, MLP
3072) with --layers layers (default 4; the real model has 28, which scales both
systems alike), ``is_causal: false`` in its config, in the Sentence-Transformers
layout with mean pooling and Normalize. Both embed the same paragraphs: cenote
``LLM.embed`` at its defaults and in fp32, sentence-transformers ``encode`` in
fp32 (batches of 32; transformers >= 5.2 runs ``is_causal: false`` both ways).
Prints tokens/s, the ratios and the minimum cosine against sentence-transformers.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bidirectional_embed.py
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from common import best_of, qwen3_06b_shaped, script_parser
from corpus import english_paragraphs


def main() -> None:
    parser = script_parser(__doc__)
    parser.add_argument("--texts", type=int, default=200)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import (
        Normalize,
        Pooling,
        Transformer,
    )

    from cenote import LLM
    from cenote.machine import cpu_name

    with tempfile.TemporaryDirectory() as tmp:
        path = qwen3_06b_shaped(Path(tmp) / "qwen3", args.layers, is_causal=False)
        body = Transformer(str(path), max_seq_length=256)
        SentenceTransformer(modules=[body, Pooling(1024, pooling_mode="mean"), Normalize()],
                            device="cpu").save(str(path / "st"))
        st_path = path / "st"
        assert json.loads((st_path / "config.json").read_text())["is_causal"] is False
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
        st.encode(texts[:32], batch_size=args.batch_size)
        seconds, vecs = best_of(lambda: st.encode(texts, batch_size=args.batch_size,
                                                  convert_to_tensor=True), args.repeats)
        rows.append(("sentence-transformers fp32", seconds, vecs.float()))

    st_seconds, reference = rows[-1][1], rows[-1][2]
    print(f"{len(texts)} paragraphs, {num_tokens} tokens, {args.layers} layers, torch threads "
          f"{torch.get_num_threads()}, CPU {cpu_name()}\n")
    print("| system | tokens/s | vs sentence-transformers fp32 | min cosine vs it |")
    print("|---|---:|---:|---:|")
    for name, seconds, vecs in rows:
        cos = F.cosine_similarity(vecs, reference).min().item()
        print(f"| {name} | {num_tokens / seconds:,.0f} | {st_seconds / seconds:.2f}x | "
              f"{cos:.5f} |")


if __name__ == "__main__":
    main()
