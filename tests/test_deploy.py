"""The container and Kubernetes files: the Dockerfile runs ``cenote serve`` as a non-root
user with a health check, torch's source a build argument; the manifests are valid for
Kubernetes 1.28 and the newest schema kubernetes-validate knows, hardened, and agree
with the image (liveness on /ping, readiness on /health, a drain longer than the request
timeout, options ``cenote serve`` accepts, every written path a volume). Where a
container engine runs, the image is built, served and drained
(``deploy/check-image.sh``)."""

from __future__ import annotations

import os
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
    build_parser().parse_args(dashed_options(entrypoint()[1:]))  # options cenote takes


def build_args() -> dict[str, str]:
    return dict(arg.split("=", 1) for arg in instructions("ARG"))


def test_torchs_source_is_a_build_argument_the_cpu_index_by_default():
    # The CPU torch build, pinned as the project pins it.
    pin = re.search(r'"torch==([^"]+)"', (ROOT / "pyproject.toml").read_text()).group(1)
    args = build_args()
    assert args["TORCH_VERSION"] == pin
    assert args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    # A folder of the build context, used when it holds the wheel; the default one is
    # in the repository (so COPY finds it), its wheels are not (check-image.sh fills it).
    assert (ROOT / args["TORCH_WHEELS"]).is_dir()
    assert f"{args['TORCH_WHEELS']}/*.whl" in (ROOT / ".gitignore").read_text().split()
    assert "${TORCH_WHEELS} /tmp/torch-wheels/" in instructions("COPY")
    (install,) = [run for run in instructions("RUN") if "torch==${TORCH_VERSION}" in run]
    assert '--index-url "${TORCH_INDEX_URL}"' in install
    assert "--find-links /tmp/torch-wheels" in install


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
    # Liveness on /ping, which stays 200 while the server drains; readiness on /health.
    assert container["livenessProbe"]["httpGet"]["path"] == "/ping"
    for probe in ("readinessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["path"] == "/health"
    requests = container["resources"]["requests"]
    assert int(requests["cpu"]) == args.threads  # threads match the cores it asks for
    # An exec of sleep (Kubernetes 1.28 has no preStop.sleep).
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    assert pod["terminationGracePeriodSeconds"] > args.request_timeout + int(command[1])
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"] == labels
    assert by_kind("Service")["spec"]["selector"] == labels
    hpa = by_kind("HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert hpa["spec"]["minReplicas"] <= deployment["spec"]["replicas"] <= \
        hpa["spec"]["maxReplicas"]


def test_the_pod_runs_unprivileged_on_a_read_only_root_with_its_caches_mounted():
    pod = by_kind("Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert security["readOnlyRootFilesystem"] is True
    # Every place the image writes is a volume: the hub cache, the kernels' cache, /tmp.
    env = dict(re.findall(r"(\w+)=(\S+)", " ".join(instructions("ENV"))))
    volumes = {v["name"] for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert set(mounts.values()) <= volumes
    for path in (env["HF_HOME"], env["CENOTE_CACHE_DIR"], "/tmp"):
        assert any(path == mount or path.startswith(mount + "/") for mount in mounts), path
    assert mounts[env["HF_HOME"]] == "models"  # the model cache


def test_the_image_is_pinned_and_the_replicas_spread_and_survive_disruptions():
    from cenote.version import __version__

    deployment = by_kind("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"].rsplit(":", 1)[1] == __version__  # not :latest
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    spread = pod["topologySpreadConstraints"]
    assert {c["topologyKey"] for c in spread} == {"kubernetes.io/hostname",
                                                  "topology.kubernetes.io/zone"}
    assert all(c["labelSelector"]["matchLabels"] == labels for c in spread)
    budget = by_kind("PodDisruptionBudget")
    assert budget["spec"]["selector"]["matchLabels"] == labels
    assert budget["spec"]["maxUnavailable"] < by_kind("HorizontalPodAutoscaler")[
        "spec"]["minReplicas"]


@pytest.mark.parametrize("version", ["1.28", "newest"])
def test_the_manifests_validate_against_the_kubernetes_schema(version):
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    if version == "newest":
        version = kubernetes_validate.latest_version()
    for manifest in MANIFESTS:
        # strict: a field the version does not know (preStop.sleep before 1.29) fails.
        kubernetes_validate.validate(manifest, version, strict=True)


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


@pytest.mark.skipif(os.environ.get("CENOTE_TEST_IMAGE") != "1",
                    reason="builds a 2.2 GB image for minutes: set CENOTE_TEST_IMAGE=1 (and "
                           "put the torch wheel in deploy/wheels where PyTorch's index is "
                           "unreachable), or run deploy/check-image.sh")
def test_the_image_builds_serves_and_stops_on_sigterm():
    engine = _container_engine()
    if engine is None:
        pytest.skip("no running container engine (docker or podman) on this machine")
    result = subprocess.run([str(ROOT / "deploy/check-image.sh"), engine],
                            capture_output=True, text=True, timeout=3000)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "embedding ok: 384 dims" in result.stdout
    assert "while draining: /health 503, /ping 200" in result.stdout, result.stdout
    assert "request in flight at SIGTERM answered: 200" in result.stdout, result.stdout
    assert "exit code after SIGTERM: 0" in result.stdout, result.stdout
