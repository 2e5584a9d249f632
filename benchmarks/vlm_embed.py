"""Vision-language embedding: cenote against transformers' Qwen2VLModel on the same
pre-processing (cenote's processor: the checkpoint's PIL image processor and chat
template), 100 images and 100 texts, fp32 and the default dtype, in one run; then
cenote's server at 32 clients as a share of its own offline rate.

No Qwen2-VL weights ship with the package, so the model is Qwen2-VL-shaped with seeded
random weights, smaller than Qwen2-VL-2B so that it runs in minutes on a CPU: a
vision tower of 8 blocks, 640 wide (2B: 32 x 1280), a language model of 8 Qwen2 layers,
896 wide, 14 heads of 64, 2 KV heads, MLP 4864 (as Qwen2-0.5B's; 2B: 28 x 1536). Images are
capped at 224x224 pixels (max_pixels): at most 256 patches, 64 language tokens each.
transformers runs batches of 8, right-padded, its last real token pooled.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/vlm_embed.py
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))
sys.path.insert(0, str(ROOT))

from image_embed import generated_images  # noqa: E402

WORDS = ("the a page chart shows revenue growth quarterly report table figure map city river "
         "mountain invoice total amount due customer product photo of dog cat street").split()


def texts(count: int) -> list[str]:
    rng = np.random.default_rng(1)
    return [" ".join(rng.choice(WORDS, int(rng.integers(12, 30)))) for _ in range(count)]


def build_model(target: Path) -> Path:
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    from tests.vlm_factories import build_byte_tokenizer

    ids = build_byte_tokenizer(target)
    config = Qwen2VLConfig(
        architectures=["Qwen2VLForConditionalGeneration"],
        text_config={"vocab_size": 272, "hidden_size": 896, "intermediate_size": 4864,
                     "num_hidden_layers": 8, "num_attention_heads": 14,
                     "num_key_value_heads": 2, "max_position_embeddings": 32768,
                     "rope_parameters": {"rope_type": "default", "rope_theta": 1e6,
                                         "mrope_section": [8, 12, 12]},
                     "pad_token_id": ids["<|endoftext|>"], "bos_token_id": ids["<|endoftext|>"],
                     "eos_token_id": ids["<|im_end|>"]},
        vision_config={"depth": 8, "embed_dim": 640, "hidden_size": 896, "num_heads": 10,
                       "mlp_ratio": 4, "patch_size": 14, "spatial_merge_size": 2,
                       "temporal_patch_size": 2},
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    torch.manual_seed(0)
    model = Qwen2VLForConditionalGeneration(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("weight") and param.ndim >= 2:
                param.normal_(0.0, 0.02)
    model.save_pretrained(target)
    (target / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "Qwen2VLImageProcessor", "min_pixels": 56 * 56,
        "max_pixels": 224 * 224, "patch_size": 14, "merge_size": 2, "temporal_patch_size": 2,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711]}))
    return target


def prompts(llm, images, sentences) -> list:
    """Each image and each text as one user message through the chat template."""
    processor, tokenizer = llm.engine.images, llm.get_tokenizer()
    out = []
    for image in images:
        text, _, _ = processor.render(tokenizer, [{"role": "user", "content": [
            {"type": "image_url", "image_url": image}, {"type": "text", "text": "Describe."}]}])
        out.append({"prompt": text, "multi_modal_data": {"image": image}})
    for sentence in sentences:
        text, _, _ = processor.render(tokenizer, [{"role": "user", "content": sentence}])
        out.append(text)
    return out


def transformers_embed(model, llm, items, dtype, batch_size: int = 8) -> torch.Tensor:
    """transformers' Qwen2VLModel on the same processor outputs: right-padded batches of
    ``batch_size``, the last real token's hidden state, normalised."""
    processor, tokenizer = llm.engine.images, llm.get_tokenizer()
    config = model.config
    vectors = []
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        ids, pixels, grids = [], [], []
        for item in chunk:
            if isinstance(item, str):
                ids.append(tokenizer(item)["input_ids"])
                continue
            text, data = processor.process(item["prompt"], [item["multi_modal_data"]["image"]],
                                           [])
            ids.append(tokenizer(text)["input_ids"])
            pixels.append(data.pixel_values)
            grids.append(data.image_grid_thw)
        lens = torch.tensor([len(i) for i in ids])
        padded = torch.full((len(ids), int(lens.max())), config.text_config.pad_token_id)
        for row, seq in enumerate(ids):
            padded[row, :len(seq)] = torch.tensor(seq)
        mask = (torch.arange(padded.shape[1])[None] < lens[:, None]).long()
        types = (padded == config.image_token_id).int() * mask
        extra = {}
        if pixels:
            extra = {"pixel_values": torch.cat(pixels).to(dtype),
                     "image_grid_thw": torch.cat(grids)}
        with torch.inference_mode():
            hidden = model(input_ids=padded, attention_mask=mask, mm_token_type_ids=types,
                           **extra).last_hidden_state
        vectors.append(F.normalize(hidden[torch.arange(len(ids)), lens - 1].float(), dim=-1))
    return torch.cat(vectors)


def run(folder: Path, items, dtype: str) -> dict:
    from transformers import Qwen2VLModel

    from cenote import LLM

    llm = LLM(str(folder), dtype=dtype)
    torch_dtype = llm.config.dtype
    llm.embed(items[:8] + items[-8:], use_tqdm=False)  # warm-up
    timings = {}
    half = len(items) // 2
    vectors = {}
    for kind, part in (("images", items[:half]), ("texts", items[half:])):
        start = time.perf_counter()
        out = llm.embed(part, use_tqdm=False)
        timings[f"cenote {kind}"] = len(part) / (time.perf_counter() - start)
        vectors[f"cenote {kind}"] = torch.tensor([o.outputs.embedding for o in out])
    model = Qwen2VLModel.from_pretrained(folder, dtype=torch_dtype).eval()
    transformers_embed(model, llm, items[:8] + items[-8:], torch_dtype)
    for kind, part in (("images", items[:half]), ("texts", items[half:])):
        start = time.perf_counter()
        vectors[f"transformers {kind}"] = transformers_embed(model, llm, part, torch_dtype)
        timings[f"transformers {kind}"] = len(part) / (time.perf_counter() - start)
    cosines = {kind: F.cosine_similarity(vectors[f"cenote {kind}"],
                                         vectors[f"transformers {kind}"]).min().item()
               for kind in ("images", "texts")}
    return {"dtype": str(torch_dtype).removeprefix("torch."), "rates": timings,
            "cosines": cosines}


async def serve_rate(folder: Path, images, sentences, clients: int) -> dict:
    import httpx

    from tests.serving import cenote_serve

    uris = []
    for image in images:
        buffer = io.BytesIO()
        image.save(buffer, "PNG")
        uris.append("data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode())
    bodies = {"images": [{"messages": [{"role": "user", "content": [
                  {"type": "image_url", "image_url": {"url": uri}},
                  {"type": "text", "text": "Describe."}]}]} for uri in uris],
              "texts": [{"messages": [{"role": "user", "content": s}]} for s in sentences]}
    rates = {}
    with cenote_serve([str(folder)]) as server:
        async with httpx.AsyncClient(timeout=600) as client:
            async def one(body: dict) -> None:
                response = await client.post(f"{server.url}/v1/embeddings", json=body)
                response.raise_for_status()

            for kind, items in bodies.items():
                await one(items[0])
                queue = list(items)

                async def worker(queue=queue) -> None:
                    while queue:
                        await one(queue.pop())

                start = time.perf_counter()
                await asyncio.gather(*(worker() for _ in range(clients)))
                rates[kind] = len(items) / (time.perf_counter() - start)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=100, help="images, and as many texts")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--no-server", action="store_true")
    args = parser.parse_args()

    from cenote import LLM
    from cenote.machine import cpu_name

    images, sentences = generated_images(args.count), texts(args.count)
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_model(Path(tmp))
        items = prompts(LLM(str(folder), dtype="float32"), images, sentences)
        results = [run(folder, items, dtype) for dtype in ("float32", "auto")]
        served = (None if args.no_server
                  else asyncio.run(serve_rate(folder, images, sentences, args.clients)))
    print(f"{args.count} generated images (200-640 px, max_pixels 224x224) and {args.count} "
          f"texts, Qwen2-VL shape (vision 8x640, language 8x896), random weights, "
          f"CPU: {cpu_name()}\n")
    print("| dtype | input | cenote /s | transformers /s | cenote vs transformers | "
          "min cosine |")
    print("|---|---|---:|---:|---:|---:|")
    for result in results:
        rates = result["rates"]
        for kind in ("images", "texts"):
            ours, theirs = rates[f"cenote {kind}"], rates[f"transformers {kind}"]
            print(f"| {result['dtype']} | {kind} | {ours:.1f} | {theirs:.1f} | "
                  f"{ours / theirs:.2f}x | {result['cosines'][kind]:.5f} |")
    if served is not None:
        offline = results[-1]["rates"]
        for kind in ("images", "texts"):
            share = served[kind] / offline[f"cenote {kind}"]
            print(f"\nServer ({args.clients} clients, one {kind[:-1]} per request, "
                  f"{results[-1]['dtype']}): {served[kind]:.1f} {kind}/s = {share:.0%} of "
                  "offline.")


if __name__ == "__main__":
    main()
