"""Long inputs: chunked processing (vLLM's enable_chunked_processing / max_embed_len) and
the truncation side."""

from __future__ import annotations

import asyncio

import pytest
import torch
import torch.nn.functional as F

from cenote import LLM, PoolingParams
from cenote.config import ModelConfig
from cenote.engine.async_engine import AsyncPoolingEngine

WINDOW = 32
LONG_TEXT = " ".join(
    f"Paragraph {i} talks about rivers, mountains and the towns that grew beside them."
    for i in range(24))


def chunked(path, pooling_type=None, max_embed_len=4096, **kwargs) -> LLM:
    pooler = {"enable_chunked_processing": True, "max_embed_len": max_embed_len}
    if pooling_type is not None:
        pooler["pooling_type"] = pooling_type
    return LLM(str(path), dtype="float32", max_model_len=WINDOW,
               override_pooler_config=pooler, **kwargs)


def hand_chunked(path, token_ids: list[int], pooling_type=None, **kwargs) -> torch.Tensor:
    """The weighted mean of each chunk pooled raw, normalised: computed from chunks the
    plain engine embeds one by one."""
    pooler = {"pooling_type": pooling_type} if pooling_type else None
    plain = LLM(str(path), dtype="float32", max_model_len=WINDOW, override_pooler_config=pooler,
                **kwargs)
    chunks = [token_ids[i:i + WINDOW] for i in range(0, len(token_ids), WINDOW)]
    outs = plain.embed([{"prompt_token_ids": c} for c in chunks],
                       pooling_params=PoolingParams(normalize=False))
    vectors = torch.stack([torch.tensor(o.outputs.embedding) for o in outs])
    weights = torch.tensor([len(c) for c in chunks], dtype=torch.float32)
    return F.normalize((vectors * weights[:, None]).sum(0) / weights.sum(), dim=-1)


@pytest.mark.parametrize("pooling_type", [None, "CLS", "LAST"])
def test_a_long_input_is_the_weighted_mean_of_its_chunks(minilm_path, pooling_type):
    llm = chunked(minilm_path, pooling_type)
    (out,) = llm.embed(LONG_TEXT)
    assert len(out.prompt_token_ids) > 3 * WINDOW  # every token counted, none cut
    expected = hand_chunked(minilm_path, out.prompt_token_ids, pooling_type)
    got = torch.tensor(out.outputs.embedding)
    assert F.cosine_similarity(got, expected, dim=0) >= 0.9999
    assert abs(got.norm().item() - 1.0) < 1e-5


def test_a_decoder_embeds_long_inputs_in_chunks(tiny_decoder):
    path = tiny_decoder("qwen3", "Qwen3ForCausalLM")
    llm = chunked(path, task="embed")
    (out,) = llm.embed(LONG_TEXT)
    expected = hand_chunked(path, out.prompt_token_ids, task="embed")
    assert F.cosine_similarity(torch.tensor(out.outputs.embedding), expected, dim=0) >= 0.9999


def test_an_input_within_the_window_is_embedded_as_without_chunking(minilm_path):
    short = "A short sentence fits in one window."
    (with_chunking,) = chunked(minilm_path).embed(short)
    (without,) = LLM(str(minilm_path), dtype="float32", max_model_len=WINDOW).embed(short)
    assert torch.allclose(torch.tensor(with_chunking.outputs.embedding),
                          torch.tensor(without.outputs.embedding), atol=1e-6)


def test_dimensions_and_normalize_apply_to_the_merged_vector(minilm_path):
    llm = chunked(minilm_path, hf_overrides={"matryoshka_dimensions": [64]})
    (raw,) = llm.embed(LONG_TEXT, pooling_params=PoolingParams(normalize=False))
    (cut,) = llm.embed(LONG_TEXT, pooling_params=PoolingParams(dimensions=64))
    expected = F.normalize(torch.tensor(raw.outputs.embedding)[:64], dim=-1)
    assert torch.allclose(torch.tensor(cut.outputs.embedding), expected, atol=1e-6)


def test_cosine_scoring_embeds_long_texts_in_chunks(minilm_path):
    llm = chunked(minilm_path)
    (score,) = llm.score(LONG_TEXT, "rivers and mountains")
    (a,), (b,) = llm.embed(LONG_TEXT), llm.embed("rivers and mountains")
    expected = F.cosine_similarity(torch.tensor(a.outputs.embedding),
                                   torch.tensor(b.outputs.embedding), dim=0)
    assert abs(score.outputs.score - expected.item()) < 1e-5


def test_an_input_over_max_embed_len_names_both_lengths(minilm_path):
    llm = chunked(minilm_path, max_embed_len=100)
    with pytest.raises(ValueError, match=r"max_embed_len\) is 100 tokens.*max_model_len = 32"):
        llm.embed(LONG_TEXT)


def test_without_chunking_a_long_input_is_still_refused(minilm_path):
    llm = LLM(str(minilm_path), max_model_len=WINDOW)
    with pytest.raises(ValueError, match="maximum context length is 32 tokens"):
        llm.embed(LONG_TEXT)


def test_chunked_processing_is_refused_at_load_where_it_means_nothing(qwen2_reward_model):
    with pytest.raises(ValueError, match="enable_chunked_processing applies to embedding"):
        LLM(str(qwen2_reward_model()), override_pooler_config={
            "enable_chunked_processing": True})


def test_max_embed_len_without_chunked_processing_is_refused(minilm_path):
    with pytest.raises(ValueError, match="max_embed_len needs enable_chunked_processing"):
        LLM(str(minilm_path), override_pooler_config={"max_embed_len": 1000})


def test_a_long_document_does_not_hold_up_short_requests(minilm_path):
    config = ModelConfig.from_args(str(minilm_path), max_model_len=WINDOW,
                                   max_num_batched_tokens=WINDOW,
                                   override_pooler_config={"enable_chunked_processing": True})
    engine = AsyncPoolingEngine.from_config(config)
    engine.start()
    finished: list[str] = []

    async def embed(name: str, text: str) -> None:
        await engine.encode([text], "embed")
        finished.append(name)

    async def scenario() -> None:
        long = asyncio.create_task(embed("long", LONG_TEXT * 4))
        await asyncio.sleep(0.05)  # the document's chunks are queued first
        await asyncio.gather(*(embed(f"short-{i}", f"Short question {i}?") for i in range(3)))
        await long

    try:
        asyncio.run(scenario())
    finally:
        engine.shutdown()
    assert finished[-1] == "long", finished


def test_truncation_side_right_keeps_the_first_tokens_as_sentence_transformers(
        minilm_fp32, st_minilm):
    keep = 12
    params = PoolingParams(truncate_prompt_tokens=keep, truncation_side="right")
    (out,) = minilm_fp32.embed(LONG_TEXT, pooling_params=params)
    tokenizer = minilm_fp32.get_tokenizer()
    assert out.prompt_token_ids == tokenizer(LONG_TEXT, truncation=True,
                                             max_length=keep)["input_ids"]
    previous = st_minilm.max_seq_length
    st_minilm.max_seq_length = keep
    try:
        reference = st_minilm.encode(LONG_TEXT, convert_to_tensor=True)
    finally:
        st_minilm.max_seq_length = previous
    assert F.cosine_similarity(torch.tensor(out.outputs.embedding), reference, dim=0) >= 0.9999


def test_truncation_side_left_keeps_the_last_tokens(minilm_fp32):
    (full,) = minilm_fp32.embed(LONG_TEXT, truncate_prompt_tokens=-1,
                                pooling_params=PoolingParams(truncation_side="left"))
    (default,) = minilm_fp32.embed(LONG_TEXT, truncate_prompt_tokens=-1)
    assert full.prompt_token_ids == default.prompt_token_ids
    assert full.prompt_token_ids[-1] == minilm_fp32.get_tokenizer().sep_token_id
    assert len(full.prompt_token_ids) == minilm_fp32.config.max_model_len


def test_an_unknown_truncation_side_is_refused(minilm_fp32):
    with pytest.raises(ValueError, match="truncation_side must be 'left' or 'right'"):
        minilm_fp32.embed("text", pooling_params=PoolingParams(truncation_side="middle"))


def test_the_users_tokenizer_calls_do_not_change_cenotes_encodes(minilm_fp32):
    # LLM.get_tokenizer() is the Hugging Face tokenizer: a call with truncation=True
    # leaves its backend truncating; cenote's own encodes must not follow it.
    text = " ".join(f"word{i}" for i in range(40))  # within the limit, untruncated
    (before,) = minilm_fp32.embed(text)
    minilm_fp32.get_tokenizer()(text, truncation=True, max_length=12)
    (after,) = minilm_fp32.embed(text)
    assert after.prompt_token_ids == before.prompt_token_ids
    assert len(after.prompt_token_ids) > 12
