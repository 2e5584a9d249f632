"""Vision-language embedders (Qwen2-VL): prompts with images and videos, parity with
transformers' Qwen2VLModel on a tiny random checkpoint with a real processor
configuration, and the input pipeline's pieces (frame sampling, video patches, M-RoPE)."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image

from cenote import LLM
from cenote.inputs.video import read_video_header, sample_frame_indices
from cenote.inputs.vision_language import VisionLanguageProcessor
from cenote.models.qwen2_vl import mrope_positions, placeholder_runs
from tests.vlm_factories import build_tiny_qwen2_vl

IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"
VIDEO = "<|vision_start|><|video_pad|><|vision_end|>"


@pytest.fixture(scope="module")
def qwen2_vl(tmp_path_factory):
    return build_tiny_qwen2_vl(tmp_path_factory.mktemp("qwen2-vl"))


@pytest.fixture(scope="module")
def llm(qwen2_vl):
    return LLM(str(qwen2_vl), dtype="float32")


@pytest.fixture(scope="module")
def reference(qwen2_vl):
    from transformers import Qwen2VLModel

    return Qwen2VLModel.from_pretrained(qwen2_vl, dtype=torch.float32).eval()


def random_image(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))


def random_frames(count: int, size: int = 56, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (count, size, size, 3), dtype=np.uint8)


def mp4_bytes(frames: np.ndarray, rate: int = 4) -> bytes:
    """Real video bytes: ``frames`` encoded as MPEG-4 Part 2 in an MP4 container."""
    import av

    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=rate)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()


def transformers_embedding(reference, llm, text, images=(), videos=()):
    """The reference: transformers' Qwen2VLModel on the same processor outputs, its last
    token's hidden state normalised."""
    processor = llm.engine.images
    expanded, data = processor.process(text, list(images), list(videos))
    ids = torch.tensor([llm.get_tokenizer()(expanded)["input_ids"]])
    types = (ids == reference.config.image_token_id).int() + 2 * (
        ids == reference.config.video_token_id).int()
    extra = {}
    if data.second_per_grid_ts is not None and "2_5" in type(reference).__name__:
        extra["second_per_grid_ts"] = data.second_per_grid_ts
    with torch.no_grad():
        hidden = reference(input_ids=ids, mm_token_type_ids=types, pixel_values=data.pixel_values,
                           image_grid_thw=data.image_grid_thw,
                           pixel_values_videos=data.pixel_values_videos,
                           video_grid_thw=data.video_grid_thw, **extra).last_hidden_state[0, -1]
    return torch.nn.functional.normalize(hidden, dim=0)


def test_images_texts_and_videos_in_one_batch_match_transformers(llm, reference):
    images = [random_image(90, 70, 1), random_image(120, 56, 2)]
    frames = random_frames(4)  # 2 temporal patches: no wider than the 2x2 merged grid
    prompts = [
        (f"{IMAGE}a cat and {IMAGE} a dog", images, []),
        ("a text alone, in the same packed batch", [], []),
        (f"{VIDEO}what happens", [], [frames]),
        (f"a picture {IMAGE} and a clip {VIDEO}", images[:1], [frames]),
    ]
    outputs = llm.embed([{"prompt": text, "multi_modal_data": {"image": im, "video": vid}}
                         if im or vid else text for text, im, vid in prompts])
    for (text, im, vid), output in zip(prompts, outputs, strict=True):
        expected = transformers_embedding(reference, llm, text, im, vid)
        got = torch.tensor(output.outputs.embedding)
        assert torch.allclose(got, expected, atol=2e-5), (text, (got - expected).abs().max())


def test_qwen2_5_vl_matches_transformers(tmp_path):
    from transformers import Qwen2_5_VLModel

    folder = build_tiny_qwen2_vl(tmp_path / "qwen2.5-vl", version="2.5")
    llm = LLM(str(folder), dtype="float32")
    reference = Qwen2_5_VLModel.from_pretrained(folder, dtype=torch.float32).eval()
    images = [random_image(112, 84, 5)]  # 8x6 patches: two 56-pixel windows wide
    prompts = [(f"{IMAGE}a page", images, []), ("text", [], []),
               (f"{VIDEO}a clip {IMAGE}", images, [random_frames(4, seed=6)])]
    outputs = llm.embed([{"prompt": text, "multi_modal_data": {"image": im, "video": vid}}
                         if im or vid else text for text, im, vid in prompts])
    for (text, im, vid), output in zip(prompts, outputs, strict=True):
        expected = transformers_embedding(reference, llm, text, im, vid)
        got = torch.tensor(output.outputs.embedding)
        assert torch.allclose(got, expected, atol=2e-5), (text, (got - expected).abs().max())


def test_qwen3_vl_with_deepstack_and_interleaved_positions_matches_transformers(tmp_path):
    from transformers import Qwen3VLModel

    folder = build_tiny_qwen2_vl(tmp_path / "qwen3-vl", version="3")
    llm = LLM(str(folder), dtype="float32")
    reference = Qwen3VLModel.from_pretrained(folder, dtype=torch.float32).eval()
    images = [random_image(96, 64, 1), random_image(64, 64, 2)]
    frames = random_frames(4, size=64, seed=7)
    prompts = [(f"{IMAGE}a page {IMAGE} and", images, []), ("a text alone", [], []),
               (f"a clip {VIDEO} and {IMAGE}", images[:1], [frames])]
    outputs = llm.embed([{"prompt": text, "multi_modal_data": {"image": im, "video": vid}}
                         if im or vid else text for text, im, vid in prompts])
    for (text, im, vid), output in zip(prompts, outputs, strict=True):
        expected = transformers_embedding(reference, llm, text, im, vid)
        got = torch.tensor(output.outputs.embedding)
        assert torch.allclose(got, expected, atol=2e-5), (text, (got - expected).abs().max())


def test_qwen3_vl_video_prompts_carry_each_temporal_patch_after_its_timestamp(tmp_path):
    folder = build_tiny_qwen2_vl(tmp_path / "qwen3-vl", version="3")
    processor = LLM(str(folder), dtype="float32").engine.images
    video = mp4_bytes(random_frames(8, size=64), rate=4)  # 2 s
    text, data = processor.process(f"a{VIDEO}b", [], [video], {"fps": 2})
    # Qwen3VLVideoProcessor.sample_frames: int(8 / 4 * 2) = 4 frames from first to last,
    # np.linspace(0, 7, 4).round() = [0, 2, 5, 7]; each patch at the mean of its frames'
    # times (Qwen3VLProcessor._calculate_timestamps): (0 + 0.5) / 2, (1.25 + 1.75) / 2.
    t, h, w = data.video_grid_thw[0].tolist()
    run = "<|vision_start|>" + "<|video_pad|>" * (h * w // 4) + "<|vision_end|>"
    assert t == 2
    assert text == f"a<{0.25:.1f} seconds>{run}<{1.5:.1f} seconds>{run}b"


def test_a_text_embeds_the_same_alone_and_beside_images(llm):
    alone = llm.embed("a text")[0].outputs.embedding
    mixed = llm.embed([{"prompt": IMAGE, "multi_modal_data": {"image": random_image(56, 56)}},
                       "a text"])[1].outputs.embedding
    assert np.allclose(alone, mixed, atol=1e-5)


def test_placeholder_tokens_typed_in_a_text_do_not_disturb_its_batch(llm):
    typed = f"a text that types {IMAGE} itself"
    alone = llm.embed(typed)[0].outputs.embedding
    image_prompt = {"prompt": f"{IMAGE}x", "multi_modal_data": {"image": random_image(56, 56)}}
    image_alone = llm.embed(image_prompt)[0].outputs.embedding
    together = llm.embed([typed, image_prompt])
    assert np.allclose(together[0].outputs.embedding, alone, atol=1e-5)
    assert np.allclose(together[1].outputs.embedding, image_alone, atol=1e-5)


def test_matryoshka_dimensions_cut_and_renormalise(qwen2_vl):
    llm = LLM(str(qwen2_vl), dtype="float32", hf_overrides={"is_matryoshka": True})
    from cenote import PoolingParams

    prompt = {"prompt": f"{IMAGE}x", "multi_modal_data": {"image": random_image(56, 84)}}
    full = np.array(llm.embed(prompt)[0].outputs.embedding)
    cut = np.array(llm.embed(prompt, pooling_params=PoolingParams(dimensions=16))[0]
                   .outputs.embedding)
    assert cut.shape == (16,)
    assert np.allclose(cut, full[:16] / np.linalg.norm(full[:16]), atol=1e-5)


def test_video_bytes_embed_as_their_decoded_frames(llm):
    frames = np.repeat(np.linspace(0, 255, 8, dtype=np.uint8)[:, None, None, None],
                       56, 1).repeat(56, 2).repeat(3, 3)  # flat frames survive MPEG-4
    data = mp4_bytes(frames)
    from_bytes = llm.embed({"prompt": VIDEO, "multi_modal_data": {"video": data},
                            "mm_processor_kwargs": {"num_frames": 4}})[0].outputs.embedding
    decoded = read_video_header(data)
    assert (decoded.frames, decoded.fps) == (8, 4.0)
    import av

    with av.open(io.BytesIO(data)) as container:
        all_frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    picked = np.stack([all_frames[i] for i in (0, 2, 4, 6)])
    from_frames = llm.embed({"prompt": VIDEO, "multi_modal_data": {"video": picked}}
                            )[0].outputs.embedding
    assert np.allclose(from_bytes, from_frames, atol=1e-6)


@pytest.mark.parametrize(("total", "fps", "rate", "num_frames"),
                         [(8, 4, 1, None), (8, 4, None, 4), (100, 30, 2, None),
                          (37, 25, None, 6), (300, 30, 0.5, None)])
def test_frames_are_sampled_as_transformers_samples_them(total, fps, rate, num_frames):
    # Qwen2VLVideoProcessor.sample_frames (its module needs torchvision): the same math.
    wanted = num_frames
    if wanted is not None:
        wanted = round(wanted / 2) * 2
    else:
        most = math.floor(min(768, total) / 2) * 2
        wanted = math.floor(min(max(total / fps * rate, 4), most, total) / 2) * 2
    expected = torch.arange(0, total, total / wanted).int().tolist()
    assert sample_frame_indices(total, fps, fps=rate, num_frames=num_frames) == expected


def test_video_patches_are_laid_out_as_transformers_video_processor(llm):
    frames = random_frames(6, seed=3)
    processor: VisionLanguageProcessor = llm.engine.images
    pixels, grid, _ = processor._video_patches(frames, {})
    # Qwen2VLVideoProcessor.patchify on the rescaled, normalised frames (56x56 is kept).
    mean = np.array(processor.images.image_mean, np.float32)[:, None, None]
    std = np.array(processor.images.image_std, np.float32)[:, None, None]
    video = torch.from_numpy(np.stack([(f.transpose(2, 0, 1).astype(np.float32) / 255 - mean)
                                       / std for f in frames]))[None]
    b, t, c, h, w = video.shape
    p, m, tps = 14, 2, 2
    patches = video.view(b, t // tps, tps, c, h // p // m, m, p, w // p // m, m, p)
    patches = patches.permute(0, 1, 4, 7, 5, 8, 3, 2, 6, 9).reshape(-1, c * tps * p * p)
    assert grid.tolist() == [3, 4, 4]
    assert torch.allclose(pixels, patches, atol=1e-5)


def test_text_after_a_long_video_continues_past_its_largest_position():
    # t=4, merged 2x2: the text after it starts at 1 + 4 (the largest axis), as Qwen2-VL
    # was trained and vLLM numbers it (transformers 5.25 restarts at 1 + 2).
    ids = np.array([7] + [9] * 16 + [7, 7])
    runs = placeholder_runs(ids, (8, 9))
    positions = mrope_positions(runs, [(4, 4, 4, 1.0)], merge=2)
    assert positions[:, 0].tolist() == [0, 0, 0]
    assert positions[:, 1].tolist() == [1, 1, 1] and positions[:, 16].tolist() == [4, 2, 2]
    assert positions[:, 17].tolist() == [5, 5, 5]


def test_placeholders_must_match_the_images(llm):
    with pytest.raises(ValueError, match="2 <\\|image_pad\\|> placeholders for 1 images"):
        llm.embed({"prompt": IMAGE * 2, "multi_modal_data": {"image": random_image(56, 56)}})
    with pytest.raises(ValueError, match="0 <\\|video_pad\\|> placeholders for 1 videos"):
        llm.embed({"prompt": "x", "multi_modal_data": {"video": random_frames(2)}})


def test_mm_processor_kwargs_set_the_image_size(llm):
    prompt = {"prompt": IMAGE, "multi_modal_data": {"image": random_image(112, 112)}}
    small = llm.engine.prepare([{**prompt, "mm_processor_kwargs": {"max_pixels": 56 * 56}}],
                               "embed")[0]
    large = llm.engine.prepare([prompt], "embed")[0]
    assert small.multimodal.image_grid_thw.tolist() == [[1, 4, 4]]
    assert large.multimodal.image_grid_thw.tolist() == [[1, 8, 8]]
    with pytest.raises(ValueError, match="mm_processor_kwargs takes"):
        llm.embed({**prompt, "mm_processor_kwargs": {"resize": True}})


@pytest.mark.parametrize(("data", "message"), [
    (b"not a video at all", "does not decode"),
    (b"", "does not decode"),
])
def test_bad_video_bytes_are_refused(data, message):
    with pytest.raises(ValueError, match=message):
        read_video_header(data)


def test_a_video_over_the_frame_or_length_limit_is_refused_from_its_header():
    data = mp4_bytes(random_frames(8, size=32), rate=4)
    with pytest.raises(ValueError, match="8 frames, more than the 6"):
        read_video_header(data, max_frames=6)
    with pytest.raises(ValueError, match="lasts 2 s, longer than the 1 s"):
        read_video_header(data, max_seconds=1)


def test_qwen2_5_vl_spaces_video_positions_in_seconds():
    # 3 temporal patches of a 1x1 merged grid, each patch 2.5 position steps apart
    # (tokens_per_second * second_per_grid_ts): times 0, 2, 5 as floor(i * 2.5).
    runs = placeholder_runs(np.array([9, 9, 9, 7]), (8, 9))
    positions = mrope_positions(runs, [(3, 2, 2, 2.5)], merge=2)
    assert positions[0].tolist() == [0, 2, 5, 6]
    assert positions[1].tolist() == [0, 0, 0, 6]


def test_truncate_prompt_tokens_cuts_text_and_refuses_a_cut_into_an_image(llm):
    image = random_image(56, 56)
    prompt = {"prompt": f"{IMAGE} a long caption that follows the image and can be cut",
              "multi_modal_data": {"image": image}}
    whole = llm.embed(prompt)[0]
    cut = llm.embed(prompt, truncate_prompt_tokens=len(whole.prompt_token_ids) - 3,
                    tokenization_kwargs={"truncation_side": "right"})[0]
    assert len(cut.prompt_token_ids) == len(whole.prompt_token_ids) - 3  # was ignored
    assert cut.prompt_token_ids == whole.prompt_token_ids[:-3]
    with pytest.raises(ValueError, match="truncate_prompt_tokens=4"):
        llm.embed(prompt, truncate_prompt_tokens=4)


def test_loading_processors_leaves_transformers_logging_as_it_was(qwen2_vl):
    import logging

    from transformers import AutoConfig

    from cenote.inputs.vision_language import vision_language_processor

    logger = logging.getLogger("transformers")
    before = logger.level
    logger.setLevel(logging.INFO)
    try:  # it was left at ERROR for the whole process, hiding later warnings of any model
        vision_language_processor(qwen2_vl, AutoConfig.from_pretrained(qwen2_vl), None)
        assert logger.level == logging.INFO
    finally:
        logger.setLevel(before)


def test_decoding_no_frames_is_refused_as_such_not_as_a_bad_video():
    from cenote.inputs.video import decode_frames

    video = read_video_header(mp4_bytes(random_frames(4)))
    assert len(decode_frames(video, [0, 3])) == 2
    with pytest.raises(ValueError, match="No frames were sampled"):  # was "does not decode"
        decode_frames(video, [])
