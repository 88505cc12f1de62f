"""The command line's one error path: a known failure (bad input, a damaged run folder, a file
that cannot be written) is one line naming the file, exit status 1, and nothing written; an
unexpected exception (a bug) keeps its traceback."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from rnnkit.cli import main


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small classify run (digits) and a small forecast run (sunspots), in one folder."""
    root = tmp_path_factory.mktemp("runs")
    runner = CliRunner()
    for args in (["train", "classify", "--hidden", "8", "--epochs", "1", "--out", str(root / "cls")],
                 ["train", "forecast", "--hidden", "8", "--window", "12", "--epochs", "1", "--out", str(root / "fc")]):
        result = runner.invoke(main, args)
        assert result.exit_code == 0, result.output
    return root


def _damaged(runs: Path, tmp: Path, name: str, damage: str) -> Path:
    """A copy of the classify run with one file damaged."""
    run = tmp / name
    shutil.copytree(runs / "cls", run)
    if damage == "truncated weights":
        data = (run / "model.safetensors").read_bytes()
        (run / "model.safetensors").write_bytes(data[:100])
    elif damage == "empty weights":
        (run / "model.safetensors").write_bytes(b"")
    elif damage == "weights of another run":
        shutil.copy(runs / "fc" / "model.safetensors", run / "model.safetensors")
    elif damage == "truncated checkpoint":
        data = (run / "checkpoint.pt").read_bytes()
        (run / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    elif damage == "truncated config":
        (run / "config.json").write_text((run / "config.json").read_text()[:50])
    return run


def _write(tmp: Path, name: str, content: bytes) -> str:
    (tmp / name).write_bytes(content)
    return str(tmp / name)


CASES = {
    "empty classify CSV": (lambda r, t: ["train", "classify", "--data", _write(t, "e.csv", b""), "--text-col", "text",
                                         "--label-col", "label", "--out", str(t / "new")],
                           "e.csv is empty"),
    "a row with a missing field": (lambda r, t: ["train", "classify", "--data", _write(
        t, "m.csv", b"text,label\nhello,a\nworld\nfoo,b\nbar,a\n"), "--text-col", "text", "--label-col", "label",
        "--out", str(t / "new")], "m.csv: empty 'label' on line 3"),
    "a numeric row with a missing label": (lambda r, t: ["train", "classify", "--data", _write(
        t, "n.csv", b"a,b,label\n1,2,x\n3,4,y\n1,2\n"), "--label-col", "label", "--out", str(t / "new")],
        "n.csv: line 4 has no 'label'"),
    "truncated weights": (lambda r, t: ["predict", str(_damaged(r, t, "run", "truncated weights")), "--input",
                                        _write(t, "x.csv", b"1," * 63 + b"1\n")],
                          "run/model.safetensors (Error while deserializing header"),
    "empty weights": (lambda r, t: ["diagnose", str(_damaged(r, t, "run", "empty weights")), "--out", str(t / "new")],
                      "run/model.safetensors (Error while deserializing header"),
    "weights of another run": (lambda r, t: ["export", str(_damaged(r, t, "run", "weights of another run")),
                                             "--out", str(t / "new.onnx")],
                               "run/model.safetensors does not fit the model that"),
    "truncated config.json": (lambda r, t: ["predict", str(_damaged(r, t, "run", "truncated config")), "--input",
                                            _write(t, "x.csv", b"1," * 63 + b"1\n")],
                              "run/config.json (Expecting value"),
    "a damaged checkpoint": (lambda r, t: ["train", "classify", "--resume", str(_damaged(r, t, "run", "truncated checkpoint")),
                                           "--epochs", "2"], "run/checkpoint.pt ("),
    "--out under a file": (lambda r, t: ["train", "classify", "--epochs", "1", "--out",
                                         str(Path(_write(t, "file", b"x")) / "run")],
                           "cannot create the run folder"),
    "forecast --out under a file": (lambda r, t: ["forecast", str(r / "fc"), "--steps", "3", "--out",
                                                  str(Path(_write(t, "file", b"x")) / "f.csv")],
                                    "file is not a folder"),
    "--lr 3e38": (lambda r, t: ["train", "classify", "--epochs", "1", "--lr", "3e38", "--out", str(t / "new")],
                  "lr must be at most 10"),
    "a header-only series": (lambda r, t: ["train", "forecast", "--data", _write(t, "h.csv", b"value\n"),
                                           "--target", "value", "--out", str(t / "new")],
                             "h.csv has a header row (value) but no rows of data"),
    "a latin-1 series": (lambda r, t: ["train", "forecast", "--data", _write(
        t, "l.csv", "v\u00e9,x\n".encode("latin-1") + b"".join(f"{i},{i}\n".encode() for i in range(60))),
        "--target", "x", "--out", str(t / "new")], "l.csv is not UTF-8 text"),
    "a row that is not numbers": (lambda r, t: ["predict", str(r / "cls"), "--input",
                                                _write(t, "p.csv", b"1," * 64 + b"\n" + b"1,x\n")],
                                  "p.csv, row 2, column 2: 'x' is not a finite number"),
    "inf in the first row, not a header": (lambda r, t: ["predict", str(r / "cls"), "--input",
                                                         _write(t, "q.csv", b"inf," + b"1," * 62 + b"1\n")],
                                           "q.csv, row 1, column 1: 'inf' is not a finite number"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_known_failure_is_one_line_naming_the_file_and_writes_nothing(runs: Path, tmp_path: Path,
                                                                        case: str) -> None:
    args, message = CASES[case]
    argv = args(runs, tmp_path)
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    result = CliRunner().invoke(main, argv)
    assert result.exit_code == 1, result.output
    assert result.output.startswith("Error: ") and result.output.count("\n") == 1, result.output
    assert message in result.output, result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit)
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == before


def test_a_header_row_in_predict_input_is_skipped(runs: Path, tmp_path: Path) -> None:
    numbers = ",".join(str(i % 17) for i in range(64))
    header = ",".join(f"pixel{i}" for i in range(64))
    outputs = []
    for name, content in (("plain.csv", numbers), ("header.csv", f"{header}\n{numbers}")):
        result = CliRunner().invoke(main, ["predict", str(runs / "cls"), "--input", _write(tmp_path, name,
                                                                                             f"{content}\n".encode())])
        assert result.exit_code == 0, result.output
        outputs.append(result.output)
    assert outputs[0] == outputs[1] and outputs[0].count("\n") == 1


def test_a_bug_keeps_its_traceback(runs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from rnnkit.pipelines import forecast

    def broken(*args: object, **kwargs: object) -> None:
        raise KeyError("a bug")

    monkeypatch.setattr(forecast, "forecast", broken)
    result = CliRunner().invoke(main, ["forecast", str(runs / "fc"), "--steps", "2", "--out", "unused.csv"])
    assert isinstance(result.exception, KeyError)  # not turned into a one-line message


def test_a_run_that_fails_before_its_first_epoch_leaves_nothing(tmp_path: Path) -> None:
    """A real process whose training fails with a bug in its first epoch: the traceback is shown,
    and neither RUN.partial (only config.json, nothing to resume) nor the lock file is left."""
    out = tmp_path / "run"
    code = ("import sys\nfrom rnnkit.training import Trainer\n"
            "def fit(self, *args, **kwargs):\n    raise ZeroDivisionError('a bug in the first epoch')\n"
            "Trainer.fit = fit\nfrom rnnkit.cli import main\n"
            "main(['train', 'forecast', '--hidden', '8', '--epochs', '1', '--out', sys.argv[1]])\n")
    done = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "Traceback" in done.stderr and "ZeroDivisionError" in done.stderr, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []
