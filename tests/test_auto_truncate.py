"""``cenote serve --auto-truncate`` (text-embeddings-inference's option): an input over
the model's length is cut to it, keeping its start, unless the request says how to cut;
without the option such an input is refused, as in vLLM."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from cenote import LLM, PoolingParams
from cenote.arguments import build_parser
from cenote.config.model import ModelConfig
from tests.serving import cenote_serve

WINDOW = 32
LONG_TEXT = " ".join(f"Sentence {i} says something about rivers and their valleys."
                     for i in range(30))  # far over WINDOW tokens


@pytest.fixture(scope="module")
def offline(minilm_path):
    return LLM(str(minilm_path), dtype="float32", max_model_len=WINDOW)


@pytest.fixture(scope="module")
def server(minilm_path):
    with cenote_serve([str(minilm_path), "--dtype", "float32", "--max-model-len", str(WINDOW),
                       "--auto-truncate", "--served-model-name", "minilm"]) as process:
        yield process


def cut(llm: LLM, side: str, keep: int = -1) -> list[float]:
    (out,) = llm.embed([LONG_TEXT], pooling_params=PoolingParams(truncation_side=side),
                       truncate_prompt_tokens=keep, use_tqdm=False)
    return out.outputs.embedding


def embed(server, **fields) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/embeddings",
                      json={"model": "minilm", "input": LONG_TEXT, **fields}, timeout=60)


def test_auto_truncate_is_off_by_default():
    assert build_parser().parse_args(["serve"]).auto_truncate is False


def test_a_long_input_is_cut_to_the_models_length_keeping_its_start(server, offline):
    answer = embed(server)
    assert answer.status_code == 200, answer.text
    assert answer.json()["usage"]["prompt_tokens"] == WINDOW
    np.testing.assert_allclose(answer.json()["data"][0]["embedding"], cut(offline, "right"),
                               rtol=0, atol=1e-5)


def test_the_request_still_chooses_the_side_and_the_length(server, offline):
    left = embed(server, truncation_side="left")
    np.testing.assert_allclose(left.json()["data"][0]["embedding"], cut(offline, "left"),
                               rtol=0, atol=1e-5)
    shorter = embed(server, truncate_prompt_tokens=10)
    assert shorter.json()["usage"]["prompt_tokens"] == 10
    np.testing.assert_allclose(shorter.json()["data"][0]["embedding"],
                               cut(offline, "right", 10), rtol=0, atol=1e-5)


def test_every_route_cuts_scoring_and_teis_included(server):
    score = httpx.post(f"{server.url}/score", json={"text_1": LONG_TEXT, "text_2": LONG_TEXT},
                       timeout=60)
    assert score.status_code == 200, score.text
    assert score.json()["data"][0]["score"] == pytest.approx(1.0, abs=1e-5)
    tei = httpx.post(f"{server.url}/embed", json={"inputs": LONG_TEXT}, timeout=60)
    assert tei.status_code == 200, tei.text
    assert httpx.get(f"{server.url}/info", timeout=10).json()["auto_truncate"] is True


def test_chunked_processing_and_auto_truncate_are_refused_together(minilm_path):
    with pytest.raises(ValueError, match="chunked processing"):
        ModelConfig.from_args(minilm_path, max_model_len=WINDOW, auto_truncate=True,
                              override_pooler_config={"enable_chunked_processing": True,
                                                      "max_embed_len": 1000})
