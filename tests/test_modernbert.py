"""Native ModernBERT (packed tokens, local and global attention) matches transformers on the
same weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from cenote import LLM
from cenote.models.modernbert import ModernBertModel
from cenote.models.quantization import check_int8_support

# Mixed lengths; the long ones run past the local window (8 tokens: 4 on either side).
TEXTS = [
    "hello world",
    "a somewhat longer sentence about search engines, ranking and retrieval quality",
    "x",
    "the quick brown fox jumps over the lazy dog " * 4,
]


def build_tiny_modernbert(minilm_path: Path, target: Path, architecture: str,
                          seed: int = 0, **overrides) -> Path:
    """A random 4-layer ModernBERT (global attention every 2nd layer, a window of 8) with
    MiniLM's tokenizer; ``**overrides`` go to its config."""
    import transformers

    torch.manual_seed(seed)
    config = transformers.ModernBertConfig(
        vocab_size=30522, hidden_size=64, intermediate_size=96, num_hidden_layers=4,
        num_attention_heads=4, global_attn_every_n_layers=2, local_attention=8,
        max_position_embeddings=512, pad_token_id=0, cls_token_id=101, sep_token_id=102,
        bos_token_id=101, eos_token_id=102, global_rope_theta=160000.0,
        local_rope_theta=10000.0, **overrides)
    model = getattr(transformers, architecture)(config)
    with torch.no_grad():  # its init is tiny: widen it so that mistakes show
        for name, param in model.named_parameters():
            if param.dim() > 1:
                param.normal_(0, 0.1)
            elif "norm" in name:
                param.normal_(1, 0.2)
            else:
                param.normal_(0, 0.2)
    model.save_pretrained(target)
    transformers.AutoTokenizer.from_pretrained(minilm_path).save_pretrained(target)
    return target


def add_st_layout(path: Path, pooling: str) -> Path:
    """Sentence-Transformers modules: ``pooling`` ("cls" or "mean") then Normalize."""
    modules = [{"idx": i, "name": str(i), "path": p, "type": f"sentence_transformers.models.{t}"}
               for i, (p, t) in enumerate([("", "Transformer"), ("1_Pooling", "Pooling"),
                                           ("2_Normalize", "Normalize")])]
    (path / "modules.json").write_text(json.dumps(modules))
    (path / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 512}))
    (path / "1_Pooling").mkdir()
    (path / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": 64, "pooling_mode_cls_token": pooling == "cls",
        "pooling_mode_mean_tokens": pooling == "mean"}))
    return path


@pytest.fixture(scope="module")
def tiny_modernbert(minilm_path, tmp_path_factory):
    def build(architecture: str, pooling: str | None = None, **overrides) -> Path:
        path = build_tiny_modernbert(minilm_path, tmp_path_factory.mktemp("modernbert"),
                                     architecture, **overrides)
        return add_st_layout(path, pooling) if pooling else path
    return build


def _reference(path: Path, architecture: str):
    import transformers

    return getattr(transformers, architecture).from_pretrained(
        path, dtype=torch.float32, attn_implementation="sdpa").eval()


@torch.no_grad()
def _hf_hidden(model, token_ids: list[int]) -> torch.Tensor:
    body = getattr(model, "model", model)
    return body(input_ids=torch.tensor([token_ids])).last_hidden_state[0]


def _embeddings(llm: LLM, texts=TEXTS) -> tuple[torch.Tensor, list[list[int]]]:
    outs = llm.embed(texts)
    return (torch.tensor([o.outputs.embedding for o in outs]),
            [o.prompt_token_ids for o in outs])


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_embeddings_match_transformers_in_fp32(tiny_modernbert, pooling):
    path = tiny_modernbert("ModernBertModel", pooling=pooling)
    llm = LLM(str(path), dtype="float32")
    assert isinstance(llm.engine.runner.model, ModernBertModel)
    ours, ids = _embeddings(llm)
    ref = _reference(path, "ModernBertModel")
    rows = [_hf_hidden(ref, t) for t in ids]
    expected = F.normalize(torch.stack([r[0] if pooling == "cls" else r.mean(0) for r in rows]),
                           dim=-1)
    assert max(len(t) for t in ids) > 3 * 8  # past the window on either side
    assert F.cosine_similarity(ours, expected).min() >= 0.9999


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_embeddings_match_transformers_in_the_default_dtype(tiny_modernbert, pooling):
    path = tiny_modernbert("ModernBertModel", pooling=pooling)
    ours, ids = _embeddings(LLM(str(path)))
    ref = _reference(path, "ModernBertModel")
    rows = [_hf_hidden(ref, t) for t in ids]
    expected = torch.stack([r[0] if pooling == "cls" else r.mean(0) for r in rows])
    assert F.cosine_similarity(ours, expected).min() >= 0.998


def test_bare_checkpoint_pools_its_cls_token(tiny_modernbert):
    path = tiny_modernbert("ModernBertModel")
    ours, ids = _embeddings(LLM(str(path), dtype="float32"))
    ref = _reference(path, "ModernBertModel")
    expected = F.normalize(torch.stack([_hf_hidden(ref, t)[0] for t in ids]), dim=-1)
    assert F.cosine_similarity(ours, expected).min() >= 0.9999


def test_a_batch_embeds_as_each_text_alone(tiny_modernbert):
    llm = LLM(str(tiny_modernbert("ModernBertModel", pooling="mean")), dtype="float32")
    batched, _ = _embeddings(llm)
    alone = torch.cat([_embeddings(llm, [text])[0] for text in TEXTS])
    assert torch.allclose(batched, alone, atol=1e-5)


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_classifier_probabilities_match_transformers(tiny_modernbert, pooling):
    arch = "ModernBertForSequenceClassification"
    path = tiny_modernbert(arch, num_labels=3, classifier_pooling=pooling)
    llm = LLM(str(path), dtype="float32")
    assert isinstance(llm.engine.runner.model, ModernBertModel)
    outs = llm.classify(TEXTS)
    ours = torch.tensor([o.outputs.probs for o in outs])
    ref = _reference(path, arch)
    with torch.no_grad():
        logits = torch.cat([ref(input_ids=torch.tensor([o.prompt_token_ids])).logits
                            for o in outs])
    assert torch.allclose(ours, logits.softmax(-1), atol=1e-4)


def test_local_layers_see_only_the_tokens_within_their_window(tiny_modernbert):
    """With only local layers (4 tokens either side, 4 layers), [CLS] is blind to tokens
    more than 16 ahead."""
    path = tiny_modernbert("ModernBertModel", layer_types=["sliding_attention"] * 4)
    llm = LLM(str(path), dtype="float32")
    words = " ".join(["the quick brown fox jumps over the lazy dog"] * 3)
    first, ids = _embeddings(llm, [words + " and runs", words + " but sleeps"])
    assert len(ids[0]) > 20
    assert torch.allclose(first[0], first[1], atol=1e-6)
    ref = _reference(path, "ModernBertModel")
    expected = F.normalize(torch.stack([_hf_hidden(ref, t)[0] for t in ids]), dim=-1)
    assert F.cosine_similarity(first, expected).min() >= 0.9999


def test_a_masked_lm_checkpoint_embeds_with_its_body(tiny_modernbert):
    path = tiny_modernbert("ModernBertForMaskedLM")
    ours, ids = _embeddings(LLM(str(path), dtype="float32"))
    ref = _reference(path, "ModernBertModel")
    expected = F.normalize(torch.stack([_hf_hidden(ref, t)[0] for t in ids]), dim=-1)
    assert F.cosine_similarity(ours, expected).min() >= 0.9999


def test_a_checkpoint_with_every_bias_classifies_like_transformers(tiny_modernbert):
    arch = "ModernBertForSequenceClassification"
    path = tiny_modernbert(arch, num_labels=2, attention_bias=True, mlp_bias=True,
                           norm_bias=True, classifier_bias=True)
    outs = LLM(str(path), dtype="float32").classify(TEXTS)
    ref = _reference(path, arch)
    with torch.no_grad():
        logits = torch.cat([ref(input_ids=torch.tensor([o.prompt_token_ids])).logits
                            for o in outs])
    assert torch.allclose(torch.tensor([o.outputs.probs for o in outs]), logits.softmax(-1),
                          atol=1e-4)


def _int8_unsupported() -> str | None:
    try:
        check_int8_support()
    except ValueError as exc:
        return str(exc)
    return None


@pytest.mark.skipif(_int8_unsupported() is not None, reason="no oneDNN int8 matmul here")
def test_int8_embeddings_stay_close_to_fp32(tiny_modernbert):
    path = tiny_modernbert("ModernBertModel", pooling="mean")
    fp32, _ = _embeddings(LLM(str(path), dtype="float32"))
    int8, _ = _embeddings(LLM(str(path), quantization="int8"))
    assert F.cosine_similarity(fp32, int8).min() >= 0.999
