"""Sequence classifiers and cross-encoders of the BERT family match their references."""

from __future__ import annotations

import pytest
import torch

from cenote import LLM, PoolerConfig, PoolingParams

BERT_FAMILY = ["bert", "roberta", "xlm-roberta"]
TEXTS = [
    "hello world",
    "a somewhat longer sentence about search engines and ranking",
    "x",
    "the quick brown fox jumps over the lazy dog " * 3,
]
QUERY = "how do search engines rank documents"
PASSAGES = [
    "Search engines rank documents by estimating their relevance to a query.",
    "The recipe needs two eggs, flour and a pinch of salt.",
    "Ranking functions such as BM25 weigh term frequency against document length.",
    "x",
]


@torch.no_grad()
def _hf_logits(path, texts, pairs_with=None) -> torch.Tensor:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32).eval()
    rows = []
    for i, text in enumerate(texts):
        inputs = tok(text, pairs_with[i], return_tensors="pt") if pairs_with else tok(
            text, return_tensors="pt")
        rows.append(model(**inputs).logits[0])
    return torch.stack(rows)


@pytest.mark.parametrize("family", BERT_FAMILY)
def test_classifier_probabilities_match_transformers(family, tiny_bert_classifier):
    path = tiny_bert_classifier(family, num_labels=3)
    llm = LLM(str(path), dtype="float32")
    assert llm.config.task == "classify"
    probs = torch.tensor([o.outputs.probs for o in llm.classify(TEXTS)])
    assert torch.allclose(probs, _hf_logits(path, TEXTS).softmax(-1), atol=1e-4)


@pytest.mark.parametrize("family", BERT_FAMILY)
def test_classifier_batch_gives_the_same_result_as_one_by_one(family, tiny_bert_classifier):
    llm = LLM(str(tiny_bert_classifier(family, num_labels=3)), dtype="float32")
    batched = torch.tensor([o.outputs.probs for o in llm.classify(TEXTS)])
    single = torch.tensor([llm.classify(t)[0].outputs.probs for t in TEXTS])
    assert torch.allclose(batched, single, atol=1e-6)


def test_single_label_classifier_applies_sigmoid(tiny_bert_classifier):
    path = tiny_bert_classifier("roberta", num_labels=1)
    llm = LLM(str(path), dtype="float32")
    probs = torch.tensor([o.outputs.probs for o in llm.classify(TEXTS)])
    assert torch.allclose(probs, torch.sigmoid(_hf_logits(path, TEXTS)), atol=1e-4)


@pytest.mark.parametrize("alias", ["activation", "softmax", "use_activation"])
def test_activation_false_returns_raw_logits(tiny_bert_classifier, alias):
    path = tiny_bert_classifier("bert", num_labels=3)
    llm = LLM(str(path), dtype="float32")
    outs = llm.classify(TEXTS, pooling_params=PoolingParams(**{alias: False}))
    logits = torch.tensor([o.outputs.probs for o in outs])
    assert torch.allclose(logits, _hf_logits(path, TEXTS), atol=1e-4)
    # The same switch as the model's default, in any of its names. (A second load may
    # settle on the other attention kernel, hence a tolerance and not equality.)
    by_default = LLM(str(path), dtype="float32", override_pooler_config={alias: False})
    assert torch.allclose(torch.tensor([o.outputs.probs for o in by_default.classify(TEXTS)]),
                          logits, atol=1e-6)


def test_activation_aliases_must_agree():
    with pytest.raises(ValueError, match="aliases"):
        PoolingParams(activation=True, use_activation=False)
    with pytest.raises(ValueError, match="aliases"):
        PoolerConfig(softmax=True, use_activation=False)
    assert PoolingParams(use_activation=False).activation is False


def test_labels_come_from_the_config(tiny_bert_classifier):
    llm = LLM(str(tiny_bert_classifier("xlm-roberta", num_labels=3)), dtype="float32")
    assert llm.config.id2label == {0: "class_0", 1: "class_1", 2: "class_2"}
    assert llm.classify("hello")[0].outputs.num_classes == 3


@pytest.mark.parametrize("family", BERT_FAMILY)
def test_cross_encoder_pair_scores_match_transformers(family, tiny_bert_classifier):
    path = tiny_bert_classifier(family, num_labels=1)
    llm = LLM(str(path), dtype="float32")
    scores = torch.tensor([o.outputs.score for o in llm.score(QUERY, PASSAGES)])
    expected = torch.sigmoid(_hf_logits(path, [QUERY] * len(PASSAGES), PASSAGES))[:, 0]
    assert torch.allclose(scores, expected, atol=1e-4)


@pytest.fixture(scope="module")
def cross_encoder(cross_encoder_path):
    return LLM(str(cross_encoder_path), dtype="float32")


@pytest.fixture(scope="module")
def st_cross_encoder(cross_encoder_path):
    from sentence_transformers import CrossEncoder

    return CrossEncoder(str(cross_encoder_path), device="cpu")


def test_cross_encoder_scores_match_sentence_transformers(cross_encoder, st_cross_encoder):
    scores = [o.outputs.score for o in cross_encoder.score(QUERY, PASSAGES)]
    expected = st_cross_encoder.predict([(QUERY, p) for p in PASSAGES])
    assert torch.allclose(torch.tensor(scores), torch.tensor(expected), atol=1e-4)


def test_a_cross_encoder_saved_by_sentence_transformers_scores_as_one(st_cross_encoder, tmp_path):
    # Sentence-Transformers >= 5 saves a CrossEncoder with a modules.json of its own; that
    # folder is still a cross-encoder (not an embedding model scoring by cosine), and its
    # saved activation (here Identity: raw logits) is the one its scores go through.
    from sentence_transformers import CrossEncoder

    st_cross_encoder.save(str(tmp_path / "sigmoid"))
    identity = CrossEncoder(str(tmp_path / "sigmoid"), device="cpu",
                            activation_fn=torch.nn.Identity())
    identity.save(str(tmp_path / "identity"))
    for folder, model in (("sigmoid", st_cross_encoder), ("identity", identity)):
        assert (tmp_path / folder / "modules.json").is_file()
        llm = LLM(str(tmp_path / folder), dtype="float32")
        assert llm.config.task == "classify"
        scores = [o.outputs.score for o in llm.score(QUERY, PASSAGES)]
        expected = model.predict([(QUERY, p) for p in PASSAGES])
        assert torch.allclose(torch.tensor(scores), torch.tensor(expected), atol=1e-4)
    # The saved activation is classify's too (as vLLM 0.34): Identity gives the raw logit.
    (probs,) = llm.classify(f"{QUERY} {PASSAGES[0]}")
    (logit,) = llm.classify(f"{QUERY} {PASSAGES[0]}", pooling_params=PoolingParams(
        activation=False))
    assert probs.outputs.probs[0] == pytest.approx(logit.outputs.probs[0], abs=1e-6)


def test_one_to_one_scoring_scores_the_single_pair(cross_encoder, st_cross_encoder):
    (out,) = cross_encoder.score(QUERY, PASSAGES[0])
    assert out.outputs.score == pytest.approx(
        float(st_cross_encoder.predict([(QUERY, PASSAGES[0])])[0]), abs=1e-4)


def test_n_to_n_scoring_zips_the_lists(cross_encoder, st_cross_encoder):
    queries = [QUERY, "what goes into a cake", QUERY, "term weighting"]
    scores = [o.outputs.score for o in cross_encoder.score(queries, PASSAGES)]
    expected = st_cross_encoder.predict(list(zip(queries, PASSAGES, strict=True)))
    assert torch.allclose(torch.tensor(scores), torch.tensor(expected), atol=1e-4)


def test_score_without_activation_returns_the_raw_logit(cross_encoder, st_cross_encoder):
    outs = cross_encoder.score(QUERY, PASSAGES, pooling_params=PoolingParams(activation=False))
    expected = st_cross_encoder.predict([(QUERY, p) for p in PASSAGES],
                                        activation_fn=torch.nn.Identity())
    assert torch.allclose(torch.tensor([o.outputs.score for o in outs]),
                          torch.tensor(expected), atol=1e-4)


def test_cross_encoder_batch_gives_the_same_result_as_one_by_one(cross_encoder):
    batched = [o.outputs.score for o in cross_encoder.score(QUERY, PASSAGES)]
    single = [cross_encoder.score(QUERY, p)[0].outputs.score for p in PASSAGES]
    assert batched == pytest.approx(single, abs=1e-6)


def test_score_needs_a_single_label(tiny_bert_classifier):
    llm = LLM(str(tiny_bert_classifier("bert", num_labels=3)), dtype="float32")
    with pytest.raises(ValueError, match=r"Scoring API is only enabled for num_labels == 1\."):
        llm.score(QUERY, PASSAGES)
    assert llm.classify("still works")[0].outputs.num_classes == 3


def test_mismatched_score_lengths_leave_the_cross_encoder_usable(cross_encoder):
    with pytest.raises(ValueError, match="Input lengths must be either 1:1, 1:N or N:N"):
        cross_encoder.score([QUERY, QUERY], PASSAGES)
    assert len(cross_encoder.score(QUERY, PASSAGES)) == len(PASSAGES)


def test_embedding_api_on_a_classifier_names_the_task_to_use(cross_encoder):
    with pytest.raises(ValueError, match=r"Embedding API is not supported by this model.*"
                                         r"--task embed"):
        cross_encoder.embed("hello")
    assert len(cross_encoder.score(QUERY, PASSAGES[:2])) == 2


def test_encode_on_a_classifier_returns_hidden_states(tiny_bert_classifier):
    from transformers import AutoModel, AutoTokenizer

    path = tiny_bert_classifier("bert", num_labels=3)
    llm = LLM(str(path), dtype="float32")
    tok = AutoTokenizer.from_pretrained(path)
    body = AutoModel.from_pretrained(path, dtype=torch.float32).eval()
    for text, out in zip(TEXTS, llm.encode(TEXTS), strict=True):
        with torch.no_grad():
            expected = body(**tok(text, return_tensors="pt")).last_hidden_state[0]
        assert torch.allclose(out.outputs.data, expected, atol=1e-4)


def test_classify_task_on_a_checkpoint_without_a_head_fails_at_load(minilm_path):
    with pytest.raises(ValueError, match="missing tensors: classifier"):
        LLM(str(minilm_path), task="classify", dtype="float32")


def test_default_dtype_scores_stay_close_to_fp32(cross_encoder_path, cross_encoder):
    low = LLM(str(cross_encoder_path))
    scores = torch.tensor([o.outputs.score for o in low.score(QUERY, PASSAGES)])
    reference = torch.tensor([o.outputs.score for o in cross_encoder.score(QUERY, PASSAGES)])
    assert torch.allclose(scores, reference, atol=5e-3)


def test_token_classify_applies_the_classifier_to_every_token(classifier_path):
    # vLLM's token_classify on a sequence classifier: its classifier on each token's
    # state, so the [CLS] row is the sequence's own logits.
    llm = LLM(str(classifier_path), dtype="float32")
    (tokens,) = llm.encode("a flood in the valley", pooling_task="token_classify")
    (logits,) = llm.classify("a flood in the valley",
                             pooling_params=PoolingParams(activation=False))
    assert tokens.outputs.data.shape == (len(tokens.prompt_token_ids), 3)
    assert torch.allclose(tokens.outputs.data[0], torch.tensor(logits.outputs.probs),
                          atol=1e-5)
    (hidden,) = llm.encode("a flood in the valley")  # encode keeps the hidden states
    assert hidden.outputs.data.shape[1] == llm.config.hf_config.hidden_size
