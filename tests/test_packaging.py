"""The package's runtime dependencies are complete: installed without extras into a
fresh virtual environment (no site packages), it serves and runs batches.

``make install`` installs the test extras too, so only a clean environment shows a
module that the runtime imports but no runtime dependency brings (httpx, once).
The install reads ``[project] dependencies`` from pyproject.toml and takes about a
minute (torch is the bulk; ``--no-compile`` skips writing its bytecode).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.serving import cenote_serve

ROOT = Path(__file__).resolve().parent.parent
INSTALL_TIMEOUT_S = 900


def runtime_dependencies() -> list[str]:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]["dependencies"]


def clean_env() -> dict[str, str]:
    """This environment without what would let the new one see the project's .venv."""
    return {k: v for k, v in os.environ.items()
            if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "PYTHONSTARTUP")}


def run(command: list, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in command], capture_output=True, text=True,
                            env=clean_env(), **kwargs)
    assert result.returncode == 0, f"{command} failed:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def bare_venv(tmp_path_factory) -> Path:
    """A virtual environment with cenote and exactly its runtime dependencies."""
    venv = tmp_path_factory.mktemp("bare") / "venv"
    run([sys.executable, "-m", "venv", venv])
    pip = [venv / "bin" / "python", "-m", "pip", "install", "--quiet", "--no-compile"]
    run([*pip, *runtime_dependencies()], timeout=INSTALL_TIMEOUT_S)
    run([*pip, "--no-deps", "-e", ROOT], timeout=INSTALL_TIMEOUT_S)
    return venv


def test_the_bare_environment_has_no_test_extras(bare_venv):
    probe = "import importlib.util as u; print(u.find_spec('pytest') is None)"
    assert run([bare_venv / "bin" / "python", "-c", probe]).stdout.strip() == "True"
    run([bare_venv / "bin" / "python", "-m", "pip", "check"])


def test_cenote_serve_starts_and_embeds_from_the_runtime_dependencies_alone(bare_venv):
    with cenote_serve([], command=[str(bare_venv / "bin" / "cenote")]) as server:
        response = httpx.post(f"{server.url}/v1/embeddings", json={"input": "a bare install"},
                              timeout=60)
        assert response.status_code == 200, response.text
        assert len(response.json()["data"][0]["embedding"]) == 384


def test_cenote_run_batch_runs_from_the_runtime_dependencies_alone(bare_venv, tmp_path):
    source, target = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_text(json.dumps({"custom_id": "one", "method": "POST", "url": "/v1/embeddings",
                                  "body": {"input": "a bare install"}}) + "\n")
    run([bare_venv / "bin" / "cenote", "run-batch", "-i", source, "-o", target],
        timeout=300, cwd=tmp_path)
    (line,) = [json.loads(text) for text in target.read_text().splitlines()]
    assert line["custom_id"] == "one"
    assert line["response"]["status_code"] == 200
    assert len(line["response"]["body"]["data"][0]["embedding"]) == 384
