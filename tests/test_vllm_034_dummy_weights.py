"""``LLM(load_format="dummy")`` (vLLM's): the model built from its config with seeded
random weights; its tokenizer, architecture and layout are the checkpoint's own."""

from __future__ import annotations

import pytest
import torch

from cenote import LLM

TEXTS = ["The capital of France is Paris.", "Dummy weights keep the shapes."]


def test_dummy_weights_keep_the_shapes_and_tokens_not_the_values(minilm_path, minilm_fp32):
    dummy = LLM(str(minilm_path), dtype="float32", load_format="dummy")
    real = minilm_fp32.embed(TEXTS)
    ours = dummy.embed(TEXTS)
    for a, b in zip(real, ours, strict=True):
        assert a.prompt_token_ids == b.prompt_token_ids
        assert len(a.outputs.embedding) == len(b.outputs.embedding)
    cosines = torch.nn.functional.cosine_similarity(
        torch.tensor([o.outputs.embedding for o in real]),
        torch.tensor([o.outputs.embedding for o in ours]))
    assert float(cosines.max()) < 0.99  # not the checkpoint's weights
    again = LLM(str(minilm_path), dtype="float32", load_format="dummy").embed(TEXTS)
    assert torch.equal(torch.tensor([o.outputs.embedding for o in again]),
                       torch.tensor([o.outputs.embedding for o in ours]))  # seeded


def test_a_causal_lm_converted_to_an_embedder_loads_with_dummy_weights(minilm_path, tmp_path):
    from tests.factories import build_tiny_transformers_model

    path = build_tiny_transformers_model(minilm_path, tmp_path / "gpt2", "GPT2Config",
                                         "GPT2LMHeadModel", n_embd=32, n_layer=2, n_head=4,
                                         n_positions=128)
    for weights in path.glob("*.safetensors"):
        weights.unlink()  # dummy needs the config, not the weights
    llm = LLM(str(path), dtype="float32", runner="pooling", convert="embed",
              load_format="dummy")
    (out,) = llm.embed(TEXTS[0])
    assert len(out.outputs.embedding) == 32


def test_other_load_formats_are_still_refused(minilm_path):
    with pytest.raises(ValueError, match="load_format='gguf'"):
        LLM(str(minilm_path), load_format="gguf")
