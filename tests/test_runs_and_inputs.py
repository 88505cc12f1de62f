"""Runs as users have them. Every value a command reads from a run folder is checked: a run whose
config.json or extras.json holds a missing key or a value of the wrong type or size gets the
one-line "the run folder is damaged" error (exit status 1), never a traceback; each command is run
on runs of its task, with each of their values damaged in turn. And every command that reads the
user's files (training data, --input, forecast --data) reads them as other tools write them, with
the options that say how."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from rnnkit.cli import main
from rnnkit.pipelines import open_task
from rnnkit.runs import NotARunError

_DELETE = object()
DAMAGES: dict[str, Any] = {"missing": _DELETE, "text": "abc", "negative": -1, "null": None, "list": [1]}


def _train(root: Path) -> dict[str, list[str]]:
    """Tiny runs of every task, and the command that uses each (RUN stands for its folder)."""
    # the training files as other tools write them, read with the options that say so
    (root / "texts.csv").write_bytes(("text;label\r\n" + "".join(
        f"{'好玩 good fun' if i % 2 else '无聊 bad dull'} {i};{'pos' if i % 2 else 'neg'}\r\n" for i in range(40)
    )).encode("gbk"))
    (root / "lm.txt").write_bytes("敏捷的棕色狐狸 the quick brown fox jumps over the lazy dog.\r\n".encode("gbk") * 60)
    (root / "pairs.tsv").write_bytes(b"\xef\xbb\xbf" + "".join(f"{i}+{i}|{2 * i}\r\n" for i in range(60)).encode())
    (root / "pixels.csv").write_text(",".join(str(i % 17) for i in range(64)) + "\n")
    tiny = ["--epochs", "1", "--hidden", "8"]
    gbk = ["--encoding", "gb18030"]
    trainings = {
        "digits": (["classify", *tiny], ["predict", "RUN", "--input", str(root / "pixels.csv")]),
        "texts": (["classify", "--data", str(root / "texts.csv"), "--text-col", "text", "--label-col", "label",
                   "--delimiter", ";", *gbk, *tiny], ["predict", "RUN", "good fun"]),
        "forecast": (["forecast", "--window", "12", *tiny], ["forecast", "RUN", "--steps", "3", "--out",
                                                              str(root / "f.csv")]),
        "lm": (["lm", "--text", str(root / "lm.txt"), "--layers", "1", "--bptt", "20", *gbk, *tiny],
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
                run = tmp_path / f"{name}-{'.'.join(path)}-{damage_name}"
                shutil.copytree(root / name, run)
                damaged = json.loads((run / file).read_text())
                _damage(damaged, path, damage)
                (run / file).write_text(json.dumps(damaged))
                where = f"{name}: {file} {'.'.join(path)} = {damage_name}"
                if name == "adding":  # what `rnnkit diagnose RUN` reads, without drawing its plots each time
                    try:
                        open_task(run)
                    except NotARunError as error:
                        assert "damaged" in str(error) or " run, not a" in str(error), f"{where}: {error}"
                        refused += 1
                else:
                    result = CliRunner().invoke(main, use(run))
                    assert result.exception is None or isinstance(result.exception, SystemExit), (
                        f"{where}: a traceback ({result.exception!r})")
                    assert result.exit_code in (0, 1), f"{where}: {result.output}"
                    if result.exit_code == 1:
                        assert result.output.startswith("Error: ") and result.output.count("\n") == 1, (
                            f"{where}: {result.output}")
                        assert "damaged" in result.output or " run, not a" in result.output, (
                            f"{where}: {result.output}")
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
    assert result.output == (f"Error: {tmp_path / 'run' / 'config.json'} has a wrong value (model: hidden_size should be "
                             "of type int, got: str ('abc')): the run folder is damaged: train it again, or restore the file "
                             "from a copy\n")


def test_the_training_files_were_read_as_their_options_say(runs: tuple[Path, dict[str, list[str]]]) -> None:
    root, _ = runs
    texts = json.loads((root / "texts" / "extras.json").read_text())["vocabulary"]["itos"]
    assert {"好", "玩", "无", "聊"} <= set(texts) and "\r" not in texts  # GBK, CRLF, semicolon-delimited
    chars = json.loads((root / "lm" / "extras.json").read_text())["vocabulary"]["itos"]
    assert {"敏", "狐"} <= set(chars) and "\r" not in chars and "\ufeff" not in chars
    pairs = json.loads((root / "seq2seq" / "extras.json").read_text())
    assert "|" not in pairs["source_vocabulary"]["itos"] and "\ufeff" not in pairs["source_vocabulary"]["itos"]


VARIANT_INPUTS = {  # the same input, as another tool writes it, and the options that read it
    "digits": ("pixels.csv", lambda plain: b"\xef\xbb\xbf" + plain.replace(b",", b";").replace(b"\n", b"\r\n"), []),
    "caption": ("pixels.csv", lambda plain: plain.replace(b",", b"\t"), ["--delimiter", "tab"]),
}


@pytest.mark.parametrize("name", ["digits", "caption", "texts", "seq2seq", "forecast"])
def test_every_input_option_reads_files_as_tools_write_them(runs: tuple[Path, dict[str, list[str]]], tmp_path: Path,
                                                            name: str) -> None:
    root, uses = runs
    run = str(root / name)
    if name in VARIANT_INPUTS:
        file, change, options = VARIANT_INPUTS[name]
        plain = (root / file).read_bytes()
        (tmp_path / "plain.csv").write_bytes(plain)
        (tmp_path / "other.csv").write_bytes(change(plain))
        command = uses[name][:2]
        a = [run if x == "RUN" else x for x in command] + ["--input", str(tmp_path / "plain.csv")]
        b = [run if x == "RUN" else x for x in command] + ["--input", str(tmp_path / "other.csv"), *options]
    elif name in ("texts", "seq2seq"):
        lines = ["good fun", "无聊 bad"] if name == "texts" else ["1+1", "2+3"]
        (tmp_path / "plain.txt").write_text("\n".join(lines) + "\n")
        (tmp_path / "other.txt").write_bytes("\r\n".join(lines).encode("gbk"))
        command = ["predict" if name == "texts" else "translate", run]
        a = [*command, "--input", str(tmp_path / "plain.txt")]
        b = [*command, "--input", str(tmp_path / "other.txt"), "--encoding", "gbk"]
    else:
        values = [f"{v:.3f}" for v in range(1, 31)]
        (tmp_path / "plain.csv").write_text("SUNACTIVITY\n" + "\n".join(values) + "\n")
        (tmp_path / "other.csv").write_bytes(("t;SUNACTIVITY\r\n" + "".join(f"{i};{v.replace('.', ',')}\r\n"
                                                                   for i, v in enumerate(values))).encode("utf-16"))
        a = ["forecast", run, "--steps", "2", "--data", str(tmp_path / "plain.csv"), "--out", str(tmp_path / "a.csv")]
        b = ["forecast", run, "--steps", "2", "--data", str(tmp_path / "other.csv"), "--out", str(tmp_path / "b.csv")]
    first, second = CliRunner().invoke(main, a), CliRunner().invoke(main, b)
    assert first.exit_code == 0 and second.exit_code == 0, (first.output, second.output)
    assert first.output.replace("a.csv", "b.csv") == second.output
