"""Build and load the fused engine's C kernels (kernels/rnn_kernels.c).

The kernels are compiled at first use with the system C compiler (``$CC``, else ``cc``) into a
per-user cache (``$RNNKIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/rnnkit`` or ``~/.cache/rnnkit``),
keyed by the source, the flags and the processor, and loaded with ctypes. No PyTorch headers
are needed: the build takes about 15 seconds on the 2-core development machine.
``RNNKIT_NO_COMPILE=1`` turns the kernels off.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path


log = logging.getLogger("rnnkit")

SOURCE_DIR = Path(__file__).resolve().parent / "kernels"
SOURCES = ("rnn_kernels.c", "rnn_kernels_impl.h")
BASE_FLAGS = ["-O3", "-std=c11", "-fPIC", "-shared", "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=fast",
              "-fopenmp-simd"]
NATIVE_FLAGS = ["-march=native"]
OPENMP_FLAGS = ["-fopenmp"]  # libgomp: at run time the one torch loaded (same soname)
ATTEMPTS = (BASE_FLAGS + NATIVE_FLAGS + OPENMP_FLAGS, BASE_FLAGS + NATIVE_FLAGS, BASE_FLAGS)
"""Flags tried in turn: the first that builds is used."""


@dataclass(frozen=True)
class Kernels:
    """The loaded library, and whether it was built with OpenMP (then batch slices run in parallel)."""

    lib: ctypes.CDLL
    path: Path
    parallel: bool = False


def _cache_dir() -> Path:
    if os.environ.get("RNNKIT_CACHE_DIR"):
        return Path(os.environ["RNNKIT_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "rnnkit"


def _cpu_signature() -> str:
    """What the compiled code depends on beyond its source: the processor's features."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        flags = ""
    return f"{platform.machine()} {platform.system()} {flags}"


def _compile(compiler: str, flags: list[str], target: Path) -> None:
    """Compile into a temporary file beside target, then rename: never a half-written library."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        cmd = [compiler, *flags, str(SOURCE_DIR / SOURCES[0]), "-o", tmp, "-lm"]
        subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=120)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _declare(lib: ctypes.CDLL) -> None:
    p, i = ctypes.c_void_p, ctypes.c_int
    for suffix in ("_f32", "_f64"):
        forward = getattr(lib, "rnn_forward_slices" + suffix)
        forward.restype = i
        forward.argtypes = [i] * 11 + [p] * 21  # slices, threads, pthreads, chunk, cell, save, T, B, H, R, I, ...
        backward = getattr(lib, "rnn_backward_slices" + suffix)
        backward.restype = i
        backward.argtypes = [i] * 9 + [p] * 26  # slices, threads, wthreads, cell, T, B, H, R, I, pointers
        stack_forward = getattr(lib, "rnn_stack_forward" + suffix)
        stack_forward.restype = i
        stack_forward.argtypes = [p] * 12  # plan, x, lengths, weights, inner, out, revs, hn, cn, works, at, scratch
        stack_backward = getattr(lib, "rnn_stack_backward" + suffix)
        stack_backward.restype = i
        stack_backward.argtypes = [p] * 13 + [i, p]  # plan, ..., dx, below, scratch
        scratch = getattr(lib, "rnn_stack_backward_scratch" + suffix)
        scratch.restype = ctypes.c_long
        scratch.argtypes = [p]
    for layout in (lib.rnnkit_forward_layout, lib.rnnkit_backward_layout):
        layout.restype = ctypes.c_long
        layout.argtypes = [i] * 7 + [p]  # (slices or cell, ...), where the offsets go or NULL
    lib.rnnkit_kernels_version.restype = i


_LOADED: Kernels | str | None = None
"""What load() found, once: a plain global, which torch.compile reads without a graph break."""


def load() -> Kernels | str:
    """The kernels, built if needed; or, when they cannot be had, a sentence saying why.

    Layers call it when they are built, so that the build never happens inside a traced forward
    (torch.compile, torch.export), which then only reads the result."""
    global _LOADED
    if _LOADED is None:
        _LOADED = _load()
    return _LOADED


def unavailable() -> str | None:
    """None when the kernels can run, else the reason they cannot."""
    kernels = load()
    return kernels if isinstance(kernels, str) else None


def _load() -> Kernels | str:
    if os.environ.get("RNNKIT_NO_COMPILE", "") not in ("", "0"):
        return "the fused kernels are turned off (RNNKIT_NO_COMPILE is set)"
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if compiler is None:
        return "no C compiler found to build the fused kernels (set CC, or install gcc or clang)"
    source = b"".join((SOURCE_DIR / name).read_bytes() for name in SOURCES)
    errors = []
    for flags in ATTEMPTS:
        key = hashlib.sha256(source + " ".join([compiler, *flags, _cpu_signature()]).encode()).hexdigest()[:16]
        target = _cache_dir() / f"rnn_kernels-{key}.so"
        try:
            if not target.exists():
                start = time.perf_counter()
                _compile(compiler, flags, target)
                log.info("rnnkit: built the fused kernels in %.1f s: %s", time.perf_counter() - start, target)
            lib = ctypes.CDLL(str(target))
            _declare(lib)
            return Kernels(lib=lib, path=target, parallel="-fopenmp" in flags)
        except (OSError, subprocess.SubprocessError) as error:
            detail = getattr(error, "stderr", "") or str(error)
            errors.append(f"{' '.join(flags)}: {detail.strip().splitlines()[-1] if detail.strip() else error}")
    return "the fused kernels failed to build: " + "; ".join(errors)
