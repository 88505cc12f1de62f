"""`--cell mingru|minlstm` in every pipeline: each trains a run that predicts again from its folder,
and learns (beats its baseline) where a few seconds of training suffice."""

from __future__ import annotations

import json
import random
from pathlib import Path

from click.testing import CliRunner

from rnnkit.cli import main


def _train(args: list[str], out: Path) -> dict:  # type: ignore[type-arg]
    result = CliRunner().invoke(main, ["train", *args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    return json.loads((out / "metrics.json").read_text())


def test_classify_digits(tmp_path: Path) -> None:
    metrics = _train(["classify", "--cell", "minlstm", "--epochs", "6", "--hidden", "64"], tmp_path / "run")
    assert metrics["test"]["accuracy"] > metrics["baseline"]["accuracy"] + 0.3  # 0.1 by chance
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["model"]["cell"] == "minlstm"


def test_forecast_and_lm(tmp_path: Path) -> None:
    metrics = _train(["forecast", "--dataset", "sine", "--cell", "minlstm", "--epochs", "20"], tmp_path / "sine")
    assert metrics["test"]["rmse"] < metrics["baseline"]["naive (last value)"]["rmse"]
    result = CliRunner().invoke(main, ["forecast", str(tmp_path / "sine"), "--steps", "2"])
    assert result.exit_code == 0, result.output
    (tmp_path / "hello.txt").write_text("hello world", encoding="utf-8")
    _train(["lm", "--text", str(tmp_path / "hello.txt"), "--context", "2", "--cell", "mingru"], tmp_path / "hello")
    result = CliRunner().invoke(main, ["generate", str(tmp_path / "hello"), "--prompt", "he", "--length", "5",
                                       "--greedy"])
    assert result.exit_code == 0 and result.output == "hello w\n", result.output


def test_seq2seq_reverses_words(tmp_path: Path) -> None:
    rng = random.Random(0)
    words = {"".join(rng.choice("abcdef") for _ in range(rng.randint(2, 4))) for _ in range(600)}
    (tmp_path / "rev.tsv").write_text("".join(f"{w}\t{w[::-1]}\n" for w in sorted(words)), encoding="utf-8")
    metrics = _train(["seq2seq", "--data", str(tmp_path / "rev.tsv"), "--cell", "mingru", "--hidden", "32",
                      "--epochs", "25", "--lr", "0.01"], tmp_path / "run")
    assert metrics["test"]["exact_match"] > metrics["baseline"]["exact_match"] + 0.3
    result = CliRunner().invoke(main, ["translate", str(tmp_path / "run"), "abc"])
    assert result.exit_code == 0, result.output


def test_memory_task_and_its_refusals(tmp_path: Path) -> None:
    metrics = _train(["adding", "--steps", "20", "--cell", "minlstm", "--layers", "2", "--train-size", "3000", "--epochs", "4",
                      "--lr", "0.003", "--diagnose-every", "100"], tmp_path / "run")
    assert metrics["test"]["mse"] < 0.8 * metrics["baseline"]["mse"]
    assert [m["step"] for m in metrics["gradient_flow"]] == [100, 200]  # measured while training
    assert {m["layer"] for m in metrics["gradient_flow"]} <= {"rnn.l0", "rnn.l1"}
    result = CliRunner().invoke(main, ["diagnose", str(tmp_path / "run"), "--out", str(tmp_path / "d")])
    assert result.exit_code == 0, result.output  # the gradient flow of both layers, on the validation data
    report = json.loads((tmp_path / "d" / "diagnostics.json").read_text())["cells"]["model"]
    assert sorted(report["gradient_flow"]["norms"]) == ["rnn.l0", "rnn.l1"]
    assert len(report["gradient_flow"]["norms"]["rnn.l0"]) == 20 and report["spectral_radius"] == {"rnn": {}}
    assert set(report["hidden_stats"]["rnn.l1"]) == {"h_norm", "gates_saturated", "kept"}
    result = CliRunner().invoke(main, ["train", "adding", "--cell", "mingru", "--init", "orthogonal",
                                       "--out", str(tmp_path / "no")])
    assert result.exit_code != 0 and "the mingru cell has no W_hh" in result.output
