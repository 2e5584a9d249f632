"""token_classify as vLLM 0.34 answers it: BGE-M3's lexical weights one float per
token (a flat vector), its BOS and EOS rows left out as vLLM's ``BOSEOSFilter`` does.
The reference is the stand-in's own weights run through transformers."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from cenote import LLM

TEXT = "The capital of France is Paris."


@pytest.fixture(scope="module")
def bge_m3_with_bounds(bge_m3_path, tmp_path_factory):
    """The BGE-M3 stand-in with BOS/EOS ids in its config ([CLS] and [SEP], as
    XLM-RoBERTa's <s> and </s> are in the real one's)."""
    folder = tmp_path_factory.mktemp("bge-m3-bounds") / "m3"
    shutil.copytree(bge_m3_path, folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(bos_token_id=101, eos_token_id=102)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def lexical_reference(path, text: str) -> tuple[list[int], torch.Tensor]:
    from transformers import AutoModel, AutoTokenizer

    tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path)
    sparse = torch.load(path / "sparse_linear.pt")
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        hidden = model(input_ids=ids).last_hidden_state[0]
    return ids[0].tolist(), torch.relu(hidden @ sparse["weight"].T + sparse["bias"]).squeeze(-1)


def test_bge_m3_token_classify_is_one_weight_per_token_without_bos_and_eos(bge_m3_with_bounds):
    ids, weights = lexical_reference(bge_m3_with_bounds, TEXT)
    assert ids[0] == 101 and ids[-1] == 102
    llm = LLM(str(bge_m3_with_bounds), dtype="float32")
    (out,) = llm.encode(TEXT, pooling_task="token_classify")
    assert out.prompt_token_ids == ids
    assert out.outputs.data.shape == (len(ids) - 2,)  # flat, [CLS] and [SEP] dropped
    assert torch.allclose(out.outputs.data, weights[1:-1], atol=1e-5)
    # A token-id prompt that does not start with BOS keeps its first row.
    (cut,) = llm.encode({"prompt_token_ids": ids[1:]}, pooling_task="token_classify")
    assert cut.outputs.data.shape == (len(ids) - 2,)
