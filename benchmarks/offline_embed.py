"""Offline embedding throughput: cenote ``LLM.embed`` vs sentence-transformers.

One run, same texts, same weights (the bundled all-MiniLM-L6-v2 unless --model):
cenote at its default settings and with opt-in int8 matmuls (``--int8``),
sentence-transformers ``encode`` in fp32 (its default) and in bf16. Prints texts/s,
tokens/s, the speed ratios and the minimum and mean cosine similarity of each system
against the sentence-transformers fp32 reference.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/offline_embed.py

``--modernbert-base`` runs a random checkpoint at ModernBERT-base's shape instead
(22 layers of 768, 12 heads, GeGLU 1152, global attention every 3rd layer, a local
window of 128; MiniLM's tokenizer, CLS pooling and normalisation as gte-modernbert):
random weights time the same as trained ones.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from common import best_of, script_parser
from corpus import english_paragraphs

# Other scripts import it by this name.
timed = best_of


def build_modernbert_base(target: Path) -> Path:
    """A random ModernBERT-base-shaped checkpoint in the Sentence-Transformers layout."""
    import json
    import shutil

    import transformers

    from cenote.config import default_model_path

    minilm = Path(default_model_path())
    torch.manual_seed(0)
    config = transformers.ModernBertConfig(
        vocab_size=30522, hidden_size=768, intermediate_size=1152, num_hidden_layers=22,
        num_attention_heads=12, global_attn_every_n_layers=3, local_attention=128,
        max_position_embeddings=8192, pad_token_id=0, cls_token_id=101, sep_token_id=102,
        bos_token_id=101, eos_token_id=102)
    transformers.ModernBertModel(config).save_pretrained(target)
    transformers.AutoTokenizer.from_pretrained(minilm).save_pretrained(target)
    shutil.copytree(minilm / "1_Pooling", target / "1_Pooling")
    pooling = json.loads((target / "1_Pooling" / "config.json").read_text())
    pooling.update(word_embedding_dimension=768, pooling_mode_cls_token=True,
                   pooling_mode_mean_tokens=False)
    (target / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    for name in ("modules.json", "sentence_bert_config.json"):
        shutil.copy(minilm / name, target / name)
    return target


def main() -> None:
    parser = script_parser(__doc__)
    parser.add_argument("--model", default=None, help="model folder (default: bundled MiniLM)")
    parser.add_argument("--texts", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--st-batch-size", type=int, default=32)
    parser.add_argument("--st-bf16", choices=["auto", "yes", "no"], default="auto",
                        help="also time sentence-transformers in bf16; auto: only where the "
                             "CPU has native bf16 (elsewhere it is emulated, many times slower)")
    parser.add_argument("--modernbert-base", action="store_true",
                        help="a random ModernBERT-base-shaped checkpoint instead of --model")
    parser.add_argument("--int8", action="store_true",
                        help="also time cenote with quantization='int8'")
    args = parser.parse_args()

    from sentence_transformers import SentenceTransformer

    from cenote import LLM
    from cenote.config import default_model_path
    from cenote.machine import cpu_has_native_bf16, cpu_name

    model_path = str(args.model or default_model_path())
    if args.modernbert_base:
        import tempfile

        model_path = str(build_modernbert_base(Path(tempfile.mkdtemp()) / "modernbert-base"))
    llm = LLM(model_path)
    # sentence-transformers silently truncates long texts; keep only texts that fit whole.
    tokenizer = llm.get_tokenizer()
    texts = [t for t in english_paragraphs(args.texts + 200)
             if len(tokenizer(t)["input_ids"]) <= llm.config.max_model_len][: args.texts]
    print(f"{len(texts)} paragraphs, model {model_path}, torch threads "
          f"{torch.get_num_threads()}")
    num_tokens = sum(len(o.prompt_token_ids) for o in llm.embed(texts[:256], use_tqdm=False))
    seconds, outs = best_of(lambda: llm.embed(texts, use_tqdm=False), args.repeats)
    num_tokens = sum(len(o.prompt_token_ids) for o in outs)
    cenote_vecs = torch.tensor([o.outputs.embedding for o in outs])
    rows = [("cenote (default: " + str(llm.config.dtype).removeprefix("torch.") + ")",
             seconds, cenote_vecs)]
    if args.int8:
        del llm
        int8 = LLM(model_path, quantization="int8")
        print(f"cenote int8 at load: {int8.engine.int8_accuracy}")
        int8.embed(texts[:256], use_tqdm=False)
        seconds, outs = best_of(lambda: int8.embed(texts, use_tqdm=False), args.repeats)
        rows.append(("cenote int8", seconds, torch.tensor([o.outputs.embedding for o in outs])))
        del int8

    st = SentenceTransformer(model_path, device="cpu")
    st.encode(texts[:256], batch_size=args.st_batch_size)
    seconds, ref = best_of(lambda: st.encode(texts, batch_size=args.st_batch_size,
                                           convert_to_tensor=True), args.repeats)
    rows.append(("sentence-transformers fp32", seconds, ref.float()))
    if args.st_bf16 == "yes" or (args.st_bf16 == "auto" and cpu_has_native_bf16()):
        st_bf16 = st.to(torch.bfloat16)
        st_bf16.encode(texts[:256], batch_size=args.st_batch_size)
        seconds, vecs = best_of(lambda: st_bf16.encode(texts, batch_size=args.st_batch_size,
                                                     convert_to_tensor=True), args.repeats)
        rows.append(("sentence-transformers bf16", seconds, vecs.float()))

    print(f"\n{num_tokens} tokens in {len(texts)} texts "
          f"({num_tokens / len(texts):.1f} tokens/text), CPU: {cpu_name()}\n")
    print("| system | texts/s | tokens/s | vs ST fp32 | vs ST bf16 | cosine vs ST fp32: min "
          "| mean |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    by_name = {name: seconds for name, seconds, _ in rows}
    st32 = by_name["sentence-transformers fp32"]
    st16 = by_name.get("sentence-transformers bf16")
    for name, seconds, vecs in rows:
        cos = F.cosine_similarity(vecs, ref.float())
        vs16 = f"{st16 / seconds:.2f}x" if st16 else "-"
        print(f"| {name} | {len(texts) / seconds:,.0f} | {num_tokens / seconds:,.0f} | "
              f"{st32 / seconds:.2f}x | {vs16} | {cos.min().item():.5f} "
              f"| {cos.mean().item():.5f} |")


if __name__ == "__main__":
    main()
