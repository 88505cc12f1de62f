"""Deployment without rnnkit: a model with rnnkit's layers, exported and compiled ahead of time
(AOTInductor), runs in a fresh process that loads rnnkit's operator library and never imports
rnnkit; a saved ExportedProgram (.pt2) loads there too, and in a process that only imported
rnnkit; the AOTInductor package runs from C++ too (examples/libtorch). And the build's fallback: without a
compiler, engine="auto" runs torch's kernels and engine="fused" says why it cannot run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

import rnnkit
from rnnkit.engines import _library

needs_library = pytest.mark.skipif(isinstance(_library.load(), str), reason="rnnkit's operator library unavailable")


class Tagger(nn.Module):
    """Stacked, bidirectional and layer-normalised recurrent layers over padded batches (a minGRU on
    its fused operator among them), and a head."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = rnnkit.LSTM(4, 6, num_layers=2, bidirectional=True, layer_norm=True)
        self.gru = rnnkit.GRU(12, 5, num_layers=2)
        self.fast = rnnkit.MinGRU(5, 5, bidirectional=True, engine="fused")
        self.head = nn.Linear(10, 3)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x, lengths=lengths)
        out, _ = self.gru(out, lengths=lengths)
        out, _ = self.fast(out, lengths=lengths)
        return self.head(out)


SERVE = """
import sys, torch
if sys.argv[1] == "import rnnkit":  # rnnkit loads its operators at import, once built
    import rnnkit
else:
    torch.ops.load_library(sys.argv[1])
data = torch.load(sys.argv[3])
for archive in sys.argv[2].split(","):  # one or more, in this one process
    if archive.endswith("aoti.pt2"):
        model = torch._inductor.aoti_load_package(archive)
    else:
        model = torch.export.load(archive).module()
    for x, lengths, expected in data:
        torch.testing.assert_close(model(x, lengths), expected, atol=1e-5, rtol=1e-5)
    print("served", len(data))
assert ("rnnkit" in sys.modules) == (sys.argv[1] == "import rnnkit")
"""


@needs_library
@pytest.mark.end_to_end
def test_an_aoti_package_runs_without_rnnkit(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Tagger().eval()
    steps, batch = torch.export.Dim("T", min=2, max=64), torch.export.Dim("B", min=2, max=64)
    program = torch.export.export(model, (torch.randn(7, 3, 4), torch.tensor([7, 2, 5])),
                                  dynamic_shapes=({0: steps, 1: batch}, {0: batch}))
    ops = [n.target for n in program.graph.nodes if n.op == "call_function"]
    assert ops.count(torch.ops.rnnkit.fused_rnn.default) == 6  # one per layer and direction
    assert ops.count(torch.ops.rnnkit.min_scan.default) == 2
    package = torch._inductor.aoti_compile_and_package(program, package_path=str(tmp_path / "aoti.pt2"))
    torch.export.save(program, tmp_path / "program.pt2")
    data = []
    for shape, lengths in (((11, 5, 4), [11, 3, 9, 1, 4]), ((2, 2, 4), [1, 2])):
        x, n = torch.randn(*shape), torch.tensor(lengths)
        with torch.no_grad():
            data.append((x, n, model(x, n)))
    torch.save(data, tmp_path / "data.pt")
    script = tmp_path / "serve.py"
    script.write_text(SERVE)
    runs = [(rnnkit.library_path(), f"{package},{tmp_path / 'program.pt2'}"), ("import rnnkit", str(tmp_path / "program.pt2"))]
    for library, archives in runs:
        result = subprocess.run([sys.executable, str(script), library, archives, str(tmp_path / "data.pt")],
                                capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        assert result.stdout.count("served 2") == len(archives.split(","))
    _serve_from_cpp(Path(package), data, tmp_path)


def _serve_from_cpp(package: Path, data: list[tuple[torch.Tensor, ...]], tmp_path: Path) -> None:
    """examples/libtorch: serve.cpp built against the wheel's libtorch (build.sh) runs the package
    with rnnkit's library loaded, in a process with no Python at all, equal to eager."""
    if shutil.which(os.environ.get("CXX", "g++")) is None:
        pytest.skip("no C++ compiler to build examples/libtorch/serve.cpp")
    examples = Path(__file__).resolve().parents[1] / "examples" / "libtorch"
    program = tmp_path / "serve"
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    built = subprocess.run(["sh", str(examples / "build.sh"), str(program)], capture_output=True, text=True,
                           timeout=600, env=env)
    assert built.returncode == 0, built.stderr[-3000:]
    for i, (x, lengths, expected) in enumerate(data):
        torch.save([x, lengths], tmp_path / f"in{i}.pt")
        result = subprocess.run([str(program), rnnkit.library_path(), str(package), str(tmp_path / f"in{i}.pt"),
                                 str(tmp_path / f"out{i}.pt")], capture_output=True, text=True, timeout=300,
                                env={k: v for k, v in env.items() if not k.startswith("PYTHON")})
        assert result.returncode == 0, result.stderr[-3000:]
        assert result.stdout.startswith(f"output 0: {list(expected.shape)} Float"), result.stdout
        (got,) = torch.load(tmp_path / f"out{i}.pt")
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_without_a_compiler_auto_falls_back_and_fused_says_why(tmp_path: Path) -> None:
    """A fresh process with no compiler on PATH and an empty cache: one clear reason, torch's
    kernels for engine="auto", a ValueError naming the reason for engine="fused"."""
    script = textwrap.dedent("""
        import torch, rnnkit
        from rnnkit.engines import _library
        print(_library.unavailable())
        x = torch.randn(4, 2, 3)
        print(rnnkit.GRU(3, 5).engine_for(x))
        try:
            rnnkit.GRU(3, 5, engine="fused")(x)
        except ValueError as error:
            print(error)
    """)
    env = {k: v for k, v in os.environ.items() if k not in ("CC", "CXX", "RNNKIT_NO_COMPILE")}
    env.update(PATH=str(tmp_path), RNNKIT_CACHE_DIR=str(tmp_path / "cache"))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env,
                            cwd=Path(__file__).resolve().parent.parent)
    assert result.returncode == 0, result.stderr[-3000:]
    reason, engine, error = result.stdout.strip().splitlines()
    assert reason.startswith("no C and C++ compiler found to build rnnkit's operator library")
    assert engine == "native"
    assert error == f"GRU: engine='fused' cannot run this layer: {reason}"
