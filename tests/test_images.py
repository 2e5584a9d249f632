"""Images and texts in one space (CLIP, SigLIP, Sentence-Transformers CLIP folders),
offline: parity with transformers' get_text_features / get_image_features and with
sentence-transformers, mixed batches, scoring and bad images."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from cenote import LLM
from cenote.inputs.images import decode_image

TEXTS = ["a photo of a dog", "a red car parked on a quiet road"]


def images(count: int = 3) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (40 + 9 * i, 52, 3), dtype=np.uint8))
            for i in range(count)]


def image_prompt(image) -> dict:
    return {"prompt": "", "multi_modal_data": {"image": image}}


def reference(path, family: str, texts, pictures) -> torch.Tensor:
    from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(path).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    processor = AutoImageProcessor.from_pretrained(path)
    with torch.no_grad():
        if family == "siglip":  # its processor pads every text to max_length, no mask
            encoded = tokenizer(texts, padding="max_length", max_length=64, return_tensors="pt",
                                return_attention_mask=False, return_token_type_ids=False)
            text = model.get_text_features(**encoded).pooler_output
        else:
            encoded = tokenizer(texts, padding=True, return_tensors="pt")
            text = model.get_text_features(input_ids=encoded["input_ids"],
                                           attention_mask=encoded["attention_mask"]).pooler_output
        image = model.get_image_features(**processor(images=pictures,
                                                     return_tensors="pt")).pooler_output
    return F.normalize(torch.cat([text, image]), dim=-1)


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_texts_and_images_embed_as_transformers_towers(tiny_dual_encoder, family):
    path = tiny_dual_encoder(family)
    llm = LLM(str(path), dtype="float32")
    assert llm.config.modalities == ("text", "image")
    pictures = images()
    outs = llm.embed(TEXTS + [image_prompt(p) for p in pictures])
    got = torch.tensor([o.outputs.embedding for o in outs])
    assert F.cosine_similarity(got, reference(path, family, TEXTS, pictures)).min() >= 0.9999
    assert torch.allclose(got.norm(dim=-1), torch.ones(len(outs)), atol=1e-5)


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_clip_and_siglip_run_on_native_towers(tiny_dual_encoder, family):
    from cenote.models.clip import NativeDualEncoder

    llm = LLM(str(tiny_dual_encoder(family)), dtype="float32")
    assert isinstance(llm.engine.runner.model, NativeDualEncoder)


def test_original_clip_configs_pool_the_highest_id_and_take_other_activations(
        tiny_dual_encoder, tmp_path):
    """The original CLIP checkpoints say EOS id 2 and pool the highest id (their EOS is
    the last in the vocabulary); other CLIPs use the exact GELU."""
    import json
    import shutil

    path = shutil.copytree(tiny_dual_encoder("clip"), tmp_path / "clip-legacy")
    config = json.loads((path / "config.json").read_text())
    config["text_config"].update(eos_token_id=2, hidden_act="gelu")
    config["vision_config"].update(hidden_act="gelu")
    (path / "config.json").write_text(json.dumps(config))
    llm = LLM(str(path), dtype="float32")
    texts = TEXTS + ["[SEP] a text whose highest id is not its last token zebra"]
    pictures = images(1)
    outs = llm.embed(texts + [image_prompt(p) for p in pictures])
    got = torch.tensor([o.outputs.embedding for o in outs])
    assert F.cosine_similarity(got, reference(path, "clip", texts, pictures)).min() >= 0.9999


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_the_default_dtype_stays_close(tiny_dual_encoder, family):
    path = tiny_dual_encoder(family)
    pictures = images(2)
    outs = LLM(str(path)).embed(TEXTS + [image_prompt(p) for p in pictures])
    got = torch.tensor([o.outputs.embedding for o in outs])
    assert F.cosine_similarity(got, reference(path, family, TEXTS, pictures)).min() >= 0.998


def test_a_sentence_transformers_clip_folder_embeds_as_sentence_transformers(
        tiny_dual_encoder, tmp_path):
    from sentence_transformers import SentenceTransformer

    from tests.factories import build_st_clip_folder

    folder = build_st_clip_folder(tiny_dual_encoder("clip"), tmp_path / "st-clip")
    st = SentenceTransformer(str(folder), device="cpu")
    pictures = images(2)
    expected = torch.cat([st.encode(TEXTS, convert_to_tensor=True),
                          st.encode(pictures, convert_to_tensor=True)])
    outs = LLM(str(folder), dtype="float32").embed(TEXTS + [image_prompt(p) for p in pictures])
    got = torch.tensor([o.outputs.embedding for o in outs])
    assert F.cosine_similarity(got, expected).min() >= 0.9999


def test_a_mixed_batch_equals_each_input_alone(tiny_dual_encoder):
    llm = LLM(str(tiny_dual_encoder("clip")), dtype="float32")
    pictures = images(2)
    prompts = [TEXTS[0], image_prompt(pictures[0]), TEXTS[1], image_prompt(pictures[1])]
    together = llm.embed(prompts)
    for prompt, out in zip(prompts, together, strict=True):
        (alone,) = llm.embed(prompt)
        assert torch.allclose(torch.tensor(alone.outputs.embedding),
                              torch.tensor(out.outputs.embedding), atol=1e-5)


def test_numpy_arrays_and_exif_rotation_are_taken(tiny_dual_encoder):
    llm = LLM(str(tiny_dual_encoder("clip")), dtype="float32")
    picture = images(1)[0]
    (from_pil,) = llm.embed(image_prompt(picture))
    (from_array,) = llm.embed(image_prompt(np.asarray(picture)))
    assert torch.allclose(torch.tensor(from_pil.outputs.embedding),
                          torch.tensor(from_array.outputs.embedding), atol=1e-6)
    rotated = picture.rotate(90, expand=True)
    exif = Image.Exif()
    exif[0x0112] = 8  # "rotate 90 clockwise to view": undoes the rotation above
    buffer = io.BytesIO()
    rotated.save(buffer, format="JPEG", exif=exif, quality=100)
    upright = decode_image(buffer.getvalue())
    assert upright.size == picture.size


def test_text_scores_against_images_by_cosine(tiny_dual_encoder):
    llm = LLM(str(tiny_dual_encoder("siglip")), dtype="float32")
    pictures = images(3)
    scores = [o.outputs.score for o in llm.score(TEXTS[0], [image_prompt(p) for p in pictures])]
    text = torch.tensor(llm.embed(TEXTS[0])[0].outputs.embedding)
    for score, picture in zip(scores, pictures, strict=True):
        vector = torch.tensor(llm.embed(image_prompt(picture))[0].outputs.embedding)
        assert abs(score - F.cosine_similarity(text, vector, dim=0).item()) < 1e-5


@pytest.mark.parametrize("data, message", [
    (b"not an image at all", "does not decode"),
    (b"<svg xmlns='http://www.w3.org/2000/svg'></svg>", "does not decode"),
])
def test_bytes_that_are_not_an_image_are_refused(data, message):
    with pytest.raises(ValueError, match=message):
        decode_image(data)


def test_a_truncated_png_is_refused():
    buffer = io.BytesIO()
    images(1)[0].save(buffer, format="PNG")
    with pytest.raises(ValueError, match="does not decode"):
        decode_image(buffer.getvalue()[:200])


def test_an_image_over_the_pixel_limit_is_refused_before_it_is_decoded():
    buffer = io.BytesIO()
    Image.new("L", (3000, 2000)).save(buffer, format="PNG")
    with pytest.raises(ValueError, match="3000x2000 = 6000000 pixels, more than the 1000000"):
        decode_image(buffer.getvalue(), max_pixels=1_000_000)


def test_a_decompression_bomb_is_refused_before_it_is_decoded():
    buffer = io.BytesIO()
    Image.new("L", (20_000, 20_000)).save(buffer, format="PNG")  # 400 M pixels, ~400 KB
    with pytest.raises(ValueError, match="more pixels than the 40000000|more than the 40000000"):
        decode_image(buffer.getvalue())


def test_an_image_for_a_text_only_model_is_refused(minilm_fp32):
    with pytest.raises(ValueError, match="takes text only"):
        minilm_fp32.embed(image_prompt(images(1)[0]))


def test_an_image_and_text_in_one_prompt_is_refused(tiny_dual_encoder):
    llm = LLM(str(tiny_dual_encoder("clip")), dtype="float32")
    with pytest.raises(ValueError, match="a text or an image, not both"):
        llm.embed({"prompt": "a dog", "multi_modal_data": {"image": images(1)[0]}})


def test_a_long_thin_image_is_refused_before_it_is_resized():
    buffer = io.BytesIO()
    Image.new("L", (80_000, 2)).save(buffer, format="PNG")  # 545 bytes; 20 GB to resize
    with pytest.raises(ValueError, match="sides differ by more than 100 times"):
        decode_image(buffer.getvalue())


def test_an_image_is_never_cut_into_chunks(tiny_dual_encoder):
    path = tiny_dual_encoder("clip")
    llm = LLM(str(path), dtype="float32", max_model_len=8,
              override_pooler_config={"enable_chunked_processing": True})
    (chunked,) = llm.embed(image_prompt(images(1)[0]))  # costs 17 vision tokens > 8
    (plain,) = LLM(str(path), dtype="float32").embed(image_prompt(images(1)[0]))
    assert torch.allclose(torch.tensor(chunked.outputs.embedding),
                          torch.tensor(plain.outputs.embedding), atol=1e-6)
