"""Model resolution, task resolution and derived limits."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from cenote import LLM, PoolerConfig
from cenote.config import ModelConfig, ModelNotFoundError
from cenote.config.hf import derive_max_model_len
from cenote.config.model import resolve_dtype, resolve_task


def test_llm_without_a_model_loads_the_bundled_minilm():
    llm = LLM(dtype="float32")
    assert llm.config.architecture == "BertModel"
    assert len(llm.embed("hi")[0].outputs.embedding) == 384


def test_missing_folder_error_names_the_path(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(ModelNotFoundError, match="nope"):
        LLM(str(missing))


def test_folder_without_config_is_rejected(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        LLM(str(tmp_path))


def test_hub_id_missing_from_the_offline_cache_names_the_id(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ModelNotFoundError, match="acme/not-here"):
        LLM("acme/not-here")


def test_hub_id_resolves_from_the_local_cache_offline(minilm_path, tmp_path, monkeypatch):
    import huggingface_hub.constants as hub_constants

    snapshot = tmp_path / "models--acme--mini" / "snapshots" / ("a" * 40)
    shutil.copytree(minilm_path, snapshot)
    (tmp_path / "models--acme--mini" / "refs").mkdir()
    (tmp_path / "models--acme--mini" / "refs" / "main").write_text("a" * 40)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    config = ModelConfig.from_args("acme/mini")
    assert config.path == snapshot
    assert config.model == "acme/mini"


def test_max_model_len_is_the_smallest_limit(minilm_path):
    assert ModelConfig.from_args(str(minilm_path)).max_model_len == 256
    assert ModelConfig.from_args(str(minilm_path), max_model_len=100).max_model_len == 100


def test_max_model_len_beyond_the_models_limit_is_an_error(minilm_path):
    # MiniLM has 512 positions but was trained to 256 (its max_seq_length), as vLLM reads it.
    with pytest.raises(ValueError, match=r"max_model_len \(512\) is greater than the model's "
                                         r"maximum length \(256, from its Sentence-Transformers"):
        ModelConfig.from_args(str(minilm_path), max_model_len=512)


def test_roberta_positions_exclude_the_padding_offset():
    from transformers import RobertaConfig

    config = RobertaConfig(max_position_embeddings=514, pad_token_id=1)
    assert derive_max_model_len(config, None, None) == 512


@pytest.mark.parametrize(
    "task, arch, st, cross, expected",
    [
        ("auto", "BertModel", True, False, "embed"),
        ("auto", "BertForSequenceClassification", True, True, "embed"),
        ("auto", "BertForSequenceClassification", False, True, "classify"),
        ("auto", "Qwen2ForRewardModel", False, False, "reward"),
        ("auto", "Qwen2Model", False, False, "embed"),
        ("embed", "Qwen2ForCausalLM", False, False, "embed"),
        ("score", "BertForSequenceClassification", False, True, "classify"),
        ("score", "BertModel", False, False, "embed"),
        ("reward", "LlamaForCausalLM", False, False, "reward"),
    ],
)
def test_task_resolution(task, arch, st, cross, expected):
    assert resolve_task(task, arch, st, cross) == expected


def test_causal_lm_without_a_task_asks_for_one():
    with pytest.raises(ValueError, match="--task"):
        resolve_task("auto", "Qwen2ForCausalLM", False, False)


def test_unknown_task_is_rejected():
    with pytest.raises(ValueError, match="Unknown task"):
        resolve_task("generate", "BertModel", False, False)


def test_cuda_auto_dtype_keeps_the_checkpoints_half_type():
    from transformers import BertConfig

    config = BertConfig()
    config.torch_dtype = torch.bfloat16
    assert resolve_dtype("auto", torch.device("cuda"), config) == torch.bfloat16
    assert resolve_dtype("float32", torch.device("cpu"), config) == torch.float32


def test_unknown_pooler_config_field_is_rejected():
    with pytest.raises(ValueError, match="Unknown override_pooler_config"):
        PoolerConfig.coerce({"pooling": "MEAN"})


def test_unknown_pooling_type_is_rejected():
    with pytest.raises(ValueError, match="Unknown pooling_type"):
        PoolerConfig(pooling_type="MAX")


def test_sentence_transformers_config_sets_pooling_and_normalize(minilm_path):
    config = ModelConfig.from_args(str(minilm_path))
    pooler = config.task_pooler("embed")
    assert pooler.pooling_type.value == "MEAN"
    assert pooler.defaults.normalize is True


def test_max_seq_length_of_a_sentence_transformers_6_folder(minilm_path, tmp_path):
    # Sentence-Transformers 6 keeps max_seq_length as the tokenizer's model_max_length,
    # not in sentence_bert_config.json.
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(minilm_path), device="cpu")
    model.max_seq_length = 64
    model.save(str(tmp_path))
    assert "max_seq_length" not in json.loads(
        (tmp_path / "sentence_bert_config.json").read_text())
    config = ModelConfig.from_args(str(tmp_path))
    assert config.max_model_len == 64 and config.task == "embed"


def test_override_beats_sentence_transformers_config(minilm_path):
    config = ModelConfig.from_args(
        str(minilm_path), override_pooler_config=json.dumps({"pooling_type": "CLS"}))
    assert config.task_pooler("embed").pooling_type.value == "CLS"
    assert config.task_pooler("embed").defaults.normalize is True


def test_corrupt_weights_name_the_folder(minilm_path, tmp_path):
    shutil.copytree(minilm_path, tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="Could not load the weights in .*m"):
        LLM(str(tmp_path / "m"))


@pytest.mark.parametrize("override, message", [
    ({"normalize": "false"}, "normalize must be true or false"),
    ({"dimensions": "16"}, "dimensions must be an integer"),
    ({"returned_token_ids": 3}, "returned_token_ids must be a list"),
])
def test_pooler_config_fields_of_the_wrong_type_are_rejected(override, message):
    with pytest.raises(ValueError, match=message):
        PoolerConfig.coerce(override)


@pytest.mark.parametrize("override, message", [
    ({"seq_pooling_type": "ALL"}, "Unknown seq_pooling_type 'ALL'"),
    ({"task": "classify"}, r"Unsupported task: 'classify' Supported tasks: \('encode', "),
    ({"logit_mean": 1.0}, "calibrate a classifier's logits; this model's task is 'embed'"),
    ({"dimensions": 16}, "does not support matryoshka"),
])
def test_an_embedding_pooler_that_cannot_work_fails_at_load(minilm_path, override, message):
    from cenote import LLM

    with pytest.raises(ValueError, match=message):
        LLM(str(minilm_path), dtype="float32", override_pooler_config=override)


def test_hf_overrides_as_json_and_checked(minilm_path):
    config = ModelConfig.from_args(str(minilm_path), hf_overrides='{"is_matryoshka": true}')
    assert config.is_matryoshka
    with pytest.raises(ValueError, match="matryoshka_dimensions must be a list"):
        ModelConfig.from_args(str(minilm_path), hf_overrides={"matryoshka_dimensions": 16})
    with pytest.raises(ValueError, match="hf_overrides must be a dict"):
        ModelConfig.from_args(str(minilm_path), hf_overrides=["is_matryoshka"])


def test_an_uncached_hub_id_names_the_cache_searched(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(Exception, match=str(tmp_path / "hub")):
        ModelConfig.from_args("acme/not-cached")


def test_a_batch_budget_below_max_model_len_grows_to_it(minilm_path):
    # vLLM prefills such prompts in chunks; cenote runs each whole, so its batches must
    # hold the longest one.
    from cenote.config import ModelConfig

    config = ModelConfig.from_args(model=str(minilm_path), max_num_batched_tokens=16)
    assert config.max_num_batched_tokens == config.max_model_len
