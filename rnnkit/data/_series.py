"""Time series: bundled real series (statsmodels' data sets, offline) and the user's own CSV.

Missing values are never turned into zeros: gaps inside a series are filled by linear
interpolation between the neighbouring observations (their count is reported in the run's
metrics.json), and missing values at the start or the end are dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rnnkit.data._files import read_table


@dataclass(frozen=True)
class Series:
    """values (N, F) float64 in time order, the target in column 0; times (N,) as text."""

    values: np.ndarray
    columns: list[str]
    times: list[str]
    season: int | None
    frequency: str
    interpolated: int = 0  # missing values filled by interpolation


@dataclass(frozen=True)
class SeriesInfo:
    name: str
    description: str
    source: str
    licence: str
    frequency: str
    season: int | None
    load: Callable[[], Series]  # every column, the target first
    features: tuple[str, ...] = ()  # the columns given to the model beside the target by default
    note: str = ""  # said beside the results of a run on it


def _clean(values: np.ndarray, columns: list[str], times: list[str], season: int | None, frequency: str) -> Series:
    """Drop rows with a missing value at the ends; interpolate the gaps inside, column by column."""
    values = np.asarray(values, dtype=np.float64).reshape(len(values), -1)
    present = np.asarray(~np.isnan(values).any(axis=1))  # (N,) rows without a missing value
    if not present.any():
        raise ValueError("the series has no row without missing values")
    first, last = int(np.argmax(present)), len(present) - int(np.argmax(present[::-1]))
    values, times = values[first:last].copy(), times[first:last]
    missing = int(np.isnan(values).sum())
    steps = np.arange(len(values))
    for j in range(values.shape[1]):
        gap = np.isnan(values[:, j])
        if gap.any():
            values[gap, j] = np.interp(steps[gap], steps[~gap], values[~gap, j])
    return Series(values, columns, [str(t) for t in times], season, frequency, missing)


def _sunspots() -> Series:
    import statsmodels.api as sm

    df = sm.datasets.sunspots.load_pandas().data
    return _clean(df[["SUNACTIVITY"]].to_numpy(), ["SUNACTIVITY"], df["YEAR"].astype(int).tolist(), 11, "yearly")


def _co2() -> Series:
    import statsmodels.api as sm

    df = sm.datasets.co2.load_pandas().data
    return _clean(df[["co2"]].to_numpy(), ["co2"], [str(t.date()) for t in df.index], 52, "weekly")


def _tbilrate() -> Series:
    import statsmodels.api as sm

    df = sm.datasets.macrodata.load_pandas().data
    times = [f"{int(y)}Q{int(q)}" for y, q in zip(df["year"], df["quarter"])]
    return _clean(df[["tbilrate"]].to_numpy(), ["tbilrate"], times, 4, "quarterly")


SERIES: dict[str, SeriesInfo] = {
    "sunspots": SeriesInfo("sunspots", "yearly sunspot numbers, 1700-2008", "statsmodels.datasets.sunspots (NOAA NGDC yearly sunspot data)",
                           "public domain, as statsmodels states", "yearly", 11, _sunspots),
    "co2": SeriesInfo("co2", "weekly atmospheric CO2 at Mauna Loa, 1958-2001 (has gaps)",
                      "statsmodels.datasets.co2 (CDIAC; Keeling and Whorf 2004)", "public domain, as statsmodels states",
                      "weekly", 52, _co2),
    "tbilrate": SeriesInfo("tbilrate", "US 3-month treasury-bill rate, quarterly 1959-2009",
                           "statsmodels.datasets.macrodata (Federal Reserve Bank of St. Louis, FRED)",
                           "public domain, as statsmodels states", "quarterly", 4, _tbilrate),
    "sine": SeriesInfo("sine", "the tutorials' sine wave: sin(2 pi t / 50) plus noise (std 0.1), 2,000 steps, seeded",
                       "made by rnnkit (rnnkit.data._tutorials.sine)", "generated", "steps", 50, lambda: _tutorial("sine")),
    "yields": SeriesInfo("yields", "Moody's seasoned AAA corporate bond yield (percent), monthly 1919-2018; BAA "
                         "beside it (--features BAA): the offline stand-in for the tutorials' GS10",
                         "arch.data.default (Federal Reserve Bank of St. Louis, FRED: AAA, BAA)",
                         "public domain data (FRED); shipped with arch (NCSA)", "monthly", 12,
                         lambda: _tutorial("yields")),
    "stocks": SeriesInfo("stocks", "the S&P 500 index's daily close, 1999-2018; open, high, low and volume beside it "
                         "(--features Open,High,Low,Volume)", "arch.data.sp500 (Yahoo Finance)",
                         "shipped with arch (NCSA); prices as published by Yahoo Finance", "daily", None,
                         lambda: _tutorial("stocks"),
                         note="daily prices are close to a random walk: the naive forecast (tomorrow = today) is "
                              "hard to beat, and a model that matches it has learned that"),
    "weather": SeriesInfo("weather", "Seattle's daily maximum temperature (C), 2012-2015, with the minimum "
                          "temperature, precipitation and wind as features", "vega_datasets.data.seattle_weather "
                          "(NOAA, as shipped with the vega datasets)", "BSD-3-Clause (vega_datasets); NOAA data, "
                          "public domain", "daily", 365, lambda: _tutorial("weather"),
                          features=("temp_min", "precipitation", "wind")),
}


def _tutorial(name: str) -> Series:
    from rnnkit.data import _tutorials  # it imports this module: imported when first loaded

    loader: Callable[[], Series] = getattr(_tutorials, name)
    return loader()


def load_series(name: str, features: Sequence[str] | None = None) -> Series:
    """The bundled series name: its target, then the feature columns (None: the series' own
    default, SeriesInfo.features; () the target alone)."""
    if name not in SERIES:
        raise ValueError(f"unknown series {name!r}: choose from {', '.join(SERIES)} (see `rnnkit datasets`)")
    info = SERIES[name]
    full = info.load()
    wanted = list(info.features if features is None else features)
    missing = [c for c in wanted if c not in full.columns[1:]]
    if missing:
        raise ValueError(f"series {name} has no column {', '.join(map(repr, missing))}: its feature columns are "
                         f"{', '.join(full.columns[1:]) or 'none'}")
    index = [0, *(full.columns.index(c) for c in wanted)]
    return Series(full.values[:, index], [full.columns[i] for i in index], full.times, full.season, full.frequency,
                  full.interpolated)


def read_series_csv(path: str | Path, *, target: str, time_col: str | None = None,
                    features: Sequence[str] = (), season: int | None = None) -> Series:
    """A series from a CSV file: target column (first), optional feature columns, in file order
    (or sorted by time_col). Non-numeric values in a used column are an error."""
    import pandas as pd

    file = Path(path)
    df = read_table(file, numeric=True)
    wanted = [target, *features] + ([time_col] if time_col else [])
    missing = [c for c in wanted if c not in df.columns]
    if missing:
        raise ValueError(f"{file} has no column {', '.join(repr(c) for c in missing)}; it has {', '.join(map(str, df.columns))}")
    if time_col:
        df = df.sort_values(time_col, kind="stable")
    columns = [target, *features]
    for c in columns:
        numeric = pd.to_numeric(df[c], errors="coerce")
        bad = numeric.isna() & df[c].notna()
        if bad.any():
            raise ValueError(f"column {c!r} of {file} is not numeric: row {int(np.argmax(bad.to_numpy())) + 2} has {df[c][bad].iloc[0]!r}")
        infinite = np.isinf(numeric.to_numpy(dtype=np.float64))
        if infinite.any():  # a number, but none a model can learn from or be scored on
            at = int(np.argmax(infinite))
            raise ValueError(f"column {c!r} of {file} is not finite: row {at + 2} has {str(df[c].iloc[at])!r}; "
                             "remove the row or leave the value empty (missing values are interpolated)")
        df[c] = numeric
    times = df[time_col].astype(str).tolist() if time_col else [str(i) for i in range(len(df))]
    return _clean(df[columns].to_numpy(), columns, times, season, "from the file")
