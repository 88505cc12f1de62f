"""Build and load rnnkit's operator library (rnnkit/csrc: the operators rnnkit::fused_rnn,
rnnkit::fused_stack and their backward passes, in C++ with ``TORCH_LIBRARY``).

Built at first use, as torch's C++ extensions are (``torch.utils.cpp_extension``, with ninja),
into a per-user cache (``$RNNKIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/rnnkit`` or
``~/.cache/rnnkit``) keyed by the sources, the compilers and flags, the torch version and the
processor's features; later processes load the built file. The first build takes about 50 s on
a 2-core machine. The C kernels (csrc/cpu/rnn_kernels.c) are compiled with the system C
compiler (``$CC``, else ``cc``) and linked in. Once built, importing rnnkit loads it. ``RNNKIT_NO_COMPILE=1`` turns the library
off; without it, or without a compiler, ``engine="auto"`` runs torch's kernels or the reference
engine, and ``engine="fused"`` raises saying why.

A process that serves a model exported with rnnkit's layers (torch.export, AOTInductor) needs the
operators and nothing else of rnnkit: ``torch.ops.load_library(rnnkit.library_path())``.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

log = logging.getLogger("rnnkit")

CSRC = Path(__file__).resolve().parent.parent / "csrc"
CPP_SOURCES = ("ops.cpp", "cpu/plan.cpp", "cpu/fused_rnn_kernel.cpp", "cpu/fused_stack_kernel.cpp",
               "cpu/min_scan_kernel.cpp", "cpu/int8_kernel.cpp", "cpu/bf16_train_kernel.cpp",
               "autograd/fused_rnn_autograd.cpp")
C_SOURCE = "cpu/rnn_kernels.c"
HEADERS = ("fused_rnn.h", "cpu/rnn_kernels_impl.h", "cpu/int8_kernels.h")
C_FLAGS = ["-O3", "-std=c11", "-fPIC", "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=fast",
           "-fopenmp-simd"]
NATIVE_FLAGS = ["-march=native"]
OPENMP_FLAGS = ["-fopenmp"]  # libgomp: at run time the one torch loaded (same soname)
ATTEMPTS = (C_FLAGS + NATIVE_FLAGS + OPENMP_FLAGS, C_FLAGS + NATIVE_FLAGS, C_FLAGS)
"""Flags of the C kernels tried in turn: the first that builds is used."""
CXX_FLAGS = ["-O2"]
OP = "rnnkit::fused_rnn"


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


def _sources() -> bytes:
    return b"".join((CSRC / name).read_bytes() for name in (*CPP_SOURCES, C_SOURCE, *HEADERS))


def _compilers() -> tuple[str, str] | str:
    """The C and C++ compilers, or a sentence saying which is missing."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    if cc is None or cxx is None:
        return ("no C and C++ compiler found to build rnnkit's operator library (install gcc and g++, or set CC "
                "and CXX)")
    return cc, cxx


def _ninja_on_path() -> str | None:
    """Put the ninja that the `ninja` package installs on PATH (a venv's bin may not be); the
    reason when there is none."""
    if shutil.which("ninja"):
        return None
    try:
        import ninja  # type: ignore[import-not-found]
    except ImportError:
        return "ninja is needed to build rnnkit's operator library (pip install ninja)"
    os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
    return None


def _compile_kernels(cc: str, flags: list[str], target: Path) -> None:
    """The C kernels as an object file: into a temporary file beside target, then renamed."""
    fd, tmp = tempfile.mkstemp(suffix=".o", dir=target.parent)
    os.close(fd)
    try:
        cmd = [cc, *flags, "-c", str(CSRC / C_SOURCE), "-o", tmp]
        subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=300)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _attempts(cc: str, cxx: str) -> Iterator[tuple[list[str], str, Path]]:
    """For each of ATTEMPTS: its C flags, the library's name, and its path in the cache (keyed by
    the sources, compilers, flags, torch version and processor)."""
    source = _sources()
    for flags in ATTEMPTS:
        signature = " ".join([cc, cxx, *flags, *CXX_FLAGS, torch.__version__, _cpu_signature()])
        name = "rnnkit_ops_" + hashlib.sha256(source + signature.encode()).hexdigest()[:16]
        yield flags, signature, _cache_dir() / name / f"{name}.so"


def _built(cc: str, cxx: str) -> Path | None:
    """The library, if a build of these sources is in the cache."""
    return next((library for _, _, library in _attempts(cc, cxx)
                 if (library.parent / "built").exists() and library.exists()), None)


def _build(cc: str, cxx: str) -> Path:
    """Build the library (or find it built) and return its path; raises on failure."""
    built = _built(cc, cxx)
    if built is not None:
        return built
    errors = []
    for flags, signature, library in _attempts(cc, cxx):
        folder = library.parent
        folder.mkdir(parents=True, exist_ok=True)
        # a warning, so that it reaches the terminal without any logging set up: the first use
        # pauses for about a minute, once per machine and torch version
        log.warning("rnnkit: building its operator library, once (about a minute on 2 cores) into %s", folder)
        start = time.perf_counter()
        kernels = folder / "rnn_kernels.o"
        try:
            if not kernels.exists():
                _compile_kernels(cc, flags, kernels)
        except (OSError, subprocess.SubprocessError) as error:
            detail = (getattr(error, "stderr", "") or str(error)).strip()
            errors.append(f"{' '.join(flags)}: {detail.splitlines()[-1] if detail else error}")
            continue
        from torch.utils import cpp_extension

        openmp = OPENMP_FLAGS if "-fopenmp" in flags else []
        cpp_extension.load(
            name=library.stem, sources=[str(CSRC / s) for s in CPP_SOURCES], build_directory=str(folder),
            extra_cflags=CXX_FLAGS, extra_ldflags=["-Wl,--as-needed", str(kernels), *openmp],
            is_python_module=False, verbose=False)
        (folder / "built").write_text(signature + "\n")
        log.info("rnnkit: built the operator library in %.1f s: %s", time.perf_counter() - start, library)
        return library
    raise RuntimeError("the C kernels failed to build: " + "; ".join(errors))


_LOADED: Path | str | None = None
"""What load() found, once: the library's path, or why there is none (a plain global, which
torch.compile reads without a graph break)."""
_ON_LOAD: list[Callable[[], None]] = []


def on_load(register: Callable[[], None]) -> None:
    """Run register once the library is loaded (now, if it is): the Python parts of the
    operators (fake kernels, vmap rules), which need the operators defined."""
    _ON_LOAD.append(register)
    if isinstance(_LOADED, Path):
        register()


def load() -> Path | str:
    """The library's path, built and loaded if needed; or, when it cannot be had, a sentence
    saying why. Layers call it when they are built, so that the build never happens inside a
    traced forward (torch.compile, torch.export), which then only reads the result."""
    global _LOADED
    if _LOADED is None:
        _LOADED = _load(build=True)
    return _LOADED


def load_if_built() -> None:
    """Load the library when it is built already (never building it): at import, so that a
    program saved with rnnkit's operators (torch.export.load, torch.jit.load) loads in any
    process that imported rnnkit."""
    global _LOADED
    if _LOADED is None:
        found = _load(build=False)
        if isinstance(found, Path):
            _LOADED = found


def _load(*, build: bool) -> Path | str:
    if os.environ.get("RNNKIT_NO_COMPILE", "") not in ("", "0"):
        return "rnnkit's operator library is turned off (RNNKIT_NO_COMPILE is set)"
    compilers = _compilers()
    if isinstance(compilers, str):
        return compilers
    if not build:
        path = _built(*compilers)
        if path is None:
            return "not built yet"
    else:
        missing = _ninja_on_path()
        if missing is not None:
            return missing
        try:
            path = _build(*compilers)
        except Exception as error:  # a failed build is a reason to fall back, said in one line
            lines = [line for line in str(error).strip().splitlines() if line.strip()]
            return f"rnnkit's operator library failed to build: {lines[-1] if lines else type(error).__name__}"
    if not _defined():  # (a process may hold it already)
        torch.ops.load_library(str(path))
    for register in _ON_LOAD:
        register()
    return path


def _defined() -> bool:
    """Whether this process holds rnnkit's operators already."""
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(OP, "CPU")
    except RuntimeError:  # no such operator
        return False


def unavailable() -> str | None:
    """None when the operators can run, else the reason they cannot."""
    loaded = load()
    return loaded if isinstance(loaded, str) else None


def library_path() -> str:
    """The path of rnnkit's operator library (built first if needed), for a process that runs
    exported models with rnnkit's layers without importing rnnkit:
    ``torch.ops.load_library(path)``. Raises RuntimeError saying why when it cannot be built."""
    loaded = load()
    if isinstance(loaded, str):
        raise RuntimeError(loaded)
    return str(loaded)


@contextlib.contextmanager
def policy(**settings: int) -> Iterator[None]:
    """Set the kernels' policy for the block, then restore it: for tests that reach every path of
    the kernels at small sizes, and for benchmarks. Settings (rnnkit/csrc/cpu/plan.cpp):
    parallel_min_rows, parallel_min_work, step_parallel_min_work, shared_step_min_bytes,
    shared_step_max_rows, projection_chunk, kernel_weight_grads_max_work, workspace_block_max,
    rows_mode_max, and threads (the kernels' thread count; 0: torch's)."""
    set_policy = torch.ops.rnnkit._policy
    before = {name: set_policy(name, value) for name, value in settings.items()}
    try:
        yield
    finally:
        for name, value in before.items():
            set_policy(name, value)


def plan(mode: str, dtype: torch.dtype, steps: int, batch: int, inputs: int, gates: int, size: int,
         flags: int = 0) -> dict[str, int]:
    """The plan rnnkit::fused_rnn makes for a call of this shape on torch's thread count (inputs:
    I when the kernel projects x, else 0; gates G*H; size R; flags HAS_PROJ 1, HAS_LN_H 2,
    HAS_LN_C 4), by name."""
    names = ("slices", "threads", "backward_slices", "backward_threads", "pthreads", "chunk", "weight_threads",
             "saved", "unsaved", "dlayout", "unsaved_parts", "dlayout_parts")
    return dict(zip(names, torch.ops.rnnkit._plan(mode, dtype, steps, batch, inputs, gates, size, flags)))


def kernels_parallel() -> bool:
    """Whether the kernels were built with OpenMP (then slices of the batch run in parallel)."""
    return bool(torch.ops.rnnkit._policy("kernels_parallel"))
