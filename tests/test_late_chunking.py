"""Late chunking (vLLM's ``LateChunkingParams``, SPEC §12): with token_embed, one vector
per ``chunk_size`` tokens of the whole text, each the mean of that chunk's rows of the
text's own token vectors (one pass over the whole text), normalised as token_embed
normalises; ``output.late_chunking`` places each vector's chunk in the tokens and in
the text. Offline, over HTTP in process and through a real ``cenote serve``."""

from __future__ import annotations

import httpx
import pytest
import torch
import torch.nn.functional as F
from fastapi.testclient import TestClient

from cenote import LLM, LateChunk, LateChunkingParams, PoolingParams, VLLMValidationError
from cenote.engine.async_engine import AsyncPoolingEngine
from cenote.server.app import build_app
from cenote.server.context import ServedModel
from tests.serving import cenote_serve

TEXT = ("passage: Berlin has many museums. They display art from around the world, and "
        "the city's galleries open late on Thursdays.")
UNICODE_TEXT = "passage: 中文 😀 café e\u0301"


def chunked(size: int, **fields) -> PoolingParams:
    return PoolingParams(late_chunking_params=LateChunkingParams(size), **fields)


def token_rows(llm: LLM, text: str) -> torch.Tensor:
    """The text's token vectors as token_embed makes them, before normalisation."""
    (out,) = llm.encode(text, PoolingParams(use_activation=False), pooling_task="token_embed")
    return out.outputs.data


def chunk_means(rows: torch.Tensor, size: int, normalize: bool = True) -> torch.Tensor:
    means = torch.stack([part.mean(0) for part in rows.split(size)])
    return F.normalize(means, dim=-1) if normalize else means


def expected_chunks(llm: LLM, text: str, size: int) -> list[LateChunk]:
    """The chunks as the tokenizer's own offsets place them (vLLM's reference)."""
    encoded = llm.get_tokenizer()(text, return_offsets_mapping=True)
    n = len(encoded["input_ids"])
    chunks = []
    for start in range(0, n, size):
        end = min(start + size, n)
        spans = [(a, b) for a, b in encoded["offset_mapping"][start:end] if a < b]
        chars = (min(a for a, _ in spans), max(b for _, b in spans)) if spans else None
        chunks.append(LateChunk((start, end), chars))
    return chunks


# ---- offline -----------------------------------------------------------------


@pytest.mark.parametrize("size", [1, 5, 16])
def test_each_chunk_vector_is_the_normalised_mean_of_its_rows_of_the_whole_text(
        minilm_fp32, size):
    rows = token_rows(minilm_fp32, TEXT)
    (out,) = minilm_fp32.encode(TEXT, chunked(size), pooling_task="token_embed")
    assert out.outputs.data.shape == (-(-len(rows) // size), rows.shape[1])
    assert torch.allclose(out.outputs.data, chunk_means(rows, size), atol=1e-5)


def test_chunks_are_pooled_from_the_whole_text_not_from_the_chunk_alone(minilm_fp32):
    (out,) = minilm_fp32.encode(TEXT, chunked(8), pooling_task="token_embed")
    first = out.late_chunking.chunks[1]
    alone = token_rows(minilm_fp32, TEXT[slice(*first.char_range)])
    assert not torch.allclose(out.outputs.data[1], chunk_means(alone, len(alone))[0],
                              atol=1e-3)


def test_use_activation_false_gives_the_chunk_means_unnormalised(minilm_fp32):
    rows = token_rows(minilm_fp32, TEXT)
    (out,) = minilm_fp32.encode(TEXT, chunked(7, use_activation=False),
                                pooling_task="token_embed")
    assert torch.allclose(out.outputs.data, chunk_means(rows, 7, normalize=False), atol=1e-5)


@pytest.mark.parametrize("text", [TEXT, UNICODE_TEXT])
@pytest.mark.parametrize("size", [1, 3, 2**63 - 1])
def test_chunk_ranges_come_from_the_tokenizer_offsets(minilm_fp32, text, size):
    (out,) = minilm_fp32.encode(text, chunked(size), pooling_task="token_embed")
    meta = out.late_chunking
    assert (meta.chunk_size, meta.strategy) == (size, "fixed_tokens")
    assert meta.input_tokens == len(out.prompt_token_ids) == out.num_input_tokens
    assert meta.chunks == expected_chunks(minilm_fp32, text, size)
    assert len(meta.chunks) == len(out.outputs.data)


def test_char_ranges_map_back_to_the_text_and_special_tokens_have_none(minilm_fp32):
    (out,) = minilm_fp32.encode(UNICODE_TEXT, chunked(1), pooling_task="token_embed")
    pieces = [UNICODE_TEXT[slice(*c.char_range)] if c.char_range else None
              for c in out.late_chunking.chunks]
    assert pieces[0] is None and pieces[-1] is None  # [CLS] and [SEP]
    assert "中" in pieces and "😀" in pieces
    spans = [c.char_range for c in out.late_chunking.chunks if c.char_range]
    assert spans == sorted(spans)


def test_the_instruction_counts_as_tokens_and_the_ranges_index_the_text(minilm_with_prompts):
    llm = LLM(str(minilm_with_prompts(default_prompt_name="document")), dtype="float32")
    text = "Glaciers carve valleys."
    (out,) = llm.encode(text, chunked(2), pooling_task="token_embed")
    (plain,) = llm.encode(text, pooling_task="token_embed")
    assert out.late_chunking.input_tokens == len(plain.prompt_token_ids)
    pieces = [text[slice(*c.char_range)] for c in out.late_chunking.chunks if c.char_range]
    assert pieces[-1].endswith("valleys.") and "passage" not in "".join(pieces)


def test_requests_without_late_chunking_are_unchanged_beside_chunked_ones(minilm_fp32):
    texts = [TEXT, "A short one.", TEXT]
    params = [chunked(4), PoolingParams(), PoolingParams(use_activation=False)]
    outs = minilm_fp32.encode(texts, params, pooling_task="token_embed")
    assert outs[0].late_chunking is not None
    assert outs[1].late_chunking is None and outs[2].late_chunking is None
    (alone,) = minilm_fp32.encode(texts[1], pooling_task="token_embed")
    assert torch.allclose(outs[1].outputs.data, alone.outputs.data, atol=1e-5)
    assert torch.allclose(outs[2].outputs.data, token_rows(minilm_fp32, TEXT), atol=1e-5)


def test_bge_m3_late_chunking_keeps_the_cls_row_its_token_vectors_leave_out(bge_m3_path):
    llm = LLM(str(bge_m3_path), dtype="float32")
    text = "A document about Berlin and its museums."
    rows, plain = llm.encode([text, text], [chunked(1, use_activation=False),
                                            PoolingParams(use_activation=False)],
                             pooling_task="token_embed")
    assert len(rows.outputs.data) == len(rows.prompt_token_ids)
    assert torch.allclose(rows.outputs.data[1:], plain.outputs.data, atol=1e-5)
    (out,) = llm.encode(text, chunked(3), pooling_task="token_embed")
    assert torch.allclose(out.outputs.data, chunk_means(rows.outputs.data, 3), atol=1e-5)


@pytest.mark.parametrize("size", [0, -1, True, 1.5, "2", 2**63])
def test_a_chunk_size_that_is_not_a_positive_int_below_2_63_is_refused(size):
    with pytest.raises(VLLMValidationError,
                       match="chunk_size must be a positive integer less than 2\\*\\*63"):
        LateChunkingParams(size)


@pytest.mark.parametrize("params, kwargs", [
    (chunked(4, truncate_prompt_tokens=8), {}),
    (chunked(4), {"truncate_prompt_tokens": 8}),
    (chunked(4, padding="max_length"), {}),
], ids=["truncate-in-params", "truncate-argument", "padding"])
def test_late_chunking_with_truncation_or_padding_is_refused_as_vllm_refuses_it(
        minilm_fp32, params, kwargs):
    with pytest.raises(VLLMValidationError, match="Late chunking does not support input "
                       "padding, truncation or renderer text normalization"):
        minilm_fp32.encode(TEXT, params, pooling_task="token_embed", **kwargs)


def test_late_chunking_with_something_not_a_lora_request_is_refused(minilm_fp32):
    with pytest.raises(ValueError, match="lora_request must be a LoRARequest"):
        minilm_fp32.encode(TEXT, chunked(4), pooling_task="token_embed",
                           lora_request=object())


def test_late_chunking_needs_token_embed(minilm_fp32):
    with pytest.raises(VLLMValidationError, match="^Late chunking requires token_embed$"):
        minilm_fp32.embed(TEXT, pooling_params=chunked(4))


@pytest.mark.parametrize("prompt", [{"prompt_token_ids": [101, 7592, 102]}, ""])
def test_late_chunking_needs_nonempty_text(minilm_fp32, prompt):
    with pytest.raises(VLLMValidationError,
                       match="^Late chunking requires nonempty plain-text input$"):
        minilm_fp32.encode(prompt, chunked(4), pooling_task="token_embed")


def test_a_text_over_the_model_length_is_refused_not_cut(minilm_fp32):
    with pytest.raises(ValueError, match="maximum context length is 256 tokens"):
        minilm_fp32.encode("word " * 600, chunked(4), pooling_task="token_embed")


# ---- HTTP ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def api(minilm_fp32):
    app = build_app([ServedModel(["minilm"], AsyncPoolingEngine(minilm_fp32.engine))])
    with TestClient(app) as client:
        yield client


def pooling(api, **body) -> httpx.Response:
    return api.post("/pooling", json={"model": "minilm", "task": "token_embed", **body})


def test_pooling_answers_chunk_vectors_with_their_ranges_as_offline(api, minilm_fp32):
    texts = [TEXT, UNICODE_TEXT]
    response = pooling(api, input=texts, late_chunking_params={"chunk_size": 5})
    assert response.status_code == 200, response.text
    body = response.json()
    outs = minilm_fp32.encode(texts, chunked(5), pooling_task="token_embed")
    assert body["usage"]["prompt_tokens"] == sum(len(o.prompt_token_ids) for o in outs)
    for item, out in zip(body["data"], outs, strict=True):
        assert torch.allclose(torch.tensor(item["data"]), out.outputs.data, atol=1e-5)
        meta = out.late_chunking
        assert item["late_chunking"] == {
            "chunk_size": 5, "input_tokens": meta.input_tokens, "strategy": "fixed_tokens",
            "chunks": [{"token_range": list(c.token_range),
                        "char_range": list(c.char_range) if c.char_range else None}
                       for c in meta.chunks]}


def test_pooling_without_late_chunking_has_no_late_chunking_field(api):
    (item,) = pooling(api, input=TEXT).json()["data"]
    assert "late_chunking" not in item


@pytest.mark.parametrize("fields, message", [
    ({"late_chunking_params": {"chunk_size": 0}}, "greater than 0"),
    ({"late_chunking_params": {"chunk_size": -1}}, "greater than 0"),
    ({"late_chunking_params": {"chunk_size": True}}, "valid integer"),
    ({"late_chunking_params": {"chunk_size": 1.5}}, "valid integer"),
    ({"late_chunking_params": {"chunk_size": "2"}}, "valid integer"),
    ({"late_chunking_params": {"chunk_size": 2**63}}, "less than or equal to"),
    ({"late_chunking_params": {"chunk_size": 2**64}}, "less than or equal to"),
    ({"late_chunking_params": {}}, "chunk_size: Field required"),
    ({"late_chunking_params": {"chunk_size": 2, "metadata": {}}}, "Extra inputs"),
    ({"truncate_prompt_tokens": 4}, "does not support input padding, truncation"),
    ({"padding": "max_length"}, "does not support input padding, truncation"),
    ({"input": [101, 7592, 102]}, "requires nonempty plain-text input"),
    ({"input": ""}, "requires nonempty plain-text input"),
    ({"input": "word " * 600}, "maximum context length"),
    ({"task": "embed"}, "Late chunking requires token_embed"),
    ({"encoding_format": "bytes"}, "answers in JSON"),
])
def test_unsupported_late_chunking_requests_are_400(api, fields, message):
    response = pooling(api, **{"input": TEXT, "late_chunking_params": {"chunk_size": 5},
                               **fields})
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]["message"]


def test_a_real_server_chunks_as_the_token_rows_it_serves(minilm_path):
    args = [str(minilm_path), "--dtype", "float32", "--served-model-name", "minilm"]
    with cenote_serve(args) as server:
        def post(**body):
            response = httpx.post(f"{server.url}/pooling", timeout=60, json={
                "model": "minilm", "task": "token_embed", "input": [TEXT, "   x   "], **body})
            assert response.status_code == 200, response.text
            return response.json()

        raw = post(use_activation=False)
        result = post(late_chunking_params={"chunk_size": 3})
    assert result["usage"] == raw["usage"]
    for rows, item in zip(raw["data"], result["data"], strict=True):
        expected = chunk_means(torch.tensor(rows["data"]), 3)
        assert torch.allclose(torch.tensor(item["data"]), expected, atol=1e-5)
        assert len(item["late_chunking"]["chunks"]) == len(expected)
