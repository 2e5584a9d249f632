"""What ``peers.py`` benchmarks: the peer venvs, the systems (table rows) and the local exports.

Kept apart from ``peers.py`` (which installs, exports and runs them) so that adding
a peer is a change to these declarations only, plus its loader in ``peer_worker.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
PEERS_DIR = HERE / ".peers"
MODELS_DIR = PEERS_DIR / "models"
ONNX_MODEL = MODELS_DIR / "all-MiniLM-L6-v2-onnx"
ONNX_FLAT_MODEL = MODELS_DIR / "all-MiniLM-L6-v2-onnx-flat"
OPENVINO_MODEL = MODELS_DIR / "all-MiniLM-L6-v2-openvino"
OPENVINO_FP32 = "openvino/openvino_model.xml"
# The name export_static_quantized_openvino_model gives its output (file_suffix default).
OPENVINO_INT8 = "openvino/openvino_model_qint8_quantized.xml"
TORCH_PIN = "torch==2.13.0"
REFERENCE = "sentence-transformers fp32"
ST_BF16 = "sentence-transformers bf16"
PROJECT_ENV = "project"


@dataclass(frozen=True)
class Environment:
    """A venv under ``benchmarks/.peers/`` with one peer's pinned packages."""

    name: str
    requirements: tuple[str, ...]
    needs_torch: bool
    # Packages pip pulls in that break the venv and that the peer never imports.
    remove: tuple[str, ...] = ()

    @property
    def path(self) -> Path:
        return PEERS_DIR / self.name

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"


ENVIRONMENTS = {env.name: env for env in (
    # sentence-transformers 6.x's onnx extra cannot resolve: it needs transformers>=5,
    # optimum-onnx (<=0.1.0) needs transformers<4.58. 5.7.0 is the newest that installs.
    Environment("st-onnx", ("sentence-transformers[onnx]==5.7.0",), needs_torch=True),
    # 6.3.0's openvino extra resolves (optimum-intel 2.2, openvino 2026.4, nncf 3.4,
    # transformers 5.5). The static quantiser also needs datasets, which the extra lacks;
    # unpinned, datasets 5.2 makes pip fall back to optimum-intel 2.0 and transformers 5.0,
    # so optimum-intel is pinned and datasets is the newest that fits beside it.
    # optimum-intel requires torchvision, and PyPI's is built for CUDA torch: its ops fail
    # to load beside the CPU torch, and then transformers cannot import AutoProcessor, which
    # optimum-intel's quantiser does. Only vision models use torchvision: it is removed.
    Environment("st-openvino", ("sentence-transformers[openvino]==6.3.0", "optimum-intel==2.2.0",
                                "datasets==5.0.1"), needs_torch=True, remove=("torchvision",)),
    Environment("fastembed", ("fastembed==0.9.1",), needs_torch=False),
    # Infinity's optimum extra resolves to optimum 2.x + optimum-onnx; optimum 1.x
    # (whose ORT optimiser Infinity was written for) does not import with torch 2.13.
    Environment("infinity", ("infinity-emb[torch,optimum]==0.0.78",), needs_torch=True),
)}

# Model kind -> the local export that makes it (a key of the install errors), when any.
EXPORTS = {"onnx": "onnx-export", "onnx-flat": "onnx-export", "openvino": "openvino-export"}


@dataclass(frozen=True)
class System:
    """One row of the table: a ``peer_worker.py`` system, its environment and model."""

    label: str
    worker: str
    environment: str
    # "bundled", "onnx" (ST folder with onnx/), "onnx-flat" (model.onnx at root)
    # or "openvino" (ST folder with openvino/)
    model: str
    options: dict = field(default_factory=dict)


SYSTEMS = (
    System(REFERENCE, "sentence-transformers", PROJECT_ENV, "bundled", {"dtype": "float32"}),
    System(ST_BF16, "sentence-transformers", PROJECT_ENV, "bundled", {"dtype": "bfloat16"}),
    System("cenote", "cenote", PROJECT_ENV, "bundled"),
    System("cenote int8", "cenote", PROJECT_ENV, "bundled", {"quantization": "int8"}),
    System("sentence-transformers ONNX fp32", "sentence-transformers-onnx", "st-onnx", "onnx",
           {"file_name": "onnx/model.onnx"}),
    System("sentence-transformers ONNX int8", "sentence-transformers-onnx", "st-onnx", "onnx",
           {"file_name": "onnx/model_qint8_avx512_vnni.onnx"}),
    System("sentence-transformers OpenVINO fp32", "sentence-transformers-openvino",
           "st-openvino", "openvino", {"file_name": OPENVINO_FP32}),
    System("sentence-transformers OpenVINO int8 (static)", "sentence-transformers-openvino",
           "st-openvino", "openvino", {"file_name": OPENVINO_INT8}),
    System("fastembed", "fastembed", "fastembed", "onnx-flat"),
    System("Infinity (torch)", "infinity", "infinity", "bundled", {"engine": "torch"}),
    System("Infinity (optimum ONNX)", "infinity", "infinity", "onnx-flat",
           {"engine": "optimum"}),
)
