"""A pipeline's int8=True: the trained model's int8 form evaluated on the test split beside it
(metrics "test_int8"), with the pipeline's own metric; a model with no int8 form refused before
training, so that no training is lost."""

from __future__ import annotations

from pathlib import Path

import pytest

from rnnkit.engines import _library
from rnnkit.pipelines import classify, forecast, lm
from rnnkit.training import TrainConfig

pytestmark = pytest.mark.skipif(isinstance(_library.load(), str), reason="rnnkit's operator library is not built")


def test_classify_forecast_and_lm_report_int8_and_bf16_beside_float(tmp_path: Path) -> None:
    """int8=True and bf16=True: the test metric of each form, near the float model's."""
    quick = dict(epochs=1, batch_size=64)
    got = classify.train(classify.ClassifyConfig(dataset="digits", hidden_size=16, train=TrainConfig(**quick)),
                         tmp_path / "digits", int8=True, bf16=True)
    for form in ("test_int8", "test_bf16"):
        assert set(got[form]) == set(got["test"]) and abs(got[form]["accuracy"] - got["test"]["accuracy"]) < 0.05
    got = forecast.train(forecast.ForecastConfig(hidden_size=8, train=TrainConfig(**quick)), tmp_path / "fc", int8=True,
                         bf16=True)
    for form in ("test_int8", "test_bf16"):
        assert set(got[form]) == set(got["test"]) and got[form] != got["test"]
        assert abs(got[form]["rmse"] / got["test"]["rmse"] - 1) < 0.05
    text = tmp_path / "t.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 200, encoding="utf-8")
    got = lm.train(lm.LMConfig(text=str(text), hidden_size=16, num_layers=1, train=TrainConfig(epochs=1, batch_size=8)),
                   tmp_path / "lm", int8=True, bf16=True)
    assert abs(got["test_int8"]["bpc"] - got["test"]["bpc"]) < 0.05
    assert abs(got["test_bf16"]["bpc"] - got["test"]["bpc"]) < 0.05 and got["test_bf16"] != got["test"]
    assert "test_int8" not in classify.train(classify.ClassifyConfig(dataset="digits", hidden_size=8,
                                                                     train=TrainConfig(**quick)), tmp_path / "plain")


def test_a_model_with_no_int8_form_is_refused_before_training(tmp_path: Path) -> None:
    cfg = classify.ClassifyConfig(dataset="digits", cell="mingru", hidden_size=8, train=TrainConfig(epochs=1))
    with pytest.raises(ValueError, match="has no int8 form"):
        classify.train(cfg, tmp_path / "run", int8=True)
    assert not (tmp_path / "run").exists()


def test_generate_with_the_int8_model(tmp_path: Path) -> None:
    """rnnkit generate --quantize int8: the prompt continued by the int8 model; a run whose cell
    has no int8 form refused, naming it."""
    from click.testing import CliRunner

    from rnnkit.cli import main

    text = tmp_path / "t.txt"
    text.write_text("abcabcabd " * 40, encoding="utf-8")
    runner = CliRunner()
    for cell in ("lstm", "mingru"):
        result = runner.invoke(main, ["train", "lm", "--text", str(text), "--context", "4", "--hidden", "8",
                                      "--layers", "1", "--cell", cell, "--epochs", "1", "--out", str(tmp_path / cell)])
        assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["generate", str(tmp_path / "lstm"), "--prompt", "ab", "--length", "12", "--greedy",
                                  "--quantize", "int8"])
    assert result.exit_code == 0, result.output
    line = result.output.strip()
    assert line.startswith("ab") and len(line) == 14 and set(line) <= set("abcd ")
    result = runner.invoke(main, ["generate", str(tmp_path / "mingru"), "--prompt", "ab", "--quantize", "int8"])
    assert result.exit_code == 1 and "MinGRU) has no int8 form" in result.output


def test_train_int8_test_flag(tmp_path: Path) -> None:
    """rnnkit train ... --int8-test prints the int8 model's test metric below the float one's, and
    keeps it in metrics.json; a cell with no int8 form is refused before anything is written."""
    import json

    from click.testing import CliRunner

    from rnnkit.cli import main

    runner = CliRunner()
    result = runner.invoke(main, ["train", "classify", "--dataset", "digits", "--hidden", "8", "--epochs", "1",
                                  "--int8-test", "--out", str(tmp_path / "d")])
    assert result.exit_code == 0, result.output
    shown = float(result.output.split("int8 (rnnkit.quantize): test accuracy ", 1)[1].split(",")[0])
    saved = json.loads((tmp_path / "d" / "metrics.json").read_text())["test_int8"]["accuracy"]
    assert abs(shown - saved) < 1e-4
    result = runner.invoke(main, ["train", "lm", "--text", str(_text(tmp_path)), "--context", "4", "--hidden", "8",
                                  "--layers", "1", "--cell", "minlstm", "--epochs", "1", "--int8-test",
                                  "--out", str(tmp_path / "m")])
    assert result.exit_code == 1 and "the minlstm cell has no int8 form" in result.output
    assert not (tmp_path / "m").exists() and not (tmp_path / "m.partial").exists()


def _text(folder: Path) -> Path:
    path = folder / "t.txt"
    path.write_text("abcabcabd " * 40, encoding="utf-8")
    return path
