"""The packed ``Linear``: same results as the plain layer, the plain weight freed."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cenote.models.linear import Linear, can_pack, pack_linears

needs_packing = pytest.mark.skipif(
    not can_pack(torch.empty(1, dtype=torch.bfloat16)),
    reason="oneDNN bf16 packing is not available on this CPU")

REFERENCE = {
    None: lambda x: x,
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
}


def layer_pair(in_features: int, out_features: int, bias: bool = True) -> tuple[Linear, Linear]:
    torch.manual_seed(0)
    plain = Linear(in_features, out_features, bias=bias).to(torch.bfloat16).eval()
    packed = copy.deepcopy(plain)
    packed.pack()
    return plain, packed


def fp32_reference(layer: Linear, x: torch.Tensor) -> torch.Tensor:
    bias = None if layer.bias is None else layer.bias.float()
    return F.linear(x.float(), layer.weight.float(), bias)


@needs_packing
@pytest.mark.parametrize("activation", list(REFERENCE))
@pytest.mark.parametrize("num_tokens", [1, 7, 300])
def test_packed_matches_plain_and_fp32(activation, num_tokens):
    plain, packed = layer_pair(96, 160)
    x = torch.randn(num_tokens, 96).to(torch.bfloat16)
    with torch.inference_mode():
        expected = REFERENCE[activation](fp32_reference(plain, x))
        got = packed(x, activation)
        plain_out = plain(x, activation)
    assert got.shape == (num_tokens, 160) and got.dtype == torch.bfloat16
    # Both are the same bf16 matmul; they may differ by a rounding step of bf16.
    torch.testing.assert_close(got.float(), expected, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(got, plain_out, rtol=2e-2, atol=2e-2)


@needs_packing
@pytest.mark.parametrize("bias", [True, False])
def test_packed_add_fuses_the_residual(bias):
    plain, packed = layer_pair(64, 48, bias=bias)
    x = torch.randn(33, 64).to(torch.bfloat16)
    residual = torch.randn(33, 48).to(torch.bfloat16)
    with torch.inference_mode():
        expected = fp32_reference(plain, x) + residual.float()
        got = packed.add(x, residual)
    torch.testing.assert_close(got.float(), expected, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(got, plain.add(x, residual), rtol=2e-2, atol=2e-2)


@needs_packing
def test_packing_frees_the_plain_weight_and_only_packs_what_it_can():
    model = nn.Sequential(Linear(8, 8), nn.Linear(8, 8), Linear(8, 4)).to(torch.bfloat16)
    assert pack_linears(model) == 2
    assert model[0].weight is None and model[0].packed is not None
    assert model[1].weight is not None  # a plain nn.Linear is left alone
    assert pack_linears(nn.Sequential(Linear(8, 8))) == 1  # fp32 packs too
    fp64 = nn.Sequential(Linear(8, 8)).to(torch.float64)
    assert pack_linears(fp64) == 0 and fp64[0].packed is None


@pytest.mark.skipif(not can_pack(torch.empty(1)), reason="no oneDNN on this CPU")
@pytest.mark.parametrize("activation", list(REFERENCE))
def test_packed_fp32_matches_plain(activation):
    torch.manual_seed(0)
    plain = Linear(96, 160).eval()
    packed = copy.deepcopy(plain)
    packed.pack()
    x, residual = torch.randn(37, 96), torch.randn(37, 160)
    with torch.inference_mode():
        expected = REFERENCE[activation](fp32_reference(plain, x))
        torch.testing.assert_close(packed(x, activation), expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(packed.add(x, residual), plain.add(x, residual),
                                   rtol=1e-5, atol=1e-5)


def test_an_unpacked_layer_is_a_plain_linear():
    torch.manual_seed(0)
    layer = Linear(16, 8)
    x = torch.randn(5, 16)
    torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias))
    torch.testing.assert_close(layer(x, "gelu"), F.gelu(F.linear(x, layer.weight, layer.bias)))
    torch.testing.assert_close(layer.add(x, x[:, :8]), x[:, :8] + layer(x))


def test_bucket_rows_rounds_up_to_few_shapes():
    from cenote.models.batch import bucket_rows

    assert [bucket_rows(n) for n in (1, 16, 17, 100, 512, 513, 8000)] == \
        [16, 16, 32, 112, 512, 544, 8192]
    for n in range(1, 9000):
        assert n <= bucket_rows(n) <= max(n + 15, int(n * 1.07))
    assert len({bucket_rows(n) for n in range(1, 8193)}) < 200


def test_filler_rows_stay_out_of_the_tokens():
    from cenote.models.batch import PackedBatch

    for lens in ([3, 5, 2], [4, 4]):  # padded and unpadded attention layouts
        ids = [[i + 1] * n for i, n in enumerate(lens)]
        batch = PackedBatch.build(ids, bucket=True)
        tokens = sum(lens)
        assert (batch.num_tokens, batch.num_rows) == (tokens, 16)
        assert batch.input_ids.shape == batch.positions.shape == (16,)
        assert batch.input_ids[:tokens].tolist() == [t for seq in ids for t in seq]
        x = torch.randn(16, 4)
        x[tokens:] = float("nan")  # filler must never be read as a token
        back = batch.from_padded(batch.to_padded(x))
        assert back.shape == (16, 4)
        torch.testing.assert_close(back[:tokens], x[:tokens])
        assert torch.isfinite(back).all()


@needs_packing
def test_bucketed_rows_give_the_same_embeddings(minilm_path):
    from cenote import LLM

    llm = LLM(str(minilm_path), dtype="bfloat16")
    runner = llm.engine.runner
    assert runner.bucket_rows
    texts = ["a", "Seventeen tokens or so in this sentence, give or take a few words here.",
             "Short one.", "Another, slightly longer, sentence about rivers and caves."]
    bucketed = torch.tensor([o.outputs.embedding for o in llm.embed(texts, use_tqdm=False)])
    runner.bucket_rows = False
    exact = torch.tensor([o.outputs.embedding for o in llm.embed(texts, use_tqdm=False)])
    assert F.cosine_similarity(bucketed, exact).min() > 0.9999
