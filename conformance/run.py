"""Run vLLM 0.34.0's own pooling tests against cenote and write docs/conformance.md.

    python conformance/run.py                 # everything (make conformance)
    python conformance/run.py --files 'tests/entrypoints/pooling/embed/*'
    python conformance/run.py --report-only   # rewrite the report from earlier results

Steps: download vLLM's source distribution (pinned version and sha256) into the cache
folder unless it is there; copy its pooling tests, and the test helpers they import,
unchanged into a work folder; install the few test-only packages they need into the
cache; build stand-in checkpoints (``checkpoints.py``) in an offline hub cache; run
pytest on each test file with the stand-in ``vllm`` package (``vllm_standin/``) first
on ``PYTHONPATH`` and the stand-in ``vllm`` command (``cenote serve``) first on
``PATH``; classify what did not pass (``classification.toml``) and write the report.
Only the download and the pip install use the network, once.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from conformance import checkpoints, report  # noqa: E402

VLLM_VERSION = "0.34.0"
SDIST_SHA256 = "fcad848b246a9d8652b47e6425af92334dc02492f9802720f54e27b823cf0113"
SDIST_URL = ("https://files.pythonhosted.org/packages/92/21/"
             "6e0b077dc4a0b28f5a8ce8bb352a38d7196650d681fd4faa87f8dc622eff/"
             f"vllm-{VLLM_VERSION}.tar.gz")
# The tests under conformance, and what they read besides themselves: vLLM's test
# helpers (conftest.py, utils.py, ...), its prompts and fixtures, and the score and
# embedding templates in examples/pooling.
TEST_DIRS = ("tests/entrypoints/pooling", "tests/models/language/pooling")
SUPPORT_PATHS = ("tests/__init__.py", "tests/conftest.py", "tests/utils.py",
                 "tests/ci_envs.py", "tests/entrypoints/__init__.py",
                 "tests/entrypoints/conftest.py", "tests/models/__init__.py",
                 "tests/models/utils.py", "tests/models/registry.py",
                 "tests/models/language/__init__.py", "tests/models/fixtures",
                 "tests/prompts", "examples/pooling")
# Test-only packages vLLM's helpers import that cenote's environment lacks; installed
# without their dependencies (those are cenote's or its test extra's).
TEST_PACKAGES = ("pytest-asyncio==1.5.0", "pybase64==1.5.1", "tblib==3.2.2",
                 "anthropic==2.17.0", "docstring-parser==0.18.0")
PYTEST_INI = """\
[pytest]
asyncio_default_fixture_loop_scope = function
markers =
    slow_test
    skip_global_cleanup
    core_model
    hybrid_model
    cpu_model
    cpu_test
    split
    distributed
    optional
"""


def default_cache() -> Path:
    return Path(os.environ.get("CENOTE_CONFORMANCE_CACHE",
                               Path.home() / ".cache" / "cenote-conformance"))


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_sdist(cache: Path) -> Path:
    """vLLM's source distribution in ``cache``, downloaded once and checked."""
    tarball = cache / f"vllm-{VLLM_VERSION}.tar.gz"
    if not tarball.exists():
        cache.mkdir(parents=True, exist_ok=True)
        partial = tarball.with_suffix(".partial")
        print(f"downloading {SDIST_URL}", flush=True)
        with urllib.request.urlopen(SDIST_URL, timeout=300) as response, \
                partial.open("wb") as out:
            shutil.copyfileobj(response, out)
        partial.rename(tarball)
    if (digest := sha256(tarball)) != SDIST_SHA256:
        raise SystemExit(f"{tarball}: sha256 {digest}, expected {SDIST_SHA256}; "
                         "delete it to download again.")
    return tarball


def unpack_tests(tarball: Path, cache: Path) -> Path:
    """The sdist's tests/ and examples/pooling/ under ``cache/vllm-<version>``."""
    root = cache / f"vllm-{VLLM_VERSION}"
    if (root / "tests" / "conftest.py").exists():
        return root
    prefix = f"vllm-{VLLM_VERSION}/"
    with tarfile.open(tarball) as tar:
        members = [m for m in tar.getmembers()
                   if m.name.startswith((prefix + "tests/", prefix + "examples/pooling/"))]
        tar.extractall(cache, members=members, filter="data")
    return root


def prepare_work(source: Path, work: Path) -> list[str]:
    """Copy the tests and their helpers unchanged into ``work``; the test files' paths."""
    shutil.rmtree(work, ignore_errors=True)
    for rel in (*TEST_DIRS, *SUPPORT_PATHS):
        src, dst = source / rel, work / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst)
        else:
            shutil.copy2(src, dst)
    (work / "pytest.ini").write_text(PYTEST_INI)
    return sorted(str(p.relative_to(work)) for d in TEST_DIRS
                  for p in (work / d).rglob("test_*.py"))


def install_test_packages(deps: Path) -> None:
    stamp = deps / ".installed"
    if stamp.exists() and stamp.read_text() == "\n".join(TEST_PACKAGES):
        return
    shutil.rmtree(deps, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--target", str(deps), *TEST_PACKAGES], check=True)
    stamp.write_text("\n".join(TEST_PACKAGES))


def export_cenote(commit: str, cache: Path) -> tuple[Path, str]:
    """cenote's package as of ``commit`` (``git archive``) in the cache, to test a
    commit while the work tree changes; its folder and full hash."""
    full = subprocess.run(["git", "rev-parse", commit], cwd=REPO, check=True,
                          capture_output=True, text=True).stdout.strip()
    folder = cache / f"cenote-{full[:12]}"
    if not (folder / "cenote" / "__init__.py").exists():
        folder.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "archive", full, "cenote"], cwd=REPO, check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder, full


def test_env(cache: Path, cenote_folder: Path | None = None) -> dict[str, str]:
    """The environment vLLM's tests (and the servers they start) run in."""
    env = dict(os.environ)
    standin = HERE / "vllm_standin"
    env["PYTHONPATH"] = os.pathsep.join(
        [str(standin), *filter(None, [cenote_folder and str(cenote_folder)]),
         str(cache / "deps"), *filter(None, [env.get("PYTHONPATH")])])
    env["PATH"] = os.pathsep.join([str(standin / "bin"), str(Path(sys.executable).parent),
                                   env.get("PATH", "")])
    env.update(CENOTE_PYTHON=sys.executable, HF_HOME=str(cache / "hf_home"),
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", PYTHONDONTWRITEBYTECODE="1")
    return env


def result_name(test_file: str) -> str:
    return test_file.removeprefix("tests/").removesuffix(".py").replace("/", "__")


def run_file(test_file: str, work: Path, results: Path, env: dict[str, str],
             timeout: int, extra: list[str]) -> dict:
    """pytest on one file, its junit XML and log in ``results``; a summary."""
    name = result_name(test_file)
    xml, log = results / f"{name}.xml", results / f"{name}.log"
    xml.unlink(missing_ok=True)
    start = time.monotonic()
    with log.open("w") as out:
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "pytest", test_file, "-p", "no:cacheprovider",
                 "-q", "-rN", f"--junitxml={xml}", "-o", "junit_family=xunit1", *extra],
                cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT,
                timeout=timeout, start_new_session=True)
            rc, timed_out = proc.returncode, False
        except subprocess.TimeoutExpired:
            rc, timed_out = None, True
    status = {"file": test_file, "rc": rc, "timed_out": timed_out,
              "seconds": round(time.monotonic() - start, 1)}
    (results / f"{name}.json").write_text(json.dumps(status))
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", type=Path, default=default_cache(),
                        help="downloads, stand-in checkpoints, work folder and results "
                             "(default ~/.cache/cenote-conformance or "
                             "$CENOTE_CONFORMANCE_CACHE)")
    parser.add_argument("--files", nargs="*", default=[],
                        help="glob patterns of test files to run (default: all)")
    parser.add_argument("--timeout", type=int, default=600,
                        help="seconds one test file may take")
    parser.add_argument("--cenote-commit", metavar="REV",
                        help="test cenote as of this git commit instead of the installed "
                             "package (the work tree)")
    parser.add_argument("--cenote-dir", type=Path, metavar="DIR",
                        help="test the cenote package in DIR (e.g. a frozen copy of the "
                             "work tree) instead of the installed one")
    parser.add_argument("--label", help="what was tested, for the report")
    parser.add_argument("--report-only", action="store_true",
                        help="only rewrite the report from the results already there")
    parser.add_argument("--report", type=Path, default=REPO / "docs" / "conformance.md")
    parser.add_argument("pytest_args", nargs="*", help="after --: passed to pytest")
    args = parser.parse_args(argv)

    cache = args.cache_dir.expanduser().resolve()
    work, results = cache / "work", cache / "results"
    if not args.report_only:
        source = unpack_tests(fetch_sdist(cache), cache)
        test_files = prepare_work(source, work)
        install_test_packages(cache / "deps")
        checkpoints.build_hub(cache / "hf_home")
        results.mkdir(parents=True, exist_ok=True)
        chosen = [f for f in test_files
                  if not args.files or any(fnmatch.fnmatch(f, p) for p in args.files)]
        cenote_folder, tested = None, "the installed cenote (work tree)"
        if args.cenote_commit:
            cenote_folder, full = export_cenote(args.cenote_commit, cache)
            tested = f"cenote at commit {full[:12]}"
        elif args.cenote_dir:
            cenote_folder = args.cenote_dir.resolve()
            tested = f"cenote from {cenote_folder}"
        tested = args.label or tested
        (results / "tested.txt").write_text(tested)
        env = test_env(cache, cenote_folder)
        for test_file in chosen:
            status = run_file(test_file, work, results, env, args.timeout, args.pytest_args)
            print(f"{test_file}: rc={status['rc']} {status['seconds']}s"
                  + (" TIMED OUT" if status["timed_out"] else ""), flush=True)
    all_files = sorted(str(p.relative_to(work)) for d in TEST_DIRS
                       for p in (work / d).rglob("test_*.py"))
    tested = results / "tested.txt"
    summary = report.write_report(all_files, results, HERE / "classification.toml",
                                  args.report, VLLM_VERSION,
                                  tested.read_text().strip() if tested.exists() else "cenote")
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
