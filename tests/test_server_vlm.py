"""End to end, a vision-language embedder (tiny Qwen2-VL) through the real server:
messages with text, several images and a video in one prompt, /pooling, Cohere's
/v2/embed content parts, each the same vector as offline; every limit and bad video a
400 naming it, the server healthy afterwards."""

from __future__ import annotations

import base64
import io

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from cenote import LLM
from tests.serving import cenote_serve
from tests.test_vlm_embed import mp4_bytes, random_frames
from tests.vlm_factories import build_tiny_qwen2_vl


def png(seed: int, size=(70, 56)) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (*size[::-1], 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def image_part(data: bytes) -> dict:
    url = "data:image/png;base64," + base64.b64encode(data).decode()
    return {"type": "image_url", "image_url": {"url": url}}


def video_part(data: bytes) -> dict:
    url = "data:video/mp4;base64," + base64.b64encode(data).decode()
    return {"type": "video_url", "video_url": {"url": url}}


VIDEO = mp4_bytes(np.repeat(np.linspace(0, 255, 8, dtype=np.uint8)[:, None, None, None], 56, 1)
                  .repeat(56, 2).repeat(3, 3))


@pytest.fixture(scope="module")
def qwen2_vl(tmp_path_factory):
    return build_tiny_qwen2_vl(tmp_path_factory.mktemp("qwen2-vl-server"))


@pytest.fixture(scope="module")
def server(qwen2_vl):
    args = [str(qwen2_vl), "--dtype", "float32", "--served-model-name", "vlm",
            "--limit-mm-per-prompt", '{"image": 2, "video": 1}', "--max-video-frames", "16",
            "--allowed-media-domains", "localhost", "--max-mm-pixels-per-request", "300000"]
    with cenote_serve(args) as running:
        yield running


@pytest.fixture(scope="module")
def offline(qwen2_vl):
    return LLM(str(qwen2_vl), dtype="float32")


def offline_messages(offline, messages, **kwargs) -> torch.Tensor:
    """The offline embedding of ``messages``: rendered by the processor, media decoded."""
    parts = []
    for message in messages:
        content = message["content"]
        if isinstance(content, list):
            content = [_decoded(part) for part in content]
        parts.append({**message, "content": content})
    processor = offline.engine.images
    text, images, videos = processor.render(offline.get_tokenizer(), parts)
    prompt = {"prompt": text, "multi_modal_data": {"image": images, "video": videos},
              "mm_processor_kwargs": kwargs}
    return torch.tensor(offline.embed(prompt)[0].outputs.embedding)


def _decoded(part: dict) -> dict:
    if part["type"] == "image_url":
        data = base64.b64decode(part["image_url"]["url"].partition(",")[2])
        return {"type": "image_url", "image_url": Image.open(io.BytesIO(data))}
    if part["type"] == "video_url":
        return {"type": "video_url",
                "video_url": base64.b64decode(part["video_url"]["url"].partition(",")[2])}
    return part


def post(server, path, **body):
    return httpx.post(f"{server.url}{path}", json={"model": "vlm", **body}, timeout=120)


def test_text_images_and_a_video_in_one_message_embed_as_offline(server, offline):
    messages = [{"role": "user", "content": [
        {"type": "text", "text": "Compare"}, image_part(png(1)), {"type": "text", "text": "and"},
        image_part(png(2)), video_part(VIDEO), {"type": "text", "text": "please."}]}]
    response = post(server, "/v1/embeddings", messages=messages,
                    mm_processor_kwargs={"num_frames": 4})
    assert response.status_code == 200, response.text
    got = torch.tensor(response.json()["data"][0]["embedding"])
    assert torch.allclose(got, offline_messages(offline, messages, num_frames=4), atol=1e-5)


def test_pooling_and_cohere_content_parts_embed_as_messages(server, offline):
    content = [{"type": "text", "text": "a page"}, image_part(png(3))]
    expected = offline_messages(offline, [{"role": "user", "content": content}])
    pooled = post(server, "/pooling", task="embed",
                  messages=[{"role": "user", "content": content}])
    assert pooled.status_code == 200, pooled.text
    assert torch.allclose(torch.tensor(pooled.json()["data"][0]["data"]), expected, atol=1e-5)
    cohere = post(server, "/v2/embed", input_type="search_document", embedding_types=["float"],
                  inputs=[{"content": content}])
    assert cohere.status_code == 200, cohere.text
    got = torch.tensor(cohere.json()["embeddings"]["float"][0])
    assert torch.allclose(got, expected, atol=1e-5)


def test_cohere_images_embed_each_as_one_image_message(server, offline):
    response = post(server, "/v2/embed", input_type="search_document", embedding_types=["float"],
                    images=["data:image/png;base64," + base64.b64encode(png(4)).decode()])
    assert response.status_code == 200, response.text
    expected = offline_messages(offline, [{"role": "user", "content": [image_part(png(4))]}])
    assert torch.allclose(torch.tensor(response.json()["embeddings"]["float"][0]), expected,
                          atol=1e-5)


@pytest.mark.parametrize(("content", "message"), [
    ([image_part(png(1)), image_part(png(2)), image_part(png(3))],
     "3 images in one prompt; this server takes at most 2 (--limit-mm-per-prompt)"),
    ([video_part(VIDEO), video_part(VIDEO)],
     "2 videos in one prompt; this server takes at most 1 (--limit-mm-per-prompt)"),
    ([video_part(b"definitely not a video")], "does not decode"),
    ([video_part(mp4_bytes(random_frames(20, size=32)))], "more than the 16 this server takes "
                                                          "(--max-video-frames)"),
    ([{"type": "video_url", "video_url": {"url": "https://example.com/clip.mp4"}}],
     "--allowed-media-domains"),
    ([{"type": "video_url", "video_url": {"url": "data:image/png;base64,AAAA"}}],
     "data:video/<type>;base64"),
    ([{"type": "video_url", "video_url": {"url": "ftp://localhost/a.mp4"}}],
     "Video URLs may be data:, file: or http(s)"),
    ([{"type": "video_url", "video_url": {"url": "file:///tmp/a.mp4"}}],
     "file:// videos are not allowed"),
    # 16 frames of 160x160 to decode: 409,600 pixels, from the header, before decoding.
    ([video_part(mp4_bytes(random_frames(16, size=160)))], "--max-mm-pixels-per-request"),
])
def test_bad_videos_and_limits_are_a_400_and_the_server_stays_healthy(server, content, message):
    response = post(server, "/v1/embeddings", messages=[{"role": "user", "content": content}])
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]["message"]
    assert httpx.get(f"{server.url}/health", timeout=10).status_code == 200


def test_a_text_only_message_embeds_as_its_rendered_text(server, offline):
    messages = [{"role": "user", "content": "only words"}]
    response = post(server, "/v1/embeddings", messages=messages)
    assert response.status_code == 200, response.text
    assert torch.allclose(torch.tensor(response.json()["data"][0]["embedding"]),
                          offline_messages(offline, messages), atol=1e-5)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"resize": True}, "mm_processor_kwargs takes fps, max_pixels, min_pixels, num_frames"),
    ({"num_frames": "four"}, "mm_processor_kwargs.num_frames must be a positive integer"),
])
def test_bad_mm_processor_kwargs_are_a_400(server, kwargs, message):
    messages = [{"role": "user", "content": [video_part(VIDEO)]}]
    response = post(server, "/v1/embeddings", messages=messages, mm_processor_kwargs=kwargs)
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]["message"]


def test_run_batch_embeds_image_messages_as_offline(qwen2_vl, offline, tmp_path):
    import json

    from tests.test_run_batch import read_lines, run_batch

    messages = [{"role": "user", "content": [image_part(png(5)), {"type": "text", "text": "x"}]}]
    source, target = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_text(json.dumps({"custom_id": "page", "method": "POST", "url": "/v1/embeddings",
                                  "body": {"model": str(qwen2_vl), "messages": messages}}) + "\n")
    run_batch("-i", source, "-o", target, "--model", qwen2_vl, "--dtype", "float32")
    (line,) = read_lines(target)
    assert line["error"] is None, line
    got = torch.tensor(line["response"]["body"]["data"][0]["embedding"])
    assert torch.allclose(got, offline_messages(offline, messages), atol=1e-5)


def test_score_and_rerank_take_image_documents(server, offline):
    page = [{"type": "text", "text": "a page"}, image_part(png(6))]
    query = torch.tensor(offline.embed("revenue")[0].outputs.embedding)  # a plain text
    document = offline_messages(offline, [{"role": "user", "content": page}])
    expected = float(query @ document)
    scored = post(server, "/score", queries="revenue", documents={"content": page})
    assert scored.status_code == 200, scored.text
    assert abs(scored.json()["data"][0]["score"] - expected) < 1e-4
    ranked = post(server, "/rerank", query="revenue", documents=[{"content": page}, "words"])
    assert ranked.status_code == 200, ranked.text
    scores = {r["index"]: r["relevance_score"] for r in ranked.json()["results"]}
    assert abs(scores[0] - expected) < 1e-4


def test_a_truncation_into_an_image_is_a_400_naming_it(server):
    messages = [{"role": "user", "content": [image_part(png(3)),
                                             {"type": "text", "text": "a caption"}]}]
    response = post(server, "/v1/embeddings", messages=messages, truncate_prompt_tokens=4)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert "truncate_prompt_tokens=4" in error["message"]
    assert error["param"] == "truncate_prompt_tokens"
    assert httpx.get(f"{server.url}/health", timeout=10).status_code == 200
