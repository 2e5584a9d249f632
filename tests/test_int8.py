"""Opt-in int8 (``quantization="int8"``): every matmul of a native model runs in int8,
the accuracy it costs is measured at load and logged, outputs stay close to the float
model's (nearest neighbours agree), and what it does not apply to is refused."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cenote import LLM
from cenote.config.model import CPU_FP32_MAX_NUM_BATCHED_TOKENS
from cenote.models.linear import Linear
from cenote.models.quantization import check_int8_support
from tests.serving import cenote_serve


def _int8_unsupported() -> str | None:
    try:
        check_int8_support()
    except ValueError as exc:
        return str(exc)
    return None


pytestmark = pytest.mark.skipif(_int8_unsupported() is not None,
                                reason=f"no oneDNN int8 matmul here: {_int8_unsupported()}")

QUERIES = ["How do glaciers form?", "Who painted the Mona Lisa?", "Best way to bake bread",
           "Symptoms of the flu", "How does a jet engine work?"]
PASSAGES = ["Glaciers form where snow piles up over years and compresses into ice.",
            "Leonardo da Vinci painted the Mona Lisa in the early sixteenth century.",
            "Knead the dough, let it rise, then bake it in a hot oven until golden.",
            "Influenza brings fever, cough, sore throat and aching muscles.",
            "A jet engine sucks in air, compresses it, burns fuel and blows it out the back."]


@pytest.fixture(scope="module")
def int8_llm(minilm_path):
    return LLM(str(minilm_path), quantization="int8")


def test_every_matmul_is_int8_and_its_accuracy_is_measured(int8_llm):
    layers = [m for m in int8_llm.engine.runner.model.modules() if isinstance(m, Linear)]
    assert layers and all(m.int8 is not None and m.weight is None for m in layers)
    accuracy = int8_llm.engine.int8_accuracy
    assert accuracy.num_texts >= 32 and accuracy.pooling_task == "embed"
    # per-token scales and smoothing (benchmarks/README.md, "int8"); one scale per batch
    # measured min 0.979, mean 0.9936
    assert 0.99 < accuracy.min_cosine <= accuracy.mean_cosine < 1.0 and accuracy.mean_cosine > 0.997
    assert int8_llm.config.dtype == torch.float32
    assert int8_llm.config.max_num_batched_tokens == CPU_FP32_MAX_NUM_BATCHED_TOKENS


def test_int8_vectors_are_close_to_float_and_rank_alike(int8_llm, minilm_path):
    texts = QUERIES + PASSAGES
    floats = torch.tensor([o.outputs.embedding for o in LLM(str(minilm_path),
                                                                dtype="float32").embed(texts)])
    ints = torch.tensor([o.outputs.embedding for o in int8_llm.embed(texts)])
    cosine = F.cosine_similarity(floats, ints)
    assert cosine.min() > 0.97 and not torch.equal(floats, ints)
    n = len(QUERIES)
    for vectors in (floats, ints):  # each query finds its own passage, in both
        assert (vectors[:n] @ vectors[n:].T).argmax(1).tolist() == list(range(n))


@pytest.mark.parametrize("options, message", [
    ({"quantization": "awq"}, "one quantization is 'int8'"),
    ({"quantization": "int8", "dtype": "bfloat16"}, "float32"),
])
def test_what_int8_does_not_do_is_refused(minilm_path, options, message):
    with pytest.raises(ValueError, match=message):
        LLM(str(minilm_path), **options)


def test_int8_needs_a_native_model(tiny_distilbert):
    with pytest.raises(ValueError, match="natively"):
        LLM(str(tiny_distilbert()), quantization="int8")


def test_the_server_logs_int8_accuracy_and_serves(minilm_path):
    import httpx

    with cenote_serve([str(minilm_path), "--quantization", "int8"]) as server:
        answer = httpx.post(f"{server.url}/v1/embeddings", json={"input": QUERIES[0]})
        assert answer.status_code == 200
        assert len(answer.json()["data"][0]["embedding"]) == 384
        assert "int8 matmuls: cosine to the float model on" in server.log


@pytest.fixture(params=["native", "torch"])
def rows_path(request, monkeypatch):
    """Run each per-row test on the C kernel and on torch's fallback ops."""
    from cenote.models import quantization

    if request.param == "native":
        if quantization.int8_rows() is None:
            pytest.skip("native int8 rows kernel unavailable (no C compiler?)")
    else:
        monkeypatch.setattr(quantization, "int8_rows", lambda: None)
    return request.param


def _tokens_with_an_outlier(rows: int = 9, width: int = 64) -> torch.Tensor:
    x = torch.randn(rows, width, generator=torch.Generator().manual_seed(0))
    x[3] *= 1000.0  # one token far larger than the rest, as transformers have
    x[5] = 0.25  # a constant row
    return x


def test_each_token_is_quantized_against_its_own_range(rows_path):
    from cenote.models.quantization import dequantize_rows, quantize_rows

    x = _tokens_with_an_outlier()
    smooth = torch.rand(x.shape[1], generator=torch.Generator().manual_seed(1)) + 0.5
    q, scale, low = quantize_rows(x, smooth)
    assert q.dtype == torch.uint8 and q.shape == x.shape
    y = x * smooth
    rebuilt = scale[:, None] * q.float() + low[:, None]
    # every row within half a step of its own scale, the small rows as well as the outlier
    assert ((rebuilt - y).abs() <= scale[:, None] * 0.5 + 1e-6 * y.abs()).all()
    sums = torch.randn(x.shape[0], 8)
    weight_sums, bias, residual = torch.randn(8), torch.randn(8), torch.randn(x.shape[0], 8)
    expected = scale[:, None] * sums + low[:, None] * weight_sums + bias + residual
    out = dequantize_rows(sums.clone(), scale, low, weight_sums, bias, residual)
    torch.testing.assert_close(out, expected)
    q, scale, low = quantize_rows(x[5:6], torch.ones(x.shape[1]))  # a constant row: exact
    assert torch.equal(scale * q.float() + low, x[5:6])


def test_an_int8_matmul_is_close_to_float_for_every_token(rows_path):
    from cenote.models.quantization import quantize_linear

    x = _tokens_with_an_outlier(width=96)
    generator = torch.Generator().manual_seed(2)
    weight, bias = torch.randn(48, 96, generator=generator), torch.randn(48, generator=generator)
    observed = x.abs().amax(dim=0)
    layer = quantize_linear(weight, bias, observed)
    residual = torch.randn(x.shape[0], 48, generator=generator)
    for out, expected in ((layer(x), F.linear(x, weight, bias)),
                          (layer(x, residual), F.linear(x, weight, bias) + residual)):
        error = (out - expected).norm(dim=1) / expected.norm(dim=1)
        assert error.max() < 0.06, error  # one scale for all rows: the small ones > 100 %


def test_the_weight_range_leaves_no_saturated_sums():
    from cenote.models.quantization import quantize_linear, weight_range

    assert weight_range() in (63, 127)
    # Every input at its top code and every weight at the top of its range: the largest
    # pair sums there are. Smoothing off, no bias; the product must still be exact.
    layer = quantize_linear(torch.ones(16, 256), None, None)
    x = torch.cat([torch.zeros(2, 256), torch.ones(2, 256)])  # rows run 0 .. 1: codes 0, 255
    torch.testing.assert_close(layer(x), F.linear(x, torch.ones(16, 256)))


@pytest.mark.parametrize("activation", ["gelu", "gelu_tanh", "relu", "silu"])
def test_the_activation_applied_after_dequantizing_is_the_models(rows_path, activation):
    from cenote.models.linear import ACTIVATION_FUNCTIONS
    from cenote.models.quantization import dequantize_rows

    generator = torch.Generator().manual_seed(3)
    sums = torch.randn(37, 96, generator=generator) * 4  # values out to +-12 and beyond
    scale, low = torch.rand(37, generator=generator), torch.randn(37, generator=generator)
    weight_sums, bias = torch.randn(96, generator=generator), torch.randn(96, generator=generator)
    plain = scale[:, None] * sums + low[:, None] * weight_sums + bias
    out = dequantize_rows(sums.clone(), scale, low, weight_sums, bias, activation=activation)
    torch.testing.assert_close(out, ACTIVATION_FUNCTIONS[activation](plain), atol=2e-6,
                               rtol=2e-6)


def test_a_cross_encoder_scores_in_int8_close_to_float(cross_encoder_path):
    floats = [o.outputs.score for o in
              LLM(str(cross_encoder_path), dtype="float32").score(QUERIES[0], PASSAGES)]
    llm = LLM(str(cross_encoder_path), quantization="int8")
    ints = [o.outputs.score for o in llm.score(QUERIES[0], PASSAGES)]
    # one logit: its cosine is only its sign, so the load reports the largest difference
    accuracy = llm.engine.int8_accuracy
    assert accuracy.pooling_task == "classify" and 0 < accuracy.max_abs_diff < 0.05
    assert max(abs(a - b) for a, b in zip(floats, ints, strict=True)) < 0.05 and floats != ints


def test_a_decoder_embeds_in_int8_close_to_float(tiny_decoder):
    folder = str(tiny_decoder("qwen3", "Qwen3Model"))
    texts = QUERIES + PASSAGES
    floats = torch.stack([o.outputs.data for o in
                          LLM(folder, dtype="float32", task="embed").embed(texts)])
    llm = LLM(folder, quantization="int8", task="embed")
    ints = torch.stack([o.outputs.data for o in llm.embed(texts)])
    assert all(m.int8 is not None for m in llm.engine.runner.model.modules()
               if isinstance(m, Linear))
    assert F.cosine_similarity(floats, ints).min() > 0.99 and not torch.equal(floats, ints)


@pytest.mark.parametrize("activation", ["gelu", "relu", "silu", None])
def test_requantizing_is_dequantizing_then_quantizing(rows_path, activation):
    from cenote.models.quantization import dequantize_rows, quantize_rows, requantize_rows

    generator = torch.Generator().manual_seed(4)
    sums = torch.randn(23, 160, generator=generator) * 3
    scale, low = torch.rand(23, generator=generator), torch.randn(23, generator=generator)
    weight_sums = torch.randn(160, generator=generator)
    bias = torch.randn(160, generator=generator)
    smooth = torch.rand(160, generator=generator) + 0.5
    q, scale_out, low_out = requantize_rows(sums.clone(), scale, low, weight_sums, bias,
                                            activation, smooth)
    activated = dequantize_rows(sums.clone(), scale, low, weight_sums, bias,
                                activation=activation)
    expected_q, expected_scale, expected_low = quantize_rows(activated, smooth)
    assert (q.int() - expected_q.int()).abs().max() <= 1  # a rounding apart at most
    torch.testing.assert_close(scale_out, expected_scale)
    torch.testing.assert_close(low_out, expected_low)


def test_a_feed_forward_block_in_int8_is_its_two_matmuls(rows_path):
    from cenote.models.quantization import quantize_linear

    generator = torch.Generator().manual_seed(5)
    x = _tokens_with_an_outlier(width=64)
    first = quantize_linear(torch.randn(256, 64, generator=generator),
                            torch.randn(256, generator=generator), x.abs().amax(dim=0))
    hidden = F.gelu(F.linear(x, torch.randn(256, 64)))
    second = quantize_linear(torch.randn(64, 256, generator=generator),
                             torch.randn(64, generator=generator), hidden.abs().amax(dim=0))
    residual = torch.randn(x.shape[0], 64, generator=generator)
    fused = first.feed_forward(x, "gelu", second, residual)
    apart = second(first(x, activation="gelu"), residual)
    torch.testing.assert_close(fused, apart, atol=1e-2 * apart.abs().max().item(), rtol=0)


def test_bf16_rows_are_quantized_as_their_fp32_values(rows_path):
    from cenote.models.quantization import quantize_rows

    x = _tokens_with_an_outlier(width=96).bfloat16()
    smooth = torch.rand(96, generator=torch.Generator().manual_seed(6)) + 0.5
    for got, expected in zip(quantize_rows(x, smooth), quantize_rows(x.float(), smooth),
                             strict=True):
        assert torch.equal(got, expected)


@pytest.mark.parametrize("activation", ["gelu", None])
def test_dequantizing_to_bf16_is_the_fp32_result_rounded(rows_path, activation):
    from cenote.models.quantization import dequantize_rows

    generator = torch.Generator().manual_seed(7)
    sums = torch.randn(29, 160, generator=generator) * 3
    scale, low = torch.rand(29, generator=generator), torch.randn(29, generator=generator)
    weight_sums, bias = torch.randn(160, generator=generator), torch.randn(160, generator=generator)
    fp32 = dequantize_rows(sums.clone(), scale, low, weight_sums, bias, activation=activation)
    bf16 = dequantize_rows(sums.clone(), scale, low, weight_sums, bias, activation=activation,
                           out_dtype=torch.bfloat16)
    assert bf16.dtype == torch.bfloat16 and torch.equal(bf16, fp32.bfloat16())


def test_q_k_v_reach_attention_in_its_dtype_and_the_rest_stays_fp32(int8_llm):
    from cenote.machine import cpu_has_native_bf16
    from cenote.models.quantization import attention_dtype

    expected = torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    assert attention_dtype() == expected
    layer = int8_llm.engine.runner.model.layers[0]
    assert layer.qkv.int8.out_dtype == expected
    assert layer.attn_out.int8.out_dtype == layer.ffn_in.int8.out_dtype == torch.float32
    x = torch.randn(5, layer.qkv.in_features)
    assert layer.qkv(x).dtype == expected
    # with a residual to add, the output is the residual stream's: fp32
    assert layer.qkv.int8(x, torch.zeros(5, layer.qkv.out_features)).dtype == torch.float32


def test_int8_batches_are_bucketed_and_filler_rows_change_nothing(int8_llm):
    # oneDNN's int8 matmul caches a kernel per row count, as its float one does: a
    # server's varied batches must come in few row counts
    runner = int8_llm.engine.runner
    assert runner.bucket_rows
    texts = QUERIES + PASSAGES
    bucketed = torch.tensor([o.outputs.embedding for o in int8_llm.embed(texts, use_tqdm=False)])
    runner.bucket_rows = False
    try:
        exact = torch.tensor([o.outputs.embedding for o in int8_llm.embed(texts, use_tqdm=False)])
    finally:
        runner.bucket_rows = True
    # each row is quantized against its own range: filler rows touch no other row
    assert F.cosine_similarity(bucketed, exact).min() > 0.99999
