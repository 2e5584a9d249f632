"""Tiny random visual document retrievers (ColQwen2) saved with ``save_pretrained``, with
their processor built locally and saved as the hub checkpoints save it
(``ColQwen2Processor``: a Qwen2-VL image processor and tokenizer)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tests.vlm_factories import (
    MAX_PIXELS,
    MERGE,
    MIN_PIXELS,
    PATCH,
    build_byte_tokenizer,
    tiny_qwen2_vl_config,
)


def build_tiny_colqwen2(target: Path, seed: int = 0, embedding_dim: int = 32) -> Path:
    """A ColQwen2ForRetrieval (Qwen2-VL backbone: 2 layers, hidden 64) with random
    weights and its ColQwen2Processor."""
    from transformers import (
        AutoImageProcessor,
        AutoTokenizer,
        ColQwen2Config,
        ColQwen2ForRetrieval,
        ColQwen2Processor,
    )

    target.mkdir(parents=True, exist_ok=True)
    ids = build_byte_tokenizer(target)
    config = ColQwen2Config(vlm_config=tiny_qwen2_vl_config(ids).to_dict(),
                            embedding_dim=embedding_dim)
    torch.manual_seed(seed)
    model = ColQwen2ForRetrieval(config).eval()
    with torch.no_grad():  # the default init is tiny: give the layers something to do
        for name, param in model.named_parameters():
            if name.endswith("weight") and param.ndim >= 2:
                param.normal_(0.0, 0.08)
    model.save_pretrained(target)
    image = {"min_pixels": MIN_PIXELS, "max_pixels": MAX_PIXELS, "patch_size": PATCH,
             "merge_size": MERGE, "temporal_patch_size": 2,
             "image_processor_type": "Qwen2VLImageProcessor",
             "image_mean": [0.48145466, 0.4578275, 0.40821073],
             "image_std": [0.26862954, 0.26130258, 0.27577711]}
    (target / "preprocessor_config.json").write_text(json.dumps(image))
    processor = ColQwen2Processor(image_processor=AutoImageProcessor.from_pretrained(target),
                                  tokenizer=AutoTokenizer.from_pretrained(target))
    processor.save_pretrained(target)
    return target
