"""NomicBert and GTE "new" encoders: cenote (native, packed tokens) vs a padded reference.

The honest peer is missing: sentence-transformers runs these checkpoints only through
their own remote code (``trust_remote_code``), which cannot be fetched offline. So the
peer here is the test-only reference in ``tests/reference_rotary_encoders.py`` (the
authors' modelling code restated: padded batches, eager PyTorch, SDPA attention, fp32),
fed as sentence-transformers would feed it (texts sorted by length, batches of 32).
It stands for "transformers-style padded inference" and is no faster than the authors'
code on CPU (theirs also runs SDPA on padded batches without flash-attn).

Random weights at nomic-embed-text-v1.5's widths (hidden 768, 12 heads, SwiGLU 3072,
no biases, rotary) and gte-base-en-v1.5's (hidden 768, 12 heads, GLU 3072, NTK RoPE),
``--layers`` layers each (default 4; the real models have 12, which scales both sides
alike), mean / CLS pooling then Normalize from their Sentence-Transformers layout.
Prints tokens/s, the ratios and the minimum cosine against the reference.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/rotary_encoders.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from common import best_of, embedding_matrix, script_parser
from corpus import english_paragraphs


def _configs(layers: int) -> dict[str, tuple[dict, str]]:
    nomic = {"architectures": ["NomicBertModel"], "model_type": "nomic_bert",
             "activation_function": "swiglu", "layer_norm_epsilon": 1e-12,
             "max_trained_positions": 2048, "mlp_fc1_bias": False, "mlp_fc2_bias": False,
             "n_embd": 768, "n_head": 12, "n_inner": 3072, "n_layer": layers,
             "n_positions": 8192, "prenorm": False, "qkv_proj_bias": False,
             "rotary_emb_base": 1000, "rotary_emb_fraction": 1.0, "type_vocab_size": 2,
             "vocab_size": 30528}
    gte = {"architectures": ["NewModel"], "model_type": "new", "hidden_act": "gelu",
           "hidden_size": 768, "intermediate_size": 3072, "layer_norm_eps": 1e-12,
           "max_position_embeddings": 8192, "num_attention_heads": 12,
           "num_hidden_layers": layers, "rope_scaling": {"factor": 2.0, "type": "ntk"},
           "rope_theta": 500000, "type_vocab_size": 0, "vocab_size": 30528}
    return {"NomicBert (nomic-embed-text-v1.5 shape)": (nomic, "mean"),
            "GTE new (gte-base-en-v1.5 shape)": (gte, "cls")}


def _reference_vectors(family, folder, token_ids, pooling, batch_size):
    from tests.reference_rotary_encoders import gte_new_forward, nomic_bert_hidden, pool

    order = sorted(range(len(token_ids)), key=lambda i: len(token_ids[i]))
    vectors = [None] * len(token_ids)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        ids = [token_ids[i] for i in idx]
        hidden = (nomic_bert_hidden(folder, ids) if family == "nomic"
                  else gte_new_forward(folder, ids)[0])
        for i, h in zip(idx, hidden, strict=True):
            vectors[i] = pool(h, pooling)
    return torch.stack(vectors)


def main() -> None:
    parser = script_parser(__doc__)
    parser.add_argument("--texts", type=int, default=200)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    from cenote import LLM
    from cenote.config import default_model_path
    from cenote.machine import cpu_name
    from tests.reference_rotary_encoders import (
        gte_shapes,
        nomic_shapes,
        st_layout,
        write_checkpoint,
    )

    texts = list(english_paragraphs(args.texts))
    print(f"{len(texts)} paragraphs, {args.layers} layers, torch threads "
          f"{torch.get_num_threads()}, CPU {cpu_name()}\n")
    print("| model | system | tokens/s | vs padded reference fp32 | min cosine vs it |")
    print("|---|---|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for name, (config, pooling) in _configs(args.layers).items():
            family = "nomic" if config["model_type"] == "nomic_bert" else "gte"
            shapes = nomic_shapes(config) if family == "nomic" else gte_shapes(config, False)
            # initializer_range's 0.02: wider random weights saturate attention at these
            # widths, where bf16 rounding then flips whole softmaxes.
            folder = write_checkpoint(Path(tmp) / family, config, shapes,
                                      Path(default_model_path()), std=0.02)
            st_layout(folder, pooling, 768)
            rows = []
            for dtype in ("auto", "float32"):
                llm = LLM(str(folder), dtype=dtype)
                llm.embed(texts[:32], use_tqdm=False)
                seconds, outs = best_of(lambda llm=llm: llm.embed(texts, use_tqdm=False),
                                        args.repeats)
                ids = [o.prompt_token_ids for o in outs]
                label = f"cenote ({str(llm.config.dtype).removeprefix('torch.')})"
                rows.append((label, seconds, embedding_matrix(outs)))
                del llm
            num_tokens = sum(map(len, ids))
            with torch.inference_mode():
                _reference_vectors(family, folder, ids[:32], pooling, args.batch_size)
                seconds, vecs = best_of(
                    lambda folder=folder, family=family, pooling=pooling, ids=ids:
                    _reference_vectors(family, folder, ids, pooling, args.batch_size),
                    args.repeats)
            rows.append(("padded reference fp32", seconds, vecs))
            ref_seconds, reference = rows[-1][1], rows[-1][2]
            for label, seconds, vectors in rows:
                cos = F.cosine_similarity(vectors, reference).min().item()
                print(f"| {name} | {label} | {num_tokens / seconds:,.0f} | "
                      f"{ref_seconds / seconds:.2f}x | {cos:.5f} |")


if __name__ == "__main__":
    main()
