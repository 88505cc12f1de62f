"""N -> 1 and N -> horizon: forecast a series from its last `window` steps.

``train(cfg, out)`` splits the series in time order (train, validation, test), fits the scaler
on the training part only, trains an NToOne model to predict the next `horizon` values of the
target directly (by default as changes from the last input value, so that trending series
stay in range; `predict="level"` for the values themselves), scores the test part on the original scale (RMSE, MAE) beside the naive
(last value) and seasonal naive baselines, and writes a run folder. ``forecast(run, steps)``
continues the series recursively from its end.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from rnnkit._extras import needs_extras
from rnnkit.data import Series, load_series, read_series_csv
from rnnkit.data._files import read_table
from rnnkit.models import NToOne, NToOneConfig
from rnnkit.pipelines._runs import (bf16_model, check_diverged, check_int8, check_new, int8_model, open_run,
                                    pipeline_config)
from rnnkit.runs import NotARunError, finish_run, load_weights, numbers, read_run, reading, value
from rnnkit.tasks import BATCH, TIME, TaskBatch
from rnnkit.training import EpochRecord, Trainer, TrainConfig


def _forecast_training() -> TrainConfig:
    return TrainConfig(epochs=150, batch_size=32, lr=3e-3, patience=30, lr_patience=8)


@dataclass
class ForecastConfig:
    dataset: str | None = "sunspots"  # a bundled series, or None with data=
    data: str | None = None  # the user's CSV
    encoding: str | None = None  # the user's files: None reads UTF-8 (rnnkit.data._files)
    delimiter: str | None = None  # the user's tables: None sniffs it
    target: str | None = None
    time_col: str | None = None
    features: tuple[str, ...] | None = None  # input columns beside the target; None: a bundled series' own
    window: int = 20
    horizon: int = 1
    season: int | None = None  # None: the bundled series' own season, else no seasonal baseline
    predict: str = "change"  # "change": the model predicts each value minus the last input value
    cell: str = "lstm"
    hidden_size: int = 32
    num_layers: int = 1
    pooling: str = "last"
    dropout: float = 0.0
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    train: TrainConfig = field(default_factory=_forecast_training)


def get_series(cfg: ForecastConfig) -> Series:
    if cfg.data is not None:
        if not cfg.target:
            raise ValueError("--data needs --target, the column to forecast")
        return read_series_csv(cfg.data, target=cfg.target, time_col=cfg.time_col, features=cfg.features or (),
                               season=cfg.season, encoding=cfg.encoding, delimiter=cfg.delimiter)
    if cfg.dataset is None:
        raise ValueError("give a bundled series (--dataset) or a CSV file (--data)")
    return load_series(cfg.dataset, None if cfg.features is None else cfg.features)


def windows(z: np.ndarray, window: int, horizon: int, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Forecast origins t with lo <= t and t + horizon <= hi: inputs z[t-window:t] (n, W, F),
    targets z[t:t+horizon, 0] (n, horizon), and the origins (n,)."""
    origins = np.arange(max(lo, window), hi - horizon + 1)
    x = np.stack([z[t - window:t] for t in origins]) if len(origins) else np.zeros((0, window, z.shape[1]))
    y = np.stack([z[t:t + horizon, 0] for t in origins]) if len(origins) else np.zeros((0, horizon))
    return x.astype(np.float32), y.astype(np.float32), origins


def baselines(values: np.ndarray, origins: np.ndarray, horizon: int, season: int | None) -> dict[str, np.ndarray]:
    """Baseline forecasts (n, horizon) from each origin: the last value, and the value one season
    (or as many seasons as the step needs) before."""
    out = {"naive (last value)": np.repeat(values[origins - 1, 0][:, None], horizon, axis=1)}
    if season:
        steps = np.arange(horizon)
        back = season * np.ceil((steps + 1) / season).astype(int)  # (horizon,)
        index = origins[:, None] + steps[None, :] - back[None, :]
        if (index >= 0).all():
            out[f"seasonal naive (season {season})"] = values[index, 0]
    return out


def errors(predicted: np.ndarray, actual: np.ndarray) -> dict[str, float]:
    return {"rmse": float(np.sqrt(np.mean((predicted - actual) ** 2))), "mae": float(np.mean(np.abs(predicted - actual)))}


@dataclass
class Prepared:
    """A forecast run's data: the series, its season, the values (N, F), the training part's
    mean and std (F,), windows per split (x, y, origins), and the datasets the model trains on
    (x scaled (n, W, F), targets (n, horizon): changes from the last input value, or levels)."""

    series: Series
    season: int | None
    values: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    parts: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]
    data: dict[str, TensorDataset]


@needs_extras
def prepare(cfg: ForecastConfig) -> Prepared:
    """Read, split in time order, scale with the training part only, and cut into windows."""
    if cfg.window < 1 or cfg.horizon < 1:
        raise ValueError(f"--window and --horizon must be >= 1, got {cfg.window} and {cfg.horizon}")
    series = get_series(cfg)
    season = cfg.season if cfg.season is not None else series.season
    values, n = series.values, len(series.values)
    train_end = int(round(n * (1 - cfg.val_fraction - cfg.test_fraction)))
    val_end = int(round(n * (1 - cfg.test_fraction)))
    mean, std = values[:train_end].mean(0), values[:train_end].std(0)
    std = np.where(std > 0, std, 1.0)
    z = (values - mean) / std  # scaled with the training part's statistics only
    parts = {name: windows(z, cfg.window, cfg.horizon, lo, hi)
             for name, (lo, hi) in {"train": (0, train_end), "validation": (train_end, val_end), "test": (val_end, n)}.items()}
    empty = [name for name, (x, _, _) in parts.items() if len(x) == 0]
    if empty:
        need = math.ceil((cfg.window + cfg.horizon) / cfg.test_fraction)
        raise ValueError(f"too few rows ({n}) for --window {cfg.window} and --horizon {cfg.horizon}: the "
                         f"{' and '.join(empty)} split{'s have' if len(empty) > 1 else ' has'} no window; "
                         f"give about {need} rows or more, or a smaller window")
    if cfg.predict not in ("change", "level"):
        raise ValueError(f"--predict must be 'change' or 'level', got {cfg.predict!r}")

    def targets(x: np.ndarray, y: np.ndarray) -> np.ndarray:  # what the model learns to output
        return y - x[:, -1:, 0] if cfg.predict == "change" else y

    data = {name: TensorDataset(torch.from_numpy(x), torch.from_numpy(targets(x, y))) for name, (x, y, _) in parts.items()}
    return Prepared(series, season, values, mean, std, parts, data)


@needs_extras
def train(cfg: ForecastConfig, out: str | Path, *, on_epoch: Callable[[EpochRecord], None] | None = None,
          resume: bool = False, progress: bool = False, tensorboard: bool = False,
          diagnose_every: int | None = None, on_diagnosis: Callable[[dict[str, Any]], None] | None = None,
          int8: bool = False, bf16: bool = False) -> dict[str, Any]:
    """Train and write the run folder at out; returns metrics.json's content.
    resume: continue the run at out (stopped, or finished and given more epochs).
    int8: also evaluate the model's int8 form (rnnkit.quantize) on the test split: metrics
    "test_int8", beside "test" (what int8 inference costs this model; on the CPU).
    bf16: likewise its bfloat16 form (bf16_model): metrics "test_bf16"."""
    if int8:
        check_int8(cfg.cell, cfg.train)  # before anything is written
    if not resume:
        check_new(out)
    prepared = prepare(cfg)
    series, season, values, mean, std, parts = (prepared.series, prepared.season, prepared.values, prepared.mean,
                                                 prepared.std, prepared.parts)
    model_cfg = NToOneConfig(input_size=values.shape[1], outputs=cfg.horizon, cell=cfg.cell, hidden_size=cfg.hidden_size,
                             num_layers=cfg.num_layers, bidirectional=False, pooling=cfg.pooling, dropout=cfg.dropout)
    checkpoint = open_run(out, "forecast", cfg, resume=resume, tensorboard=tensorboard)
    torch.manual_seed(cfg.train.seed)
    model = NToOne(model_cfg)

    def rmse(pred: torch.Tensor, target: torch.Tensor) -> float:
        return float(torch.sqrt(F.mse_loss(pred, target)))

    trainer = Trainer(model, forward=lambda m, b: (m(b[0]), b[1]), loss_fn=F.mse_loss, metric_fn=rmse,
                      config=cfg.train, higher_is_better=False, on_epoch=on_epoch, checkpoint=checkpoint,
                      progress=progress, tensorboard=checkpoint.parent / "tensorboard" if tensorboard else None,
                      diagnose_every=diagnose_every, on_diagnosis=on_diagnosis)

    data = prepared.data
    history = trainer.fit(data["train"], data["validation"], resume=resume)
    check_diverged(trainer, out)
    x_test, _, origins = parts["test"]
    actual = np.stack([values[t:t + cfg.horizon, 0] for t in origins])

    def test_forecasts(evaluated: torch.nn.Module | None = None) -> np.ndarray:
        """The test split's forecasts on the original scale (of the model trained, or evaluated)."""
        _, _, pred, _ = trainer.evaluate(data["test"], evaluated)
        if cfg.predict == "change":
            pred = pred + torch.from_numpy(x_test[:, -1:, 0])  # back to levels
        return pred.numpy() * std[0] + mean[0]  # back to the original scale

    predicted = test_forecasts()
    base_forecasts = baselines(values, origins, cfg.horizon, season)
    base = {name: errors(b, actual) for name, b in base_forecasts.items()}
    metrics = {
        "task": "forecast",
        "series": cfg.dataset if cfg.data is None else str(cfg.data),
        "test": errors(predicted, actual),
        "baseline": base,
        "sizes": {name: len(x) for name, (x, _, _) in parts.items()},
        "rows": len(values),
        "interpolated": series.interpolated,
        **trainer.summary(),
    }
    if int8:
        metrics["test_int8"] = errors(test_forecasts(int8_model(model)), actual)
    if bf16:
        metrics["test_bf16"] = errors(test_forecasts(bf16_model(model)), actual)
    if not trainer.is_main:
        return metrics
    config = {"task": "forecast", "pipeline": asdict(cfg), "dataset": cfg.dataset if cfg.data is None else None, "data": cfg.data,
              "target": series.columns[0], "columns": series.columns, "window": cfg.window, "horizon": cfg.horizon,
              "season": season, "frequency": series.frequency, "predict": cfg.predict, "model": asdict(model_cfg),
              "train": asdict(cfg.train)}
    extras = {"mean": mean.tolist(), "std": std.tolist(), "tail": values[-cfg.window:].tolist(),
              "tail_times": series.times[-cfg.window:]}
    from rnnkit import plots

    rows = [r.as_dict() for r in history]
    figures = {  # the first step of each test forecast, against the actual value and the baselines
        "forecast.png": plots.forecast([series.times[t] for t in origins], actual[:, 0], predicted[:, 0],
                                       {k: v[:, 0] for k, v in base_forecasts.items()},
                                       f"{metrics['series']}: test split, one step ahead", target=series.columns[0]),
        "history.png": plots.history(rows, "RMSE (scaled)"),
    }
    finish_run(out, config=config, weights=model.state_dict(), extras=extras, metrics=metrics, history=rows,
               plots=figures)
    return metrics


def load(run_path: str | Path) -> tuple[NToOne, dict[str, Any], dict[str, np.ndarray]]:
    """The model of a forecast run, its config, and its scaling (mean and std (F,)) and last
    window of values (tail (window, F)), every value that a forecast reads checked
    (NotARunError: the run folder is damaged)."""
    run = read_run(run_path)
    cfg = run.config
    if cfg.get("task") != "forecast":
        raise NotARunError(f"{run.path} is a {cfg.get('task')!r} run, not a forecast run")
    with reading(run.path / "config.json"):
        model = NToOne(NToOneConfig(**value(cfg, "model", dict)))
        columns = value(cfg, "columns", list)
        width = model.config.input_size
        if len(columns) != width or not all(isinstance(c, str) for c in columns):
            raise ValueError(f"columns must be the names of the model's {width} input columns")
        value(cfg, "target", str)
        window = value(cfg, "window", int, minimum=1)
        if "predict" in cfg:
            value(cfg, "predict", str, choices=("change", "level"))
        if isinstance(cfg.get("pipeline"), dict) and "time_col" in cfg["pipeline"]:
            value(cfg["pipeline"], "time_col", (str, type(None)), within="pipeline")
    with reading(run.path / "extras.json"):
        scaling = {"mean": numbers(run.extras, "mean", (width,)), "std": numbers(run.extras, "std", (width,)),
                   "tail": numbers(run.extras, "tail", (window, width))}
        if not (scaling["std"] > 0).all():
            raise ValueError("std must be > 0")
    load_weights(model, run)
    return model.eval(), cfg, scaling


@needs_extras
def forecast(run_path: str | Path, steps: int, *, data: str | None = None, encoding: str | None = None,
             delimiter: str | None = None) -> np.ndarray:
    """Continue the series steps values past its end (the run's, or the end of data, a CSV with
    the run's columns, read with encoding and delimiter, in the order of the run's time column
    where it has one), feeding each forecast back as input. Target-only runs only."""
    if steps < 1:
        raise ValueError(f"--steps must be >= 1, got {steps}")
    model, cfg, scaling = load(run_path)
    if len(cfg["columns"]) != 1:
        raise ValueError("a recursive forecast needs a run trained on the target alone: its input features "
                         f"{cfg['columns'][1:]} have no future values")
    tail = scaling["tail"]
    if data is not None:
        time_col = cfg.get("pipeline", {}).get("time_col")
        if time_col is not None and time_col not in read_table(data, encoding=encoding, delimiter=delimiter).columns:
            time_col = None  # a file of the values alone: in its rows' order
        tail = read_series_csv(data, target=cfg["target"], time_col=time_col, encoding=encoding,
                               delimiter=delimiter).values[-cfg["window"]:]
        if len(tail) < cfg["window"]:
            raise ValueError(f"{data} has {len(tail)} rows; the run needs the last {cfg['window']}")
    mean, std = scaling["mean"][0], scaling["std"][0]
    history = list((tail[:, 0] - mean) / std)
    out: list[float] = []
    with torch.no_grad():
        while len(out) < steps:
            x = torch.tensor(history[-cfg["window"]:], dtype=torch.float32).view(1, -1, 1)
            step = model(x)[0]  # the next `horizon` values (or changes from the last), scaled
            if cfg.get("predict", "level") == "change":
                step = step + history[-1]
            step = step.tolist()
            history.extend(step)
            out.extend(step)
    return np.asarray(out[:steps]) * std + mean


@needs_extras
def task_batch(run_path: str | Path, size: int) -> TaskBatch:
    """The run's model and up to size validation windows (rnnkit.tasks): x (B, window, F)."""
    model = load(run_path)[0]
    windows = prepare(pipeline_config(run_path, "forecast", ForecastConfig)).data["validation"]
    x, y = windows.tensors[0][:size], windows.tensors[1][:size]
    return TaskBatch("forecast", model.eval(), (x,), lambda m, b: F.mse_loss(m(*b), y), ({0: BATCH, 1: TIME},))
