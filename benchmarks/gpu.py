"""The CUDA path: correctness against CPU fp32 and throughput against
sentence-transformers on the same GPU.

Embedding (the bundled all-MiniLM-L6-v2 unless --model): cenote ``LLM.embed`` on
the GPU at its default dtype (the checkpoint's half type: fp16 for MiniLM), in
bf16 and in fp32, at a few batch-token budgets; sentence-transformers ``encode``
on the GPU in fp32 (its default), fp16 and bf16 at a few batch sizes. Every
system embeds the same texts (the corpus repeated --copies times, so a pass
lasts long enough to time); cosine similarity is checked on the distinct texts
against sentence-transformers fp32 on the CPU.

Reranking: the MiniLM cross-encoder of ``tests/factories.py``; cenote
``LLM.score`` vs ``CrossEncoder.predict``, both on the GPU; score differences
against ``CrossEncoder.predict`` fp32 on the CPU.

Then a profile of one cenote pass (GPU kernel time vs wall time).

    HF_HUB_OFFLINE=1 python benchmarks/gpu.py

Runs on a machine with an NVIDIA GPU (``--device cpu`` only checks the script).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT.parent))
from corpus import english_paragraphs  # noqa: E402

QUERY = "How do I configure logging and handle errors when a request times out?"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, repeats: int, device: torch.device) -> tuple[float, object]:
    """Best wall time of ``repeats`` calls (the caller warms up first) and the last result."""
    best, result = float("inf"), None
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        result = fn()
        sync(device)
        best = min(best, time.perf_counter() - start)
    return best, result


def release() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def load_texts(args, tokenizer, limit: int) -> list[str]:
    if args.texts_file:
        candidates = json.loads(Path(args.texts_file).read_text())
    else:
        candidates = english_paragraphs(args.texts + 200)
    # sentence-transformers truncates long texts silently; keep only texts that fit whole.
    return [t for t in candidates if len(tokenizer(t)["input_ids"]) <= limit][: args.texts]


def embed_section(args, device, model_path: str) -> None:
    from sentence_transformers import SentenceTransformer

    from cenote import LLM

    st_cpu = SentenceTransformer(model_path, device="cpu")
    texts = load_texts(args, st_cpu.tokenizer, st_cpu.max_seq_length)
    reference = st_cpu.encode(texts, batch_size=32, convert_to_tensor=True).float()
    del st_cpu
    work = texts * args.copies
    n = len(texts)
    print(f"{n} distinct paragraphs x {args.copies} copies, model {model_path}, "
          f"device {torch.cuda.get_device_name(device) if device.type == 'cuda' else device}")

    rows = []  # (name, seconds, vectors of the distinct texts)
    num_tokens = None
    budgets = [int(b) for b in args.budgets.split(",")]
    for dtype in ("auto", "bfloat16", "float32"):
        for budget in budgets if dtype == "auto" else budgets[-1:]:
            llm = LLM(model_path, device=str(device), dtype=dtype,
                      max_num_batched_tokens=budget)
            llm.embed(texts[:512], use_tqdm=False)
            seconds, outs = timed(lambda llm=llm: llm.embed(work, use_tqdm=False),
                                  args.repeats, device)
            num_tokens = sum(len(o.prompt_token_ids) for o in outs)
            vecs = torch.tensor([o.outputs.embedding for o in outs[:n]])
            name = (f"cenote {str(llm.config.dtype).removeprefix('torch.')}"
                    f"{' (default)' if dtype == 'auto' else ''}, {budget} tokens/batch")
            rows.append((name, seconds, vecs))
            print(f"  {name}: {seconds:.2f} s", flush=True)
            del llm, outs
            release()

    # The same default run with the padded SDPA attention instead of flash varlen.
    from cenote.models import layers

    if device.type == "cuda":
        print(f"  flash varlen attention refused: {layers._flash_varlen_failed}")
        layers._flash_varlen_failed = True
        llm = LLM(model_path, device=str(device), max_num_batched_tokens=budgets[-1])
        llm.embed(texts[:512], use_tqdm=False)
        seconds, outs = timed(lambda: llm.embed(work, use_tqdm=False), args.repeats, device)
        name = f"cenote default, padded SDPA attention, {budgets[-1]} tokens/batch"
        rows.append((name, seconds, torch.tensor([o.outputs.embedding for o in outs[:n]])))
        print(f"  {name}: {seconds:.2f} s", flush=True)
        layers._flash_varlen_failed = False
        del llm, outs
        release()
        attention_section(device, st_token_lengths(model_path, texts))

    st_dtypes = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    for label in args.st_dtypes.split(","):
        dtype = st_dtypes[label]
        st = SentenceTransformer(model_path, device=str(device)).to(dtype)
        for batch_size in (int(b) for b in args.st_batch_sizes.split(",")):
            st.encode(texts[:512], batch_size=batch_size)
            seconds, vecs = timed(lambda st=st, bs=batch_size: st.encode(
                work, batch_size=bs, convert_to_tensor=True), args.repeats, device)
            name = f"sentence-transformers {label}, batch {batch_size}"
            rows.append((name, seconds, vecs[:n].float().cpu()))
            print(f"  {name}: {seconds:.2f} s", flush=True)
        del st
        release()

    st_best = min(seconds for name, seconds, _ in rows if name.startswith("sentence"))
    st_default = next(seconds for name, seconds, _ in rows
                      if name == "sentence-transformers fp32, batch 32")
    print(f"\n{num_tokens} tokens in {len(work)} texts "
          f"({num_tokens / len(work):.1f} tokens/text)\n")
    print("| system | texts/s | tokens/s | vs ST fp32 batch 32 | vs fastest ST | "
          "min cosine vs CPU fp32 |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, seconds, vecs in rows:
        cos = F.cosine_similarity(vecs, reference).min().item()
        print(f"| {name} | {len(work) / seconds:,.0f} | {num_tokens / seconds:,.0f} | "
              f"{st_default / seconds:.2f}x | {st_best / seconds:.2f}x | {cos:.5f} |")

    if args.profile:
        profile(model_path, device, work)


def st_token_lengths(model_path: str, texts: list[str]) -> list[int]:
    from transformers import AutoTokenizer

    return [len(ids) for ids in AutoTokenizer.from_pretrained(model_path)(texts)["input_ids"]]


def attention_section(device, lengths: list[int]) -> None:
    """MiniLM-shaped attention (12 heads x 32, fp16) over real token lengths:
    flash varlen on the packed rows vs SDPA over the padded layout (with its copies)."""
    from cenote.models import layers

    print("\nattention alone, fp16, 12 heads x 32 (ms per call, CUDA events, 50 calls):")
    for budget in (8192, 32768):
        seqs, total = [], 0
        for n in lengths:
            if total + n > budget:
                break
            seqs.append([1] * n)
            total += n
        batch = layers.PackedBatch.build(seqs, device=device)
        q, k, v = (torch.randn(total, 12, 32, device=device, dtype=torch.float16)
                   for _ in range(3))
        times = {}
        for label, refused in (("flash varlen", False), ("padded SDPA", True)):
            layers._flash_varlen_failed = refused
            for _ in range(5):
                layers.packed_attention(q, k, v, batch, False)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(50):
                out = layers.packed_attention(q, k, v, batch, False)
            end.record()
            torch.cuda.synchronize()
            times[label] = (start.elapsed_time(end) / 50, out.float())
        layers._flash_varlen_failed = False
        diff = (times["flash varlen"][1] - times["padded SDPA"][1]).abs().max().item()
        print(f"  {len(seqs)} sequences, {total} tokens (longest {batch.max_len}): "
              f"flash varlen {times['flash varlen'][0]:.3f} ms, padded SDPA "
              f"{times['padded SDPA'][0]:.3f} ms, max abs diff {diff:.1e}")


def profile(model_path: str, device, work: list[str]) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from cenote import LLM

    llm = LLM(model_path, device=str(device))
    llm.embed(work[:512], use_tqdm=False)
    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    sync(device)
    start = time.perf_counter()
    with torch_profile(activities=activities) as prof:
        llm.embed(work, use_tqdm=False)
        sync(device)
    wall = time.perf_counter() - start
    events = prof.key_averages()
    sort = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    gpu_us = sum(getattr(e, "self_device_time_total", 0) for e in events)
    print(f"\nprofile of one default pass: wall {wall:.2f} s (profiled), "
          f"GPU kernels {gpu_us / 1e6:.2f} s: the GPU busy {gpu_us / 1e6 / wall:.0%} of the "
          "pass (issue 20's target: >= 60 %)")
    print(events.table(sort_by=sort, row_limit=18, max_name_column_width=60))
    del llm
    release()


def rerank_section(args, device) -> None:
    from sentence_transformers import CrossEncoder

    from cenote import LLM
    from cenote.config import default_model_path
    from tests.factories import build_cross_encoder

    with tempfile.TemporaryDirectory() as tmp:
        path = str(build_cross_encoder(default_model_path(), Path(tmp) / "cross-encoder"))
        st_cpu = CrossEncoder(path, device="cpu")
        limit = min(st_cpu.tokenizer.model_max_length, st_cpu.model.config.max_position_embeddings)
        candidates = (json.loads(Path(args.texts_file).read_text()) if args.texts_file
                      else english_paragraphs(args.passages + 200, 20, 200))
        passages = [p for p in candidates
                    if len(st_cpu.tokenizer(QUERY, p)["input_ids"]) <= limit][: args.passages]
        reference = torch.tensor(st_cpu.predict([(QUERY, p) for p in passages]))
        del st_cpu
        work = passages * args.copies
        n = len(passages)
        print(f"\nrerank: 1 query x {n} passages x {args.copies} copies")
        rows = []
        for dtype in ("fp32", "fp16"):
            st = CrossEncoder(path, device=str(device))
            if dtype == "fp16":
                st.model.half()
            pairs = [(QUERY, p) for p in work]
            st.predict(pairs[:256])
            seconds, scores = timed(lambda st=st, pairs=pairs: st.predict(pairs),
                                    args.repeats, device)
            rows.append((f"CrossEncoder.predict {dtype}, batch 32", seconds,
                         torch.tensor(scores[:n], dtype=torch.float32)))
            del st
            release()
        for dtype in ("auto", "float32"):
            llm = LLM(path, device=str(device), dtype=dtype,
                      max_num_batched_tokens=int(args.budgets.split(",")[-1]))
            llm.score(QUERY, passages[:256], use_tqdm=False)
            seconds, outs = timed(lambda llm=llm: llm.score(QUERY, work, use_tqdm=False),
                                  args.repeats, device)
            label = str(llm.config.dtype).removeprefix("torch.")
            rows.append((f"cenote LLM.score {label}{' (default)' if dtype == 'auto' else ''}",
                         seconds, torch.tensor([o.outputs.score for o in outs[:n]])))
            del llm
            release()
        base = rows[0][1]
        print("\n| system | pairs/s | vs CrossEncoder fp32 | max abs score diff vs CPU fp32 |")
        print("|---|---:|---:|---:|")
        for name, seconds, scores in rows:
            diff = (scores - reference).abs().max().item()
            print(f"| {name} | {len(work) / seconds:,.0f} | {base / seconds:.2f}x | {diff:.2e} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model folder (default: bundled MiniLM)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--texts", type=int, default=2000)
    parser.add_argument("--texts-file", default=None,
                        help="a JSON list of texts to use instead of the local corpus")
    parser.add_argument("--copies", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--budgets", default="8192,32768",
                        help="cenote max_num_batched_tokens values (comma-separated)")
    parser.add_argument("--st-batch-sizes", default="32,256")
    parser.add_argument("--st-dtypes", default="fp32,fp16,bf16")
    parser.add_argument("--passages", type=int, default=1000)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--skip", default="", help="embed and/or rerank, comma-separated")
    args = parser.parse_args()

    from cenote.config import default_model_path

    device = torch.device(args.device)
    model_path = str(args.model or default_model_path())
    skip = set(filter(None, args.skip.split(",")))
    if "embed" not in skip:
        embed_section(args, device, model_path)
    if "rerank" not in skip:
        rerank_section(args, device)


if __name__ == "__main__":
    main()
