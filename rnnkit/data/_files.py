"""The user's own files: one reader for every CSV/TSV and list of examples rnnkit reads, so that
each failure to read one (no such file, not UTF-8, no rows, a ragged row, a cell that is not a
number) is a ValueError naming the file, and where it can the line, and what to do."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd


def read_table(path: str | Path, *, sep: str | None = None, numeric: bool = False) -> pd.DataFrame:
    """The table in path, with its header row as column names. sep None: sniffed (tab for .tsv and
    .tab files). Without numeric every cell is text and a missing one is "" (a row with too few
    fields has "" in the rest); with numeric pandas parses numbers and a missing cell is NaN.
    A file with a header but no rows is an error."""
    import csv

    import pandas as pd

    file = Path(path)
    if not file.is_file():
        raise ValueError(f"no such file: {file}")
    if file.stat().st_size == 0:
        raise ValueError(f"{file} is empty: expected a header row, then one row per example")
    if sep is None and file.suffix.lower() in (".tsv", ".tab"):
        sep = "\t"
    try:
        if numeric:
            table = pd.read_csv(file, sep=sep or ",", encoding="utf-8")
        else:
            table = pd.read_csv(file, sep=sep, engine="python", dtype=str, keep_default_na=False, encoding="utf-8")
    except UnicodeDecodeError as error:
        raise _not_utf8(file, error) from None
    except pd.errors.EmptyDataError:
        raise ValueError(f"{file} is empty: expected a header row, then one row per example") from None
    except (pd.errors.ParserError, csv.Error) as error:
        raise ValueError(f"cannot read {file} as CSV/TSV: {str(error).strip()}") from None
    if table.empty:
        raise ValueError(f"{file} has a header row ({', '.join(map(str, table.columns))}) but no rows of data")
    return table if numeric else table.fillna("")


def _not_utf8(file: Path, error: UnicodeDecodeError) -> ValueError:
    return ValueError(f"{file} is not UTF-8 text ({error.reason} at byte {error.start}): save it as UTF-8 "
                      "(e.g. `iconv -f latin1 -t utf-8`)")


def read_text(path: str | Path) -> str:
    """The content of a UTF-8 text file."""
    file = Path(path)
    try:
        return file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"no such file: {file}") from None
    except UnicodeDecodeError as error:
        raise _not_utf8(file, error) from None
    except OSError as error:
        raise ValueError(f"cannot read {file}: {error.strerror}") from None


def read_lines(path: str | Path) -> list[str]:
    """The non-blank lines of a UTF-8 text file, one example each (newline stripped)."""
    return [line.rstrip("\r") for line in read_text(path).split("\n") if line.strip()]


def read_numbers(path: str | Path) -> np.ndarray:
    """Rows of comma-separated numbers (N, F) float32, one example per line. A first line that is not
    all numbers is taken as a header and skipped; any other cell that is not a finite number is an
    error naming its line and column."""
    import csv

    def number(cell: str) -> float | None:
        try:
            return float(cell)
        except ValueError:
            return None

    rows = [next(csv.reader([line])) for line in read_lines(path)]
    start = 1 if rows and any(number(c) is None for c in rows[0]) else 0  # a header: not all numbers
    if len(rows) <= start:
        raise ValueError(f"{path} has no rows of numbers")
    width = len(rows[start])
    values = np.empty((len(rows) - start, width), dtype=np.float32)
    for i, row in enumerate(rows[start:]):
        if len(row) != width:
            raise ValueError(f"{path}, row {start + i + 1}: {len(row)} values where row {start + 1} has {width}")
        for j, cell in enumerate(row):
            value = number(cell)
            if value is None or not math.isfinite(value):
                raise ValueError(f"{path}, row {start + i + 1}, column {j + 1}: {cell!r} is not a finite number")
            values[i, j] = value
    return values


def check_writable(path: str | Path) -> None:
    """Before work whose result goes to path: its folder exists and can be written, and path is not
    a folder."""
    import os

    target = Path(path)
    folder = target.parent
    if not folder.is_dir():
        raise ValueError(f"cannot write {target}: {folder} is not a folder")
    if target.is_dir():
        raise ValueError(f"cannot write {target}: it is a folder")
    if not os.access(folder, os.W_OK):
        raise ValueError(f"cannot write {target}: {folder} is not writable")
