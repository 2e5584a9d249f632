"""Reward models (per-token heads, converted causal LMs) and STEP pooling."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from cenote import LLM, PoolingParams

TEXTS = [
    "hello world",
    "a somewhat longer sentence about search engines and ranking",
    "x",
    "step one: add two. step two: multiply by three.",
]
STEP_TAG = 1064
# A hand-made "solution" with three steps, each closed by STEP_TAG (at 4, 7 and 9).
STEP_PROMPT = {"prompt_token_ids": [101, 2023, 2003, 1037, STEP_TAG, 2117, 2742, STEP_TAG,
                                    2197, STEP_TAG, 102]}
STEP_ROWS = [4, 7, 9]


@torch.no_grad()
def _hand_computed_rewards(path, token_ids: list[int]) -> torch.Tensor:
    """Qwen2ForRewardModel by hand: transformers' Qwen2Model, then score.0 -> ReLU -> score.2."""
    from transformers import Qwen2Model

    body = Qwen2Model.from_pretrained(path, dtype=torch.float32).eval()
    hidden = body(input_ids=torch.tensor([token_ids])).last_hidden_state[0]
    head = {k: v for k, v in load_file(str(path / "model.safetensors")).items()
            if k.startswith("score.")}
    inner = torch.relu(hidden @ head["score.0.weight"].T + head["score.0.bias"])
    return inner @ head["score.2.weight"].T + head["score.2.bias"]


def test_reward_model_is_loaded_for_the_reward_task(qwen2_reward_model):
    llm = LLM(str(qwen2_reward_model(num_labels=1)), dtype="float32")
    assert llm.config.task == "reward"
    # encode (vLLM's reward) and, per SPEC §8, the reward head per token.
    assert llm.config.supported_pooling_tasks == ("encode", "token_classify")


def test_reward_model_gives_every_token_its_reward(qwen2_reward_model):
    path = qwen2_reward_model(num_labels=1)
    llm = LLM(str(path), dtype="float32")
    for out in llm.reward(TEXTS):
        expected = _hand_computed_rewards(path, out.prompt_token_ids)
        assert out.outputs.data.shape == (len(out.prompt_token_ids), 1)
        assert torch.allclose(out.outputs.data, expected, atol=1e-4)


def test_reward_batch_gives_the_same_result_as_one_by_one(qwen2_reward_model):
    llm = LLM(str(qwen2_reward_model(num_labels=1)), dtype="float32")
    batched = [o.outputs.data for o in llm.reward(TEXTS)]
    for text, rows in zip(TEXTS, batched, strict=True):
        assert torch.allclose(rows, llm.reward(text)[0].outputs.data, atol=1e-5)


def test_reward_and_encode_are_the_same_call(qwen2_reward_model):
    llm = LLM(str(qwen2_reward_model(num_labels=1)), dtype="float32")
    assert torch.equal(llm.reward(TEXTS[1])[0].outputs.data,
                       llm.encode(TEXTS[1])[0].outputs.data)


def test_causal_lm_converted_to_reward_returns_all_hidden_states(tiny_decoder):
    from transformers import Qwen3ForCausalLM

    path = tiny_decoder("qwen3", "Qwen3ForCausalLM")
    llm = LLM(str(path), task="reward", dtype="float32")
    ref = Qwen3ForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    for out in llm.reward(TEXTS):
        with torch.no_grad():
            expected = ref.model(input_ids=torch.tensor([out.prompt_token_ids])
                                 ).last_hidden_state[0]
        assert torch.allclose(out.outputs.data, expected, atol=1e-4)


@pytest.fixture(scope="module")
def step_reward_model(qwen2_reward_model):
    """A two-label (process) reward model pooled with STEP at STEP_TAG."""
    path = qwen2_reward_model(num_labels=2)
    llm = LLM(str(path), dtype="float32",
              override_pooler_config={"pooling_type": "STEP", "step_tag_id": STEP_TAG})
    return path, llm


def test_step_pooling_keeps_the_rows_of_step_tags(step_reward_model):
    path, llm = step_reward_model
    (out,) = llm.reward(STEP_PROMPT)
    expected = _hand_computed_rewards(path, STEP_PROMPT["prompt_token_ids"])[STEP_ROWS]
    assert out.outputs.data.shape == (3, 2)
    assert torch.allclose(out.outputs.data, expected, atol=1e-4)


def test_step_pooling_returns_the_requested_columns_in_order(step_reward_model):
    path, llm = step_reward_model
    (out,) = llm.reward(STEP_PROMPT, pooling_params=PoolingParams(returned_token_ids=[1, 0]))
    expected = _hand_computed_rewards(path, STEP_PROMPT["prompt_token_ids"])[STEP_ROWS]
    assert torch.allclose(out.outputs.data, expected[:, [1, 0]], atol=1e-4)


def test_step_pooling_with_activation_gives_probabilities(step_reward_model):
    path, llm = step_reward_model
    (out,) = llm.reward(STEP_PROMPT, pooling_params=PoolingParams(activation=True))
    expected = _hand_computed_rewards(path, STEP_PROMPT["prompt_token_ids"])[STEP_ROWS]
    assert torch.allclose(out.outputs.data, expected.softmax(-1), atol=1e-4)


def test_request_step_tag_overrides_the_configured_one(step_reward_model):
    path, llm = step_reward_model
    ids = STEP_PROMPT["prompt_token_ids"]
    (out,) = llm.reward(STEP_PROMPT, pooling_params=PoolingParams(step_tag_id=2117))
    expected = _hand_computed_rewards(path, ids)[[i for i, t in enumerate(ids) if t == 2117]]
    assert torch.allclose(out.outputs.data, expected, atol=1e-4)


def test_step_pooling_without_a_tag_keeps_every_row(qwen2_reward_model):
    path = qwen2_reward_model(num_labels=2)
    llm = LLM(str(path), dtype="float32", override_pooler_config={"pooling_type": "STEP"})
    (out,) = llm.reward(STEP_PROMPT)
    expected = _hand_computed_rewards(path, STEP_PROMPT["prompt_token_ids"])
    assert torch.allclose(out.outputs.data, expected, atol=1e-4)


def test_step_parameters_without_step_pooling_are_rejected(qwen2_reward_model):
    llm = LLM(str(qwen2_reward_model(num_labels=1)), dtype="float32")
    for params in (PoolingParams(step_tag_id=STEP_TAG), PoolingParams(returned_token_ids=[0])):
        with pytest.raises(ValueError, match="only allowed with STEP pooling"):
            llm.reward(STEP_PROMPT, pooling_params=params)
    assert llm.reward(STEP_PROMPT)[0].outputs.data.shape == (11, 1)


@pytest.mark.parametrize("method, api", [("embed", "Embedding API"),
                                         ("classify", "Classification API")])
def test_unsupported_method_on_a_reward_model_names_the_task(qwen2_reward_model, method, api):
    llm = LLM(str(qwen2_reward_model(num_labels=1)), dtype="float32")
    with pytest.raises(ValueError, match=rf"{api} is not supported by this model.*"
                                         rf"--task {method}"):
        getattr(llm, method)("hello")
    assert len(llm.reward("hello")) == 1


def test_score_on_a_reward_model_names_the_task(qwen2_reward_model):
    llm = LLM(str(qwen2_reward_model(num_labels=1)), dtype="float32")
    with pytest.raises(ValueError, match="Score API is not supported by this model"):
        llm.score("a", "b")


@pytest.mark.parametrize("ids", [[2], [-1], [0, 5]])
def test_returned_token_ids_outside_the_heads_columns_are_rejected(step_reward_model, ids):
    _, llm = step_reward_model
    with pytest.raises(ValueError, match=r"returned_token_ids: .* \(0 to 1\)"):
        llm.reward(STEP_PROMPT, pooling_params=PoolingParams(returned_token_ids=ids))


def test_a_pooler_override_that_cannot_work_fails_at_load(qwen2_reward_model):
    path = str(qwen2_reward_model(num_labels=2))
    with pytest.raises(ValueError, match="returned_token_ids: 3 is not a column"):
        LLM(path, dtype="float32", override_pooler_config={
            "pooling_type": "STEP", "returned_token_ids": [3]})
    with pytest.raises(ValueError, match="only allowed with STEP pooling"):
        LLM(path, dtype="float32", override_pooler_config={"step_tag_id": STEP_TAG})


@pytest.mark.parametrize("architecture, labels", [("Qwen2ForRewardModel", 1),
                                                  ("Qwen2ForProcessRewardModel", 2)])
def test_reward_heads_take_vllms_sizes_when_the_config_names_none(
        architecture, labels, qwen2_reward_model):
    # Upstream Qwen2.5-Math-RM/PRM configs name no labels (transformers would say 2).
    path = qwen2_reward_model(num_labels=labels, architecture=architecture,
                              labels_in_config=False)
    llm = LLM(str(path), dtype="float32")
    assert llm.config.task == "reward" and llm.config.num_labels == labels
    expected = _hand_computed_rewards(path, STEP_PROMPT["prompt_token_ids"])
    if architecture == "Qwen2ForProcessRewardModel":
        # A process reward model pools STEP by default (vLLM's): with a step tag, the
        # tagged rows; without one, every row.
        (out,) = llm.reward(STEP_PROMPT, pooling_params=PoolingParams(step_tag_id=STEP_TAG))
        assert torch.allclose(out.outputs.data, expected[STEP_ROWS], atol=1e-4)
    (out,) = llm.reward(STEP_PROMPT)
    assert out.outputs.data.shape == (len(STEP_PROMPT["prompt_token_ids"]), labels)
    assert torch.allclose(out.outputs.data, expected, atol=1e-4)
