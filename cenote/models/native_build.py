"""Building the native CPU kernels: C sources in ``csrc/``, compiled once per machine
with the system C compiler (``$CC``, else ``cc``/``gcc``), ``-march=native`` and OpenMP,
cached under ``$CENOTE_CACHE_DIR`` (default ``~/.cache/cenote``) keyed by the source,
the compiler and the CPU's feature flags, and loaded with ctypes into torch's own
OpenMP runtime (libgomp). ``CENOTE_NATIVE_KERNELS``: ``0`` turns them off, ``1``
uses them unmeasured, ``auto`` (the default) lets a model's load decide."""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

from cenote.machine import cpu_flags

SOURCE_DIR = Path(__file__).with_name("csrc")
# -fno-trapping-math: no kernel reads floating-point exception flags, and without it
# GCC keeps a loop with a float comparison in it (a clamp, a select) scalar.
CFLAGS = ("-O3", "-march=native", "-fno-trapping-math", "-fopenmp", "-shared", "-fPIC")


def cache_dir() -> Path:
    configured = os.environ.get("CENOTE_CACHE_DIR")
    if configured:
        return Path(configured)
    try:
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    except RuntimeError:  # no home directory to be found
        base = tempfile.gettempdir()
    return Path(base) / "cenote"


def openmp_runtimes() -> set[str]:
    """File names of the OpenMP runtimes loaded in this process (Linux)."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return set()
    names = set()
    for line in maps.splitlines():
        name = line.rpartition("/")[2]
        if name.startswith(("libgomp", "libiomp", "libomp")):
            names.add(name)
    return names


def build(name: str) -> Path:
    """Compile ``csrc/<name>.c`` into a shared library, or return the cached one.

    Raises ``RuntimeError`` with the compiler's message when it cannot be built.
    """
    source = SOURCE_DIR / f"{name}.c"
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not compiler:
        raise RuntimeError("no C compiler found (set CC)")
    try:
        version = subprocess.run([compiler, "--version"], capture_output=True, text=True,
                                 timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise RuntimeError(f"cannot run the C compiler {compiler!r}: {exc}") from exc
    headers = [h.read_text() for h in sorted(SOURCE_DIR.glob("*.h"))]  # simd.h
    key = hashlib.sha256("\0".join([source.read_text(), *headers, compiler, version,
                                    " ".join(CFLAGS), cpu_flags()]).encode()).hexdigest()[:16]
    folder = cache_dir() / "kernels"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        folder = Path(tempfile.gettempdir()) / f"cenote-kernels-{os.getuid()}"
        folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{name}-{key}.so"
    if target.exists():
        return target
    # Build beside the target and rename: processes starting together never see half a file.
    fd, tmp = tempfile.mkstemp(prefix=f".{name}-", suffix=".so", dir=folder)
    os.close(fd)
    try:
        result = subprocess.run([compiler, *CFLAGS, "-o", tmp, str(source)],
                                capture_output=True, text=True, timeout=300)
        if result.returncode != 0:
            message = (result.stderr or result.stdout).strip().splitlines()
            raise RuntimeError(f"{compiler} failed: {' / '.join(message[:3])}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def kernels_setting() -> str:
    return os.environ.get("CENOTE_NATIVE_KERNELS", "auto").strip().lower()


def native_kernels_forced() -> bool:
    """``CENOTE_NATIVE_KERNELS=1``: use the kernels wherever they build, unmeasured."""
    return kernels_setting() in ("1", "true", "yes", "on")


def kernel_source(name: str) -> str:
    """The source of kernel ``name`` for this CPU: AVX-512 intrinsics (``name``), or the
    portable C that the compiler vectorises for AVX2 (or NEON), ``name_portable``."""
    return name if "avx512f" in cpu_flags().split() else f"{name}_portable"


def load_kernel(name: str) -> ctypes.CDLL:
    if kernels_setting() in ("0", "false", "no", "off"):
        raise RuntimeError("turned off by CENOTE_NATIVE_KERNELS")
    portable = name.endswith("_portable")
    if platform.system() != "Linux" or (
            not portable and platform.machine() not in ("x86_64", "AMD64")):
        raise RuntimeError(f"needs Linux on x86-64, not {platform.system()} {platform.machine()}")
    if not portable and "avx512f" not in cpu_flags().split():
        raise RuntimeError("this CPU has no AVX-512")
    runtimes = openmp_runtimes()
    if not any(r.startswith("libgomp") for r in runtimes):
        # Linking libgomp next to another OpenMP runtime would double the thread pools.
        raise RuntimeError(f"torch does not run on libgomp here ({sorted(runtimes) or 'none'})")
    try:
        path = build(name)
    except (OSError, subprocess.SubprocessError) as exc:
        raise RuntimeError(f"build failed: {exc}") from exc
    before = openmp_runtimes()
    try:
        library = ctypes.CDLL(str(path))
    except OSError as exc:
        raise RuntimeError(f"cannot load {path}: {exc}") from exc
    added = openmp_runtimes() - before
    if added:
        # Never called, so its thread pool never starts.
        raise RuntimeError(f"it would run a second OpenMP runtime ({sorted(added)})")
    return library
