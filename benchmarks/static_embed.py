"""Static embeddings: cenote ``LLM.embed`` on a model2vec folder vs model2vec's own
``StaticModel.encode`` (and Sentence-Transformers' ``StaticEmbedding``) on the same
folder, and vs cenote running all-MiniLM-L6-v2, on the same texts.

The static model is built here (nothing is downloaded): the bundled MiniLM's
tokenizer with a random 30522 x 256 table, the shape of potion-base-8M. Its speed does
not depend on the values. Each system runs its defaults, is warmed up, and keeps its
best of ``--rounds`` passes, the systems taking turns (a busy machine slows them
alike). Ratios are of texts/s: every system reads the same texts, MiniLM with its two
special tokens more per text (tokens/s counts each system's own tokens).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/static_embed.py
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus import english_paragraphs  # noqa: E402


def build_model2vec_folder(target: Path, dims: int, normalize: bool = True) -> Path:
    """A model2vec folder with MiniLM's tokenizer and a random, seeded table."""
    from model2vec import StaticModel
    from tokenizers import Tokenizer

    from cenote.config import default_model_path

    tokenizer = Tokenizer.from_file(str(default_model_path() / "tokenizer.json"))
    table = np.random.default_rng(0).normal(size=(tokenizer.get_vocab_size(), dims))
    StaticModel(table.astype(np.float32), tokenizer, normalize=normalize,
                config={"model_type": "model2vec", "architectures": ["StaticModel"]}
                ).save_pretrained(target)
    return target


def timed_pass(run: Callable[[], object]) -> float:
    """One pass's wall time, from a collected heap, its outputs dropped after it."""
    gc.collect()
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=4000)
    parser.add_argument("--minilm-texts", type=int, default=500,
                        help="MiniLM is timed on the first N texts (its texts/s is compared)")
    parser.add_argument("--dims", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    import torch
    from model2vec import StaticModel
    from sentence_transformers import SentenceTransformer

    from cenote import LLM
    from cenote.machine import cpu_flags, cpu_name

    minilm = LLM()
    # MiniLM refuses texts over its 256 tokens: keep only texts that fit whole.
    fits = minilm.get_tokenizer()
    texts = [t for t in english_paragraphs(args.texts + args.texts // 4)
             if len(fits(t)["input_ids"]) <= minilm.config.max_model_len][:args.texts]
    scratch = tempfile.TemporaryDirectory()
    folder = build_model2vec_folder(Path(scratch.name) / "static", args.dims)
    static = LLM(str(folder))
    reference = StaticModel.from_pretrained(folder)
    st = SentenceTransformer(str(folder), device="cpu")
    short = texts[:args.minilm_texts]
    systems: dict[str, tuple[Callable[[], object], list[str]]] = {
        "cenote static (model2vec folder)": (lambda: static.embed(texts, use_tqdm=False), texts),
        "model2vec StaticModel.encode": (lambda: reference.encode(texts), texts),
        "sentence-transformers StaticEmbedding": (lambda: st.encode(texts, batch_size=1024),
                                                  texts),
        "cenote all-MiniLM-L6-v2": (lambda: minilm.embed(short, use_tqdm=False), short),
    }
    for run, _ in systems.values():  # warm-up
        run()
    seconds: dict[str, list[float]] = {name: [] for name in systems}
    for _ in range(args.rounds):
        for name, (run, _) in systems.items():
            seconds[name].append(timed_pass(run))
    outputs = {name: run() for name, (run, _) in systems.items()}

    tokenizer = reference.tokenizer
    static_tokens = sum(len(e.ids) for e in tokenizer.encode_batch(texts,
                                                                   add_special_tokens=False))
    minilm_tokens = sum(len(o.prompt_token_ids) for o in outputs["cenote all-MiniLM-L6-v2"])
    ours = np.stack([o.outputs.data.numpy() for o in outputs["cenote static (model2vec folder)"]])
    theirs = outputs["model2vec StaticModel.encode"]
    cosine = (ours * theirs).sum(1) / (np.linalg.norm(ours, axis=1)
                                       * np.linalg.norm(theirs, axis=1))
    print(f"{len(texts)} paragraphs ({static_tokens} tokens without special tokens), "
          f"static table {args.dims} dims; MiniLM on the first {len(short)} "
          f"({minilm_tokens} tokens); CPU {cpu_name()} (avx512_bf16: "
          f"{'yes' if 'avx512_bf16' in cpu_flags().split() else 'no'}), torch threads "
          f"{torch.get_num_threads()}; best of {args.rounds} rounds")
    print(f"min cosine, cenote static vs model2vec: {cosine.min():.6f}")
    rate = {name: len(systems[name][1]) / min(seconds[name]) for name in systems}
    tokens = {name: static_tokens for name in systems}
    tokens["cenote all-MiniLM-L6-v2"] = minilm_tokens * len(texts) / len(short)
    base = rate["cenote all-MiniLM-L6-v2"]
    m2v = rate["model2vec StaticModel.encode"]
    print("\n| system | texts/s | tokens/s | vs cenote MiniLM | vs model2vec |")
    print("|---|---:|---:|---:|---:|")
    for name in systems:
        per_text = tokens[name] / len(texts)
        print(f"| {name} | {rate[name]:,.0f} | {rate[name] * per_text:,.0f} | "
              f"{rate[name] / base:.1f}x | {rate[name] / m2v:.2f}x |")
    scratch.cleanup()


if __name__ == "__main__":
    main()
