"""The tutorials' data sets load offline, with the shapes, labels and columns their documentation
states; and each trains in the pipeline that uses it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from rnnkit.cli import main
from rnnkit.data import DATASETS, SERIES, SequenceData, TextData, load_dataset, load_series


def test_mnist_is_read_row_by_row() -> None:
    data = load_dataset("mnist")
    assert isinstance(data, SequenceData)
    assert data.x.shape == (5000, 28, 28) and data.x.dtype == np.float32  # 28 steps of 28 pixels
    assert 0 <= data.x.min() and data.x.max() == 1.0 and data.input_divisor == 255.0
    assert data.label_names == [str(d) for d in range(10)]
    assert np.bincount(data.y).tolist() == [500] * 10


@pytest.mark.parametrize("name, tokens, some", [
    ("intents", "word", ("greetings", "food", "money")),
    ("intents-zh", "char", ("greetings", "food", "money")),
])
def test_intents(name: str, tokens: str, some: tuple[str, ...]) -> None:
    data = load_dataset(name)
    assert isinstance(data, TextData) and DATASETS[name].tokens == tokens
    assert set(some) <= set(data.label_names) and len(data.label_names) >= 15
    assert len(data.texts) == len(set(data.texts)) > 500  # each utterance once, in one category only
    assert all(any(c.isalnum() for c in text) for text in data.texts)
    assert np.bincount(data.y).min() >= 1


@pytest.mark.parametrize("name, columns, season, rows", [
    ("sine", ["sine"], 50, 2000),
    ("yields", ["AAA", "BAA"], 12, 1200),
    ("stocks", ["Close", "Open", "High", "Low", "Volume"], None, 5031),
    ("weather", ["temp_max", "temp_min", "precipitation", "wind"], 365, 1461),
])
def test_tutorial_series(name: str, columns: list[str], season: int | None, rows: int) -> None:
    everything = load_series(name, features=columns[1:])
    assert everything.columns == columns and everything.values.shape == (rows, len(columns))
    assert np.isfinite(everything.values).all() and everything.season == season
    default = load_series(name)
    assert default.columns == [columns[0], *SERIES[name].features]
    assert np.array_equal(default.values, everything.values[:, [columns.index(c) for c in default.columns]])
    with pytest.raises(ValueError, match="has no column 'nope'"):
        load_series(name, features=("nope",))


def test_sine_is_seeded_and_noisy() -> None:
    a, b = load_series("sine").values[:, 0], load_series("sine").values[:, 0]
    assert np.array_equal(a, b)
    residual = a - np.sin(2 * np.pi * np.arange(len(a)) / 50)
    assert 0.08 < residual.std() < 0.12


def test_intents_classify_and_predict(tmp_path: Path) -> None:
    """A short run on the English intents beats the majority baseline, and predict reads a
    question word by word."""
    runner = CliRunner()
    out = tmp_path / "run"
    result = runner.invoke(main, ["train", "classify", "--dataset", "intents", "--hidden", "32", "--epochs", "8",
                                  "--out", str(out)])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["macro_f1"] > metrics["baseline"]["macro_f1"] + 0.1
    config = json.loads((out / "config.json").read_text())
    assert config["input"]["tokens"] == "word"
    result = runner.invoke(main, ["predict", str(out), "What time is it ?", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["label"] in json.loads((out / "extras.json").read_text())["label_names"]


def test_weather_forecast_with_features(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["train", "forecast", "--dataset", "weather", "--hidden", "16", "--epochs", "3",
                                       "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["columns"] == ["temp_max", "temp_min", "precipitation", "wind"]  # the target, then its features
    assert "baseline seasonal naive (season 365)" in result.output
