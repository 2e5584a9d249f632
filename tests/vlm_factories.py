"""Tiny random vision-language checkpoints (Qwen2-VL family) saved with ``save_pretrained``
beside a real processor configuration: a byte-level BPE tokenizer with the Qwen2-VL special
tokens and chat template, the PIL image processor's and the video processor's settings."""

from __future__ import annotations

import json
from pathlib import Path

import torch

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>",
                  "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
# Qwen2-VL's chat template (image and video parts become their placeholder runs).
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}<|vision_start|><|image_pad|>"
    "<|vision_end|>{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}<|vision_start|><|video_pad|>"
    "<|vision_end|>{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}"
    "<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% endif %}")
# Small patches so a 56x56 image is 16 patches (4 language tokens after the 2x2 merge).
PATCH, MERGE, MIN_PIXELS, MAX_PIXELS = 14, 2, 28 * 28, 28 * 28 * 16


def build_byte_tokenizer(target: Path) -> dict[str, int]:
    """A byte-level BPE tokenizer (the 256 bytes, no merges) with the special tokens;
    returns their ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab = {char: i for i, char in enumerate(bytes_to_unicode().values())}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>",
                                        pad_token="<|endoftext|>",
                                        additional_special_tokens=SPECIAL_TOKENS[1:])
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(target)
    return {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}


def tiny_qwen2_vl_config(ids: dict[str, int],
                         architecture: str = "Qwen2VLForConditionalGeneration"):
    from transformers import Qwen2VLConfig

    return Qwen2VLConfig(
        architectures=[architecture],
        text_config={"vocab_size": 272, "hidden_size": 64, "intermediate_size": 128,
                     "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                     "max_position_embeddings": 1024, "rms_norm_eps": 1e-6,
                     "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0,
                                         "mrope_section": [2, 3, 3]},
                     "pad_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"],
                     "bos_token_id": ids["<|endoftext|>"]},
        vision_config={"depth": 2, "embed_dim": 32, "hidden_size": 64, "num_heads": 2,
                       "mlp_ratio": 2, "patch_size": PATCH, "spatial_merge_size": MERGE,
                       "temporal_patch_size": 2, "in_channels": 3},
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )


def tiny_qwen2_5_vl_config(ids: dict[str, int]):
    from transformers import Qwen2_5_VLConfig

    base = tiny_qwen2_vl_config(ids, "Qwen2_5_VLForConditionalGeneration")
    return Qwen2_5_VLConfig(
        architectures=["Qwen2_5_VLForConditionalGeneration"],
        text_config=base.text_config.to_dict(),
        vision_config={"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2,
                       "out_hidden_size": 64, "patch_size": PATCH, "spatial_merge_size": MERGE,
                       "temporal_patch_size": 2, "in_channels": 3, "window_size": 56,
                       "fullatt_block_indexes": [1], "tokens_per_second": 2},
        image_token_id=base.image_token_id, video_token_id=base.video_token_id,
        vision_start_token_id=base.vision_start_token_id,
        vision_end_token_id=base.vision_end_token_id,
    )


def tiny_qwen3_vl_config(ids: dict[str, int]):
    from transformers import Qwen3VLConfig

    base = tiny_qwen2_vl_config(ids).text_config.to_dict()
    base.pop("layer_types", None)
    base["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0,
                               "mrope_section": [2, 3, 3], "mrope_interleaved": True}
    return Qwen3VLConfig(
        architectures=["Qwen3VLForConditionalGeneration"],
        text_config={**base, "head_dim": 16, "num_hidden_layers": 3},
        vision_config={"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2,
                       "out_hidden_size": 64, "patch_size": 16, "spatial_merge_size": MERGE,
                       "temporal_patch_size": 2, "in_channels": 3,
                       "num_position_embeddings": 64, "deepstack_visual_indexes": [0, 1]},
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )


def build_tiny_qwen2_vl(target: Path, seed: int = 0, version: str = "2") -> Path:
    """A Qwen2VLForConditionalGeneration (``version="2.5"``: Qwen2_5_VL...) with random
    weights (2 layers, hidden 64), its tokenizer, image and video processor settings."""
    from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2VLForConditionalGeneration

    target.mkdir(parents=True, exist_ok=True)
    ids = build_byte_tokenizer(target)
    torch.manual_seed(seed)
    if version == "3":
        from transformers import Qwen3VLForConditionalGeneration

        model = Qwen3VLForConditionalGeneration(tiny_qwen3_vl_config(ids)).eval()
    elif version == "2.5":
        model = Qwen2_5_VLForConditionalGeneration(tiny_qwen2_5_vl_config(ids)).eval()
    else:
        model = Qwen2VLForConditionalGeneration(tiny_qwen2_vl_config(ids)).eval()
    with torch.no_grad():  # the default init is tiny: give the layers something to do
        for name, param in model.named_parameters():
            if name.endswith("weight") and param.ndim >= 2:
                param.normal_(0.0, 0.08)
    model.save_pretrained(target)
    patch = 16 if version == "3" else PATCH
    processor = {"min_pixels": MIN_PIXELS, "max_pixels": MAX_PIXELS, "patch_size": patch,
                 "merge_size": MERGE, "temporal_patch_size": 2,
                 "image_processor_type": "Qwen2VLImageProcessor",
                 "image_mean": [0.48145466, 0.4578275, 0.40821073],
                 "image_std": [0.26862954, 0.26130258, 0.27577711]}
    (target / "preprocessor_config.json").write_text(json.dumps(processor))
    video = {**processor, "video_processor_type": "Qwen2VLVideoProcessor"}
    if version == "3":  # samples 2 frames a second, one pixel budget for a whole video
        video.update(video_processor_type="Qwen3VLVideoProcessor", fps=2,
                     do_sample_frames=True, max_pixels=MAX_PIXELS * 4)
    del video["image_processor_type"]
    (target / "video_preprocessor_config.json").write_text(json.dumps(video))
    return target
