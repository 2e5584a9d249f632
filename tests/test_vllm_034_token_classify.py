"""token_classify as vLLM 0.34 answers it: BGE-M3's lexical weights one float per
token (a flat vector), its BOS and EOS rows left out as vLLM's ``BOSEOSFilter`` does.
The reference is the stand-in's own weights run through transformers."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from cenote import LLM, PoolingParams

TEXT = "The capital of France is Paris."


@pytest.fixture(scope="module")
def bge_m3_with_bounds(bge_m3_path, tmp_path_factory):
    """The BGE-M3 stand-in with BOS/EOS ids in its config ([CLS] and [SEP], as
    XLM-RoBERTa's <s> and </s> are in the real one's)."""
    folder = tmp_path_factory.mktemp("bge-m3-bounds") / "m3"
    shutil.copytree(bge_m3_path, folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(bos_token_id=101, eos_token_id=102)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def lexical_reference(path, text: str) -> tuple[list[int], torch.Tensor]:
    from transformers import AutoModel, AutoTokenizer

    tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path)
    sparse = torch.load(path / "sparse_linear.pt")
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        hidden = model(input_ids=ids).last_hidden_state[0]
    return ids[0].tolist(), torch.relu(hidden @ sparse["weight"].T + sparse["bias"]).squeeze(-1)


def test_bge_m3_token_classify_is_one_weight_per_token_without_bos_and_eos(bge_m3_with_bounds):
    ids, weights = lexical_reference(bge_m3_with_bounds, TEXT)
    assert ids[0] == 101 and ids[-1] == 102
    llm = LLM(str(bge_m3_with_bounds), dtype="float32")
    (out,) = llm.encode(TEXT, pooling_task="token_classify")
    assert out.prompt_token_ids == ids
    assert out.outputs.data.shape == (len(ids) - 2,)  # flat, [CLS] and [SEP] dropped
    assert torch.allclose(out.outputs.data, weights[1:-1], atol=1e-5)
    # A token-id prompt that does not start with BOS keeps its first row.
    (cut,) = llm.encode({"prompt_token_ids": ids[1:]}, pooling_task="token_classify")
    assert cut.outputs.data.shape == (len(ids) - 2,)


# ---- *ForTokenClassification and BertForMaskedLM: token_classify by default ---------

SENTENCES = ["Angela Merkel visited Paris in May.", "The transformer reads every token."]
ENCODER = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
               intermediate_size=128, max_position_embeddings=160, type_vocab_size=2)


def hf_token_probs(path, auto_cls: str, text: str) -> torch.Tensor:
    import transformers

    model = getattr(transformers, auto_cls).from_pretrained(path).eval()
    ids = transformers.AutoTokenizer.from_pretrained(path)(text, return_tensors="pt")
    with torch.no_grad():
        return model(**ids).logits[0].softmax(-1)


@pytest.mark.parametrize("config_class, architecture, extra", [
    ("BertConfig", "BertForTokenClassification", {}),
    ("XLMRobertaConfig", "XLMRobertaForTokenClassification", {"pad_token_id": 1}),
])
def test_a_token_classifier_serves_token_classify_like_transformers(
        minilm_path, tmp_path, config_class, architecture, extra):
    from tests.factories import build_tiny_transformers_model

    path = build_tiny_transformers_model(minilm_path, tmp_path / "ner", config_class,
                                         architecture, num_labels=5, **ENCODER, **extra)
    llm = LLM(str(path), dtype="float32")
    assert llm.model_config.supported_pooling_tasks == ("encode", "token_classify")
    outs = llm.encode(SENTENCES, pooling_task="token_classify")
    for text, out in zip(SENTENCES, outs, strict=True):
        expected = hf_token_probs(path, "AutoModelForTokenClassification", text)
        assert out.outputs.data.shape == expected.shape  # [num_tokens, num_labels]
        assert torch.allclose(out.outputs.data, expected, atol=1e-5)
    (raw,) = llm.encode(SENTENCES[0], PoolingParams(use_activation=False),
                        pooling_task="token_classify")
    assert torch.allclose(raw.outputs.data.softmax(-1), outs[0].outputs.data, atol=1e-5)


def test_a_bert_masked_lm_serves_its_head_as_token_classify_and_still_embeds(
        minilm_path, tmp_path):
    from tests.factories import build_tiny_transformers_model

    path = build_tiny_transformers_model(minilm_path, tmp_path / "mlm", "BertConfig",
                                         "BertForMaskedLM", **ENCODER)
    llm = LLM(str(path), dtype="float32")
    assert "token_classify" in llm.model_config.supported_pooling_tasks
    (out,) = llm.encode(SENTENCES[0], pooling_task="token_classify")
    expected = hf_token_probs(path, "AutoModelForMaskedLM", SENTENCES[0])
    assert out.outputs.data.shape == expected.shape  # a distribution over the vocabulary
    assert torch.equal(out.outputs.data.argmax(-1), expected.argmax(-1))
    assert torch.allclose(out.outputs.data, expected, atol=1e-5)
    (embedding,) = llm.embed(SENTENCES[0])  # cenote's: the body still embeds
    assert len(embedding.outputs.embedding) == 64
    (tokens,) = llm.encode(SENTENCES[0], pooling_task="encode")
    assert tokens.outputs.data.shape[-1] == 64  # encode: hidden states, not vocabulary


def test_scoring_on_a_classifier_pooled_per_token_is_refused_in_vllms_words(classifier_path):
    from cenote import PoolerConfig

    llm = LLM(str(classifier_path), dtype="float32",
              pooler_config=PoolerConfig(task="token_classify"))
    with pytest.raises(ValueError, match=r"^This model does not support the Scoring API\.$"):
        llm.score("ping", "pong")
    plain = LLM(str(classifier_path), dtype="float32")
    with pytest.raises(ValueError, match=r"^Scoring API is only enabled for num_labels == 1\.$"):
        plain.score("ping", "pong")


def test_a_modernbert_token_classifier_serves_token_classify_like_transformers(
        minilm_path, tmp_path):
    from tests.test_modernbert import build_tiny_modernbert

    path = build_tiny_modernbert(minilm_path, tmp_path / "ner", "ModernBertForTokenClassification",
                                 num_labels=4, classifier_bias=True)
    llm = LLM(str(path), dtype="float32")
    assert llm.model_config.supported_pooling_tasks == ("encode", "token_classify")
    # Longer than the local window (8), so the sliding layers show.
    texts = [SENTENCES[0] + " " + SENTENCES[1], SENTENCES[1]]
    for text, out in zip(texts, llm.encode(texts, pooling_task="token_classify"), strict=True):
        expected = hf_token_probs(path, "AutoModelForTokenClassification", text)
        assert out.outputs.data.shape == expected.shape
        assert torch.allclose(out.outputs.data, expected, atol=1e-4)


def test_a_qwen3_token_classifier_serves_token_classify_like_transformers(minilm_path, tmp_path):
    from tests.factories import build_tiny_decoder

    path = build_tiny_decoder(minilm_path, tmp_path / "qwen3-ner", "qwen3",
                              "Qwen3ForTokenClassification", num_labels=3)
    llm = LLM(str(path), dtype="float32")
    assert llm.model_config.supported_pooling_tasks == ("encode", "token_classify")
    for text, out in zip(SENTENCES, llm.encode(SENTENCES, pooling_task="token_classify"),
                         strict=True):
        expected = hf_token_probs(path, "AutoModelForTokenClassification", text)
        assert out.outputs.data.shape == expected.shape
        assert torch.allclose(out.outputs.data, expected, atol=1e-4)


def test_a_body_saved_under_a_masked_lm_name_without_its_head_still_embeds(minilm_path,
                                                                           tmp_path):
    """No Sentence-Transformers files and no masked-LM tensors: an embedder, as before."""
    folder = tmp_path / "body"
    shutil.copytree(minilm_path, folder)
    for name in ("modules.json", "config_sentence_transformers.json",
                 "sentence_bert_config.json"):
        (folder / name).unlink(missing_ok=True)
    config = json.loads((folder / "config.json").read_text())
    config["architectures"] = ["BertForMaskedLM"]
    (folder / "config.json").write_text(json.dumps(config))
    llm = LLM(str(folder), dtype="float32")
    assert "token_classify" not in llm.model_config.supported_pooling_tasks
    assert len(llm.embed("hello")[0].outputs.embedding) == 384


def test_a_token_classifier_transformers_runs_serves_its_logits_per_token(minilm_path,
                                                                         tmp_path):
    """DistilBERT has no native implementation: the fallback answers its token logits."""
    from tests.factories import build_tiny_transformers_model

    path = build_tiny_transformers_model(
        minilm_path, tmp_path / "distil-ner", "DistilBertConfig",
        "DistilBertForTokenClassification", dim=64, n_layers=2, n_heads=4, hidden_dim=128,
        max_position_embeddings=160, num_labels=3)
    llm = LLM(str(path), dtype="float32")
    assert llm.model_config.supported_pooling_tasks == ("encode", "token_classify")
    for text, out in zip(SENTENCES, llm.encode(SENTENCES, pooling_task="token_classify"),
                         strict=True):
        expected = hf_token_probs(path, "AutoModelForTokenClassification", text)
        assert out.outputs.data.shape == expected.shape
        assert torch.allclose(out.outputs.data, expected, atol=1e-5)


def test_a_native_family_without_a_token_head_refuses_a_token_classifier():
    from types import SimpleNamespace

    from cenote.config.token_classification import check_token_classifier_head

    config = SimpleNamespace(task="reward", architecture="Gemma3ForTokenClassification")
    with pytest.raises(ValueError, match="without its token-classification head"):
        check_token_classifier_head(config, has_head=False)
    check_token_classifier_head(config, has_head=True)  # a head: served
