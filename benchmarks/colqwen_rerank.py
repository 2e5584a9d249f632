"""ColQwen2 MaxSim rerank: 1 text query x --pages page images, cenote vs transformers.

Builds a ColQwen2ForRetrieval checkpoint with random weights (a Qwen2-VL backbone, the
language model at --hidden width and --layers layers, a 4-block vision tower; the real
2B model is 1536 wide and 28 layers deep, which scales both runs alike) and its
ColQwen2Processor, and page images of mixed sizes (portrait and landscape, 120-190
vision tokens each after the 2x2 merge). Both sides start from the same decoded PIL
images and text:

- cenote: ``LLM.score(query, pages)`` (the processor's query and image prompts, pages
  packed into token-budgeted batches, MaxSim);
- transformers: ``ColQwen2Processor.process_images`` / ``process_queries`` in batches of
  --batch-size, ``ColQwen2ForRetrieval`` under ``torch.inference_mode``, then
  ``processor.score_retrieval`` (MaxSim), as the model card does.

Best of --repeats after a warm-up on 8 pages, at the default dtype and in fp32; prints pages/s,
the ratio, and how far the scores are apart.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/colqwen_rerank.py
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

QUERY = "What was the operating margin in the third quarter?"
# (width, height) of the pages, cycled: portrait and landscape pages of several sizes.
SIZES = [(308, 420), (420, 308), (280, 392), (336, 448), (294, 406)]


def build_checkpoint(target: Path, hidden: int, layers: int) -> Path:
    from transformers import (
        AutoImageProcessor,
        AutoTokenizer,
        ColQwen2Config,
        ColQwen2ForRetrieval,
        ColQwen2Processor,
    )

    from tests.vlm_factories import build_byte_tokenizer, tiny_qwen2_vl_config

    ids = build_byte_tokenizer(target)
    vlm = tiny_qwen2_vl_config(ids).to_dict()
    heads = hidden // 64
    vlm["text_config"].update(hidden_size=hidden, intermediate_size=hidden * 3,
                              num_hidden_layers=layers, num_attention_heads=heads,
                              num_key_value_heads=max(heads // 4, 1),
                              max_position_embeddings=4096, layer_types=None,
                              rope_parameters={"rope_type": "default", "rope_theta": 1e6,
                                               "mrope_section": [8, 12, 12]})
    vlm["vision_config"].update(depth=4, embed_dim=256, hidden_size=hidden, num_heads=4,
                                mlp_ratio=4)
    torch.manual_seed(0)
    model = ColQwen2ForRetrieval(ColQwen2Config(vlm_config=vlm, embedding_dim=128)).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("weight") and param.ndim >= 2:
                param.normal_(0.0, 0.02)
    model.save_pretrained(target)
    image = {"min_pixels": 56 * 56, "max_pixels": 28 * 28 * 1024, "patch_size": 14,
             "merge_size": 2, "temporal_patch_size": 2,
             "image_processor_type": "Qwen2VLImageProcessor",
             "image_mean": [0.48145466, 0.4578275, 0.40821073],
             "image_std": [0.26862954, 0.26130258, 0.27577711]}
    import json

    (target / "preprocessor_config.json").write_text(json.dumps(image))
    ColQwen2Processor(image_processor=AutoImageProcessor.from_pretrained(target),
                      tokenizer=AutoTokenizer.from_pretrained(target)).save_pretrained(target)
    return target


def pages(count: int) -> list:
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for i in range(count):
        w, h = SIZES[i % len(SIZES)]
        # a page-like image: light background with dark random "text" blocks
        pixels = np.full((h, w, 3), 235, dtype=np.uint8)
        for _ in range(40):
            y, x = rng.integers(0, h - 20), rng.integers(0, w - 120)
            pixels[y:y + 12, x:x + rng.integers(30, 120)] = rng.integers(0, 80)
        out.append(Image.fromarray(pixels))
    return out


def run_cenote(llm, images: list) -> list[float]:
    docs = [{"prompt": "", "multi_modal_data": {"image": image}} for image in images]
    return [o.outputs.score for o in llm.score(QUERY, docs, use_tqdm=False)]


def run_transformers(model, processor, images: list, batch_size: int) -> list[float]:
    with torch.inference_mode():
        query = model(**processor.process_queries(text=[QUERY])).embeddings
        docs = []
        for start in range(0, len(images), batch_size):
            batch = processor.process_images(images=images[start:start + batch_size])
            docs.extend(model(**batch).embeddings)  # padded rows are zero vectors
        return processor.score_retrieval(query, docs).float()[0].tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pages", type=int, default=100)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--dtypes", nargs="+", default=["auto", "float32"])
    args = parser.parse_args()

    from transformers import ColQwen2ForRetrieval, ColQwen2Processor

    from cenote import LLM
    from cenote.machine import cpu_name

    images = pages(args.pages)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = build_checkpoint(Path(tmp), args.hidden, args.layers)
        processor = ColQwen2Processor.from_pretrained(path)
        tokens = sum(int(g.prod()) // 4 for g in
                     processor.process_images(images=images)["image_grid_thw"])
        for dtype in args.dtypes:
            llm = LLM(str(path), dtype=dtype)
            torch_dtype = llm.config.dtype
            model = ColQwen2ForRetrieval.from_pretrained(path, dtype=torch_dtype).eval()
            best = {"cenote": float("inf"), "transformers": float("inf")}
            scores = {}
            run_cenote(llm, images[:8])  # warm-up
            run_transformers(model, processor, images[:8], args.batch_size)
            for _ in range(args.repeats):
                for name in best:
                    start = time.perf_counter()
                    scores[name] = (run_cenote(llm, images) if name == "cenote" else
                                    run_transformers(model, processor, images,
                                                     args.batch_size))
                    best[name] = min(best[name], time.perf_counter() - start)
            a, b = np.array(scores["cenote"]), np.array(scores["transformers"])
            same_top = int(np.argmax(a) == np.argmax(b))
            rows.append((str(torch_dtype).removeprefix("torch."), best,
                         float(np.abs(a - b).max()), float(np.abs(b).max()), same_top))
            del llm, model

    print(f"1 query x {args.pages} page images ({tokens} vision tokens after the merge), "
          f"ColQwen2 random weights: hidden {args.hidden}, {args.layers} layers, 4-block "
          f"vision tower; transformers batch {args.batch_size}; torch threads "
          f"{torch.get_num_threads()}, CPU {cpu_name()}\n")
    print("| dtype | cenote (pages/s) | transformers + MaxSim (pages/s) | ratio | "
          "max abs score diff (largest score) | same top page |")
    print("|---|---:|---:|---:|---:|---:|")
    for dtype, best, diff, largest, same_top in rows:
        print(f"| {dtype} | {args.pages / best['cenote']:,.2f} | "
              f"{args.pages / best['transformers']:,.2f} | "
              f"{best['transformers'] / best['cenote']:.2f}x | {diff:.2e} ({largest:.2f}) | "
              f"{'yes' if same_top else 'no'} |")


if __name__ == "__main__":
    main()
