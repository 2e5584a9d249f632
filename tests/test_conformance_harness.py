"""The offline parts of the vLLM conformance harness (``conformance/``, ``make
conformance``): its classification data, stand-in checkpoints, stand-in ``vllm``
package and report. The harness itself downloads vLLM's tests and is not run here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conformance import checkpoints, report, run

REPO = Path(__file__).resolve().parents[1]


def test_every_classification_rule_has_a_known_category_and_a_reason():
    rules = report.load_rules(REPO / "conformance" / "classification.toml")
    assert rules
    for rule in rules:
        assert rule.category in report.CATEGORIES
        assert rule.reason.strip()


def test_a_rule_with_an_unknown_category_is_refused(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[[rule]]\ncategory = "flaky"\nreason = "x"\n')
    with pytest.raises(ValueError, match="unknown category 'flaky'"):
        report.load_rules(path)


def test_a_stand_in_checkpoint_loads_offline_by_its_model_id(tmp_path):
    from huggingface_hub import snapshot_download
    from transformers import AutoConfig

    from cenote import LLM

    hub = tmp_path / "hub"
    stand_in = checkpoints.STAND_INS["sentence-transformers/all-MiniLM-L12-v2"]
    folder = checkpoints.build_stand_in(hub, stand_in)

    found = snapshot_download(stand_in.model_id, cache_dir=hub, local_files_only=True)
    assert Path(found) == folder
    config = AutoConfig.from_pretrained(stand_in.model_id, cache_dir=hub,
                                        local_files_only=True)
    assert config.architectures == ["BertModel"]
    assert json.loads((folder / "1_Pooling" / "config.json").read_text())[
        "pooling_mode_mean_tokens"]
    [output] = LLM(str(folder)).embed(["a stand-in checkpoint"])
    assert len(output.outputs.embedding) == checkpoints.ENCODER["hidden_size"]


def test_stand_in_weights_are_the_same_on_every_build(tmp_path):
    stand_in = checkpoints.STAND_INS["cross-encoder/ms-marco-TinyBERT-L-2-v2"]
    first = checkpoints.build_stand_in(tmp_path / "a", stand_in)
    second = checkpoints.build_stand_in(tmp_path / "b", stand_in)
    assert (first / "model.safetensors").read_bytes() == \
        (second / "model.safetensors").read_bytes()


def test_the_stand_in_vllm_maps_public_names_to_cenote_and_refuses_the_rest():
    script = """
import cenote, vllm
from vllm import LLM, PoolingParams
from vllm.config import PoolerConfig
from vllm.entrypoints.pooling.embed.protocol import EmbeddingResponse
from vllm.entrypoints.pooling.embed.io_processor import EmbedIOProcessor
from vllm.pooling_params import LateChunkingParams
from vllm.entrypoints.pooling.token_embed.protocol import TokenEmbeddingResponse
from vllm import _standin
from vllm._standin import MissingInCenote, VllmInternalError
import cenote.server.protocol as protocol
assert LLM is cenote.LLM and PoolingParams is cenote.PoolingParams
assert PoolerConfig is cenote.PoolerConfig
assert EmbeddingResponse is protocol.EmbeddingResponse
assert LateChunkingParams is cenote.LateChunkingParams
assert TokenEmbeddingResponse is protocol.TokenEmbeddingResponse
try:
    EmbedIOProcessor()
except VllmInternalError:
    pass
else:
    raise AssertionError("EmbedIOProcessor")
# A public name listed as missing (and its attributes) is a gap, not an internal.
_standin.PUBLIC_NAMES = frozenset({"vllm.outputs.Missing"})
assert isinstance(_standin._refuse("vllm.outputs.Missing.model_validate"), MissingInCenote)
print("ok")
"""
    env = dict(os.environ, PYTHONPATH=str(REPO / "conformance" / "vllm_standin"))
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.stdout.strip() == "ok", done.stderr


def test_a_tarball_with_the_wrong_hash_is_refused(tmp_path):
    (tmp_path / f"vllm-{run.VLLM_VERSION}.tar.gz").write_bytes(b"not vllm")
    with pytest.raises(SystemExit, match="sha256"):
        run.fetch_sdist(tmp_path)


JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest">
<testcase classname="tests.entrypoints.pooling.embed.test_x" name="test_ok" />
<testcase classname="tests.entrypoints.pooling.embed.test_x" name="test_internal">
  <failure message="x">E   vllm._standin.VllmInternalError: vLLM internal vllm.a.B</failure>
</testcase>
<testcase classname="tests.entrypoints.pooling.embed.test_x" name="test_new[1]">
  <failure message="x">E   assert 400 == 200</failure>
</testcase>
<testcase classname="tests.entrypoints.pooling.embed.test_x" name="test_gpu">
  <skipped message="needs a GPU" />
</testcase>
</testsuite></testsuites>
"""


def test_the_report_classifies_each_failure_and_counts_the_rest(tmp_path):
    test_file = "tests/entrypoints/pooling/embed/test_x.py"
    results = tmp_path / "results"
    results.mkdir()
    (results / "entrypoints__pooling__embed__test_x.xml").write_text(JUNIT)
    (results / "entrypoints__pooling__embed__test_x.json").write_text(
        json.dumps({"file": test_file, "rc": 1, "timed_out": False, "seconds": 1.0}))
    out = tmp_path / "conformance.md"

    summary = report.write_report([test_file, "tests/test_not_run.py"], results,
                                  REPO / "conformance" / "classification.toml", out, "0.34.0")

    text = out.read_text()
    assert summary.startswith("4 tests in 1 files: 1 passed, 2 did not pass")
    assert f"| `{test_file}` | 4 | 1 | 2 | 1 | 1 | 0 | 1 |" in text
    assert "test_internal` — not portable: unit-tests vLLM internals" in text
    assert "test_x.py::test_new[1]` — gap (unclassified) — `assert 400 == 200`" in text
    assert "| `tests/test_not_run.py` | not run |" in text
