"""Native Qwen2 / Qwen3 / Llama / Mistral pooling models match transformers on the same weights."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cenote import LLM
from cenote.models.decoder import DecoderModel, rope_frequencies
from tests.factories import DECODER_PREFIXES, add_tensors_to_checkpoint, tiny_decoder_config

FAMILIES = ["qwen2", "qwen3", "llama", "mistral"]
# Different lengths; the last is longer than the tiny Mistral's sliding window (12).
TEXTS = [
    "hello world",
    "a somewhat longer sentence about search engines and ranking",
    "x",
    "the quick brown fox jumps over the lazy dog " * 3,
]


def _reference(path, architecture: str):
    import transformers

    return getattr(transformers, architecture).from_pretrained(path, dtype=torch.float32).eval()


@torch.no_grad()
def _hf_hidden(model, token_ids: list[int]) -> torch.Tensor:
    """The last layer's (normed) hidden states ``[T, hidden]`` of a base or causal-LM model."""
    body = getattr(model, "model", model)
    return body(input_ids=torch.tensor([token_ids])).last_hidden_state[0]


def _assert_embeddings_match(outs, reference_rows: list[torch.Tensor]) -> None:
    ours = torch.tensor([o.outputs.embedding for o in outs])
    ref = F.normalize(torch.stack(reference_rows), dim=-1)
    assert F.cosine_similarity(ours, ref).min() >= 0.9999
    assert torch.allclose(ours, ref, atol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_bare_model_embeds_the_normalised_last_token(family, tiny_decoder):
    arch = DECODER_PREFIXES[family] + "Model"
    path = tiny_decoder(family, arch)
    llm = LLM(str(path), dtype="float32")
    assert llm.config.task == "embed"
    outs = llm.embed(TEXTS)
    ref = _reference(path, arch)
    _assert_embeddings_match(outs, [_hf_hidden(ref, o.prompt_token_ids)[-1] for o in outs])


@pytest.mark.parametrize("family", FAMILIES)
def test_sequence_classifier_matches_transformers(family, tiny_decoder):
    arch = DECODER_PREFIXES[family] + "ForSequenceClassification"
    path = tiny_decoder(family, arch, num_labels=3)
    llm = LLM(str(path), dtype="float32")
    assert llm.config.task == "classify"
    outs = llm.classify(TEXTS)
    ref = _reference(path, arch)
    for out in outs:
        with torch.no_grad():
            logits = ref(input_ids=torch.tensor([out.prompt_token_ids])).logits[0]
        assert out.outputs.num_classes == 3
        assert torch.allclose(torch.tensor(out.outputs.probs), logits.softmax(-1), atol=1e-4)


@pytest.mark.parametrize("pad", ["sep", "unset"])
def test_sequence_classifier_scores_the_last_token_that_is_not_padding(pad, tiny_decoder):
    # Chat prompts often end with EOS, which fine-tuning scripts make the pad token:
    # transformers then scores the token before it, even in a batch of one. Here every
    # prompt ends with [SEP] (id 102); a prompt of nothing but pads scores its first token.
    arch = "LlamaForSequenceClassification"
    overrides = {"pad_token_id": 102} if pad == "sep" else {}
    path = tiny_decoder("llama", arch, num_labels=3, **overrides)
    llm = LLM(str(path), dtype="float32")
    prompts = TEXTS + [{"prompt_token_ids": [7592, 102, 102, 102]},
                       {"prompt_token_ids": [102, 102]}]
    ref = _reference(path, arch)
    outs = llm.classify(prompts)
    assert [o.prompt_token_ids[-1] for o in outs] == [102] * len(prompts)
    for out in outs:
        with torch.no_grad():
            logits = ref(input_ids=torch.tensor([out.prompt_token_ids])).logits[0]
        assert torch.allclose(torch.tensor(out.outputs.probs), logits.softmax(-1), atol=1e-4)
    if pad == "sep":  # the trailing pads change nothing, as in transformers
        # A batch and a lone prompt take different kernel paths: equal to fp32 rounding.
        alone = llm.classify({"prompt_token_ids": [7592]})[0].outputs.probs
        assert torch.allclose(torch.tensor(outs[-2].outputs.probs), torch.tensor(alone),
                              rtol=0, atol=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_causal_lm_converted_to_embed_matches_transformers(family, tiny_decoder):
    arch = DECODER_PREFIXES[family] + "ForCausalLM"
    path = tiny_decoder(family, arch)
    llm = LLM(str(path), task="embed", dtype="float32")
    outs = llm.embed(TEXTS)
    ref = _reference(path, arch)
    _assert_embeddings_match(outs, [_hf_hidden(ref, o.prompt_token_ids)[-1] for o in outs])


@pytest.mark.parametrize("family", FAMILIES)
def test_batch_gives_the_same_result_as_one_by_one(family, tiny_decoder):
    path = tiny_decoder(family, DECODER_PREFIXES[family] + "ForSequenceClassification",
                        num_labels=3)
    llm = LLM(str(path), dtype="float32")
    batched = [o.outputs.data for o in llm.encode(TEXTS)]
    for text, rows in zip(TEXTS, batched, strict=True):
        (single,) = llm.encode(text)
        assert torch.allclose(rows, single.outputs.data, atol=1e-5)
    batched_probs = [o.outputs.probs for o in llm.classify(TEXTS)]
    single_probs = [llm.classify(t)[0].outputs.probs for t in TEXTS]
    assert torch.allclose(torch.tensor(batched_probs), torch.tensor(single_probs), atol=1e-6)


def test_encode_returns_every_tokens_hidden_state(tiny_decoder):
    path = tiny_decoder("qwen3", "Qwen3Model")
    llm = LLM(str(path), dtype="float32")
    ref = _reference(path, "Qwen3Model")
    for out in llm.encode(TEXTS):
        expected = _hf_hidden(ref, out.prompt_token_ids)
        assert out.outputs.data.shape == expected.shape
        assert torch.allclose(out.outputs.data, expected, atol=1e-4)


def test_sliding_window_attention_matches_transformers(tiny_decoder):
    path = tiny_decoder("mistral", "MistralModel")
    llm = LLM(str(path), dtype="float32")
    (out,) = llm.encode(TEXTS[-1])
    assert len(out.prompt_token_ids) > llm.config.hf_config.sliding_window
    expected = _hf_hidden(_reference(path, "MistralModel"), out.prompt_token_ids)
    assert torch.allclose(out.outputs.data, expected, atol=1e-4)


ROPE_SCALINGS = {
    "linear": ("mistral", {"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0}),
    "llama3": ("llama", {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0,
                         "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 64}),
    "yarn": ("qwen2", {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                       "original_max_position_embeddings": 64}),
}


@pytest.mark.parametrize("kind", sorted(ROPE_SCALINGS))
def test_scaled_rotary_embeddings_match_transformers(kind, tiny_decoder):
    family, rope = ROPE_SCALINGS[kind]
    arch = DECODER_PREFIXES[family] + "Model"
    path = tiny_decoder(family, arch, rope_parameters=rope)
    llm = LLM(str(path), dtype="float32")
    ref = _reference(path, arch)
    assert ref.config.rope_parameters["rope_type"] == kind
    for out in llm.encode(TEXTS):
        assert torch.allclose(out.outputs.data, _hf_hidden(ref, out.prompt_token_ids),
                              atol=1e-4)


QWEN3_RERANKER = {"architectures": ["Qwen3ForSequenceClassification"],
                  "classifier_from_token": ["no", "yes"], "is_original_qwen3_reranker": True}


@pytest.mark.parametrize("tied", [True, False])
def test_causal_lm_as_reranker_from_its_yes_and_no_logits(tied, tiny_decoder, minilm_path):
    # vLLM's recipe for Qwen3-Reranker: the LM head's "yes" row minus its "no" row is a
    # one-logit classifier, whose sigmoid is the yes/no softmax of the original model;
    # query and document are tokenised as one text.
    from transformers import AutoTokenizer

    # The prompts end with [SEP], made the pad token here: the yes/no logits are still
    # those after the literal last token (vLLM's; no trailing pad is skipped for such heads).
    path = tiny_decoder("qwen3", "Qwen3ForCausalLM", tie_word_embeddings=tied, pad_token_id=102)
    llm = LLM(str(path), task="score", dtype="float32", hf_overrides=QWEN3_RERANKER)
    assert llm.config.task == "classify" and llm.config.num_labels == 1
    query = "<Query>: what is the capital of china?\n"
    docs = ["<Document>: the capital of china is beijing.", "<Document>: gravity pulls."]
    outs = llm.score(query, docs)
    tok = AutoTokenizer.from_pretrained(path)
    no, yes = tok.convert_tokens_to_ids(["no", "yes"])
    ref = _reference(path, "Qwen3ForCausalLM")
    for doc, out in zip(docs, outs, strict=True):
        ids = tok(query + doc)["input_ids"]
        assert out.prompt_token_ids == ids and ids[-1] == 102
        with torch.no_grad():
            logits = ref(input_ids=torch.tensor([ids])).logits[0, -1]
        expected = logits[[no, yes]].softmax(-1)[1].item()
        assert abs(out.outputs.score - expected) < 1e-4
    assert outs[0].outputs.score != outs[1].outputs.score


def test_causal_lm_classifier_from_token_rows_without_post_processing(tiny_decoder):
    path = tiny_decoder("llama", "LlamaForCausalLM", tie_word_embeddings=False)
    tokens = ["no", "yes", "maybe"]
    llm = LLM(str(path), dtype="float32", hf_overrides={
        "architectures": ["LlamaForSequenceClassification"],
        "classifier_from_token": tokens, "method": "no_post_processing"})
    (out,) = llm.classify("is the sky blue?")
    ref = _reference(path, "LlamaForCausalLM")
    ids = llm.get_tokenizer().convert_tokens_to_ids(tokens)
    with torch.no_grad():
        logits = ref(input_ids=torch.tensor([out.prompt_token_ids])).logits[0, -1]
    assert out.outputs.num_classes == 3
    assert torch.allclose(torch.tensor(out.outputs.probs), logits[ids].softmax(-1), atol=1e-4)


@pytest.mark.parametrize("overrides, message", [
    ({"method": "from_2_way_softmax", "classifier_from_token": ["no"]}, "needs two"),
    ({"method": "mean_of_rows", "classifier_from_token": ["no"]}, "not supported"),
    ({"is_original_qwen3_reranker": True}, "needs classifier_from_token"),
    ({**QWEN3_RERANKER, "classifier_from_token": ["no", "certainly-not-a-token"]},
     "not in the tokenizer's vocabulary"),
    ({"method": "from_2_way_softmax"}, "needs classifier_from_token"),
])
def test_classifier_from_token_mistakes_are_named(overrides, message, tiny_decoder):
    path = tiny_decoder("qwen3", "Qwen3ForCausalLM")
    hf_overrides = {"architectures": ["Qwen3ForSequenceClassification"], **overrides}
    with pytest.raises(ValueError, match=message):
        LLM(str(path), hf_overrides=hf_overrides)


def test_an_unrelated_method_field_is_not_a_classifier_recipe(tiny_decoder):
    path = tiny_decoder("qwen3", "Qwen3ForSequenceClassification", num_labels=2)
    llm = LLM(str(path), hf_overrides={"method": "cls"})
    assert llm.config.num_labels == 2


@pytest.mark.parametrize("overrides, message", [
    ({"rope_scaling": {"rope_type": "linear"}}, "factor"),
    ({"rope_scaling": {"rope_type": "linear", "factor": "2"}}, "must be a number"),
    ({"rope_scaling": "yarn"}, "must be a dict"),
])
def test_malformed_rope_overrides_are_named(overrides, message, tiny_decoder):
    with pytest.raises(ValueError, match=message):
        LLM(str(tiny_decoder("llama", "LlamaModel")), hf_overrides=overrides)


def test_rope_overrides_keep_the_models_rope_shape_and_a_given_rope_parameters():
    from cenote.config.hf import apply_hf_overrides

    config = tiny_decoder_config("llama", rope_parameters={
        "rope_type": "default", "rope_theta": 5000.0, "partial_rotary_factor": 0.5})
    apply_hf_overrides(config, {"rope_scaling": {"type": "linear", "factor": 2.0}})
    assert config.rope_parameters == {"rope_type": "linear", "factor": 2.0,
                                      "rope_theta": 5000.0, "partial_rotary_factor": 0.5}
    config = tiny_decoder_config("llama")
    apply_hf_overrides(config, {"rope_parameters": {"rope_type": "linear", "factor": 3.0,
                                                    "rope_theta": 1e4}, "rope_theta": 777.0})
    assert config.rope_parameters == {"rope_type": "linear", "factor": 3.0, "rope_theta": 777.0}


def _reference_with_rope(path, architecture: str, rope_parameters: dict):
    """transformers on the same weights, its config stating ``rope_parameters``."""
    import transformers

    config = transformers.AutoConfig.from_pretrained(path)
    config.rope_parameters = dict(rope_parameters)
    config.standardize_rope_params()
    return getattr(transformers, architecture).from_pretrained(
        path, config=config, dtype=torch.float32).eval()


@pytest.mark.parametrize("overrides, rope", [
    # vLLM's documented way to switch on scaling: the checkpoint's theta is kept.
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0,
                       "original_max_position_embeddings": 64}},
     {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
      "original_max_position_embeddings": 64}),
    ({"rope_scaling": {"type": "linear", "factor": 2.0}, "rope_theta": 500000.0},
     {"rope_type": "linear", "rope_theta": 500000.0, "factor": 2.0}),
    ({"rope_theta": 1000000.0}, {"rope_type": "default", "rope_theta": 1000000.0}),
])
def test_rope_hf_overrides_match_transformers_with_that_config(overrides, rope, tiny_decoder):
    path = tiny_decoder("llama", "LlamaModel")
    llm = LLM(str(path), dtype="float32", hf_overrides=overrides)
    ref = _reference_with_rope(path, "LlamaModel", rope)
    plain = _reference(path, "LlamaModel")
    for out in llm.encode(TEXTS[1:2] + TEXTS[3:]):
        expected = _hf_hidden(ref, out.prompt_token_ids)
        assert torch.allclose(out.outputs.data, expected, atol=1e-4)
        # and the override did change something
        assert not torch.allclose(expected, _hf_hidden(plain, out.prompt_token_ids), atol=1e-3)


def test_linear_and_yarn_scaling_extend_the_length_limit_as_in_vllm(tiny_decoder):
    # The tiny decoders have 256 positions.
    path = tiny_decoder("llama", "LlamaModel")
    linear = {"rope_scaling": {"rope_type": "linear", "factor": 2.0}}
    assert LLM(str(path), hf_overrides=linear).config.max_model_len == 512
    yarn = {"rope_scaling": {"rope_type": "yarn", "factor": 4.0,
                             "original_max_position_embeddings": 200}}
    assert LLM(str(path), hf_overrides=yarn).config.max_model_len == 800
    dynamic = {"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}}
    assert LLM(str(path), hf_overrides=dynamic).config.max_model_len == 256
    llm = LLM(str(path), dtype="float32", hf_overrides=linear)
    ids = [(7 * i) % 1000 + 1000 for i in range(300)]
    (out,) = llm.encode({"prompt_token_ids": ids})
    ref = _reference_with_rope(path, "LlamaModel",
                               {"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0})
    assert torch.allclose(out.outputs.data, _hf_hidden(ref, ids), atol=1e-4)


def test_unsupported_rope_type_is_rejected():
    config = tiny_decoder_config("llama")
    config.rope_parameters = {"rope_type": "longrope", "rope_theta": 10000.0}
    with pytest.raises(ValueError, match="rope_type 'longrope' is not supported"):
        rope_frequencies(config, 16)


def test_causal_lm_converted_to_classify_uses_the_checkpoints_score_head(tiny_decoder,
                                                                         tmp_path):
    import shutil

    source = tiny_decoder("qwen2", "Qwen2ForCausalLM")
    path = shutil.copytree(source, tmp_path / "with-score")
    score = torch.randn(2, 64, generator=torch.Generator().manual_seed(5))
    add_tensors_to_checkpoint(path, {"score.weight": score})
    llm = LLM(str(path), task="classify", dtype="float32")
    ref = _reference(path, "Qwen2ForCausalLM")
    for out in llm.classify(TEXTS):
        logits = _hf_hidden(ref, out.prompt_token_ids)[-1] @ score.T
        assert torch.allclose(torch.tensor(out.outputs.probs), logits.softmax(-1), atol=1e-4)


def test_causal_lm_converted_to_classify_without_a_score_head_names_it(tiny_decoder):
    path = tiny_decoder("llama", "LlamaForCausalLM")
    with pytest.raises(ValueError, match=r"no `score\.weight` tensor"):
        LLM(str(path), task="classify", dtype="float32")


def test_sequence_classifier_loaded_for_embed_drops_its_head(tiny_decoder):
    arch = "Qwen2ForSequenceClassification"
    path = tiny_decoder("qwen2", arch, num_labels=3)
    llm = LLM(str(path), task="embed", dtype="float32")
    assert llm.engine.runner.model.classifier is None
    outs = llm.embed(TEXTS)
    ref = _reference(path, arch)
    _assert_embeddings_match(outs, [_hf_hidden(ref, o.prompt_token_ids)[-1] for o in outs])


def test_default_dtype_stays_close_to_fp32(tiny_decoder):
    path = tiny_decoder("qwen3", "Qwen3Model")
    low = LLM(str(path))
    full = LLM(str(path), dtype="float32")
    a = torch.tensor([o.outputs.embedding for o in low.embed(TEXTS)])
    b = torch.tensor([o.outputs.embedding for o in full.embed(TEXTS)])
    assert F.cosine_similarity(a, b).min() >= 0.998


def test_every_family_is_native():
    from cenote.models.registry import native_model_class

    assert all(native_model_class(family) is DecoderModel for family in FAMILIES)


def test_single_label_sequence_classifier_scores_text_pairs(tiny_decoder):
    from transformers import AutoTokenizer

    arch = "Qwen3ForSequenceClassification"
    path = tiny_decoder("qwen3", arch, num_labels=1)
    llm = LLM(str(path), task="score", dtype="float32")
    query, docs = TEXTS[1], TEXTS[:1] + TEXTS[2:]
    scores = torch.tensor([o.outputs.score for o in llm.score(query, docs)])
    tok, ref = AutoTokenizer.from_pretrained(path), _reference(path, arch)
    with torch.no_grad():
        logits = torch.stack([ref(input_ids=torch.tensor([tok(query, d)["input_ids"]])).logits[0, 0]
                              for d in docs])
    assert torch.allclose(scores, torch.sigmoid(logits), atol=1e-4)


@pytest.mark.parametrize("family", ["qwen3", "llama"])
def test_wide_heads_match_transformers(family, tiny_decoder):
    """head_dim 64: the width where the native RMSNorm and rotary kernels take over."""
    arch = DECODER_PREFIXES[family] + "Model"
    path = tiny_decoder(family, arch, hidden_size=128, num_attention_heads=4,
                        num_key_value_heads=2, head_dim=64)
    ref = _reference(path, arch)
    outs = LLM(str(path), dtype="float32").embed(TEXTS)
    reference_rows = [_hf_hidden(ref, o.prompt_token_ids)[-1] for o in outs]
    _assert_embeddings_match(outs, reference_rows)
    bf16 = torch.tensor([o.outputs.embedding
                         for o in LLM(str(path), dtype="bfloat16").embed(TEXTS)])
    assert F.cosine_similarity(bf16, F.normalize(torch.stack(reference_rows), dim=-1)).min() > 0.999
