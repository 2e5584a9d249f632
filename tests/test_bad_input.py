"""Bad input raises a clear exception and leaves the LLM usable."""

from __future__ import annotations

import pytest

from cenote import LLM, PoolingParams


@pytest.fixture(autouse=True)
def still_usable_afterwards(minilm_fp32):
    yield
    (out,) = minilm_fp32.embed("still works")
    assert len(out.outputs.embedding) == 384


@pytest.mark.parametrize("prompt", [42, None, [["nested"]], [b"bytes"], {"text": "no ids"}])
def test_prompt_of_the_wrong_type_is_a_type_error(minilm_fp32, prompt):
    with pytest.raises(TypeError, match="string"):
        minilm_fp32.embed(prompt)


def test_empty_string_is_rejected(minilm_fp32):
    with pytest.raises(ValueError, match="empty string"):
        minilm_fp32.embed(["fine", ""])


def test_empty_score_text_is_named_by_its_side_and_position(minilm_fp32):
    with pytest.raises(ValueError, match=r"^text_2\[1\] is an empty string"):
        minilm_fp32.score("a query", ["fine", ""])
    with pytest.raises(ValueError, match=r"^text_1 is an empty string"):
        minilm_fp32.score("", ["fine"])


def test_token_id_outside_the_vocabulary_is_rejected(minilm_fp32):
    with pytest.raises(ValueError, match="out of vocabulary"):
        minilm_fp32.embed({"prompt_token_ids": [101, 30522, 102]})


@pytest.mark.parametrize("ids", [[], [101, -1], [101, 1.5], [101, "7"]])
def test_malformed_token_ids_are_rejected(minilm_fp32, ids):
    with pytest.raises(ValueError):
        minilm_fp32.embed({"prompt_token_ids": ids})


def test_input_longer_than_max_model_len_names_both_lengths(minilm_fp32):
    with pytest.raises(ValueError) as err:
        minilm_fp32.embed("word " * 300)
    message = str(err.value)
    assert "maximum context length is 256 tokens" in message
    assert "you requested 302 tokens" in message


def test_truncate_prompt_tokens_beyond_max_model_len_is_rejected(minilm_fp32):
    with pytest.raises(ValueError, match="greater than max_model_len"):
        minilm_fp32.embed("hello", truncate_prompt_tokens=1000)


def test_dimensions_on_a_model_without_matryoshka_is_rejected(minilm_fp32):
    with pytest.raises(ValueError) as err:
        minilm_fp32.embed("hello", pooling_params=PoolingParams(dimensions=64))
    assert str(err.value).endswith(
        "does not support matryoshka representation, changing output dimensions will lead "
        "to poor results."
    )


def test_dimensions_outside_the_matryoshka_list_is_rejected(minilm_path):
    llm = LLM(str(minilm_path), hf_overrides={"matryoshka_dimensions": [128, 256]})
    with pytest.raises(ValueError) as err:
        llm.embed("hello", pooling_params=PoolingParams(dimensions=64))
    assert "only supports [128, 256] matryoshka dimensions" in str(err.value)


def test_non_positive_dimensions_are_rejected(minilm_path):
    llm = LLM(str(minilm_path), hf_overrides={"is_matryoshka": True})
    with pytest.raises(ValueError, match="Dimensions must be greater than 0"):
        llm.embed("hello", pooling_params=PoolingParams(dimensions=0))


def test_pooling_param_that_the_task_does_not_take_is_rejected(minilm_fp32):
    # (activation is vLLM's use_activation, which embed reads as normalize.)
    with pytest.raises(ValueError, match="returned_token_ids is not a valid parameter"):
        minilm_fp32.embed("hello", pooling_params=PoolingParams(returned_token_ids=[1]))


def test_step_parameters_need_step_pooling(minilm_fp32):
    with pytest.raises(ValueError, match="only allowed with STEP pooling"):
        minilm_fp32.encode("hello", PoolingParams(step_tag_id=5))


def test_score_with_mismatched_lengths_is_rejected(minilm_fp32):
    with pytest.raises(ValueError, match="Input lengths must be either 1:1, 1:N or N:N"):
        minilm_fp32.score(["a", "b"], ["c", "d", "e"])


def test_classify_on_an_embedding_model_names_the_task(minilm_fp32):
    with pytest.raises(ValueError, match="Classification API is not supported by this model"):
        minilm_fp32.classify("hello")


def test_an_unknown_pooling_task_is_named_as_such(minilm_fp32):
    with pytest.raises(ValueError, match="Unknown pooling task 'bogus'"):
        minilm_fp32.encode("hello", pooling_task="bogus")


def test_vllm_engine_arguments_that_do_not_apply_are_accepted(minilm_path):
    llm = LLM(str(minilm_path), dtype="float32", seed=0, enforce_eager=True,
              gpu_memory_utilization=0.5, tensor_parallel_size=1)
    assert len(llm.embed("hi", use_tqdm=False)[0].outputs.embedding) == 384
    with pytest.raises(TypeError, match="unexpected keyword argument 'not_an_option'"):
        LLM(str(minilm_path), not_an_option=1)
    with pytest.raises(ValueError, match="one device"):
        LLM(str(minilm_path), tensor_parallel_size=2)


def test_score_by_cosine_shows_a_progress_bar_on_long_runs(minilm_fp32, capsys):
    minilm_fp32.score("a query", [f"document number {i}" for i in range(70)])
    assert "Processed prompts (embed)" in capsys.readouterr().err
    minilm_fp32.score("a query", [f"document number {i}" for i in range(70)], use_tqdm=False)
    assert "Processed prompts" not in capsys.readouterr().err


def test_use_tqdm_may_be_the_bar_class_to_draw_with(minilm_fp32):
    # As vLLM: use_tqdm=some tqdm class (e.g. tqdm.notebook's) draws the bar with it.
    from tqdm import tqdm

    made = []

    class Bar(tqdm):
        def __init__(self, *args, **kwargs):
            made.append(kwargs["total"])
            super().__init__(*args, **kwargs)

    minilm_fp32.embed([f"text {i}" for i in range(70)], use_tqdm=Bar)
    assert made == [70]


def test_outputs_print_short(minilm_fp32):
    (out,) = minilm_fp32.embed("hello", use_tqdm=False)
    assert repr(out.outputs) == "EmbeddingOutput(hidden_size=384)"
    assert len(repr(out)) < 300


def test_vllm_text_prompts_and_array_token_ids_are_prompts(minilm_fp32):
    import numpy as np
    import torch

    text = "a text prompt"
    (plain,) = minilm_fp32.embed(text)
    ids = plain.prompt_token_ids
    for prompt in ({"prompt": text}, {"prompt_token_ids": np.array(ids)},
                   {"prompt_token_ids": torch.tensor(ids)},
                   {"prompt_token_ids": [np.int64(i) for i in ids]}):
        (out,) = minilm_fp32.embed([prompt])
        assert out.prompt_token_ids == ids
        assert out.outputs.embedding == pytest.approx(plain.outputs.embedding, abs=1e-6)
    (pair,) = minilm_fp32.score({"prompt": "a query"}, [{"prompt": text}])
    assert pair.outputs.score == pytest.approx(minilm_fp32.score("a query", text)[0].outputs.score)


@pytest.mark.parametrize("text_2,message", [
    ([{"prompt_token_ids": [101, 102]}], r"text_2\[0\]: scoring takes texts"),
    (None, "text_2 must be a string or a list of strings"),
    ([b"bytes"], r"text_2\[0\] must be a string"),
])
def test_score_inputs_that_are_not_texts_are_type_errors(minilm_fp32, text_2, message):
    with pytest.raises(TypeError, match=message):
        minilm_fp32.score("a query", text_2)


@pytest.mark.parametrize("params", [{"normalize": False}, 3, [PoolingParams(), "x"]])
def test_pooling_params_of_the_wrong_type_are_a_type_error(minilm_fp32, params):
    with pytest.raises(TypeError, match="pooling_params must be a PoolingParams"):
        minilm_fp32.embed(["a", "b"], pooling_params=params)


def test_a_folder_without_a_tokenizer_is_refused(minilm_path, tmp_path):
    import shutil

    for name in ("config.json", "model.safetensors"):
        shutil.copy(minilm_path / name, tmp_path / name)
    with pytest.raises(ValueError, match="has no tokenizer"):
        LLM(str(tmp_path))


def test_ids_the_tokenizer_has_but_the_model_lacks_are_refused(minilm_path, tmp_path):
    # A model with fewer embedding rows than its tokenizer has ids.
    from transformers import BertConfig, BertModel

    from tests.factories import _save_tokenizer

    BertModel(BertConfig(vocab_size=1000, hidden_size=32, num_hidden_layers=1,
                         num_attention_heads=2, intermediate_size=64)).save_pretrained(tmp_path)
    _save_tokenizer(minilm_path, tmp_path)
    llm = LLM(str(tmp_path))
    with pytest.raises(ValueError, match="the tokenizer knows but the model does not"):
        llm.embed("Hello, my name is Wolfgang")
    with pytest.raises(ValueError, match="out of vocabulary"):
        llm.embed({"prompt_token_ids": [101, 1000, 102]})
    assert len(llm.embed({"prompt_token_ids": [101, 999, 102]})[0].outputs.embedding) == 32


def test_vllm_runner_convert_tokenizer_and_lora_arguments(minilm_path, tmp_path, minilm_fp32):
    import shutil

    # LLM(model, runner="pooling", convert="embed"), as newer vLLM spells task="embed";
    # the tokenizer read from a folder of its own.
    model, tokenizer = tmp_path / "model", tmp_path / "tokenizer"
    model.mkdir()
    tokenizer.mkdir()
    for name in ("config.json", "model.safetensors", "modules.json"):
        shutil.copy(minilm_path / name, model / name)
    shutil.copytree(minilm_path / "1_Pooling", model / "1_Pooling")
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt"):
        shutil.copy(minilm_path / name, tokenizer / name)  # a folder with a tokenizer only
    with pytest.raises(ValueError, match="has no tokenizer"):
        LLM(str(model), dtype="float32")
    llm = LLM(str(model), runner="pooling", convert="embed", tokenizer=str(tokenizer),
              dtype="float32", pooler_config={"normalize": False})
    assert llm.config.task == "embed"
    (out,) = llm.embed("a sentence", lora_request=None)
    (ref,) = minilm_fp32.embed("a sentence", pooling_params=PoolingParams(normalize=False))
    assert out.prompt_token_ids == ref.prompt_token_ids
    assert out.outputs.embedding == pytest.approx(ref.outputs.embedding, abs=1e-5)
    # pooling_task=None: embed where the model embeds (as vLLM), so one vector
    assert minilm_fp32.encode("a sentence", pooling_task=None)[0].outputs.data.shape == (384,)
    with pytest.raises(ValueError, match="LoRA"):
        minilm_fp32.embed("x", lora_request=object())
    with pytest.raises(ValueError, match="pooling models only"):
        LLM(str(minilm_path), runner="generate")
    with pytest.raises(ValueError, match="disagree"):
        LLM(str(minilm_path), task="classify", convert="embed")
    with pytest.raises(ValueError, match="not both"):
        LLM(str(minilm_path), pooler_config={}, override_pooler_config={})


def test_runner_pooling_makes_a_causal_lm_an_embedder(tiny_decoder):
    # vLLM: runner="pooling" with no convert turns a generative checkpoint into an embedder.
    path = str(tiny_decoder("qwen3", "Qwen3ForCausalLM"))
    with pytest.raises(ValueError, match="generative model"):
        LLM(path)
    assert LLM(path, runner="pooling").config.task == "embed"
