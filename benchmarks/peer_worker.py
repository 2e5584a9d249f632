"""One embedding system, timed in its own process and its own environment.

``benchmarks/peers.py`` runs this file with the Python of the environment that
holds the system (the project venv for cenote and sentence-transformers, a
venv under ``benchmarks/.peers/`` for each peer), so that peers with pins that
conflict with cenote's never share a process or a venv with it. It imports only
the standard library and numpy at the top, because each environment has a
different set of packages.

    python peer_worker.py embed --system fastembed --model DIR --texts texts.json --out DIR
    python peer_worker.py export-onnx --model DIR --out DIR
    python peer_worker.py export-openvino --model DIR --out DIR --calibration texts.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path

import numpy as np

Encoder = Callable[[Sequence[str]], np.ndarray]

# Warm-up size: enough batches that lazy initialisation, allocator growth and
# thread-pool start-up are paid before timing, as in offline_embed.py.
WARMUP_TEXTS = 256


def _versions(*packages: str) -> dict[str, str]:
    """Installed versions of ``packages`` (those present), for the report."""
    found = {}
    for name in packages:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def _cenote(model: str, options: dict) -> tuple[Encoder, dict]:
    from cenote import LLM

    llm = LLM(model, **options)
    note = "dtype " + str(llm.config.dtype).removeprefix("torch.")
    if llm.engine.int8_accuracy is not None:
        accuracy = llm.engine.int8_accuracy
        note = (f"int8 matmuls; at load, cosine to float min {accuracy.min_cosine:.4f}, "
                f"mean {accuracy.mean_cosine:.4f}")

    def encode(texts: Sequence[str]) -> np.ndarray:
        outs = llm.embed(list(texts), use_tqdm=False)
        return np.asarray([o.outputs.embedding for o in outs], dtype=np.float32)

    return encode, {"note": note, "versions": _versions("cenote", "torch")}


def _sentence_transformers(model: str, options: dict) -> tuple[Encoder, dict]:
    import torch
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(model, device="cpu")
    if options.get("dtype") == "bfloat16":
        st = st.to(torch.bfloat16)

    def encode(texts: Sequence[str]) -> np.ndarray:
        vecs = st.encode(list(texts), convert_to_tensor=True)
        return vecs.float().numpy()

    return encode, {"note": f"{options.get('dtype', 'float32')}, batch size 32 (default)",
                    "versions": _versions("sentence-transformers", "transformers", "torch")}


def _sentence_transformers_backend(model: str, options: dict, backend: str,
                                   packages: tuple[str, ...]) -> tuple[Encoder, dict]:
    """sentence-transformers on ``backend`` ("onnx", "openvino"), loading the exported file
    ``options["file_name"]`` of a local folder: never exporting, which would time the export."""
    from sentence_transformers import SentenceTransformer

    file_name = options["file_name"]
    if not (Path(model) / file_name).is_file():
        raise FileNotFoundError(f"{file_name} missing in {model}: the {backend} export did not run")
    st = SentenceTransformer(model, device="cpu", backend=backend,
                             model_kwargs={"file_name": file_name})

    def encode(texts: Sequence[str]) -> np.ndarray:
        return np.asarray(st.encode(list(texts)), dtype=np.float32)

    return encode, {"note": f"{file_name}, batch size 32 (default)",
                    "versions": _versions("sentence-transformers", *packages)}


def _sentence_transformers_onnx(model: str, options: dict) -> tuple[Encoder, dict]:
    return _sentence_transformers_backend(model, options, "onnx",
                                          ("optimum-onnx", "onnxruntime"))


def _sentence_transformers_openvino(model: str, options: dict) -> tuple[Encoder, dict]:
    return _sentence_transformers_backend(model, options, "openvino",
                                          ("optimum-intel", "openvino", "nncf"))


def _fastembed(model: str, options: dict) -> tuple[Encoder, dict]:
    from fastembed import TextEmbedding

    if not (Path(model) / "model.onnx").is_file():
        raise FileNotFoundError(f"model.onnx missing in {model}: the ONNX export did not run")
    # fastembed's own description of this model (mean pooling, normalised,
    # model.onnx at the folder root), loaded from the local export instead of its hub copy.
    embedder = TextEmbedding("sentence-transformers/all-MiniLM-L6-v2", specific_model_path=model)

    def encode(texts: Sequence[str]) -> np.ndarray:
        return np.stack(list(embedder.embed(list(texts)))).astype(np.float32)

    return encode, {"note": "fastembed's MiniLM config, batch size 256 (default)",
                    "versions": _versions("fastembed", "onnxruntime")}


class _WarningLog(logging.Handler):
    """Keeps the first characters of every warning logged to it."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage()[:160])


def _infinity(model: str, options: dict) -> tuple[Encoder, dict]:
    from infinity_emb import AsyncEmbeddingEngine, EngineArgs

    # Infinity degrades quietly (e.g. when its ONNX graph optimiser fails it logs a
    # warning and runs the unoptimised model): keep its warnings for the report.
    warnings = _WarningLog()
    logging.getLogger("infinity_emb").addHandler(warnings)
    engine_name = options["engine"]
    extra: dict[str, str] = {}
    if engine_name == "optimum":
        # Infinity hands optimum the ONNX file as the path it globbed, which optimum
        # only accepts when it is relative to the model folder: run from inside it.
        os.chdir(model)
        model = "."
        # Its optimum engine reads no pooling config: "auto" means CLS there, which is
        # wrong for MiniLM (mean pooling), so say "mean" as a user of this model must.
        extra["pooling_method"] = "mean"
    engine = AsyncEmbeddingEngine.from_args(
        EngineArgs(model_name_or_path=model, engine=engine_name, device="cpu", **extra))
    # Infinity's engine lives on one event loop for the whole run, as in its server.
    loop = asyncio.new_event_loop()
    loop.run_until_complete(engine.astart())

    def encode(texts: Sequence[str]) -> np.ndarray:
        embeddings, _usage = loop.run_until_complete(engine.embed(sentences=list(texts)))
        return np.asarray(embeddings, dtype=np.float32)

    settings = "".join(f", {k} {v}" for k, v in extra.items())
    warned = "".join(f"; warned: {w}" for w in warnings.messages)
    return encode, {"note": f"engine {engine_name}{settings}, batch size 32 (default){warned}",
                    "versions": _versions("infinity-emb", "optimum", "onnxruntime",
                                          "sentence-transformers", "torch")}


SYSTEMS: dict[str, Callable[[str, dict], tuple[Encoder, dict]]] = {
    "cenote": _cenote,
    "sentence-transformers": _sentence_transformers,
    "sentence-transformers-onnx": _sentence_transformers_onnx,
    "sentence-transformers-openvino": _sentence_transformers_openvino,
    "fastembed": _fastembed,
    "infinity": _infinity,
}


def embed(args: argparse.Namespace) -> None:
    """Load the system, warm it up, time ``repeats`` full passes, save vectors and timings."""
    texts: list[str] = json.loads(Path(args.texts).read_text())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    encode, info = SYSTEMS[args.system](args.model, json.loads(args.options))
    load_seconds = time.perf_counter() - start
    encode(texts[:WARMUP_TEXTS])
    best, vectors = float("inf"), None
    for _ in range(args.repeats):
        start = time.perf_counter()
        vectors = encode(texts)
        best = min(best, time.perf_counter() - start)
    assert vectors is not None and vectors.shape[0] == len(texts), "one vector per text"
    np.save(out / "embeddings.npy", vectors)
    (out / "result.json").write_text(json.dumps(
        {"seconds": best, "load_seconds": load_seconds, "repeats": args.repeats, **info}))
    # Infinity keeps non-daemon worker threads alive; leave without waiting on them.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def export_onnx(args: argparse.Namespace) -> None:
    """Export the model folder to ONNX (fp32 and dynamic int8) with sentence-transformers.

    Writes a Sentence-Transformers folder with ``onnx/model.onnx`` and
    ``onnx/model_qint8_avx512_vnni.onnx`` to ``out``, and to ``out`` + ``-flat``
    the original folder's files (no weights) with ``model.onnx`` at its root, the
    layout fastembed and Infinity's optimum engine expect.
    """
    import shutil

    from sentence_transformers import SentenceTransformer, export_dynamic_quantized_onnx_model

    out = Path(args.out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(args.model, tmp)
    # No onnx/model.onnx in the folder: sentence-transformers exports it from the weights.
    st = SentenceTransformer(str(tmp), device="cpu", backend="onnx")
    st.save_pretrained(str(tmp))
    # avx512_vnni: the int8 kernels sentence-transformers documents for x86 CPUs with VNNI.
    export_dynamic_quantized_onnx_model(st, "avx512_vnni", str(tmp))
    flat = out.with_name(out.name + "-flat")
    flat_tmp = flat.with_name(flat.name + ".tmp")
    shutil.rmtree(flat_tmp, ignore_errors=True)
    # The original tokenizer files, not the ones sentence-transformers re-saved: those
    # gain "max_length": 128 (from tokenizer.json's stored truncation), which fastembed
    # would take as the model's limit and cut 256-token texts to 128.
    shutil.copytree(args.model, flat_tmp, ignore=shutil.ignore_patterns("*.safetensors"))
    shutil.copy2(tmp / "onnx" / "model.onnx", flat_tmp / "model.onnx")
    for final, staged in ((out, tmp), (flat, flat_tmp)):
        shutil.rmtree(final, ignore_errors=True)
        staged.rename(final)


def export_openvino(args: argparse.Namespace) -> None:
    """Export the model folder to OpenVINO IR, fp32 and static int8, with sentence-transformers.

    Writes a Sentence-Transformers folder with ``openvino/openvino_model.xml`` and
    ``openvino/openvino_model_qint8_quantized.xml`` to ``out``. The int8 model is
    sentence-transformers' own ``export_static_quantized_openvino_model`` (NNCF
    post-training quantisation at its default settings); only its calibration texts
    differ: its default is GLUE sst2 from the hub, here it is given the paragraphs of
    ``args.calibration`` as a local dataset folder, which ``datasets`` loads offline.
    """
    import shutil
    import tempfile

    from optimum.intel import OVQuantizationConfig
    from sentence_transformers import SentenceTransformer, export_static_quantized_openvino_model

    out = Path(args.out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(args.model, tmp)
    # No openvino/ in the folder: sentence-transformers exports the IR from the weights.
    st = SentenceTransformer(str(tmp), device="cpu", backend="openvino")
    st.save_pretrained(str(tmp))
    texts: list[str] = json.loads(Path(args.calibration).read_text())
    with tempfile.TemporaryDirectory() as data:
        # A folder with train.jsonl is a dataset with one config ("default") and split "train".
        (Path(data) / "train.jsonl").write_text(
            "".join(json.dumps({"text": text}) + "\n" for text in texts))
        # The default config but for num_samples: left unset, sentence-transformers loads
        # 300 texts but optimum-intel then calibrates a text encoder on its own default, 128.
        config = OVQuantizationConfig(num_samples=len(texts))
        export_static_quantized_openvino_model(
            st, config, str(tmp), dataset_name=data, dataset_config_name="default",
            dataset_split="train", column_name="text")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("embed", help="time one system on a list of texts")
    run.add_argument("--system", choices=sorted(SYSTEMS), required=True)
    run.add_argument("--options", default="{}", help="JSON options for the system")
    run.add_argument("--model", required=True, help="local model folder")
    run.add_argument("--texts", required=True, help="JSON file with a list of strings")
    run.add_argument("--out", required=True, help="folder for embeddings.npy and result.json")
    run.add_argument("--repeats", type=int, default=2)
    export = commands.add_parser("export-onnx", help="export a model folder to ONNX")
    export.add_argument("--model", required=True)
    export.add_argument("--out", required=True)
    export = commands.add_parser("export-openvino",
                                 help="export a model folder to OpenVINO, fp32 and static int8")
    export.add_argument("--model", required=True)
    export.add_argument("--out", required=True)
    export.add_argument("--calibration", required=True,
                        help="JSON file with the calibration texts (a list of strings)")
    args = parser.parse_args()
    {"embed": embed, "export-onnx": export_onnx, "export-openvino": export_openvino}[
        args.command](args)


if __name__ == "__main__":
    main()
