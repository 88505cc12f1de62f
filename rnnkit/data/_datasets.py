"""Bundled data sets: real data that ships inside the project's dependencies, loaded offline."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SequenceData:
    """Sequences of feature vectors with one label each: x (N, T, F) float32, y (N,) int64.
    x is the raw data divided by input_divisor; predictions divide new raw inputs likewise."""

    x: np.ndarray
    y: np.ndarray
    label_names: list[str]
    input_divisor: float = 1.0


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    task: str
    description: str
    source: str
    licence: str
    size: str
    load: Callable[[], SequenceData]


def _digits() -> SequenceData:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)  # (1797, 8, 8): 8 rows of 8 pixels, in [0, 1]
    return SequenceData(x, digits.target.astype(np.int64), [str(d) for d in range(10)], input_divisor=16.0)


DATASETS: dict[str, DatasetInfo] = {
    "digits": DatasetInfo(
        name="digits",
        task="classify",
        description="8x8 handwritten digits read row by row: 8 steps of 8 pixel values (0-16, scaled to 0-1)",
        source="scikit-learn's load_digits (UCI optical recognition of handwritten digits)",
        licence="CC BY 4.0 (UCI); shipped with scikit-learn (BSD-3-Clause)",
        size="1,797 sequences, 10 classes",
        load=_digits,
    ),
}


def load_dataset(name: str) -> SequenceData:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}: choose from {', '.join(DATASETS)} (see `rnnkit datasets`)")
    return DATASETS[name].load()
