"""rnnkit export: a trained run's model as one graph (ONNX, torch.export), checked against the
model before it is written, for every task whose model is one graph."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from rnnkit import library_path, pipelines
from rnnkit.cli import main
from rnnkit.engines import _library
from rnnkit.export import export


def train(tmp_path: Path, *args: str) -> Path:
    out = tmp_path / args[1]
    result = CliRunner().invoke(main, ["train", *args[:1], *args[2:], "--epochs", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("runs")
    (tmp / "t.txt").write_text("abcabcabd " * 30, encoding="utf-8")
    (tmp / "texts.csv").write_text("text,label\n" + "".join(f"{w} {w},{w[0]}\n" for w in ["ab", "ba", "abc", "bca"] * 8),
                                   encoding="utf-8")
    return {
        "digits": train(tmp, "classify", "digits", "--dataset", "digits", "--hidden", "8"),
        "texts": train(tmp, "classify", "texts", "--data", str(tmp / "texts.csv"), "--text-col", "text",
                       "--label-col", "label", "--hidden", "8"),
        "forecast": train(tmp, "forecast", "fc", "--window", "12", "--hidden", "8"),
        "lm": train(tmp, "lm", "lm", "--text", str(tmp / "t.txt"), "--context", "6", "--hidden", "8", "--layers", "1"),
        "adding": train(tmp, "adding", "add", "--steps", "10", "--hidden", "8", "--train-size", "100"),
    }


RUNS = ["digits", "texts", "forecast", "lm", "adding"]
# ONNX exports take 3-10 s each: one in the default run, the others in CI's (pytest -m end_to_end)
EXPORTS = [(run, "pt2") for run in RUNS] + [
    (run, "onnx") if run == "forecast" else pytest.param(run, "onnx", marks=pytest.mark.end_to_end) for run in RUNS]


@pytest.mark.parametrize("run,fmt", EXPORTS)
def test_export_runs_at_other_sizes(runs: dict[str, Path], run: str, fmt: str, tmp_path: Path) -> None:
    """The CLI writes the file and says what it checked; the file, loaded on its own, gives the
    model's outputs on a batch of another size (and, for ONNX, in onnxruntime)."""
    out = tmp_path / f"model.{fmt}"
    result = CliRunner().invoke(main, ["export", str(runs[run]), "--format", fmt, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert f"wrote {out} ({fmt}): inputs " in result.output and "validation examples" in result.output
    difference = float(result.output.rsplit("largest difference from the model ", 1)[1].split()[0])
    assert difference <= 1e-4
    batch = pipelines.open_task(runs[run], size=3)  # another batch size than the export's 64
    with torch.no_grad():
        expected = batch.model(*batch.inputs)
    expected = expected[0] if isinstance(expected, tuple) else expected
    if fmt == "pt2":
        got = torch.export.load(out).module()(*batch.inputs)
        got = got[0] if isinstance(got, tuple) else got
    else:
        import onnxruntime

        session = onnxruntime.InferenceSession(str(out))
        names = [i.name for i in session.get_inputs()]
        got = torch.from_numpy(session.run(None, {n: t.numpy() for n, t in zip(names, batch.inputs)})[0])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)



@pytest.mark.skipif(isinstance(_library.load(), str), reason="rnnkit's operator library unavailable")
@pytest.mark.parametrize("run", ["digits", "lm"])
def test_export_int8(runs: dict[str, Path], run: str, tmp_path: Path) -> None:
    """--quantize int8: the program holds rnnkit's int8 operators, computes what rnnkit.quantize's
    model computes on another batch size, and the CLI says how far int8 is from the float model;
    ONNX is refused, nothing written."""
    import rnnkit

    out = tmp_path / "model.pt2"
    result = CliRunner().invoke(main, ["export", str(runs[run]), "--format", "pt2", "--quantize", "int8",
                                       "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert f"wrote {out} (pt2, int8): inputs " in result.output
    cost = float(result.output.split("differ from the float model's by at most ", 1)[1].split()[0])
    assert 0 < cost < 0.5
    program = torch.export.load(out)
    assert any(node.target == torch.ops.rnnkit.int8_stack.default for node in program.graph.nodes)
    batch = pipelines.open_task(runs[run], size=3)
    with torch.no_grad():
        expected = rnnkit.quantize(batch.model.eval())(*batch.inputs)
        got = program.module()(*batch.inputs)
    expected, got = (o[0] if isinstance(o, tuple) else o for o in (expected, got))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    onnx = tmp_path / "model.onnx"
    result = CliRunner().invoke(main, ["export", str(runs[run]), "--quantize", "int8", "--out", str(onnx)])
    assert result.exit_code == 1 and "an int8 model exports as pt2 or aoti" in result.output and not onnx.exists()


@pytest.mark.skipif(isinstance(_library.load(), str), reason="rnnkit's operator library unavailable")
@pytest.mark.end_to_end
def test_export_aoti_is_checked_and_names_the_library(runs: dict[str, Path], tmp_path: Path) -> None:
    """--format aoti: an AOTInductor package, checked in torch._inductor.aoti_load_package before
    it is written, and the operator library a server without rnnkit loads first named. (That such
    a process runs a package of rnnkit's operators is tests/test_deploy.py's.)"""
    out = tmp_path / "model.pt2"
    result = CliRunner().invoke(main, ["export", str(runs["texts"]), "--format", "aoti", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert f"wrote {out} (aoti): inputs " in result.output
    assert "checked in torch._inductor.aoti_load_package on " in result.output
    library = result.output.split("torch.ops.load_library(", 1)[1].split(")", 1)[0].strip("'")
    assert library == library_path() and out.is_file()


def test_export_refuses_what_it_cannot_write_and_leaves_nothing(runs: dict[str, Path], tmp_path: Path) -> None:
    pairs = "".join(f"{a}{b}\t{b}{a}\n" for a in "abcd" for b in "efgh")
    (tmp_path / "p.tsv").write_text(pairs, encoding="utf-8")
    s2s = train(tmp_path, "seq2seq", "s2s", "--data", str(tmp_path / "p.tsv"), "--hidden", "4")
    runner = CliRunner()
    result = runner.invoke(main, ["export", str(s2s), "--out", str(tmp_path / "s.onnx")])
    assert result.exit_code == 1 and "seq2seq runs do not export: a seq2seq model translates in a Python loop" in result.output
    result = runner.invoke(main, ["export", str(runs["digits"]), "--out", str(tmp_path / "no" / "m.onnx")])
    assert result.exit_code == 1 and "is not a folder" in result.output
    result = runner.invoke(main, ["export", str(runs["digits"]), "--format", "aoti", "--out", str(tmp_path / "m.so")])
    assert result.exit_code == 1 and "an AOTInductor package is a .pt2 file" in result.output
    result = runner.invoke(main, ["export", str(tmp_path), "--out", str(tmp_path / "m.onnx")])
    assert result.exit_code == 1 and "not an rnnkit run folder" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.tsv", "s2s"]


def test_export_never_writes_a_graph_that_differs(runs: dict[str, Path], tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The check compares before writing: a graph that does not compute what the model computes
    (here torch.export is handed the model plus one) is refused, and nothing is left behind."""
    real_export = torch.export.export
    monkeypatch.setattr(torch.export, "export", lambda m, *a, **k: real_export(_Shifted(m), *a, **k))
    with pytest.raises(RuntimeError, match=r"the exported graph differs from the model by .* nothing written"):
        export(pipelines.open_task(runs["forecast"]), "pt2", tmp_path / "m.pt2")
    assert list(tmp_path.iterdir()) == []


class _Shifted(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # a forecast model's one input
        return self.model(x) + 1.0
