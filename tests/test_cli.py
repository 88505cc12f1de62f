"""The command line, end to end on tiny work."""

from __future__ import annotations

import re

import pytest
import torch

from click.testing import CliRunner

import rnnkit
from rnnkit.cli import main


def test_demo_matches_torch_and_says_hello_world() -> None:
    result = CliRunner().invoke(main, ["demo"])
    assert result.exit_code == 0, result.output
    numbers = re.search(r"output (\S+)  final state (\S+)  gradients (\S+)", result.output)
    assert numbers is not None, result.output
    assert all(float(v) < 1e-12 for v in numbers.groups())
    assert 'prompt "he" -> "hello world"' in result.output


def test_version() -> None:
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0 and rnnkit.__version__ in result.output


def test_bench_writes_a_table_and_json(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json

    out = tmp_path / "bench.json"
    result = CliRunner().invoke(main, ["bench", "--cells", "gru,lstm_ln", "--sizes", "3,2,2,4",
                                       "--engines", "fused,reference", "--repeats", "3", "--budget", "0.1",
                                       "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "ratio = torch.nn ms / rnnkit ms" in result.output
    report = json.loads(out.read_text())
    rows = {(r["cell"], r["mode"]): r for r in report["rows"]}
    passes = ("forward", "forward+backward", "forward+backward+dx")
    assert set(rows) == {(c, m) for c in ("gru", "lstm_ln") for m in passes}
    for row in rows.values():
        assert row["size"] == [3, 2, 2, 4]
        assert set(row["ms"]) == {"torch", "fused", "reference"}
        assert abs(row["ratio"]["fused"] - row["ms"]["torch"] / row["ms"]["fused"]) < 1e-9
    assert report["sgemm_gflops"] > 0
    result = CliRunner().invoke(main, ["bench", "--cells", "gru", "--sizes", "3,2,2,4", "--engines", "fused",
                                       "--repeats", "3", "--budget", "0.1", "--no-input-grad", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert [r["mode"] for r in json.loads(out.read_text())["rows"]] == ["forward", "forward+backward"]


def test_bench_counts_the_input_gradient_product() -> None:
    from rnnkit import bench

    t, b, i, h = 5, 3, 7, 11
    forward = 2 * t * b * 4 * h * (i + h)
    assert bench.flops("lstm", (t, b, i, h), "forward") == forward
    assert bench.flops("lstm", (t, b, i, h), "forward+backward") == 3 * forward - 2 * t * b * 4 * h * i
    assert bench.flops("lstm", (t, b, i, h), "forward+backward+dx") == 3 * forward


def test_bench_dx_pass_differentiates_the_input(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The +dx row's backward reaches the input, the plain row's does not."""
    from rnnkit import bench

    seen: list[bool] = []
    real = bench._time

    def spy(fn):  # type: ignore[no-untyped-def]
        cells = fn.__closure__ or ()
        inputs = [c.cell_contents for c in cells if isinstance(c.cell_contents, torch.Tensor)]
        elapsed = real(fn)
        seen.extend(x.grad is not None for x in inputs if x.requires_grad)
        return elapsed

    monkeypatch.setattr(bench, "_time", spy)
    rows = bench.bench_one("gru", (3, 2, 2, 4), ["fused"], repeats=3, budget_s=0.1)
    assert [r.mode for r in rows] == ["forward", "forward+backward", "forward+backward+dx"]
    assert seen and all(seen)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--cells", "lstm,transformer"], "unknown cell ['transformer']"),
        (["--sizes", "20,1,1"], "expected T,B,I,H with four positive integers, got '20,1,1'"),
        (["--sizes", "20,0,1,20"], "expected T,B,I,H with four positive integers"),
        (["--engines", "fast"], "unknown engine ['fast']"),
    ],
)
def test_bench_rejects_bad_options(args: list[str], message: str) -> None:
    result = CliRunner().invoke(main, ["bench", *args])
    assert result.exit_code == 2
    assert message in result.output


def test_every_option_has_a_help_line() -> None:
    import click

    def options(command: click.Command, path: str) -> list[str]:
        if isinstance(command, click.Group):
            return [o for name, sub in command.commands.items() for o in options(sub, f"{path} {name}")]
        return [f"{path} {p.opts[0]}" for p in command.params
                if isinstance(p, click.Option) and not p.help and "--help" not in p.opts]

    assert options(main, "rnnkit") == []


def test_paired_medians_times_every_function_once_a_round_in_fresh_orders() -> None:
    """rnnkit.bench.paired_medians: each function once per round, as many rounds as asked when
    the budget is spent and no more than max_rounds, the order shuffled between rounds, before
    ahead of every call, and the median of each one's times."""
    from rnnkit.bench import paired_medians

    calls: list[str] = []
    fns = {name: (lambda name=name: calls.append(name)) for name in "abcd"}
    medians = paired_medians(fns, rounds=40, budget_s=0.0)
    assert sorted(medians) == list("abcd") and all(t >= 0 for t in medians.values())
    rounds = [tuple(calls[i : i + 4]) for i in range(0, len(calls), 4)]
    assert len(rounds) == 40 and all(sorted(r) == list("abcd") for r in rounds)
    assert len(set(rounds)) > 1  # not one fixed order
    calls.clear()
    cleared: list[int] = []
    paired_medians(fns, rounds=2, max_rounds=5, budget_s=60.0, before=lambda: cleared.append(len(calls)))
    assert len(calls) == 20  # the budget would allow more: max_rounds stops it
    assert cleared == list(range(20))  # before runs ahead of every call
