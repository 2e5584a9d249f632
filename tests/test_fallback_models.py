"""An architecture with no native implementation (DistilBERT) runs through transformers
with the same poolers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cenote import LLM
from cenote.models.fallback import TransformersFallbackModel

TEXTS = [
    "hello world",
    "a somewhat longer sentence about search engines and ranking",
    "x",
    "the quick brown fox jumps over the lazy dog " * 3,
]


@torch.no_grad()
def _hf_rows(model, path, texts) -> list[torch.Tensor]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    return [model(**tok(t, return_tensors="pt", return_token_type_ids=False)) for t in texts]


def test_fallback_embeds_like_transformers(tiny_distilbert):
    from transformers import DistilBertModel

    path = tiny_distilbert()
    llm = LLM(str(path), dtype="float32")
    assert isinstance(llm.engine.runner.model, TransformersFallbackModel)
    ours = torch.tensor([o.outputs.embedding for o in llm.embed(TEXTS)])
    ref = DistilBertModel.from_pretrained(path, dtype=torch.float32).eval()
    # Not a BERT-family model type, so the default embed pooler is LAST + normalise.
    expected = F.normalize(torch.stack([o.last_hidden_state[0, -1]
                                        for o in _hf_rows(ref, path, TEXTS)]), dim=-1)
    assert F.cosine_similarity(ours, expected).min() >= 0.9999


def test_fallback_encodes_every_token_like_transformers(tiny_distilbert):
    from transformers import DistilBertModel

    path = tiny_distilbert()
    llm = LLM(str(path), dtype="float32")
    ref = DistilBertModel.from_pretrained(path, dtype=torch.float32).eval()
    for out, expected in zip(llm.encode(TEXTS), _hf_rows(ref, path, TEXTS), strict=True):
        assert torch.allclose(out.outputs.data, expected.last_hidden_state[0], atol=1e-4)


def test_fallback_classifies_like_transformers(tiny_distilbert):
    from transformers import DistilBertForSequenceClassification

    path = tiny_distilbert(num_labels=3)
    llm = LLM(str(path), dtype="float32")
    assert llm.config.task == "classify"
    probs = torch.tensor([o.outputs.probs for o in llm.classify(TEXTS)])
    ref = DistilBertForSequenceClassification.from_pretrained(path, dtype=torch.float32).eval()
    expected = torch.stack([o.logits[0] for o in _hf_rows(ref, path, TEXTS)]).softmax(-1)
    assert torch.allclose(probs, expected, atol=1e-4)


def test_fallback_batch_gives_the_same_result_as_one_by_one(tiny_distilbert):
    llm = LLM(str(tiny_distilbert(num_labels=3)), dtype="float32")
    batched = torch.tensor([o.outputs.probs for o in llm.classify(TEXTS)])
    single = torch.tensor([llm.classify(t)[0].outputs.probs for t in TEXTS])
    assert torch.allclose(batched, single, atol=1e-5)


@pytest.fixture(scope="module")
def tiny_model(minilm_path, tmp_path_factory):
    """``tiny_model(config_class, model_class, **config)`` -> a random model folder."""
    from tests.factories import build_tiny_transformers_model

    def build(config_class, model_class, **config):
        target = tmp_path_factory.mktemp(model_class)
        return build_tiny_transformers_model(minilm_path, target, config_class, model_class,
                                             **config)

    return build


ELECTRA = {"embedding_size": 32, "hidden_size": 64, "num_hidden_layers": 2,
           "num_attention_heads": 4, "intermediate_size": 128, "max_position_embeddings": 160}
GPT2 = {"n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 160}


@torch.no_grad()
def test_fallback_cross_encoder_reads_the_pair_token_types(tiny_model):
    # transformers 5 wraps forward(); the fallback must still see that it takes
    # token_type_ids, or a pair's second text scores as if it were the first's.
    from transformers import AutoTokenizer, ElectraForSequenceClassification

    path = tiny_model("ElectraConfig", "ElectraForSequenceClassification", num_labels=1,
                      type_vocab_size=2, **ELECTRA)
    llm = LLM(str(path), dtype="float32")
    assert isinstance(llm.engine.runner.model, TransformersFallbackModel)
    scores = torch.tensor([o.outputs.score for o in llm.score(TEXTS[0], TEXTS[1:])])
    tok = AutoTokenizer.from_pretrained(path)
    ref = ElectraForSequenceClassification.from_pretrained(path, dtype=torch.float32).eval()
    expected = torch.cat([torch.sigmoid(ref(**tok(TEXTS[0], t, return_tensors="pt")).logits[0])
                          for t in TEXTS[1:]])
    assert torch.allclose(scores, expected, atol=1e-4)


@torch.no_grad()
def test_fallback_classifier_without_a_padding_token_runs_batches(tiny_model):
    # GPT-2 has no pad token: transformers refuses batches of more than one sequence.
    from transformers import AutoTokenizer, GPT2ForSequenceClassification

    path = tiny_model("GPT2Config", "GPT2ForSequenceClassification", num_labels=2,
                      pad_token_id=None, **GPT2)
    llm = LLM(str(path), dtype="float32")
    probs = torch.tensor([o.outputs.probs for o in llm.classify(TEXTS)])
    tok = AutoTokenizer.from_pretrained(path)
    ref = GPT2ForSequenceClassification.from_pretrained(path, dtype=torch.float32).eval()
    expected = torch.stack([ref(**tok(t, return_tensors="pt", return_token_type_ids=False)
                                ).logits[0].softmax(-1) for t in TEXTS])
    assert torch.allclose(probs, expected, atol=1e-4)


@torch.no_grad()
def test_fallback_pairs_get_token_types_only_from_a_tokenizer_that_gives_them(tiny_model):
    # GPT-2 takes token_type_ids, but its tokenizer does not produce them: a pair is one
    # segment, as transformers runs it.
    import json

    from transformers import AutoTokenizer, GPT2ForSequenceClassification

    path = tiny_model("GPT2Config", "GPT2ForSequenceClassification", num_labels=1,
                      pad_token_id=0, **GPT2)
    config = json.loads((path / "tokenizer_config.json").read_text())
    config["model_input_names"] = ["input_ids", "attention_mask"]
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    llm = LLM(str(path), dtype="float32")
    scores = torch.tensor([o.outputs.score for o in llm.score(TEXTS[0], TEXTS[1:])])
    tok = AutoTokenizer.from_pretrained(path)
    assert "token_type_ids" not in tok(TEXTS[0], TEXTS[1])
    ref = GPT2ForSequenceClassification.from_pretrained(path, dtype=torch.float32).eval()
    expected = torch.cat([torch.sigmoid(ref(**tok(TEXTS[0], t, return_tensors="pt")).logits[0])
                          for t in TEXTS[1:]])
    assert torch.allclose(scores, expected, atol=1e-4)


def test_fallback_classifier_with_no_trained_head_is_refused(tiny_model):
    path = tiny_model("GPT2Config", "GPT2LMHeadModel", **GPT2)
    with pytest.raises(ValueError, match="randomly initialised head"):
        LLM(str(path), task="classify")


@torch.no_grad()
def test_fallback_embeds_with_a_t5_encoder(tiny_model):
    # AutoModel would load the whole encoder-decoder, which needs decoder inputs.
    from transformers import AutoTokenizer, T5EncoderModel

    path = tiny_model("T5Config", "T5EncoderModel", d_model=64, d_kv=16, d_ff=128,
                      num_layers=2, num_heads=4, decoder_start_token_id=0)
    # T5's positions are relative: no length in its config, so vLLM's default of 2048.
    assert LLM(str(path)).config.max_model_len == 2048
    llm = LLM(str(path), dtype="float32", max_model_len=128,
              override_pooler_config={"pooling_type": "MEAN"})
    ours = torch.tensor([o.outputs.embedding for o in llm.embed(TEXTS)])
    tok = AutoTokenizer.from_pretrained(path)
    ref = T5EncoderModel.from_pretrained(path, dtype=torch.float32).eval()
    expected = F.normalize(torch.stack([
        ref(**tok(t, return_tensors="pt", return_token_type_ids=False)).last_hidden_state[0]
        .mean(0) for t in TEXTS]), dim=-1)
    assert F.cosine_similarity(ours, expected).min() >= 0.9999


# A model whose own code (auto_map) defines its architecture, as jina-embeddings-v3's
# XLMRobertaLoRA does over model_type xlm-roberta. Here: BERT with rotary positions
# instead of the position table, which the native BERT cannot run.
_OWN_CODE = '''
import torch
from transformers import BertModel


class RotaryToyBert(BertModel):
    def forward(self, input_ids=None, attention_mask=None, **kwargs):
        words = self.embeddings.word_embeddings(input_ids)
        half = words.shape[-1] // 2
        angle = torch.arange(input_ids.shape[1])[:, None] / 10000 ** (torch.arange(half) / half)
        x1, x2 = words[..., :half], words[..., half:]
        rotated = torch.cat([x1 * angle.cos() - x2 * angle.sin(),
                             x1 * angle.sin() + x2 * angle.cos()], dim=-1)
        hidden = self.embeddings.LayerNorm(rotated)
        mask = (1.0 - attention_mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
        return self.encoder(hidden, attention_mask=mask)
'''


def test_an_architecture_of_its_own_code_runs_that_code_when_trusted(minilm_path, tmp_path):
    import json

    from transformers import AutoModel, AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=64, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=128)
    BertModel(config).save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(minilm_path).save_pretrained(tmp_path)
    (tmp_path / "toy_bert.py").write_text(_OWN_CODE)
    saved = json.loads((tmp_path / "config.json").read_text())
    saved.update(architectures=["RotaryToyBert"], position_embedding_type="rotary",
                 auto_map={"AutoModel": "toy_bert.RotaryToyBert"})
    (tmp_path / "config.json").write_text(json.dumps(saved))

    llm = LLM(str(tmp_path), dtype="float32", trust_remote_code=True)
    assert isinstance(llm.engine.runner.model, TransformersFallbackModel)
    outs = llm.encode(TEXTS)
    ref = AutoModel.from_pretrained(tmp_path, trust_remote_code=True,
                                    dtype=torch.float32).eval()
    assert type(ref).__name__ == "RotaryToyBert"
    for out, row in zip(outs, _hf_rows(ref, tmp_path, TEXTS), strict=True):
        assert torch.allclose(out.outputs.data, row.last_hidden_state[0], atol=1e-4)
    # Untrusted, the native BERT would run it with absolute positions: refused instead.
    with pytest.raises(ValueError, match="position_embedding_type 'rotary'"):
        LLM(str(tmp_path))


def test_a_head_from_lm_head_rows_on_a_fallback_model_is_refused_by_name(tiny_model):
    path = tiny_model("GPT2Config", "GPT2LMHeadModel", **GPT2)
    with pytest.raises(ValueError, match="classifier_from_token is not supported for "
                                         "GPT2ForSequenceClassification"):
        LLM(str(path), hf_overrides={"architectures": ["GPT2ForSequenceClassification"],
                                     "classifier_from_token": ["no", "yes"],
                                     "method": "from_2_way_softmax"})
