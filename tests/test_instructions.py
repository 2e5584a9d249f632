"""Instructions (Sentence-Transformers prompts): applied as Sentence-Transformers applies
them, by default and by name, offline and per request."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cenote import LLM

TEXTS = ["how do rivers shape valleys", "The Nile flows north through eleven countries."]


def assert_close(outs, reference):
    got = torch.tensor([o.outputs.embedding for o in outs])
    assert F.cosine_similarity(got, reference.float()).min() >= 0.9999


@pytest.fixture(scope="module")
def with_default(minilm_with_prompts):
    from sentence_transformers import SentenceTransformer

    path = minilm_with_prompts(default_prompt_name="query")
    return LLM(str(path), dtype="float32"), SentenceTransformer(str(path), device="cpu")


def test_the_default_prompt_applies_as_in_sentence_transformers(with_default):
    llm, st = with_default
    outs = llm.embed(TEXTS)
    assert_close(outs, st.encode(TEXTS, convert_to_tensor=True))
    prompt_ids = llm.get_tokenizer()("query: ", add_special_tokens=False)["input_ids"]
    assert outs[0].prompt_token_ids[1:1 + len(prompt_ids)] == prompt_ids  # counted as input


def test_a_named_prompt_applies_as_in_sentence_transformers(with_default):
    llm, st = with_default
    outs = llm.embed(TEXTS, prompt_name="document")
    assert_close(outs, st.encode(TEXTS, prompt_name="document", convert_to_tensor=True))


def test_without_a_default_prompt_texts_embed_as_they_are(minilm_with_prompts, st_minilm):
    llm = LLM(str(minilm_with_prompts()), dtype="float32")
    assert_close(llm.embed(TEXTS), st_minilm.encode(TEXTS, convert_to_tensor=True))


def test_prompt_tokens_are_left_out_of_the_mean_when_pooling_excludes_them(
        minilm_with_prompts):
    from sentence_transformers import SentenceTransformer

    path = minilm_with_prompts(include_prompt=False)
    llm = LLM(str(path), dtype="float32")
    st = SentenceTransformer(str(path), device="cpu")
    reference = st.encode(TEXTS, prompt_name="query", convert_to_tensor=True)
    assert_close(llm.embed(TEXTS, prompt_name="query"), reference)
    included = LLM(str(minilm_with_prompts()), dtype="float32").embed(TEXTS, prompt_name="query")
    assert F.cosine_similarity(torch.tensor(included[0].outputs.embedding),
                               reference[0].float(), dim=0) < 0.9999  # the test can tell


def test_token_id_prompts_get_no_instruction(with_default):
    llm, _ = with_default
    ids = llm.get_tokenizer()(TEXTS[0])["input_ids"]
    (out,) = llm.embed({"prompt_token_ids": ids})
    assert out.prompt_token_ids == ids


def test_an_unknown_prompt_name_lists_the_models_prompt_names(with_default):
    llm, _ = with_default
    with pytest.raises(ValueError, match="Unknown prompt_name 'passage'.*'query', 'document'"):
        llm.embed(TEXTS, prompt_name="passage")


def test_a_prompt_name_on_a_model_without_prompts_says_it_has_none(minilm_fp32):
    with pytest.raises(ValueError, match="prompt names are: none"):
        minilm_fp32.embed(TEXTS, prompt_name="query")
