"""Sequence pairs for seq2seq: the user's TSV (source TAB target per line) and two seeded
generators, addition and date normalisation."""

from __future__ import annotations

import datetime as dt
import random
from pathlib import Path

from rnnkit.data._files import check_delimiter, read_text

MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December")
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def read_pairs(path: str | Path, *, encoding: str | None = None, delimiter: str | None = None) -> list[tuple[str, str]]:
    """(source, target) per line of a text file, split at the first delimiter of each line.
    delimiter None: a tab, or if no line holds one, a semicolon or a bar when every line holds
    one (a comma only when asked for: sentences hold commas). encoding as
    rnnkit.data._files.read_text takes it. Blank lines are skipped."""
    path = Path(path)
    text = read_text(path, encoding=encoding)
    lines = [line for line in text.split("\n") if line.strip()]
    sep = check_delimiter(delimiter)
    if sep is None:
        sep = "\t"
        if lines and not any("\t" in line for line in lines):
            sep = next((d for d in ";|" if all(d in line for line in lines)), "\t")
    pairs = []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        if sep not in line:
            name = "tab" if sep == "\t" else repr(sep)
            raise ValueError(f"{path}, line {number}: no {name} between source and target: {line[:60]!r}"
                             + ("" if delimiter else " (another delimiter: --delimiter)"))
        source, target = line.split(sep, 1)
        if not source.strip() or not target.strip():
            raise ValueError(f"{path}, line {number}: empty {'source' if not source.strip() else 'target'}")
        pairs.append((source, target))
    if len(pairs) < 10:
        raise ValueError(f"{path} has {len(pairs)} pair(s): too few to split into train, validation and test")
    return pairs


def addition(n: int = 50000, *, digits: int = 3, seed: int = 0) -> list[tuple[str, str]]:
    """n distinct problems "a+b" -> "a+b's value", as in the Keras addition example: each number
    has a digit count drawn uniformly from 1..digits, then its digits uniformly (no leading
    zero but for 0 itself)."""
    rng = random.Random(seed)
    limit = min(n, (10**digits) ** 2)
    seen: dict[str, str] = {}
    while len(seen) < limit:
        a, b = (rng.randint(0 if k == 1 else 10 ** (k - 1), 10**k - 1) for k in (rng.randint(1, digits), rng.randint(1, digits)))
        seen.setdefault(f"{a}+{b}", str(a + b))
    return list(seen.items())


def _format(day: dt.date, style: int) -> str:
    d, m, y = day.day, day.month, day.year
    month, mon, weekday = MONTHS[m - 1], MONTHS[m - 1][:3], DAYS[day.weekday()]
    return [
        f"{d:02d} {month} {y}",  # 07 March 2021
        f"{d} {month} {y}",  # 7 March 2021
        f"{month} {d}, {y}",  # March 7, 2021
        f"{mon} {d} {y}",  # Mar 7 2021
        f"{d:02d} {mon} {y}",  # 07 Mar 2021
        f"{weekday}, {month} {d}, {y}",  # Sunday, March 7, 2021
        f"{m:02d}/{d:02d}/{y}",  # 03/07/2021 (US order)
        f"{d:02d}.{m:02d}.{y}",  # 07.03.2021 (European order)
        f"{y}/{m:02d}/{d:02d}",  # 2021/03/07
        f"{d} {mon.lower()} {y}",  # 7 mar 2021
        f"{month.upper()} {d} {y}",  # MARCH 7 2021
    ][style]


DATE_STYLES = 11


def dates(n: int = 30000, *, seed: int = 0) -> list[tuple[str, str]]:
    """n distinct human-written dates -> ISO 8601 (2021-03-07): a day drawn uniformly from
    1900-01-01 .. 2099-12-31, written in one of DATE_STYLES styles drawn uniformly (see _format;
    the only all-number styles are the US month/day/year with slashes and the European
    day.month.year with dots, so that no source is ambiguous)."""
    rng = random.Random(seed)
    first, span = dt.date(1900, 1, 1), (dt.date(2099, 12, 31) - dt.date(1900, 1, 1)).days
    seen: dict[str, str] = {}
    while len(seen) < n:
        day = first + dt.timedelta(days=rng.randint(0, span))
        seen.setdefault(_format(day, rng.randrange(DATE_STYLES)), day.isoformat())
    return list(seen.items())


PAIR_SETS = {
    "addition": ("addition of two numbers of 1 to 3 digits, '123+45' -> '168' (the Keras example); 50,000 "
                 "distinct problems, generated with a seed", addition),
    "dates": ("dates in 11 human styles -> ISO 8601, 'Sunday, March 7, 2021' -> '2021-03-07'; 30,000 distinct "
              "sources, generated with a seed", dates),
}
