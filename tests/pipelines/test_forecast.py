"""Forecasting: windows and baselines by hand, missing values, the scaler's data, the bundled
sunspots against the naive baseline, recursive forecasts, and the command line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from rnnkit.cli import main
from rnnkit.data import read_series_csv
from rnnkit.pipelines import forecast as fc
from rnnkit.runs import read_run
from rnnkit.training import TrainConfig


def test_windows_and_baselines_by_hand() -> None:
    z = np.arange(10.0).reshape(10, 1)  # 0, 1, ..., 9
    x, y, origins = fc.windows(z, window=3, horizon=2, lo=0, hi=7)
    assert origins.tolist() == [3, 4, 5]  # t + 2 <= 7
    assert x[0, :, 0].tolist() == [0, 1, 2] and y[0].tolist() == [3, 4]
    assert x[2, :, 0].tolist() == [2, 3, 4] and y[2].tolist() == [5, 6]
    base = fc.baselines(z, np.array([5, 6]), horizon=3, season=2)
    assert base["naive (last value)"].tolist() == [[4, 4, 4], [5, 5, 5]]
    # seasonal naive, season 2: y(t+h) ~ y(t+h-2) for h = 0, 1 and y(t+h-4) for h = 2
    assert base["seasonal naive (season 2)"].tolist() == [[3, 4, 3], [4, 5, 4]]


def test_missing_values_are_interpolated_never_zeros(tmp_path: Path) -> None:
    (tmp_path / "s.csv").write_text("t,y\n1,\n2,10\n3,\n4,\n5,40\n6,50\n7,\n")
    series = read_series_csv(tmp_path / "s.csv", target="y", time_col="t")
    assert series.values[:, 0].tolist() == [10, 20, 30, 40, 50]  # ends dropped, gap filled linearly
    assert series.times == ["2", "3", "4", "5", "6"] and series.interpolated == 2


@pytest.mark.parametrize("content, kwargs, message", [
    (None, {"target": "y"}, "no such file"),
    ("t,y\n1,2\n", {"target": "z"}, "has no column 'z'; it has t, y"),
    ("t,y\n1,2\n2,abc\n", {"target": "y"}, "column 'y' of .* is not numeric: row 3 has 'abc'"),
    ("t,y\n1,2\n2,3\n3,inf\n", {"target": "y"}, "column 'y' of .* is not finite: row 4 has 'inf'"),
    ("t,y,x\n1,2,-inf\n2,3,1\n", {"target": "y", "features": ("x",)}, "column 'x' of .* is not finite: row 2"),
])
def test_bad_csv(tmp_path: Path, content: str | None, kwargs: dict, message: str) -> None:  # type: ignore[type-arg]
    path = tmp_path / "s.csv"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ValueError, match=message):
        read_series_csv(path, **kwargs)


def sine_csv(path: Path, n: int = 240) -> Path:
    t = np.arange(n)
    y = np.sin(2 * np.pi * t / 24) * 10 + 50
    path.write_text("t,y\n" + "".join(f"{i},{v:.6f}\n" for i, v in zip(t, y)))
    return path


def test_scaler_sees_the_training_part_only(tmp_path: Path) -> None:
    path = tmp_path / "ramp.csv"
    path.write_text("y\n" + "".join(f"{v}\n" for v in range(100)))  # a ramp: later parts have larger means
    cfg = fc.ForecastConfig(dataset=None, data=str(path), target="y", window=5, train=TrainConfig(epochs=2, patience=None))
    fc.train(cfg, tmp_path / "run")
    extras = read_run(tmp_path / "run").extras
    assert extras["mean"][0] == pytest.approx(np.arange(70).mean())  # rows 0..69 of 100 (70% train)
    assert extras["tail"] == [[95.0], [96.0], [97.0], [98.0], [99.0]]


def test_sunspots_beat_the_naive_forecast(tmp_path: Path) -> None:
    """The issue's target, with the command's defaults: RMSE at least 10% below naive."""
    metrics = fc.train(fc.ForecastConfig(), tmp_path / "run")
    naive = metrics["baseline"]["naive (last value)"]["rmse"]
    assert metrics["test"]["rmse"] < 0.9 * naive
    assert "seasonal naive (season 11)" in metrics["baseline"]


def test_recursive_forecast_follows_a_sine(tmp_path: Path) -> None:
    csv = sine_csv(tmp_path / "sine.csv")
    cfg = fc.ForecastConfig(dataset=None, data=str(csv), target="y", window=24, horizon=3,
                            train=TrainConfig(epochs=60, batch_size=32, lr=1e-2, patience=None))
    metrics = fc.train(cfg, tmp_path / "run")
    assert metrics["test"]["rmse"] < 0.5 * metrics["baseline"]["naive (last value)"]["rmse"]
    ahead = fc.forecast(tmp_path / "run", 12)
    truth = np.sin(2 * np.pi * np.arange(240, 252) / 24) * 10 + 50
    assert np.abs(ahead - truth).max() < 2.0  # within 2 of a wave of amplitude 10
    with pytest.raises(ValueError, match="--steps must be >= 1, got 0"):
        fc.forecast(tmp_path / "run", 0)


def test_cli_forecast_round_trip_and_errors(tmp_path: Path) -> None:
    csv = sine_csv(tmp_path / "sine.csv")
    runner = CliRunner()
    result = runner.invoke(main, ["train", "forecast", "--data", str(csv), "--target", "y", "--window", "12",
                                  "--epochs", "5", "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert "baseline naive (last value): RMSE" in result.output
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert set(saved["baseline"]) == {"naive (last value)"}  # a CSV without --season: no seasonal baseline
    result = runner.invoke(main, ["forecast", str(tmp_path / "run"), "--steps", "4", "--out", str(tmp_path / "f.csv")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "f.csv").read_text().splitlines()[0] == "step,forecast"
    assert len((tmp_path / "f.csv").read_text().splitlines()) == 5
    for args, message in [
        (["train", "forecast", "--data", str(csv), "--out", str(tmp_path / "x")], "--data needs --target"),
        (["train", "forecast", "--data", str(csv), "--target", "y", "--window", "300", "--out", str(tmp_path / "x")],
         "too few rows (240) for --window 300"),
        (["train", "forecast", "--dataset", "nope", "--out", str(tmp_path / "x")], "unknown series 'nope'"),
        (["forecast", str(tmp_path), "--steps", "3"], "is not an rnnkit run folder"),
    ]:
        result = runner.invoke(main, args)
        assert result.exit_code == 1 and message in result.output, result.output
        assert not (tmp_path / "x").exists()


def test_predicting_changes_extrapolates_a_trend(tmp_path: Path) -> None:
    """A ramp rises past anything seen in training: predicting changes from the last value
    continues it, predicting levels cannot (the test targets lie outside the training range)."""
    path = tmp_path / "ramp.csv"
    path.write_text("y\n" + "".join(f"{v}\n" for v in range(200)))
    rmse = {}
    for mode in ("change", "level"):
        cfg = fc.ForecastConfig(dataset=None, data=str(path), target="y", window=5, predict=mode,
                                train=TrainConfig(epochs=40, lr=1e-2, patience=None))
        rmse[mode] = fc.train(cfg, tmp_path / mode)["test"]["rmse"]
    assert rmse["change"] < 1.0 < rmse["level"]
    ahead = fc.forecast(tmp_path / "change", 5)
    assert np.abs(ahead - np.arange(200, 205)).max() < 2.0


def test_forecast_run_has_its_plots(tmp_path: Path) -> None:
    from matplotlib.image import imread

    csv = sine_csv(tmp_path / "sine.csv")
    fc.train(fc.ForecastConfig(dataset=None, data=str(csv), target="y", window=12,
                               train=TrainConfig(epochs=2, patience=None)), tmp_path / "run")
    for name in ("forecast.png", "history.png"):
        image = imread(tmp_path / "run" / "plots" / name)
        assert image.ndim == 3 and image.shape[1] > 300, name
