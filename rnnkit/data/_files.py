"""The user's own files: one reader for every CSV/TSV, text and list of examples rnnkit reads, so
that each failure to read one (no such file, an encoding it is not in, no rows, a ragged row, a
cell that is not a number) is a ValueError naming the file, and where it can the line, and what
to do.

Files as users have them: every reader takes
- encoding (read_text): None (the default) reads UTF-8 with or without a byte-order mark (what Excel's "CSV
  UTF-8" writes), and UTF-16 when the file starts with its byte-order mark (Excel's "Unicode
  text"); any other Python codec name reads that encoding (``gb18030`` for GBK and GB2312). When
  a file is not in the encoding, the error says which common encoding reads it and the option
  that selects it;
- delimiter (tables): None sniffs one of comma, semicolon, tab and bar from the first lines (tab
  for .tsv and .tab files); a character forces it;
and line ends of any system (CRLF, CR, LF) read the same.
"""

from __future__ import annotations

import codecs
import csv
import io
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

DELIMITERS = ",;\t|"
"""What a table's delimiter is sniffed among."""

DELIMITER_NAMES = {"tab": "\t", "\\t": "\t", "comma": ",", "semicolon": ";", "bar": "|", "pipe": "|", "space": " "}
"""Names that --delimiter accepts beside the character itself."""

MISSING = frozenset({"", "na", "n/a", "nan", "null", "none", "-", "#n/a"})
"""Cells of a numeric column that mean "no value" (compared in lower case)."""


def check_encoding(encoding: str | None) -> str | None:
    """encoding as given, or ValueError if Python knows no codec of that name."""
    if encoding is None:
        return None
    try:
        codecs.lookup(encoding)
    except (LookupError, TypeError):
        raise ValueError(f"unknown encoding {encoding!r}: give a name such as utf-8, gb18030 (GBK, GB2312), big5, "
                         "shift_jis, cp1252 or latin-1") from None
    return encoding


def check_delimiter(delimiter: str | None) -> str | None:
    """The one character a delimiter name or character stands for (tab, \\t, ';', ...); None stays
    None (sniffed)."""
    if delimiter is None:
        return None
    character = DELIMITER_NAMES.get(delimiter.lower(), delimiter)
    if len(character) != 1 or character in "\"'\r\n" or character.isalnum():
        raise ValueError(f"a delimiter is one character such as ',', ';', '|' or tab, got {delimiter!r}")
    return character


# --- decoding ------------------------------------------------------------------------------------

def _share(text: str, ranges: tuple[tuple[int, int], ...]) -> float:
    """The share of text's non-ASCII characters that lie in ranges (inclusive code point pairs)."""
    other = [ord(c) for c in text if ord(c) > 127]
    if not other:
        return 0.0
    return sum(any(lo <= c <= hi for lo, hi in ranges) for c in other) / len(other)


_HIRAGANA = ((0x3040, 0x309F),)
_HANGUL = ((0xAC00, 0xD7A3),)
_CHINESE = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x3000, 0x303F), (0xFF00, 0xFFEF))
_GUESSES = (
    # (codec, what it is, the text it decodes to must pass this)
    # Japanese first: Shift JIS also decodes as Chinese characters, but only Japanese has hiragana
    ("shift_jis", "Japanese", lambda t: _share(t, _HIRAGANA) >= 0.1),
    ("gb18030", "Chinese; GB18030 covers GBK and GB2312", lambda t: _share(t, _CHINESE) >= 0.9),
    ("cp949", "Korean", lambda t: _share(t, _HANGUL) >= 0.5),
    ("cp1252", "Western European, as Excel saves it", lambda t: True),
)


def guess_encoding(data: bytes) -> tuple[str, str, str] | None:
    """(codec, what it is, a sample line) of the first common encoding that reads data as text of
    its script, or None. A guess for an error message, never applied silently: bytes alone do not
    always tell encodings apart (EUC-KR Korean also decodes as Chinese)."""
    for codec, what, plausible in _GUESSES:
        try:
            text = data.decode(codec)
        except UnicodeDecodeError:
            continue
        if plausible(text):
            sample = next((line.strip() for line in text.splitlines() if any(ord(c) > 127 for c in line)), "")
            return codec, what, sample[:40]
    return None


def _not_decoded(file: Path, encoding: str, error: UnicodeDecodeError, data: bytes) -> ValueError:
    name = "UTF-8" if encoding == "utf-8-sig" else encoding
    what = f"{file} is not {name} text ({error.reason} at byte {error.start})"
    guess = guess_encoding(data)
    if guess is None:
        return ValueError(f"{what}: give its encoding with --encoding NAME, or save it as UTF-8")
    codec, kind, sample = guess
    return ValueError(f"{what}; it reads as {codec} ({kind}): {sample!r}. Pass --encoding {codec}, or save it as "
                      "UTF-8")


def read_text(path: str | Path, *, encoding: str | None = None) -> str:
    """The text of the file at path, its line ends made "\\n" (see the module docstring for
    encoding). ValueError names a file that is missing, a folder, unreadable, or not in the
    encoding (with the encoding it reads as, if a common one does)."""
    file = Path(path)
    try:
        data = file.read_bytes()
    except FileNotFoundError:
        raise ValueError(f"no such file: {file}") from None
    except IsADirectoryError:
        raise ValueError(f"{file} is a folder, not a file") from None
    except OSError as error:
        raise ValueError(f"cannot read {file}: {error.strerror}") from None
    codec = check_encoding(encoding) or "utf-8"
    if encoding is None and data[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE):
        codec = "utf-16"  # Excel's "Unicode text": UTF-16 with its byte-order mark
    if codecs.lookup(codec).name == "utf-8":
        codec = "utf-8-sig"  # a byte-order mark belongs to the encoding, not to the first line
    try:
        text = data.decode(codec)
    except UnicodeDecodeError as error:
        raise _not_decoded(file, codec, error, data) from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def read_lines(path: str | Path, *, encoding: str | None = None) -> list[str]:
    """The non-blank lines of a text file, one example each (line ends stripped)."""
    return [line for line in read_text(path, encoding=encoding).split("\n") if line.strip()]


# --- tables ------------------------------------------------------------------------------------

_QUOTED = re.compile(r'"[^"]*"')


def sniff_delimiter(text: str, *, suffix: str = "") -> str:
    """The delimiter of a table whose text is text: tab for .tsv and .tab files; else the one of
    DELIMITERS found as many times on each of the first lines (outside quotes), preferring tab,
    semicolon and bar to a comma when several are (a semicolon table's cells hold decimal commas);
    else what csv.Sniffer finds; a comma when nothing splits the lines (one column)."""
    if suffix.lower() in (".tsv", ".tab"):
        return "\t"
    lines = [_QUOTED.sub("", line) for line in text.split("\n", 50)[:50] if line.strip()]
    steady = [d for d in "\t;|," if lines and len({line.count(d) for line in lines}) == 1 and lines[0].count(d)]
    if steady:
        return steady[0]
    try:
        return csv.Sniffer().sniff("\n".join(lines), delimiters=DELIMITERS).delimiter
    except csv.Error:
        return ","



def read_table(path: str | Path, *, delimiter: str | None = None, encoding: str | None = None) -> pd.DataFrame:
    """The table in path as text, with its header row as column names (stripped of surrounding
    spaces); a missing cell is "" (a row with too few fields has "" in the rest). delimiter None:
    sniffed (sniff_delimiter). A file with a header but no rows is an error. The delimiter used is
    in ``table.attrs["delimiter"]``."""
    import pandas as pd

    file = Path(path)
    text = read_text(file, encoding=encoding)
    if not text.strip():
        raise ValueError(f"{file} is empty: expected a header row, then one row per example")
    sep = check_delimiter(delimiter) or sniff_delimiter(text, suffix=file.suffix)
    try:
        table = pd.read_csv(io.StringIO(text), sep=sep, engine="python", dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise ValueError(f"{file} is empty: expected a header row, then one row per example") from None
    except (pd.errors.ParserError, csv.Error) as error:
        raise ValueError(f"cannot read {file} as a table with delimiter {sep!r}: {str(error).strip()}") from None
    table.columns = [str(c).strip() for c in table.columns]
    if table.empty:
        shown = ", ".join(table.columns)
        more = "" if len(table.columns) > 1 or delimiter else " (give its delimiter with --delimiter if it has several)"
        raise ValueError(f"{file} has a header row ({shown}) but no rows of data{more}")
    table = table.fillna("")
    table.attrs["delimiter"] = sep
    return table


_NUMBER = re.compile(r"^[+-]?(\d+([.,]\d*)?|[.,]\d+)([eE][+-]?\d+)?$")


def to_numbers(cells: pd.Series, *, decimal_comma: bool) -> tuple[np.ndarray, np.ndarray]:
    """Text cells -> (values (N,) float64, positions of the cells that hold something yet are no
    number). A cell in MISSING is NaN and not counted. decimal_comma: "1,5" reads 1.5 (tables whose
    delimiter is not a comma, as Excel writes them where the comma is the decimal mark)."""
    import pandas as pd

    text = cells.astype(str).str.strip()
    missing = text.str.lower().isin(MISSING)
    if decimal_comma:
        text = text.where(~text.str.fullmatch(_NUMBER.pattern), text.str.replace(",", ".", regex=False))
    values = pd.to_numeric(text.where(~missing), errors="coerce").to_numpy(np.float64)
    return values, np.flatnonzero(~missing.to_numpy() & np.isnan(values))


def read_numbers(path: str | Path, *, encoding: str | None = None, delimiter: str | None = None) -> np.ndarray:
    """Rows of numbers (N, F) float32, one example per line, the delimiter sniffed as for tables
    (comma, semicolon, tab or bar). A first line that is not all numbers is taken as a header and
    skipped; any other cell that is not a finite number is an error naming its line and column."""
    lines = read_lines(path, encoding=encoding)
    sep = check_delimiter(delimiter) or sniff_delimiter("\n".join(lines), suffix=Path(path).suffix)

    def number(cell: str) -> float | None:
        cell = cell.strip()
        if sep != "," and _NUMBER.match(cell):  # a decimal comma
            cell = cell.replace(",", ".")
        try:
            return float(cell)
        except ValueError:
            return None

    rows = [next(csv.reader([line], delimiter=sep)) for line in lines]
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
