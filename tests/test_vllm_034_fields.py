"""vLLM 0.34's request fields on the pooling routes (SPEC §12): ``embed_dtype`` and
``endianness`` for base64 and bytes answers, ``encoding_format`` bytes and bytes_only,
``use_activation``, ``padding``, the fields every pooling request accepts
(``request_id``, ``priority``, ``cache_salt``, ``mm_processor_kwargs``,
``media_io_kwargs``), and ``--dtype half``/``float``.

The app runs in process (Starlette's test client runs its lifespan) with two models:
MiniLM in float32 for the embedding routes and a one-label cross-encoder for
/classify, /score and /rerank. Binary answers are decoded as vLLM's client examples
decode them: numpy reads the bytes as a dtype of the same width, byteswapped when the
order is not this machine's, and torch views them as the real dtype.
"""

from __future__ import annotations

import base64
import json
import sys

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from cenote import LLM
from cenote.cli import build_parser
from cenote.config import ModelConfig
from cenote.engine.async_engine import AsyncPoolingEngine
from cenote.params import PoolingParams
from cenote.server.app import build_app
from cenote.server.context import ServedModel

TEXTS = ["The quick brown fox jumps over the lazy dog.", "Embeddings map text to vectors."]
EMBED_DTYPES = ["float32", "float16", "bfloat16", "fp8_e4m3", "fp8_e5m2"]
ENDIANNESS = ["native", "big", "little"]
# embed_dtype -> (the numpy dtype its bits are read as, the torch dtype they are).
WIRE_DTYPES = {
    "float32": (np.float32, torch.float32),
    "float16": (np.float16, torch.float16),
    "bfloat16": (np.float16, torch.bfloat16),
    "fp8_e4m3": (np.uint8, torch.float8_e4m3fn),
    "fp8_e5m2": (np.uint8, torch.float8_e5m2),
}
# Each pooling route with a body it accepts and the prefix of its response id.
ROUTES = {
    "/v1/embeddings": ({"model": "minilm", "input": TEXTS[0]}, "embd"),
    "/pooling": ({"model": "minilm", "input": TEXTS[0]}, "pool"),
    "/v2/embed": ({"model": "minilm", "texts": [TEXTS[0]], "input_type": "search_query"},
                  "embed"),
    "/classify": ({"model": "cross", "input": TEXTS[0]}, "classify"),
    "/score": ({"model": "cross", "text_1": TEXTS[0], "text_2": TEXTS[1]}, "score"),
    "/rerank": ({"model": "cross", "query": TEXTS[0], "documents": TEXTS}, "rerank"),
}
VLLM_FIELDS = {"request_id": "req-7", "priority": 5, "cache_salt": "a-salt",
               "mm_processor_kwargs": {"num_crops": 4},
               "media_io_kwargs": {"image": {"mode": "RGB"}}}


@pytest.fixture(scope="module")
def api(minilm_fp32, cross_encoder_path):
    cross = LLM(str(cross_encoder_path), dtype="float32")
    app = build_app([ServedModel(["minilm"], AsyncPoolingEngine(minilm_fp32.engine)),
                     ServedModel(["cross"], AsyncPoolingEngine(cross.engine))])
    with TestClient(app) as client:
        yield client


def embed(api, **fields):
    response = api.post("/v1/embeddings", json={"model": "minilm", "input": TEXTS, **fields})
    assert response.status_code == 200, response.text
    return response


def float_vectors(api, **fields) -> list[torch.Tensor]:
    return [torch.tensor(d["embedding"]) for d in embed(api, **fields).json()["data"]]


def decode(raw: bytes, shape, embed_dtype: str, endianness: str) -> torch.Tensor:
    """Bytes back to a tensor, as vLLM's clients decode them."""
    view, dtype = WIRE_DTYPES[embed_dtype]
    array = np.frombuffer(raw, dtype=view).reshape(shape)
    if endianness not in ("native", sys.byteorder):
        array = array.byteswap()
    return torch.from_numpy(array.copy()).view(dtype)


def assert_bad_request(response, field: str) -> None:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == field or field in error["message"], error


# ---- embed_dtype and endianness -------------------------------------------------


def test_base64_by_default_is_native_float32_as_the_openai_client_decodes_it(api):
    expected = float_vectors(api)
    for data, vector in zip(embed(api, encoding_format="base64").json()["data"], expected,
                            strict=True):
        decoded = np.frombuffer(base64.b64decode(data["embedding"]), dtype=np.float32)
        assert torch.equal(torch.from_numpy(decoded.copy()), vector)


@pytest.mark.parametrize("embed_dtype", EMBED_DTYPES)
def test_base64_embed_dtype_holds_the_values_as_torch_casts_them(api, embed_dtype):
    expected = float_vectors(api)
    answer = embed(api, encoding_format="base64", embed_dtype=embed_dtype).json()
    for data, vector in zip(answer["data"], expected, strict=True):
        decoded = decode(base64.b64decode(data["embedding"]), vector.shape, embed_dtype,
                         "native")
        assert torch.equal(decoded.float(), vector.to(WIRE_DTYPES[embed_dtype][1]).float())


@pytest.mark.parametrize("endianness,order", [("big", ">"), ("little", "<")])
def test_endianness_big_and_little_are_those_byte_orders(api, endianness, order):
    expected = float_vectors(api)
    answer = embed(api, encoding_format="base64", endianness=endianness).json()
    for data, vector in zip(answer["data"], expected, strict=True):
        decoded = np.frombuffer(base64.b64decode(data["embedding"]), dtype=f"{order}f4")
        assert torch.equal(torch.from_numpy(decoded.astype(np.float32)), vector)


# ---- bytes and bytes_only -------------------------------------------------------


@pytest.mark.parametrize("endianness", ENDIANNESS)
@pytest.mark.parametrize("embed_dtype", EMBED_DTYPES)
def test_bytes_body_is_the_vectors_back_to_back_placed_by_the_metadata_header(
        api, embed_dtype, endianness):
    expected = float_vectors(api)
    response = embed(api, encoding_format="bytes", embed_dtype=embed_dtype,
                     endianness=endianness)
    assert response.headers["content-type"] == "application/octet-stream"
    metadata = json.loads(response.headers["metadata"])
    assert list(metadata) == ["id", "created", "model", "data", "usage"]
    assert metadata["id"].startswith("embd-") and metadata["model"] == "minilm"
    assert metadata["usage"]["prompt_tokens"] == metadata["usage"]["total_tokens"] > 0
    assert [item["index"] for item in metadata["data"]] == [0, 1]
    assert metadata["data"][-1]["end"] == len(response.content)
    for item, vector in zip(metadata["data"], expected, strict=True):
        assert set(item) == {"index", "embed_dtype", "endianness", "start", "end", "shape"}
        assert (item["embed_dtype"], item["endianness"]) == (embed_dtype, endianness)
        assert item["shape"] == [384]
        decoded = decode(response.content[item["start"]:item["end"]], item["shape"],
                         embed_dtype, endianness)
        assert torch.equal(decoded.float(), vector.to(WIRE_DTYPES[embed_dtype][1]).float())


def test_bytes_only_is_the_same_body_without_metadata(api):
    with_metadata = embed(api, encoding_format="bytes")
    bare = embed(api, encoding_format="bytes_only")
    assert "metadata" not in bare.headers
    assert bare.headers["content-type"] == "application/octet-stream"
    assert bare.content == with_metadata.content


def test_bytes_on_pooling_carries_each_inputs_token_rows_with_their_shape(api):
    body = {"model": "minilm", "input": TEXTS}
    rows = [torch.tensor(d["data"]) for d in api.post("/pooling", json=body).json()["data"]]
    response = api.post("/pooling", json={**body, "encoding_format": "bytes"})
    metadata = json.loads(response.headers["metadata"])
    assert metadata["id"].startswith("pool-")
    for item, expected in zip(metadata["data"], rows, strict=True):
        assert item["shape"] == list(expected.shape) and expected.ndim == 2
        decoded = decode(response.content[item["start"]:item["end"]], item["shape"],
                         "float32", "native")
        assert torch.equal(decoded, expected)


@pytest.mark.parametrize("encoding_format", ["bytes", "bytes_only"])
def test_bytes_of_a_sparse_embedding_is_refused(api, encoding_format):
    response = api.post("/v1/embeddings", json={"model": "minilm", "input": TEXTS[0],
                                                "embedding_type": "sparse",
                                                "encoding_format": encoding_format})
    assert_bad_request(response, "encoding_format")


@pytest.mark.parametrize("route", ["/v1/embeddings", "/pooling"])
@pytest.mark.parametrize("field,value", [
    ("embed_dtype", "float64"), ("embed_dtype", "fp8"), ("endianness", "middle"),
    ("encoding_format", "hex"), ("padding", "longest"), ("padding", True),
    ("use_activation", "no")])
def test_bad_encoding_and_padding_values_are_400_naming_the_field(api, route, field, value):
    response = api.post(route, json={"model": "minilm", "input": TEXTS[0], field: value})
    assert_bad_request(response, field)


# ---- use_activation ---------------------------------------------------------------


def test_use_activation_false_returns_the_unnormalised_vectors(api, minilm_fp32):
    raw = float_vectors(api, use_activation=False)
    offline = minilm_fp32.embed(TEXTS, pooling_params=PoolingParams(normalize=False),
                                use_tqdm=False)
    for vector, out in zip(raw, offline, strict=True):
        assert torch.allclose(vector, torch.tensor(out.outputs.embedding), atol=1e-6)
        assert abs(vector.norm().item() - 1) > 0.1
    assert all(abs(v.norm().item() - 1) < 1e-5 for v in float_vectors(api, use_activation=True))


def test_use_activation_on_pooling_with_the_embed_task_is_normalize(api):
    body = {"model": "minilm", "input": TEXTS[0], "task": "embed", "use_activation": False}
    (data,) = api.post("/pooling", json=body).json()["data"]
    assert torch.allclose(torch.tensor(data["data"]),
                          float_vectors(api, input=TEXTS[0], normalize=False)[0])


def test_use_activation_and_normalize_that_disagree_are_refused(api):
    response = api.post("/v1/embeddings", json={"model": "minilm", "input": TEXTS[0],
                                                "use_activation": False, "normalize": True})
    assert response.status_code == 400
    assert "use_activation" in response.json()["error"]["message"]


def test_offline_use_activation_false_skips_normalisation_for_embed(minilm_fp32):
    (plain,) = minilm_fp32.embed(TEXTS[:1], pooling_params=PoolingParams(normalize=False),
                                 use_tqdm=False)
    (raw,) = minilm_fp32.embed(TEXTS[:1], pooling_params=PoolingParams(use_activation=False),
                               use_tqdm=False)
    assert raw.outputs.embedding == plain.outputs.embedding


# ---- padding ------------------------------------------------------------------------


def padded_ids(llm: LLM, text: str, keep: int | None = None) -> list[int]:
    """``text``'s token ids (cut to ``keep``, as the engine cuts), then pad tokens."""
    (out,) = llm.embed([text], truncate_prompt_tokens=keep, use_tqdm=False)
    tokenizer = llm.engine.tokenizer
    ids = list(out.prompt_token_ids)
    return ids + [tokenizer.hf.pad_token_id] * (tokenizer.max_model_len - len(ids))


def test_padding_max_length_pads_to_the_model_limit_and_counts_the_pad_tokens(
        api, minilm_fp32):
    answer = embed(api, padding="max_length").json()
    limit = minilm_fp32.engine.config.max_model_len
    assert answer["usage"]["prompt_tokens"] == len(TEXTS) * limit
    offline = minilm_fp32.embed([{"prompt_token_ids": padded_ids(minilm_fp32, t)}
                                 for t in TEXTS], use_tqdm=False)
    unpadded = float_vectors(api)
    for data, out, plain in zip(answer["data"], offline, unpadded, strict=True):
        vector = torch.tensor(data["embedding"])
        assert torch.allclose(vector, torch.tensor(out.outputs.embedding), atol=1e-6)
        assert not torch.allclose(vector, plain, atol=1e-3)  # the model reads the padding


def test_padding_comes_after_truncation(api, minilm_fp32):
    answer = embed(api, input=TEXTS[0], padding="max_length", truncate_prompt_tokens=4).json()
    (out,) = minilm_fp32.embed([{"prompt_token_ids": padded_ids(minilm_fp32, TEXTS[0], 4)}],
                               use_tqdm=False)
    assert torch.allclose(torch.tensor(answer["data"][0]["embedding"]),
                          torch.tensor(out.outputs.embedding), atol=1e-6)


def test_padding_do_not_pad_is_the_default(api):
    assert embed(api, padding="do_not_pad").json()["data"] == embed(api).json()["data"]


def test_offline_padding_is_a_pooling_parameter(minilm_fp32):
    (padded,) = minilm_fp32.embed(TEXTS[:1], pooling_params=PoolingParams(padding="max_length"),
                                  use_tqdm=False)
    assert padded.prompt_token_ids == padded_ids(minilm_fp32, TEXTS[0])


# ---- fields of every pooling request ------------------------------------------------


@pytest.mark.parametrize("route", ROUTES)
def test_every_pooling_route_accepts_vllms_request_fields_and_echoes_request_id(api, route):
    body, prefix = ROUTES[route]
    response = api.post(route, json={**body, **VLLM_FIELDS})
    assert response.status_code == 200, response.text
    assert response.json()["id"] == f"{prefix}-req-7"


def test_x_request_id_header_names_the_response_before_request_id(api):
    response = api.post("/v1/embeddings", headers={"X-Request-Id": "from-header"},
                        json={"model": "minilm", "input": TEXTS[0], "request_id": "from-body"})
    assert response.json()["id"] == "embd-from-header"


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("field,value", [
    ("request_id", 7), ("priority", "high"), ("priority", 2**63), ("cache_salt", ""),
    ("mm_processor_kwargs", [1]), ("media_io_kwargs", {"image": 1})])
def test_bad_request_field_values_are_400_naming_the_field(api, route, field, value):
    body, _ = ROUTES[route]
    assert_bad_request(api.post(route, json={**body, field: value}), field)


# ---- --dtype half and float -----------------------------------------------------------


@pytest.mark.parametrize("alias,dtype", [("half", torch.float16), ("float", torch.float32)])
def test_dtype_half_and_float_are_vllms_names_of_float16_and_float32(minilm_path, alias,
                                                                     dtype):
    assert ModelConfig.from_args(model=str(minilm_path), dtype=alias, device="cpu").dtype == dtype
    assert build_parser().parse_args(["serve", "--dtype", alias]).dtype == alias


def test_dtype_float_goes_with_int8_as_float32_does(minilm_path):
    config = ModelConfig.from_args(model=str(minilm_path), dtype="float", device="cpu",
                                   quantization="int8")
    assert config.quantization == "int8"
