"""Opt-in int8 (``quantization="int8"``): every matmul of a native model runs in int8,
the accuracy it costs is measured at load and logged, outputs stay close to the float
model's (nearest neighbours agree), and what it does not apply to is refused."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cenote import LLM
from cenote.models.linear import Linear
from tests.serving import cenote_serve

pytestmark = pytest.mark.skipif(
    "fbgemm" not in torch.backends.quantized.supported_engines,
    reason="int8 uses torch's fbgemm kernels, which this CPU's torch build lacks (x86 only)")

QUERIES = ["How do glaciers form?", "Who painted the Mona Lisa?", "Best way to bake bread",
           "Symptoms of the flu", "How does a jet engine work?"]
PASSAGES = ["Glaciers form where snow piles up over years and compresses into ice.",
            "Leonardo da Vinci painted the Mona Lisa in the early sixteenth century.",
            "Knead the dough, let it rise, then bake it in a hot oven until golden.",
            "Influenza brings fever, cough, sore throat and aching muscles.",
            "A jet engine sucks in air, compresses it, burns fuel and blows it out the back."]


@pytest.fixture(scope="module")
def int8_llm(minilm_path):
    return LLM(str(minilm_path), quantization="int8")


def test_every_matmul_is_int8_and_its_accuracy_is_measured(int8_llm):
    layers = [m for m in int8_llm.engine.runner.model.modules() if isinstance(m, Linear)]
    assert layers and all(m.int8 is not None and m.weight is None for m in layers)
    accuracy = int8_llm.engine.int8_accuracy
    assert accuracy.num_texts >= 32 and accuracy.pooling_task == "embed"
    assert 0.95 <= accuracy.min_cosine <= accuracy.mean_cosine < 1.0
    assert int8_llm.config.dtype == torch.float32


def test_int8_vectors_are_close_to_float_and_rank_alike(int8_llm, minilm_path):
    texts = QUERIES + PASSAGES
    floats = torch.tensor([o.outputs.embedding for o in LLM(str(minilm_path),
                                                                dtype="float32").embed(texts)])
    ints = torch.tensor([o.outputs.embedding for o in int8_llm.embed(texts)])
    cosine = F.cosine_similarity(floats, ints)
    assert cosine.min() > 0.97 and not torch.equal(floats, ints)
    n = len(QUERIES)
    for vectors in (floats, ints):  # each query finds its own passage, in both
        assert (vectors[:n] @ vectors[n:].T).argmax(1).tolist() == list(range(n))


@pytest.mark.parametrize("options, message", [
    ({"quantization": "awq"}, "one quantization is 'int8'"),
    ({"quantization": "int8", "dtype": "bfloat16"}, "float32"),
])
def test_what_int8_does_not_do_is_refused(minilm_path, options, message):
    with pytest.raises(ValueError, match=message):
        LLM(str(minilm_path), **options)


def test_int8_needs_a_native_model(tiny_distilbert):
    with pytest.raises(ValueError, match="natively"):
        LLM(str(tiny_distilbert()), quantization="int8")


def test_the_server_logs_int8_accuracy_and_serves(minilm_path):
    import httpx

    with cenote_serve([str(minilm_path), "--quantization", "int8"]) as server:
        answer = httpx.post(f"{server.url}/v1/embeddings", json={"input": QUERIES[0]})
        assert answer.status_code == 200
        assert len(answer.json()["data"][0]["embedding"]) == 384
        assert "int8 matmuls: cosine to the float model on" in server.log
