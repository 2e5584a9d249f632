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
    tiny_qwen2_5_vl_config,
    tiny_qwen2_vl_config,
)


def build_tiny_colqwen2(target: Path, seed: int = 0, embedding_dim: int = 32,
                        backbone: str = "2") -> Path:
    """A ColQwen2ForRetrieval (a Qwen2-VL backbone, ``backbone="2.5"``: Qwen2.5-VL, as
    ColQwen2.5 checkpoints; 2 layers, hidden 64) with random weights and its
    ColQwen2Processor."""
    from transformers import (
        AutoImageProcessor,
        AutoTokenizer,
        ColQwen2Config,
        ColQwen2ForRetrieval,
        ColQwen2Processor,
    )

    target.mkdir(parents=True, exist_ok=True)
    ids = build_byte_tokenizer(target)
    vlm = tiny_qwen2_5_vl_config(ids) if backbone == "2.5" else tiny_qwen2_vl_config(ids)
    config = ColQwen2Config(vlm_config=vlm.to_dict(), embedding_dim=embedding_dim)
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


def build_tiny_jina_reranker_m0(target: Path, seed: int = 0) -> Path:
    """A jina-reranker-m0-shaped checkpoint: a tiny random Qwen2-VL saved with
    ``save_pretrained`` under the architecture ``JinaVLForRanking``, with the authors'
    score head (``score.0``: hidden x hidden, ``score.2``: 1 x hidden) beside it."""
    from tests.factories import add_tensors_to_checkpoint
    from tests.vlm_factories import build_tiny_qwen2_vl

    build_tiny_qwen2_vl(target, seed=seed)
    config = json.loads((target / "config.json").read_text())
    config["architectures"] = ["JinaVLForRanking"]
    (target / "config.json").write_text(json.dumps(config))
    hidden = config["text_config"]["hidden_size"]
    generator = torch.Generator().manual_seed(seed + 1)
    add_tensors_to_checkpoint(target, {
        "score.0.weight": torch.randn(hidden, hidden, generator=generator) * 0.2,
        "score.0.bias": torch.randn(hidden, generator=generator) * 0.1,
        "score.2.weight": torch.randn(1, hidden, generator=generator) * 0.5,
        "score.2.bias": torch.randn(1, generator=generator) + 2.65,  # scores near 0.5
    })
    return target


def build_tiny_colpali(target: Path, seed: int = 0, embedding_dim: int = 32) -> Path:
    """A ColPaliForRetrieval (PaliGemma: a 2-layer SigLIP on 28x28 images, 4 image tokens,
    and a 2-layer Gemma) with random weights, and its ColPaliProcessor built locally (a
    byte-level tokenizer with Gemma's special tokens, SigLIP's image processor)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import (
        ColPaliConfig,
        ColPaliForRetrieval,
        ColPaliProcessor,
        PaliGemmaConfig,
        PreTrainedTokenizerFast,
    )
    from transformers.convert_slow_tokenizer import bytes_to_unicode
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    target.mkdir(parents=True, exist_ok=True)
    vocab = {char: i for i, char in enumerate(bytes_to_unicode().values())}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<bos>",
                                        eos_token="<eos>", pad_token="<pad>",
                                        additional_special_tokens=["<image>"])
    images = SiglipImageProcessorPil(size={"height": 28, "width": 28}, image_seq_length=4,
                                     image_mean=[0.5] * 3, image_std=[0.5] * 3)
    processor = ColPaliProcessor(image_processor=images, tokenizer=tokenizer)
    ids = processor.tokenizer
    vlm = PaliGemmaConfig(
        text_config={"model_type": "gemma", "vocab_size": len(ids), "hidden_size": 64,
                     "intermediate_size": 128, "num_hidden_layers": 2,
                     "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 16,
                     "pad_token_id": ids.pad_token_id, "bos_token_id": ids.bos_token_id,
                     "eos_token_id": ids.eos_token_id},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                       "num_attention_heads": 2, "image_size": 28, "patch_size": 14},
        image_token_id=ids.convert_tokens_to_ids("<image>"), projection_dim=64, hidden_size=64)
    torch.manual_seed(seed)
    model = ColPaliForRetrieval(ColPaliConfig(vlm_config=vlm.to_dict(),
                                              embedding_dim=embedding_dim)).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("weight") and param.ndim >= 2:
                param.normal_(0.0, 0.08)
    model.save_pretrained(target)
    processor.save_pretrained(target)
    return target


def build_tiny_qwen3_vl_reranker(target: Path, seed: int = 0) -> Path:
    """A Qwen3-VL-Reranker-shaped checkpoint: a tiny random Qwen3VLForConditionalGeneration
    (as the real one is saved) whose tokenizer has "no" and "yes" as single tokens."""
    from transformers import AutoTokenizer

    from tests.vlm_factories import build_tiny_qwen2_vl

    build_tiny_qwen2_vl(target, seed=seed, version="3")
    tokenizer = AutoTokenizer.from_pretrained(target)
    tokenizer.add_tokens(["no", "yes"])  # within the config's vocab_size (272)
    tokenizer.save_pretrained(target)
    return target


def build_tiny_e5v(target: Path, seed: int = 0) -> Path:
    """An e5-v-shaped checkpoint: a LlavaNextForConditionalGeneration (a 2-layer CLIP
    vision tower on 28x28 crops, anyres up to 56x56, a 2-layer Llama) with random
    weights, and its LlavaNextProcessor built locally (byte-level tokenizer with a BOS
    and ``<image>``, the PIL image processor)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import (
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextProcessor,
        PreTrainedTokenizerFast,
    )
    from transformers.convert_slow_tokenizer import bytes_to_unicode
    from transformers.models.llava_next.image_processing_pil_llava_next import (
        LlavaNextImageProcessorPil,
    )

    target.mkdir(parents=True, exist_ok=True)
    vocab = {char: i for i, char in enumerate(bytes_to_unicode().values())}
    vocab.update({"<s>": 256, "</s>": 257, "<pad>": 258, "<image>": 259})
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", 256)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>",
                                        eos_token="</s>", pad_token="<pad>",
                                        additional_special_tokens=["<image>"])
    images = LlavaNextImageProcessorPil(
        size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28},
        image_grid_pinpoints=[[28, 28], [28, 56], [56, 28], [56, 56]],
        image_mean=[0.5] * 3, image_std=[0.5] * 3)
    processor = LlavaNextProcessor(image_processor=images, tokenizer=tokenizer, patch_size=14,
                                   vision_feature_select_strategy="default",
                                   num_additional_image_tokens=1)
    config = LlavaNextConfig(
        text_config={"model_type": "llama", "vocab_size": 272, "hidden_size": 64,
                     "intermediate_size": 128, "num_hidden_layers": 2,
                     "num_attention_heads": 4, "num_key_value_heads": 2,
                     "max_position_embeddings": 512, "pad_token_id": 258,
                     "bos_token_id": 256, "eos_token_id": 257},
        vision_config={"model_type": "clip_vision_model", "hidden_size": 32,
                       "intermediate_size": 64, "num_hidden_layers": 2,
                       "num_attention_heads": 2, "image_size": 28, "patch_size": 14,
                       "projection_dim": 32},
        image_token_index=259, image_grid_pinpoints=[[28, 28], [28, 56], [56, 28], [56, 56]],
        vision_feature_select_strategy="default", vision_feature_layer=-2,
        architectures=["LlavaNextForConditionalGeneration"])
    torch.manual_seed(seed)
    model = LlavaNextForConditionalGeneration(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("weight") and param.ndim >= 2:
                param.normal_(0.0, 0.08)
    model.save_pretrained(target)
    processor.save_pretrained(target)
    return target
