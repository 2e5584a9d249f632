"""End to end, images through the real server: messages with image_url parts (data:,
file:// under the allowed folder, http(s) from allowed hosts only), image documents
in /rerank, every bad image a 400 with the server healthy afterwards."""

from __future__ import annotations

import base64
import http.server
import io
import threading

import httpx
import numpy as np
import openai
import pytest
import torch
from PIL import Image

from cenote import LLM
from tests.serving import cenote_serve, free_port


def png(seed: int = 0, size=(48, 40)) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (*size[::-1], 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def image_messages(url: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}]


@pytest.fixture(scope="module")
def image_host():
    """A local HTTP server holding one image (the host tests allow or not)."""
    body = png(7)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (the stdlib's name)
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/picture.png", body
    server.shutdown()


@pytest.fixture(scope="module")
def media_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("media")
    (folder / "picture.png").write_bytes(png(3))
    (folder.parent / "outside.png").write_bytes(png(4))
    return folder


@pytest.fixture(scope="module")
def clip_path(tiny_dual_encoder):
    return tiny_dual_encoder("clip")


@pytest.fixture(scope="module")
def server(clip_path, media_folder):
    # The second name is the README example's.
    args = [str(clip_path), "--dtype", "float32", "--served-model-name", "clip",
            "openai/clip-vit-base-patch32",
            "--allowed-local-media-path", str(media_folder),
            "--allowed-media-domains", "localhost", "--max-image-pixels", "1000000"]
    with cenote_serve(args) as running:
        yield running


@pytest.fixture(scope="module")
def offline(clip_path):
    return LLM(str(clip_path), dtype="float32")


def embed(server, **body):
    return httpx.post(f"{server.url}/v1/embeddings", json={"model": "clip", **body}, timeout=60)


def offline_image(offline, data: bytes) -> torch.Tensor:
    image = Image.open(io.BytesIO(data))
    (out,) = offline.embed({"prompt": "", "multi_modal_data": {"image": image}})
    return torch.tensor(out.outputs.embedding)


def test_a_data_uri_image_embeds_as_offline(server, offline):
    response = embed(server, messages=image_messages(data_uri(png(1))))
    assert response.status_code == 200, response.text
    got = torch.tensor(response.json()["data"][0]["embedding"])
    assert torch.allclose(got, offline_image(offline, png(1)), atol=1e-5)
    # Usage counts the vision tower's tokens: 16 patches of 8x8 in 32x32, and the class token.
    assert response.json()["usage"] == {"prompt_tokens": 17, "total_tokens": 17,
                                        "completion_tokens": 0, "prompt_tokens_details": None}


def test_the_openai_client_embeds_an_image_through_extra_body(server, offline):
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused")
    response = client.embeddings.create(model="clip", input="",
                                        extra_body={"messages": image_messages(data_uri(png(2))),
                                                    "input": None})
    got = torch.tensor(response.data[0].embedding)
    assert torch.allclose(got, offline_image(offline, png(2)), atol=1e-5)


def test_the_readme_image_search_example_runs_as_written(server, offline, tmp_path,
                                                         monkeypatch, capsys):
    from tests.test_docs_examples import ROOT, code_blocks

    (block,) = [b for b in code_blocks(ROOT / "README.md") if "embed_image" in b.source]
    photos = {}
    for name, seed in (("dog.jpg", 11), ("car.jpg", 12)):
        rng = np.random.default_rng(seed)
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(
            tmp_path / name, "JPEG")
        photos[name] = offline_image(offline, (tmp_path / name).read_bytes())
    monkeypatch.chdir(tmp_path)
    source = block.source.replace("localhost:8000", server.url.removeprefix("http://"))
    exec(compile(source, "README.md", "exec"), {})
    (query,) = offline.embed("a dog")
    query = torch.tensor(query.outputs.embedding)
    best = max(photos, key=lambda name: float(query @ photos[name]))
    assert capsys.readouterr().out.strip() == best


def test_text_in_messages_embeds_as_the_text(server, offline):
    messages = [{"role": "user", "content": [{"type": "text", "text": "a photo of a dog"}]}]
    response = embed(server, messages=messages)
    assert response.status_code == 200, response.text
    (out,) = offline.embed("a photo of a dog")
    assert torch.allclose(torch.tensor(response.json()["data"][0]["embedding"]),
                          torch.tensor(out.outputs.embedding), atol=1e-5)


def test_a_file_under_the_allowed_folder_is_read(server, offline, media_folder):
    response = embed(server, messages=image_messages(f"file://{media_folder}/picture.png"))
    assert response.status_code == 200, response.text
    got = torch.tensor(response.json()["data"][0]["embedding"])
    assert torch.allclose(got, offline_image(offline, png(3)), atol=1e-5)


def test_a_remote_image_is_fetched_only_from_an_allowed_host(server, offline, image_host):
    url, body = image_host
    refused = embed(server, messages=image_messages(url))  # 127.0.0.1 is not "localhost"
    assert refused.status_code == 400
    assert "--allowed-media-domains" in refused.json()["error"]["message"]
    allowed = embed(server, messages=image_messages(url.replace("127.0.0.1", "localhost")))
    assert allowed.status_code == 200, allowed.text
    got = torch.tensor(allowed.json()["data"][0]["embedding"])
    assert torch.allclose(got, offline_image(offline, body), atol=1e-5)


def test_rerank_takes_image_documents(server, offline):
    documents = [{"content": [{"type": "image_url", "image_url": {"url": data_uri(png(i))}}]}
                 for i in range(3)]
    response = httpx.post(f"{server.url}/rerank", json={
        "model": "clip", "query": "a photo of a dog", "documents": documents}, timeout=60)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    (text,) = offline.embed("a photo of a dog")
    for result in results:
        vector = offline_image(offline, png(result["index"]))
        expected = torch.nn.functional.cosine_similarity(
            torch.tensor(text.outputs.embedding), vector, dim=0).item()
        assert abs(result["relevance_score"] - expected) < 1e-5
        assert result["document"]["content"][0]["type"] == "image_url"


def test_models_lists_the_modalities(server):
    cards = httpx.get(f"{server.url}/v1/models").json()["data"]
    assert [card["id"] for card in cards] == ["clip", "openai/clip-vit-base-patch32"]
    assert all(card["modalities"] == ["text", "image"] for card in cards)


def truncated_png() -> str:
    return data_uri(png(5)[:100])


def bomb_png() -> str:
    buffer = io.BytesIO()
    Image.new("L", (2000, 2000)).save(buffer, "PNG")  # 4 M pixels over a 1 M limit
    return data_uri(buffer.getvalue())


@pytest.mark.parametrize("messages, message", [
    (image_messages(truncated_png()), "does not decode"),
    (image_messages("data:image/png;base64," + base64.b64encode(b"random bytes").decode()),
     "does not decode"),
    (image_messages("data:image/svg+xml;base64," + base64.b64encode(b"<svg/>").decode()),
     "does not decode"),
    (image_messages(bomb_png()), "--max-image-pixels"),
    (image_messages("file:///etc/passwd"), "outside the folder"),
    (image_messages("ftp://example.com/x.png"), "data:, file: or http(s)"),
    (image_messages("https://example.com/x.png"), "--allowed-media-domains"),
    (image_messages("http://localhost:abc/x.png"), "Could not fetch the image"),
    (image_messages(data_uri(png(1))) + image_messages(data_uri(png(2))),
     "--limit-mm-per-prompt"),
    ([{"role": "user", "content": [{"type": "text", "text": "a dog"},
                                   {"type": "image_url", "image_url": {"url": data_uri(png())}}]}],
     "not both"),
    ([], "messages must not be empty"),
])
def test_bad_images_are_a_400_and_the_server_stays_healthy(server, messages, message):
    response = embed(server, messages=messages)
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]["message"]
    assert httpx.get(f"{server.url}/health").status_code == 200


def test_a_file_escaping_the_allowed_folder_is_refused(server, media_folder):
    response = embed(server, messages=image_messages(f"file://{media_folder}/../outside.png"))
    assert response.status_code == 400
    assert "outside the folder" in response.json()["error"]["message"]


def test_an_image_sent_to_a_text_only_model_is_a_400():
    with cenote_serve([]) as server:
        response = httpx.post(f"{server.url}/v1/embeddings", json={
            "messages": image_messages(data_uri(png()))}, timeout=60)
        assert response.status_code == 400
        assert "takes text only" in response.json()["error"]["message"]
        (card,) = httpx.get(f"{server.url}/v1/models").json()["data"]
        assert card["modalities"] == ["text"]


def test_cohere_v2_embed_takes_images_on_a_model_that_embeds_them(server, offline):
    response = httpx.post(f"{server.url}/v2/embed", json={
        "model": "clip", "images": [data_uri(png(1))], "embedding_types": ["float"]},
        timeout=60)
    assert response.status_code == 200, response.text
    got = torch.tensor(response.json()["embeddings"]["float"][0])
    assert torch.allclose(got, offline_image(offline, png(1)), atol=1e-5)
