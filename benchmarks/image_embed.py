"""Image embedding: cenote against sentence-transformers' CLIP ``encode`` and
transformers' ``get_image_features`` (batch 32) on the same generated images, in one
run, with the smallest cosine between them; then cenote's server with concurrent
clients against its own offline rate.

No CLIP weights ship with the package, so the model is a CLIP of ViT-B/32's shape
(transformers' default CLIPConfig: a 12-layer 768-wide vision tower over 224x224
images in 32x32 patches) with seeded random weights, saved as a
Sentence-Transformers CLIP folder: the same arithmetic as the real checkpoint.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/image_embed.py --images 500
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))


def generated_images(count: int):
    """Photographs are not at hand offline: smooth colour fields with shapes, varied
    sizes (so resizing and cropping do real work)."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(0)
    images = []
    for _ in range(count):
        width, height = int(rng.integers(200, 640)), int(rng.integers(200, 480))
        image = Image.new("RGB", (width, height), tuple(int(c) for c in rng.integers(0, 255, 3)))
        draw = ImageDraw.Draw(image)
        for _ in range(8):
            x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
            r = int(rng.integers(10, 80))
            draw.ellipse((x - r, y - r, x + r, y + r),
                         fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
        images.append(image)
    return images


def build_model(target: Path) -> Path:
    from transformers import AutoTokenizer, CLIPConfig, CLIPImageProcessorPil, CLIPModel

    from cenote.config import default_model_path
    from tests.factories import build_st_clip_folder

    torch.manual_seed(0)
    config = CLIPConfig(text_config={"vocab_size": 30522, "eos_token_id": 102,
                                     "bos_token_id": 101, "pad_token_id": 0})
    model_folder = target / "clip"
    CLIPModel(config).save_pretrained(model_folder)
    CLIPImageProcessorPil().save_pretrained(model_folder)
    AutoTokenizer.from_pretrained(default_model_path()).save_pretrained(model_folder)
    return build_st_clip_folder(model_folder, target / "st-clip")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--clients", type=int, default=16)
    args = parser.parse_args()

    from sentence_transformers import SentenceTransformer
    from transformers import AutoImageProcessor, CLIPModel

    from cenote import LLM
    from cenote.machine import cpu_name

    images = generated_images(args.images)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_model(Path(tmp))
        llm = LLM(str(folder))
        prompts = [{"prompt": "", "multi_modal_data": {"image": im}} for im in images]
        llm.embed(prompts[:32], use_tqdm=False)
        start = time.perf_counter()
        ours = torch.tensor([o.outputs.embedding for o in llm.embed(prompts, use_tqdm=False)])
        offline_s = time.perf_counter() - start
        rows.append(("cenote LLM.embed", offline_s, ours))

        st = SentenceTransformer(str(folder), device="cpu")
        st.encode(images[:32], batch_size=32)
        start = time.perf_counter()
        theirs = st.encode(images, batch_size=32, convert_to_tensor=True)
        rows.append(("sentence-transformers encode (batch 32)", time.perf_counter() - start,
                     theirs))

        model = CLIPModel.from_pretrained(folder / "0_CLIPModel").eval()
        processor = AutoImageProcessor.from_pretrained(folder / "0_CLIPModel")
        start = time.perf_counter()
        with torch.inference_mode():
            chunks = [model.get_image_features(**processor(images=images[i:i + 32],
                                                           return_tensors="pt")).pooler_output
                      for i in range(0, len(images), 32)]
        rows.append(("transformers get_image_features (batch 32)",
                     time.perf_counter() - start, torch.cat(chunks)))
        served = asyncio.run(serve_rate(folder, images, args.clients))

    reference = rows[1][2].float()
    print(f"{len(images)} generated images (200-640 px), CLIP ViT-B/32 shape, random weights, "
          f"CPU: {cpu_name()}, cenote dtype {str(llm.config.dtype).removeprefix('torch.')}\n")
    print("| system | images/s | vs sentence-transformers | min cosine vs ST |")
    print("|---|---:|---:|---:|")
    for name, seconds, vectors in rows:
        cos = F.cosine_similarity(vectors.float(), reference).min().item()
        print(f"| {name} | {len(images) / seconds:.1f} | {rows[1][1] / seconds:.2f}x | "
              f"{cos:.5f} |")
    print(f"| cenote server, {args.clients} clients, one image per request | {served:.1f} | "
          f"{served * rows[1][1] / len(images):.2f}x | - |")
    print(f"\nServer images/s = {served / (len(images) / offline_s):.0%} of offline.")


async def serve_rate(folder: Path, images, clients: int) -> float:
    import httpx

    from tests.serving import cenote_serve

    uris = []
    for image in images:
        buffer = io.BytesIO()
        image.save(buffer, "PNG")
        uris.append("data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode())
    with cenote_serve([str(folder)]) as server:
        async with httpx.AsyncClient(timeout=300) as client:
            async def one(uri: str) -> None:
                body = {"messages": [{"role": "user", "content": [
                    {"type": "image_url", "image_url": {"url": uri}}]}]}
                response = await client.post(f"{server.url}/v1/embeddings", json=body)
                response.raise_for_status()

            queue = list(uris)

            async def worker() -> None:
                while queue:
                    await one(queue.pop())

            await one(uris[0])
            start = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(clients)))
            return len(uris) / (time.perf_counter() - start)


if __name__ == "__main__":
    main()
