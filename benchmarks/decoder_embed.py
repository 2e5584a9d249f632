"""Decoder embedders (Qwen3-Embedding style): cenote vs transformers on the same weights.

No decoder checkpoint ships with the project, so this builds a random Qwen3
model at Qwen3-Embedding-0.6B's widths (hidden 1024, 16 query heads and 8
key/value heads of 128, MLP 3072) with --layers layers (default 4; the real
model has 28, which scales both systems alike), saved with ``save_pretrained``
into a temporary folder. Both embed the same paragraphs with last-token
pooling and L2 normalisation: cenote ``LLM.embed`` at its defaults, and
transformers ``Qwen3Model`` in bf16 and fp32, batches of 32 padded on the left
(as sentence-transformers runs Qwen3-Embedding). Prints tokens/s, the ratios
and the minimum cosine similarity against transformers fp32. Then cenote
again with its native row-wise kernels off (RMSNorm, rotary; torch ops
instead), to show what they are worth.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/decoder_embed.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from common import best_of, qwen3_06b_shaped, script_parser
from corpus import english_paragraphs


@torch.inference_mode()
def transformers_embed(model, tokenizer, texts: list[str], batch_size: int) -> torch.Tensor:
    out = []
    for i in range(0, len(texts), batch_size):
        enc = tokenizer(texts[i:i + batch_size], padding=True, return_tensors="pt")
        hidden = model(**enc).last_hidden_state
        out.append(F.normalize(hidden[:, -1].float(), dim=-1))  # left padding: last = real
    return torch.cat(out)


def main() -> None:
    parser = script_parser(__doc__)
    parser.add_argument("--texts", type=int, default=300)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--transformers-dtypes", default="bfloat16,float32",
                        help="the transformers runs, comma-separated (bf16 is slow on CPUs "
                             "without native bf16)")
    args = parser.parse_args()

    import transformers

    from cenote import LLM
    from cenote.machine import cpu_name
    from cenote.models import kernels

    with tempfile.TemporaryDirectory() as tmp:
        path = qwen3_06b_shaped(Path(tmp) / "qwen3", args.layers)
        llm = LLM(str(path))
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(path), padding_side="left")
        texts = [t for t in english_paragraphs(args.texts + 200)
                 if len(tokenizer(t)["input_ids"]) <= 256][: args.texts]
        llm.embed(texts[:32], use_tqdm=False)
        seconds, outs = best_of(lambda: llm.embed(texts, use_tqdm=False), args.repeats)
        num_tokens = sum(len(o.prompt_token_ids) for o in outs)
        rows = [(f"cenote ({str(llm.config.dtype).removeprefix('torch.')}, default)", seconds,
                 torch.tensor([o.outputs.embedding for o in outs]))]

        rowwise = kernels.native_rowwise()
        if rowwise is not None:
            kernels._rowwise, kernels._rowwise_reason = None, "off for this comparison"
            try:
                seconds, outs = best_of(lambda: llm.embed(texts, use_tqdm=False), args.repeats)
            finally:
                kernels._rowwise, kernels._rowwise_reason = rowwise, None
            rows.append(("cenote, row-wise kernels off (torch RMSNorm, rotary, SiLU gate)", seconds,
                         torch.tensor([o.outputs.embedding for o in outs])))

        for dtype in (getattr(torch, name) for name in args.transformers_dtypes.split(",")):
            model = transformers.Qwen3Model.from_pretrained(str(path), dtype=dtype).eval()
            transformers_embed(model, tokenizer, texts[:32], args.batch_size)
            seconds, vecs = best_of(
                lambda model=model: transformers_embed(model, tokenizer, texts, args.batch_size),
                args.repeats)
            rows.append((f"transformers Qwen3Model {str(dtype).removeprefix('torch.')}, "
                         f"batch {args.batch_size}", seconds, vecs))
            del model

    # Ratios against the first transformers run; cosines against the last (fp32 by default).
    first = next(row for row in rows if row[0].startswith("transformers"))
    reference = rows[-1]
    print(f"{len(texts)} paragraphs, {num_tokens} tokens, {args.layers} layers, torch threads "
          f"{torch.get_num_threads()}, CPU {cpu_name()}\n")
    print(f"| system | tokens/s | vs {first[0]} | min cosine vs {reference[0]} |")
    print("|---|---:|---:|---:|")
    for name, seconds, vecs in rows:
        cos = F.cosine_similarity(vecs, reference[2]).min().item()
        print(f"| {name} | {num_tokens / seconds:,.0f} | {first[1] / seconds:.2f}x | {cos:.5f} |")


if __name__ == "__main__":
    main()
