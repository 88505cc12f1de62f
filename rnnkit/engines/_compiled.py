"""Build and load the fused engine's C kernels (kernels/rnn_kernels.c).

The kernels are compiled at first use with the system C compiler (``$CC``, else ``cc``) into a
per-user cache (``$RNNKIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/rnnkit`` or ``~/.cache/rnnkit``),
keyed by the source, the flags and the processor, and loaded with ctypes. No PyTorch headers
are needed, so the build takes about a second. ``RNNKIT_NO_COMPILE=1`` turns the kernels off.

The per-step matrix product calls the BLAS that torch itself links (``sgemm_``/``dgemm_`` of
libtorch_cpu) when it exports one; otherwise the kernels use their own loops, which serve small
sizes well and large ones slowly.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

log = logging.getLogger("rnnkit")

SOURCE_DIR = Path(__file__).resolve().parent / "kernels"
SOURCES = ("rnn_kernels.c", "rnn_kernels_impl.h")
BASE_FLAGS = ["-O3", "-std=c99", "-fPIC", "-shared", "-fno-math-errno", "-fno-trapping-math", "-fopenmp-simd"]
NATIVE_FLAGS = ["-march=native"]
OPENMP_FLAGS = ["-fopenmp"]  # libgomp: at run time the one torch loaded (same soname)
ATTEMPTS = (BASE_FLAGS + NATIVE_FLAGS + OPENMP_FLAGS, BASE_FLAGS + NATIVE_FLAGS, BASE_FLAGS)
"""Flags tried in turn: the first that builds is used."""


@dataclass(frozen=True)
class Kernels:
    """The loaded library, the BLAS entry points (addresses, or None) for each dtype, and whether
    it was built with OpenMP (then batch slices run in parallel)."""

    lib: ctypes.CDLL
    path: Path
    blas: dict[torch.dtype, int | None]
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


def _blas_symbols() -> dict[torch.dtype, int | None]:
    """Addresses of torch's own sgemm_/dgemm_ (Fortran interface), where its library exports them."""
    found: dict[torch.dtype, int | None] = {torch.float32: None, torch.float64: None}
    names = {"linux": "libtorch_cpu.so", "darwin": "libtorch_cpu.dylib"}
    name = names.get(sys.platform)
    if name is None:
        return found
    path = Path(torch.__file__).resolve().parent / "lib" / name
    try:
        lib = ctypes.CDLL(str(path))
    except OSError:
        return found
    for dtype, symbol in ((torch.float32, "sgemm_"), (torch.float64, "dgemm_")):
        try:
            found[dtype] = ctypes.cast(getattr(lib, symbol), ctypes.c_void_p).value
        except AttributeError:
            pass
    return found


def _declare(lib: ctypes.CDLL) -> None:
    p, i = ctypes.c_void_p, ctypes.c_int
    for suffix in ("_f32", "_f64"):
        forward = getattr(lib, "rnn_forward_slices" + suffix)
        forward.restype = i
        forward.argtypes = [i, i, i, p, i, i, i, i] + [p] * 23  # slices, cell, save, blas, T, B, H, R, pointers
        backward = getattr(lib, "rnn_backward_slices" + suffix)
        backward.restype = i
        backward.argtypes = [i, i, p, i, i, i, i] + [p] * 25
    lib.rnnkit_kernels_version.restype = i


@lru_cache(maxsize=1)
def load() -> Kernels | str:
    """The kernels, built if needed; or, when they cannot be had, a sentence saying why."""
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
            return Kernels(lib=lib, path=target, blas=_blas_symbols(), parallel="-fopenmp" in flags)
        except (OSError, subprocess.SubprocessError) as error:
            detail = getattr(error, "stderr", "") or str(error)
            errors.append(f"{' '.join(flags)}: {detail.strip().splitlines()[-1] if detail.strip() else error}")
    return "the fused kernels failed to build: " + "; ".join(errors)
