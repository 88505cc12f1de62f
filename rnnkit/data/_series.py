"""Time series: bundled real series (statsmodels' data sets, offline) and the user's own CSV.

Missing values are never turned into zeros: gaps inside a series are filled by linear
interpolation between the neighbouring observations (their count is reported in the run's
metrics.json), and missing values at the start or the end are dropped.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rnnkit._extras import needs_extras
from rnnkit.data._files import read_table, to_numbers


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


@needs_extras
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


@needs_extras
def read_series_csv(path: str | Path, *, target: str, time_col: str | None = None,
                    features: Sequence[str] = (), season: int | None = None, encoding: str | None = None,
                    delimiter: str | None = None) -> Series:
    """A series from a CSV file: target column (first), optional feature columns, in file order
    or in the order of time_col (check_times). encoding and delimiter as
    rnnkit.data._files.read_table takes them; with a delimiter other than a comma, "1,5" reads as
    1.5. A value that is not a number in a used column is an error; an empty one (or NA, NaN, null)
    is missing and interpolated."""
    file = Path(path)
    df = read_table(file, encoding=encoding, delimiter=delimiter)
    wanted = [target, *features] + ([time_col] if time_col else [])
    missing = [c for c in wanted if c not in df.columns]
    if missing:
        raise ValueError(f"{file} has no column {', '.join(repr(c) for c in missing)}; it has {', '.join(map(str, df.columns))}")
    columns = [target, *features]
    values = np.empty((len(df), len(columns)))  # (N, F) in file order
    for j, c in enumerate(columns):
        values[:, j], bad = to_numbers(df[c], decimal_comma=df.attrs["delimiter"] != ",")
        if len(bad):
            raise ValueError(f"column {c!r} of {file} is not numeric: row {bad[0] + 2} has {df[c].iloc[bad[0]]!r}")
        infinite = np.flatnonzero(np.isinf(values[:, j]))
        if len(infinite):  # a number, but none a model can learn from or be scored on
            at = int(infinite[0])
            raise ValueError(f"column {c!r} of {file} is not finite: row {at + 2} has {str(df[c].iloc[at])!r}; "
                             "remove the row or leave the value empty (missing values are interpolated)")
    if time_col:
        order = check_times(df[time_col].tolist(), f"column {time_col!r} of {file}")
        values, times = values[order], [str(df[time_col].iloc[i]).strip() for i in order]
    else:
        times = [str(i) for i in range(len(df))]
    return _clean(values, columns, times, season, "from the file")


def check_times(cells: Sequence[str], where: str) -> np.ndarray:
    """The order (N,) that sorts a time column's cells: numbers, else dates and times, else text.
    Repeated times are an error naming the first rows (line numbers of a file with a header);
    times out of order are sorted, with a warning; unevenly spaced ones get a warning (a
    recurrent model reads rows as equal steps; calendar steps such as months, which pandas infers,
    are even)."""
    import pandas as pd

    text = pd.Series([str(c).strip() for c in cells])
    kind, keys = "numbers", pd.to_numeric(text, errors="coerce")
    if keys.isna().any():
        kind, keys = "dates", pd.to_datetime(text, errors="coerce", format="mixed")
    if keys.isna().any():
        kind, keys = "text", text
    empty = np.flatnonzero(text == "")
    if len(empty):
        raise ValueError(f"{where}: row {empty[0] + 2} has no time: give every row its time, or leave out the time "
                         "column")
    repeated = keys.duplicated(keep=False).to_numpy()
    if repeated.any():
        first = keys[repeated].iloc[0]
        rows = (np.flatnonzero((keys == first).to_numpy()) + 2).tolist()
        count = int(keys.duplicated().sum())
        raise ValueError(f"{where} repeats times: {text[rows[0] - 2]!r} is on rows {', '.join(map(str, rows[:5]))}"
                         f"{' and more' if len(rows) > 5 else ''} ({count} repeated row{'s' if count > 1 else ''} in "
                         "all); a series has one row per time: combine or remove the repeats")
    order = np.argsort(keys.to_numpy(), kind="stable")
    log = logging.getLogger("rnnkit")
    if (order != np.arange(len(order))).any():
        first = int(np.flatnonzero(order != np.arange(len(order)))[0])
        log.warning("warning: %s is not in time order (first at row %d, %r); the rows were sorted by it%s", where,
                    first + 2, text[first], " as text" if kind == "text" else "")
    if kind != "text" and len(order) > 2:
        ordered = keys.to_numpy()[order]
        steps = pd.Series(np.diff(ordered))
        counts = steps.value_counts()
        with warnings.catch_warnings():  # pandas 3 warns that the frequency's type will change: only None matters
            warnings.simplefilter("ignore")
            calendar = kind == "dates" and pd.infer_freq(pd.DatetimeIndex(ordered)) is not None  # monthly, business days
        if len(counts) > 1 and not calendar:
            usual = counts.index[0]
            odd = np.flatnonzero((steps != usual).to_numpy())
            at = int(order[odd[0] + 1])
            log.warning("warning: %s is not evenly spaced: %d of %d steps differ from the usual %s (the first "
                        "before row %d, %r); the model reads rows as equal steps, so fill the gaps or resample "
                        "if that matters", where, len(odd), len(steps), _step(usual), at + 2, text[at])
    return order


def _step(value: object) -> str:
    """A time step for a message: 1 day, 2 hours, 0.5."""
    import pandas as pd

    if isinstance(value, (pd.Timedelta, np.timedelta64)):
        shown = str(pd.Timedelta(value)).replace("0 days ", "").removesuffix(" 00:00:00")
        return "1 day" if shown == "1 days" else shown
    return f"{value:g}" if isinstance(value, (float, np.floating)) else str(value)
