"""The fused kernels' build: every loop marked `#pragma omp simd` in rnn_kernels_impl.h and
int8_kernels.h is vectorised by GCC for AVX2 (x86-64-v3), the SIMD level of most laptops. A loop that silently
stays scalar there runs its gate math one element at a time: the GRU and RNN forward gate
loops once did (a zoneout test per element), and ran 1.2-1.3x slower on an AVX2 machine than
with the test hoisted out of them."""

from __future__ import annotations

import platform
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from rnnkit.engines import _library

GCC = shutil.which("gcc")


def _gcc_major() -> int:
    if GCC is None:
        return 0
    out = subprocess.run([GCC, "-dumpversion"], capture_output=True, text=True, check=False).stdout
    return int(out.split(".")[0]) if out.strip() else 0


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="an x86-64 build check")
@pytest.mark.skipif(_gcc_major() < 12, reason="needs GCC 12 or newer (its -fopt-info report)")
@pytest.mark.end_to_end  # a build of the kernels, about 20 s: CI runs it (pytest -m end_to_end)
def test_every_simd_loop_vectorises_for_avx2(tmp_path: Path) -> None:
    report = tmp_path / "vec.txt"
    assert GCC is not None
    subprocess.run(
        [GCC, *_library.C_FLAGS, "-march=x86-64-v3", *_library.OPENMP_FLAGS, "-c",
         str(_library.CSRC / _library.C_SOURCE), "-o", str(tmp_path / "k.o"),
         f"-fopt-info-vec-optimized={report}"],
        check=True, capture_output=True, text=True, timeout=300,
    )
    scalar = []
    for header in ("rnn_kernels_impl.h", "int8_kernels.h"):
        impl = _library.CSRC / "cpu" / header
        vectorised = {int(m.group(1)) for m in re.finditer(re.escape(header) + r":(\d+):\d+: optimized: loop vectorized",
                                                           report.read_text())}
        lines = impl.read_text().splitlines()
        loops = [i + 2 for i, line in enumerate(lines) if line.strip().startswith("#pragma omp simd")]  # the for's line
        assert len(loops) > (20 if header == "rnn_kernels_impl.h" else 5)
        scalar += [f"{header}:{n}: {lines[n - 1].strip()}" for n in loops
                   if n not in vectorised and n + 1 not in vectorised]
    assert not scalar, "loops left scalar for AVX2:\n" + "\n".join(scalar)
