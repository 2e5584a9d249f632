"""RoBERTa / XLM-R encoders and Sentence-Transformers Dense heads match the references."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cenote import LLM

TEXTS = ["hello world", "a somewhat longer sentence about search engines and ranking",
         "x", "the quick brown fox jumps over the lazy dog " * 3]


def _build_random_encoder(kind: str, minilm_path, target, pad_token_id: int = 1):
    from transformers import (
        AutoTokenizer,
        RobertaConfig,
        RobertaModel,
        XLMRobertaConfig,
        XLMRobertaModel,
    )

    config_cls, model_cls = {
        "roberta": (RobertaConfig, RobertaModel),
        "xlm-roberta": (XLMRobertaConfig, XLMRobertaModel),
    }[kind]
    torch.manual_seed(3)
    config = config_cls(vocab_size=30522, hidden_size=64, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=128,
                        max_position_embeddings=130, pad_token_id=pad_token_id,
                        type_vocab_size=1)
    model_cls(config, add_pooling_layer=True).save_pretrained(target)
    AutoTokenizer.from_pretrained(minilm_path).save_pretrained(target)
    return target


@pytest.mark.parametrize("kind", ["roberta", "xlm-roberta"])
def test_random_encoder_matches_transformers(kind, minilm_path, tmp_path):
    from transformers import AutoModel, AutoTokenizer

    path = _build_random_encoder(kind, minilm_path, tmp_path)
    llm = LLM(str(path), dtype="float32")
    assert llm.config.max_model_len == 128
    outs = llm.encode(TEXTS)
    tok = AutoTokenizer.from_pretrained(path)
    ref_model = AutoModel.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        for text, out in zip(TEXTS, outs, strict=True):
            ref = ref_model(**tok(text, return_tensors="pt")).last_hidden_state[0]
            assert torch.allclose(out.outputs.data, ref, atol=1e-4)
    embeds = torch.tensor([o.outputs.embedding for o in llm.embed(TEXTS)])
    with torch.no_grad():
        cls = torch.stack([ref_model(**tok(t, return_tensors="pt")).last_hidden_state[0, 0]
                           for t in TEXTS])
    assert F.cosine_similarity(embeds, cls).min() >= 0.9999


def test_roberta_with_pad_token_zero_takes_every_position(minilm_path, tmp_path):
    # Positions start at pad_token_id + 1 = 1, so 129 of the 130 fit (not 128, as when
    # pad 0 was read as RoBERTa's usual 1), and the longest input matches transformers.
    from transformers import AutoModel

    path = _build_random_encoder("roberta", minilm_path, tmp_path, pad_token_id=0)
    llm = LLM(str(path), dtype="float32")
    assert llm.config.max_model_len == 129
    ids = [101] + [2000 + i for i in range(127)] + [102]
    (out,) = llm.encode({"prompt_token_ids": ids})
    ref_model = AutoModel.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        ref = ref_model(input_ids=torch.tensor([ids])).last_hidden_state[0]
    assert torch.allclose(out.outputs.data, ref, atol=1e-4)


@pytest.fixture(scope="module")
def st_dense_path(minilm_path, tmp_path_factory):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import (
        Dense,
        Normalize,
        Pooling,
        Transformer,
    )

    torch.manual_seed(0)
    modules = [Transformer(str(minilm_path)), Pooling(384, pooling_mode="cls"),
               Dense(384, 96, activation_function=torch.nn.Tanh()), Normalize()]
    target = tmp_path_factory.mktemp("st-dense")
    SentenceTransformer(modules=modules, device="cpu").save(str(target))
    return target


def test_sentence_transformers_dense_head_matches(st_dense_path):
    from sentence_transformers import SentenceTransformer

    llm = LLM(str(st_dense_path), dtype="float32")
    ours = torch.tensor([o.outputs.embedding for o in llm.embed(TEXTS)])
    ref = SentenceTransformer(str(st_dense_path), device="cpu").encode(TEXTS,
                                                                       convert_to_tensor=True)
    assert ours.shape == (len(TEXTS), 96)
    assert F.cosine_similarity(ours, ref).min() >= 0.9999


def test_sentence_transformers_dense_head_in_default_dtype(st_dense_path):
    from sentence_transformers import SentenceTransformer

    llm = LLM(str(st_dense_path))
    ours = torch.tensor([o.outputs.embedding for o in llm.embed(TEXTS)])
    ref = SentenceTransformer(str(st_dense_path), device="cpu").encode(TEXTS,
                                                                       convert_to_tensor=True)
    assert F.cosine_similarity(ours, ref).min() >= 0.998


def test_pytorch_model_bin_checkpoint_loads_like_safetensors(minilm_path, tmp_path,
                                                             minilm_fp32):
    import shutil

    from safetensors.torch import load_file

    for item in minilm_path.iterdir():
        if item.name != "model.safetensors":
            (shutil.copytree if item.is_dir() else shutil.copy)(item, tmp_path / item.name)
    torch.save(load_file(minilm_path / "model.safetensors"), tmp_path / "pytorch_model.bin")
    llm = LLM(str(tmp_path), dtype="float32")
    ours = torch.tensor(llm.embed(TEXTS[1])[0].outputs.embedding)
    ref = torch.tensor(minilm_fp32.embed(TEXTS[1])[0].outputs.embedding)
    assert torch.equal(ours, ref)


@pytest.mark.parametrize("kind", ["relative_key", "relative_key_query"])
def test_relative_position_embeddings_are_refused_not_ignored(kind, minilm_path, tmp_path):
    # Without its distance tensors such a config used to load and run with absolute
    # positions, silently wrong.
    import json

    path = _build_random_encoder("roberta", minilm_path, tmp_path)
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "position_embedding_type": kind}))
    with pytest.raises(ValueError, match=f"position_embedding_type '{kind}' is not supported"):
        LLM(str(path))
