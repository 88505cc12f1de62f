"""A forecast CSV's time column is checked as forecasting libraries check it before they fit:
repeated times are refused, times out of order are sorted with a warning, and uneven spacing is
said."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from click.testing import CliRunner

from rnnkit.cli import main
from rnnkit.data import read_series_csv


def _csv(path: Path, times: list[str], values: list[float] | None = None) -> Path:
    values = values if values is not None else [float(i) for i in range(len(times))]
    path.write_text("date,y\n" + "".join(f"{t},{v}\n" for t, v in zip(times, values)))
    return path


def days(n: int, start: int = 1) -> list[str]:
    import datetime as dt

    return [str(dt.date(2021, 1, 1) + dt.timedelta(days=start - 1 + i)) for i in range(n)]


def test_repeated_times_are_refused_naming_the_rows(tmp_path: Path) -> None:
    times = (days(28) * 3)  # the same 28 dates three times over: three series stacked, not one
    with pytest.raises(ValueError, match=r"column 'date' of .*dup.csv repeats times: '2021-01-01' is on rows 2, 30, 58 "
                                         r"\(56 repeated rows in all\); a series has one row per time"):
        read_series_csv(_csv(tmp_path / "dup.csv", times), target="y", time_col="date")


def test_times_out_of_order_are_sorted_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    times = days(10)
    shuffled = [times[i] for i in (0, 1, 2, 5, 3, 4, 6, 7, 8, 9)]
    with caplog.at_level(logging.WARNING, logger="rnnkit"):
        series = read_series_csv(_csv(tmp_path / "u.csv", shuffled, [float(t[-2:]) for t in shuffled]), target="y",
                                 time_col="date")
    assert series.times == times and series.values[:, 0].tolist() == list(range(1, 11))
    assert [r.getMessage() for r in caplog.records] == [
        f"warning: column 'date' of {tmp_path / 'u.csv'} is not in time order (first at row 5, '2021-01-06'); the "
        "rows were sorted by it"]


def test_numbers_as_times_sort_as_numbers(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="rnnkit"):
        series = read_series_csv(_csv(tmp_path / "n.csv", ["8", "9", "10", "11"]), target="y", time_col="date")
    assert series.times == ["8", "9", "10", "11"] and not caplog.records  # as text, "10" < "8"


def test_uneven_spacing_is_said(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    times = days(20)
    del times[7], times[12]  # two gaps of two days
    with caplog.at_level(logging.WARNING, logger="rnnkit"):
        read_series_csv(_csv(tmp_path / "g.csv", times), target="y", time_col="date")
    [record] = caplog.records
    assert record.getMessage().startswith(
        f"warning: column 'date' of {tmp_path / 'g.csv'} is not evenly spaced: 2 of 17 steps differ from the usual "
        "1 day (the first before row 9, '2021-01-09')")


def test_even_times_say_nothing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="rnnkit"):
        for name, times in (("months.csv", [f"2020-{m:02d}-01" for m in range(1, 13)]),  # months differ in days
                            ("hours.csv", [f"2020-01-01 {h:02d}:00" for h in range(24)]),
                            ("years.csv", [str(y) for y in range(1700, 1720)])):
            read_series_csv(_csv(tmp_path / name, times), target="y", time_col="date")
    assert not caplog.records


def test_a_row_without_a_time(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"column 'date' of .* row 4 has no time"):
        read_series_csv(_csv(tmp_path / "m.csv", ["1", "2", "", "4"]), target="y", time_col="date")


def test_the_command_line_refuses_repeats_in_one_line(tmp_path: Path) -> None:
    path = _csv(tmp_path / "dup.csv", days(28) * 3)
    result = CliRunner().invoke(main, ["train", "forecast", "--data", str(path), "--target", "y", "--time-col", "date",
                                       "--out", str(tmp_path / "run")])
    assert result.exit_code == 1 and result.output.count("\n") == 1, result.output
    assert result.output.startswith("Error: column 'date' of") and "repeats times" in result.output
    assert not (tmp_path / "run").exists() and not (tmp_path / "run.partial").exists()


def test_forecast_continues_a_file_in_the_runs_time_order(tmp_path: Path) -> None:
    """`rnnkit forecast RUN --data FILE` sorts FILE by the run's time column when FILE has it."""
    values = [float(v % 7) for v in range(60)]
    _csv(tmp_path / "train.csv", days(60), values)
    runner = CliRunner()
    done = runner.invoke(main, ["train", "forecast", "--data", str(tmp_path / "train.csv"), "--target", "y",
                                "--time-col", "date", "--window", "6", "--hidden", "4", "--epochs", "1", "--out",
                                str(tmp_path / "run")])
    assert done.exit_code == 0, done.output
    times, tail = days(10, start=61), [float(v % 7) for v in range(60, 70)]
    _csv(tmp_path / "sorted.csv", times, tail)
    order = [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]
    _csv(tmp_path / "reversed.csv", [times[i] for i in order], [tail[i] for i in order])
    outputs = [runner.invoke(main, ["forecast", str(tmp_path / "run"), "--steps", "2", "--data", str(tmp_path / name),
                                    "--out", str(tmp_path / f"{name}.out")]) for name in ("sorted.csv", "reversed.csv")]
    assert all(o.exit_code == 0 for o in outputs), [o.output for o in outputs]
    assert outputs[0].output.replace("sorted", "reversed") == outputs[1].output
