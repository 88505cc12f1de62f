"""N -> 1 classification of sequences of feature vectors (bundled: digits read row by row).

``train(cfg)`` splits the data (stratified train/validation/test), trains an NToOne model
with the Trainer, scores the test split beside the majority-class baseline, and writes a run
folder. ``predict(run, x)`` loads a run folder and gives class probabilities.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from rnnkit.data import load_dataset
from rnnkit.models import NToOne, NToOneConfig
from rnnkit.runs import NotARunError, read_run, write_run
from rnnkit.training import EpochRecord, Trainer, TrainConfig


@dataclass
class ClassifyConfig:
    dataset: str = "digits"
    cell: str = "gru"
    hidden_size: int = 128
    num_layers: int = 1
    bidirectional: bool = True
    pooling: str = "mean"
    dropout: float = 0.0
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    train: TrainConfig = field(default_factory=TrainConfig)


def accuracy(logits: torch.Tensor, target: torch.Tensor) -> float:
    return float((logits.argmax(-1) == target).double().mean())


def scores(predicted: np.ndarray, target: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import f1_score

    return {"accuracy": float((predicted == target).mean()),
            "macro_f1": float(f1_score(target, predicted, average="macro", zero_division=0))}


def split(y: np.ndarray, val_fraction: float, test_fraction: float, seed: int) -> tuple[np.ndarray, ...]:
    """Stratified indices (train, validation, test)."""
    from sklearn.model_selection import train_test_split

    index = np.arange(len(y))
    rest, test = train_test_split(index, test_size=test_fraction, stratify=y, random_state=seed)
    train, val = train_test_split(rest, test_size=val_fraction / (1 - test_fraction), stratify=y[rest], random_state=seed)
    return train, val, test


def train(cfg: ClassifyConfig, out: str | Path, *, on_epoch: Callable[[EpochRecord], None] | None = None) -> dict[str, Any]:
    """Train and write the run folder at out; returns metrics.json's content."""
    if Path(out).exists():  # before any work: a run folder is never overwritten
        raise FileExistsError(f"run folder {out} already exists: choose another --out")
    data = load_dataset(cfg.dataset)
    if len(set(data.y.tolist())) < 2:
        raise ValueError(f"dataset {cfg.dataset!r} has one class only: nothing to classify")
    tr, va, te = split(data.y, cfg.val_fraction, cfg.test_fraction, cfg.train.seed)
    x, y = torch.from_numpy(data.x), torch.from_numpy(data.y)
    model_cfg = NToOneConfig(input_size=data.x.shape[2], outputs=len(data.label_names), cell=cfg.cell,
                                 hidden_size=cfg.hidden_size, num_layers=cfg.num_layers,
                                 bidirectional=cfg.bidirectional, pooling=cfg.pooling, dropout=cfg.dropout)
    torch.manual_seed(cfg.train.seed)
    model = NToOne(model_cfg)
    trainer = Trainer(model, forward=lambda m, b: (m(b[0]), b[1]), loss_fn=F.cross_entropy, metric_fn=accuracy,
                      config=cfg.train, on_epoch=on_epoch)
    start = time.perf_counter()
    history = trainer.fit(TensorDataset(x[tr], y[tr]), TensorDataset(x[va], y[va]))
    seconds = time.perf_counter() - start
    _, _, logits, target = trainer.evaluate(TensorDataset(x[te], y[te]))
    majority = int(np.bincount(data.y[tr]).argmax())
    metrics = {
        "task": "classify",
        "dataset": cfg.dataset,
        "test": scores(logits.argmax(-1).numpy(), target.numpy()),
        "baseline": {"name": "majority class", **scores(np.full(len(te), majority), target.numpy())},
        "sizes": {"train": len(tr), "validation": len(va), "test": len(te)},
        "best_epoch": trainer.best_epoch,
        "epochs_run": len(history),
        "train_seconds": round(seconds, 2),
        "device": str(trainer.device),
    }
    config = {"task": "classify", "dataset": cfg.dataset, "model": asdict(model_cfg),
              "train": asdict(cfg.train), "input": {"steps": int(data.x.shape[1]), "features": int(data.x.shape[2])},
              "split": {"validation": cfg.val_fraction, "test": cfg.test_fraction}}
    from sklearn.metrics import confusion_matrix

    from rnnkit import plots

    rows = [r.as_dict() for r in history]
    counts = confusion_matrix(target.numpy(), logits.argmax(-1).numpy(), labels=range(len(data.label_names)))
    figures = {"confusion_matrix.png": plots.confusion_matrix(counts, data.label_names),
               "history.png": plots.history(rows, "accuracy")}
    write_run(out, config=config, weights=model.state_dict(), extras={"label_names": data.label_names, "input_divisor": data.input_divisor},
              metrics=metrics, history=rows, plots=figures)
    return metrics


def load(run_path: str | Path) -> tuple[NToOne, dict[str, Any], dict[str, Any]]:
    """The model of a classify run, its config and its extras (label names, input divisor)."""
    run = read_run(run_path)
    if run.config.get("task") != "classify":
        raise NotARunError(f"{run.path} is a {run.config.get('task')!r} run, not a classify run")
    model = NToOne(NToOneConfig(**run.config["model"]))
    model.load_state_dict(run.weights)
    return model.eval(), run.config, run.extras


def predict(run_path: str | Path, x: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """x (N, T, F) or (N, T*F) -> class probabilities (N, C) and the label names."""
    model, config, extras = load(run_path)
    steps, features = config["input"]["steps"], config["input"]["features"]
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 2 and x.shape[1] == steps * features:
        x = x.reshape(len(x), steps, features)
    if x.ndim != 3 or x.shape[2] != features:
        raise ValueError(f"expected rows of {steps * features} numbers ({steps} steps of {features} "
                         f"features), got an array of shape {tuple(x.shape)}")
    x = x / np.float32(extras.get("input_divisor", 1.0))  # scaled as the training data were
    with torch.no_grad():
        probs = torch.softmax(model(torch.from_numpy(x)), dim=-1).numpy()
    return probs, list(extras["label_names"])
