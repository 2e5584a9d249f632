"""The container and Kubernetes files: the Dockerfile runs ``cenote serve`` as a non-root
user with a health check, the manifests parse and agree with it (probes on /health,
a drain longer than the request timeout, options ``cenote serve`` accepts). Where a
container engine runs, the image is built and served (``deploy/check-image.sh``)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from cenote.cli import build_parser, dashed_options

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = (ROOT / "Dockerfile").read_text()
MANIFESTS = list(yaml.safe_load_all((ROOT / "deploy/kubernetes/cenote.yaml").read_text()))


def instructions(name: str) -> list[str]:
    """The arguments of every ``name`` instruction (continuation lines joined)."""
    text = DOCKERFILE.replace("\\\n", " ")
    return [m.group(1).strip() for m in re.finditer(rf"^{name}\s+(.*)$", text, re.MULTILINE)]


def entrypoint() -> list[str]:
    (line,) = instructions("ENTRYPOINT")
    return yaml.safe_load(line)  # exec form: a JSON array


def test_the_image_serves_as_a_non_root_user_with_a_health_check():
    assert instructions("FROM")[0].startswith("python:3.11")
    assert instructions("USER") == ["cenote"]
    (check,) = instructions("HEALTHCHECK")
    assert "http://127.0.0.1:8000/health" in check
    assert entrypoint()[:2] == ["cenote", "serve"]
    assert "8000" in instructions("EXPOSE")
    # The CPU torch build, pinned as the project pins it.
    pin = re.search(r'"torch==([^"]+)"', (ROOT / "pyproject.toml").read_text()).group(1)
    assert any("download.pytorch.org/whl/cpu" in run and f"torch=={pin}" in run
               for run in instructions("RUN"))
    build_parser().parse_args(dashed_options(entrypoint()[1:]))  # options cenote takes


def by_kind(kind: str) -> dict:
    (manifest,) = [m for m in MANIFESTS if m["kind"] == kind]
    return manifest


def test_the_kubernetes_manifests_probe_health_drain_and_scale():
    deployment = by_kind("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    # The container's args are cenote serve options, after the image's entry point.
    args = build_parser().parse_args(dashed_options([*entrypoint()[1:], *container["args"]]))
    port = container["ports"][0]["containerPort"]
    assert port == args.port == 8000
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["path"] == "/health"
    requests = container["resources"]["requests"]
    assert int(requests["cpu"]) == args.threads  # threads match the cores it asks for
    pause = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] > args.request_timeout + pause
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"] == labels
    assert by_kind("Service")["spec"]["selector"] == labels
    hpa = by_kind("HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert hpa["spec"]["minReplicas"] <= deployment["spec"]["replicas"] <= \
        hpa["spec"]["maxReplicas"]


def _container_engine() -> str | None:
    for engine in ("docker", "podman"):
        if not shutil.which(engine):
            continue
        try:
            if subprocess.run([engine, "info"], capture_output=True, timeout=30).returncode == 0:
                return engine
        except subprocess.TimeoutExpired:  # a daemon that does not answer
            continue
    return None


def test_the_image_builds_serves_and_stops_on_sigterm():
    engine = _container_engine()
    if engine is None:
        pytest.skip("no running container engine (docker or podman) on this machine")
    result = subprocess.run([str(ROOT / "deploy/check-image.sh"), engine],
                            capture_output=True, text=True, timeout=3000)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "embedding ok: 384 dims" in result.stdout
    assert "exit code after SIGTERM: 0" in result.stdout, result.stdout
