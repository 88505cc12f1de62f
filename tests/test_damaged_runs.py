"""Every value a command reads from a run folder is checked: a run whose config.json or
extras.json holds a missing key or a value of the wrong type or size gets the one-line "the run
folder is damaged" error (exit status 1), never a traceback. Each command is run on runs of its
task, with each of their values damaged in turn."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from rnnkit.cli import main

_DELETE = object()
DAMAGES: dict[str, Any] = {"missing": _DELETE, "text": "abc", "negative": -1, "null": None, "list": [1]}


def _train(root: Path) -> dict[str, list[str]]:
    """Tiny runs of every task, and the command that uses each (RUN stands for its folder)."""
    (root / "texts.csv").write_text("text,label\n" + "".join(f"{'good fun' if i % 2 else 'bad dull'} {i},"
                                                           f"{'pos' if i % 2 else 'neg'}\n" for i in range(40)))
    (root / "lm.txt").write_text("the quick brown fox jumps over the lazy dog. " * 60)
    (root / "pairs.tsv").write_text("".join(f"{i}+{i}\t{2 * i}\n" for i in range(60)))
    (root / "pixels.csv").write_text(",".join(str(i % 17) for i in range(64)) + "\n")
    tiny = ["--epochs", "1", "--hidden", "8"]
    trainings = {
        "digits": (["classify", *tiny], ["predict", "RUN", "--input", str(root / "pixels.csv")]),
        "texts": (["classify", "--data", str(root / "texts.csv"), "--text-col", "text", "--label-col", "label", *tiny],
                  ["predict", "RUN", "good fun"]),
        "forecast": (["forecast", "--window", "12", *tiny], ["forecast", "RUN", "--steps", "3", "--out",
                                                              str(root / "f.csv")]),
        "lm": (["lm", "--text", str(root / "lm.txt"), "--layers", "1", "--bptt", "20", *tiny],
               ["generate", "RUN", "--prompt", "the", "--length", "5", "--seed", "0"]),
        "seq2seq": (["seq2seq", "--data", str(root / "pairs.tsv"), *tiny], ["translate", "RUN", "1+1"]),
        "caption": (["caption", *tiny], ["caption", "RUN", "--input", str(root / "pixels.csv")]),
        "adding": (["adding", "--steps", "10", "--train-size", "200", *tiny], ["diagnose", "RUN", "--out",
                                                                               str(root / "diagnosis")]),
    }
    for name, (train, _) in trainings.items():
        result = CliRunner().invoke(main, ["train", *train, "--out", str(root / name)])
        assert result.exit_code == 0, result.output
    return {name: use for name, (_, use) in trainings.items()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, list[str]]]:
    root = tmp_path_factory.mktemp("runs")
    return root, _train(root)


def _paths(content: dict[str, Any], skip: tuple[str, ...]) -> Iterator[tuple[str, ...]]:
    """The keys of a JSON object and of the objects in it, as paths ("model", "hidden_size")."""
    for key, value in content.items():
        if key in skip:
            continue
        yield (key,)
        if isinstance(value, dict):
            yield from ((key, *p) for p in _paths(value, skip))


def _damage(content: dict[str, Any], path: tuple[str, ...], damage: Any) -> None:
    for key in path[:-1]:
        content = content[key]
    if damage is _DELETE:
        del content[path[-1]]
    else:
        content[path[-1]] = damage


TASKS = ("digits", "texts", "forecast", "lm", "seq2seq", "caption", "adding")


@pytest.mark.parametrize("name", TASKS)
def test_every_damaged_value_is_one_line(runs: tuple[Path, dict[str, list[str]]], tmp_path: Path, name: str) -> None:
    root, uses = runs
    use: Callable[[Path], list[str]] = lambda run: [str(run) if a == "RUN" else a for a in uses[name]]  # noqa: E731
    clean = CliRunner().invoke(main, use(root / name))
    assert clean.exit_code == 0, clean.output
    tried, refused = 0, 0
    for file in ("config.json", "extras.json"):
        content = json.loads((root / name / file).read_text())
        for path in _paths(content, ("pipeline",) if name != "adding" else ()):
            for damage_name, damage in DAMAGES.items():
                if name == "adding" and damage_name not in ("missing", "text"):  # diagnose takes 0.1 s a run
                    continue
                run = tmp_path / f"{name}-{'.'.join(path)}-{damage_name}"
                shutil.copytree(root / name, run)
                damaged = json.loads((run / file).read_text())
                _damage(damaged, path, damage)
                (run / file).write_text(json.dumps(damaged))
                result = CliRunner().invoke(main, use(run))
                where = f"{name}: {file} {'.'.join(path)} = {damage_name}"
                assert result.exception is None or isinstance(result.exception, SystemExit), (
                    f"{where}: a traceback ({result.exception!r})")
                assert result.exit_code in (0, 1), f"{where}: {result.output}"
                if result.exit_code == 1:
                    assert result.output.startswith("Error: ") and result.output.count("\n") == 1, (
                        f"{where}: {result.output}")
                    assert "damaged" in result.output or " run, not a" in result.output, f"{where}: {result.output}"
                    refused += 1
                tried += 1
                shutil.rmtree(run)
    assert tried >= 40 and refused >= tried // 3, f"{name}: {refused} of {tried} damages refused"


def test_the_issues_case(runs: tuple[Path, dict[str, list[str]]], tmp_path: Path) -> None:
    """"hidden_size": "abc" in a classify run's config.json."""
    root, _ = runs
    shutil.copytree(root / "texts", tmp_path / "run")
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    config["model"]["hidden_size"] = "abc"
    (tmp_path / "run" / "config.json").write_text(json.dumps(config))
    result = CliRunner().invoke(main, ["predict", str(tmp_path / "run"), "good fun"])
    assert result.exit_code == 1
    assert result.output == (f"Error: {tmp_path / 'run' / 'config.json'} has a wrong value (model: hidden_size must be "
                             "an int, got str 'abc'): the run folder is damaged: train it again, or restore the file "
                             "from a copy\n")
