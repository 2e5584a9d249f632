"""ColQwen3 (colpali-engine's ``ColQwen3``, architecture "ColQwen3"): one vector per token
or image patch, parity with a restatement of colpali-engine's forward on transformers'
Qwen3VLModel on a tiny random checkpoint in its layout, and MaxSim scores."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from cenote import LLM, PoolingParams
from tests.vlm_factories import MAX_PIXELS, MERGE, MIN_PIXELS, build_byte_tokenizer

# colpali-engine 0.3.18 processing_colqwen3.py (ColQwen3Processor)
VISUAL_PROMPT = ("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Describe the "
                 "image.<|im_end|><|endoftext|>")
AUGMENTATION = "<|endoftext|>" * 10  # query_augmentation_token * 10, query_prefix ""


def reference_class():
    """colpali-engine 0.3.18's ``ColQwen3`` (colpali_engine/models/qwen3/colqwen3/
    modeling_colqwen3.py), restated on transformers' Qwen3VLModel: the VLM called with
    ``input_ids`` / ``pixel_values`` / ``image_grid_thw`` (so M-RoPE and DeepStack),
    ``custom_text_proj`` = Linear(hidden, 320), L2 normalisation, times the attention
    mask (mask_non_image_embeddings off, its default). Named ColQwen3 so that
    ``save_pretrained`` writes ``architectures: ["ColQwen3"]`` as the real class does."""
    from transformers import Qwen3VLModel

    class ColQwen3(Qwen3VLModel):
        def __init__(self, config):
            super().__init__(config)
            self.custom_text_proj = nn.Linear(config.text_config.hidden_size, 320)
            self.post_init()

        def forward(self, **kwargs):
            hidden = super().forward(**kwargs, use_cache=False,
                                     return_dict=True).last_hidden_state
            proj = self.custom_text_proj(hidden)
            proj = proj / proj.norm(dim=-1, keepdim=True)
            return proj * kwargs["attention_mask"].unsqueeze(-1)

    return ColQwen3


def build_tiny_colqwen3(target: Path, seed: int = 0) -> Path:
    """A ColQwen3 in colpali-engine's saved layout (``visual.*``, ``language_model.*``,
    ``custom_text_proj.*``; a Qwen3VLConfig) with random weights and Qwen3-VL's image
    processor settings."""
    from tests.vlm_factories import tiny_qwen3_vl_config

    target.mkdir(parents=True, exist_ok=True)
    ids = build_byte_tokenizer(target)
    torch.manual_seed(seed)
    model = reference_class()(tiny_qwen3_vl_config(ids)).eval()
    with torch.no_grad():  # the default init is tiny: give the layers something to do
        for name, param in model.named_parameters():
            if name.endswith("weight") and param.ndim >= 2:
                param.normal_(0.0, 0.08)
    model.save_pretrained(target)
    image = {"min_pixels": MIN_PIXELS, "max_pixels": MAX_PIXELS, "patch_size": 16,
             "merge_size": MERGE, "temporal_patch_size": 2,
             "image_processor_type": "Qwen2VLImageProcessor",
             "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}
    (target / "preprocessor_config.json").write_text(json.dumps(image))
    return target


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return build_tiny_colqwen3(tmp_path_factory.mktemp("colqwen3"))


@pytest.fixture(scope="module")
def llm(checkpoint):
    return LLM(str(checkpoint), dtype="float32")


@pytest.fixture(scope="module")
def reference(checkpoint):
    from transformers import AutoImageProcessor, AutoTokenizer

    model = reference_class().from_pretrained(checkpoint, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(checkpoint), \
        AutoImageProcessor.from_pretrained(checkpoint)


def page(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))


def image_prompt(image: Image.Image) -> dict:
    return {"prompt": "", "multi_modal_data": {"image": image}}


def reference_vectors(reference, item) -> torch.Tensor:
    """One input's vectors as ColQwen3Processor (``process_images`` / ``process_queries``)
    and ColQwen3.forward make them (one at a time: no padding rows)."""
    model, tokenizer, images = reference
    kwargs = {}
    if isinstance(item, Image.Image):
        out = images(images=[item.convert("RGB")], return_tensors="pt")
        count = int(out["image_grid_thw"].prod(-1).item()) // images.merge_size**2
        text = VISUAL_PROMPT.replace("<|image_pad|>", "<|image_pad|>" * count)
        kwargs = {"pixel_values": out["pixel_values"], "image_grid_thw": out["image_grid_thw"]}
    else:
        text = item + AUGMENTATION
    encoded = tokenizer(text, return_tensors="pt")
    ids = encoded["input_ids"]
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=encoded["attention_mask"],
                     mm_token_type_ids=(ids == model.config.image_token_id).int(),
                     **kwargs)[0]


def test_architecture_and_task(llm):
    assert llm.engine.config.hf_config.architectures == ["ColQwen3"]
    assert llm.engine.config.modalities == ("text", "image")
    assert "token_embed" in llm.engine.config.supported_pooling_tasks


def test_image_and_query_vectors_match_colpali_engine(llm, reference):
    pages = [page(64, 96, 0), page(128, 64, 1)]
    queries = ["what is the revenue?", "a chart"]
    ours = llm.encode([image_prompt(p) for p in pages], pooling_task="token_embed")
    ours += llm.encode(queries, pooling_task="token_embed",
                       pooling_params=PoolingParams(embedding_mode="query"))
    theirs = [reference_vectors(reference, x) for x in pages + queries]
    for o, t in zip(ours, theirs, strict=True):
        assert o.outputs.data.shape == t.shape
        assert t.shape[-1] == 320
        torch.testing.assert_close(o.outputs.data, t, atol=2e-5, rtol=1e-4)


def test_maxsim_scores_match_colpali_engine(llm, reference):
    pages = [page(64, 96, 2), page(96, 96, 3)]
    query = "quarterly revenue by region"
    ours = [o.outputs.score for o in llm.score(query, [image_prompt(p) for p in pages])]
    q = reference_vectors(reference, query)
    # colpali-engine's score_multi_vector: sum over query vectors of the best page match
    theirs = [(q @ reference_vectors(reference, p).T).max(dim=1).values.sum().item()
              for p in pages]
    assert ours == pytest.approx(theirs, abs=1e-4)
    assert ours[0] != pytest.approx(ours[1], abs=1e-3)  # the pages are told apart


def test_model_prefixed_weights_load_the_same(checkpoint, llm, tmp_path):
    """Names colpali-engine's ``_checkpoint_conversion_mapping`` accepts
    (``model.visual.*``, ``model.language_model.*``, ``base_model.model.custom_text_proj.*``)
    give the same vectors."""
    import shutil

    from safetensors.torch import load_file, save_file

    folder = tmp_path / "renamed"
    shutil.copytree(checkpoint, folder)
    tensors = load_file(folder / "model.safetensors")
    renamed = {("base_model.model." + k if k.startswith("custom_text_proj.") else "model." + k):
               v for k, v in tensors.items()}
    save_file(renamed, folder / "model.safetensors", metadata={"format": "pt"})
    image = image_prompt(page(64, 64, 4))
    ours = LLM(str(folder), dtype="float32").encode([image], pooling_task="token_embed")
    torch.testing.assert_close(ours[0].outputs.data,
                               llm.encode([image], pooling_task="token_embed")[0].outputs.data)


def test_rerank_page_images_through_the_server(checkpoint, llm):
    import base64
    import io

    import httpx

    from tests.serving import cenote_serve

    pages = [page(64, 96, 5), page(96, 64, 6)]
    expected = [o.outputs.score for o in llm.score("revenue table",
                                                   [image_prompt(p) for p in pages])]
    documents = []
    for p in pages:
        buffer = io.BytesIO()
        p.save(buffer, "PNG")
        url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
        documents.append({"content": [{"type": "image_url", "image_url": {"url": url}}]})
    with cenote_serve([str(checkpoint), "--dtype", "float32", "--served-model-name", "m"]
                      ) as server:
        answer = httpx.post(f"{server.url}/rerank", timeout=120, json={
            "model": "m", "query": "revenue table", "documents": documents})
    assert answer.status_code == 200, answer.text
    by_index = {r["index"]: r["relevance_score"] for r in answer.json()["results"]}
    assert [by_index[0], by_index[1]] == pytest.approx(expected, rel=1e-4)
