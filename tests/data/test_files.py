"""Every reader of the user's files reads them as spreadsheets, editors and Chinese-locale systems
write them: a byte-order mark, CRLF (or CR) line ends, a comma, semicolon, tab or bar delimiter
(sniffed, or given), and a declared encoding (GBK read as gb18030); UTF-16 with its mark is read
without being declared. Each variant must read exactly what the plain UTF-8, LF, comma file reads."""

from __future__ import annotations

import codecs
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rnnkit.data import read_feature_table, read_series_csv, read_texts
from rnnkit.data._files import (check_delimiter, check_encoding, guess_encoding, read_lines, read_numbers, read_table,
                                read_text)
from rnnkit.data._pairs import read_pairs

# (how the bytes are made, the encoding to pass): what users' tools write
VARIANTS: dict[str, tuple[str, bytes, str, str | None]] = {
    # name: (codec, prefix, line end, --encoding)
    "utf-8": ("utf-8", b"", "\n", None),
    "BOM and CRLF (Excel's CSV UTF-8)": ("utf-8", codecs.BOM_UTF8, "\r\n", None),
    "CR line ends (old Mac)": ("utf-8", b"", "\r", None),
    "GBK with --encoding gb18030": ("gbk", b"", "\r\n", "gb18030"),
    "UTF-16 with its BOM (Excel's Unicode text)": ("utf-16-le", codecs.BOM_UTF16_LE, "\r\n", None),
    "Big5 with --encoding big5": ("big5", b"", "\n", "big5"),
}
DELIMITERS = {"comma": ",", "semicolon": ";", "tab": "\t", "bar": "|"}


def write(path: Path, lines: list[str], variant: str) -> Path:
    codec, prefix, end, _ = VARIANTS[variant]
    path.write_bytes(prefix + "".join(line + end for line in lines).encode(codec))
    return path


def encoding(variant: str) -> str | None:
    return VARIANTS[variant][3]


TEXTS = [("這部電影很好看" if i % 2 else "太無聊了", "好" if i % 2 else "差") for i in range(12)]  # in GBK and Big5


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("name", list(DELIMITERS))
@pytest.mark.parametrize("given", [False, True], ids=["sniffed", "--delimiter"])
def test_tables_read_the_same_in_every_form(tmp_path: Path, variant: str, name: str, given: bool) -> None:
    sep = DELIMITERS[name]
    delimiter = name if given else None
    # classify: texts and labels
    data = read_texts(write(tmp_path / "t.csv", [f"text{sep}label"] + [f"{t}{sep}{lab}" for t, lab in TEXTS], variant),
                      text_col="text", label_col="label", encoding=encoding(variant), delimiter=delimiter)
    assert data.texts == [t for t, _ in TEXTS] and data.label_names == sorted({lab for _, lab in TEXTS})
    assert [data.label_names[y] for y in data.y] == [lab for _, lab in TEXTS]
    # classify: feature sequences (3 steps of 1 feature), a label column first
    rows = [f"kind{sep}a{sep}b{sep}c"] + [f"{'xy'[i % 2]}{sep}{i}{sep}{i + 0.5}{sep}{-i}" for i in range(8)]
    seq = read_feature_table(write(tmp_path / "f.csv", rows, variant), "kind", 3, encoding=encoding(variant),
                             delimiter=delimiter)
    assert seq.x[:, :, 0].tolist() == [[i, i + 0.5, -i] for i in range(8)] and seq.label_names == ["x", "y"]
    # forecast: a series with a time column and a gap
    rows = [f"date{sep}y"] + [f"2020-01-{d:02d}{sep}{'' if d == 4 else d * 1.5}" for d in range(1, 11)]
    series = read_series_csv(write(tmp_path / "s.csv", rows, variant), target="y", time_col="date",
                             encoding=encoding(variant), delimiter=delimiter)
    assert series.values[:, 0].tolist() == [d * 1.5 for d in range(1, 11)] and series.interpolated == 1
    assert series.times[0] == "2020-01-01"
    # predict / caption input: rows of numbers, with a header
    numbers = read_numbers(write(tmp_path / "n.csv", [f"a{sep}b"] + [f"{i}{sep}{i / 4}" for i in range(5)], variant),
                           encoding=encoding(variant), delimiter=delimiter)
    assert numbers.tolist() == [[i, i / 4] for i in range(5)]


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_texts_lines_and_folders_read_the_same_in_every_form(tmp_path: Path, variant: str) -> None:
    lines = ["第一行：你好", "", "第二行，好的"]
    # lm: the text itself, its line ends made "\n" and no byte-order mark in the first character
    assert read_text(write(tmp_path / "lm.txt", lines, variant), encoding=encoding(variant)) == "\n".join(lines) + "\n"
    # predict / translate --input: one example per non-blank line
    assert read_lines(write(tmp_path / "in.txt", lines, variant), encoding=encoding(variant)) == [lines[0], lines[2]]
    # classify: a folder of .txt files per label
    for i, (text, label) in enumerate(TEXTS):
        (tmp_path / "folder" / label).mkdir(parents=True, exist_ok=True)
        write(tmp_path / "folder" / label / f"{i}.txt", [text], variant)
    data = read_texts(tmp_path / "folder", text_col=None, label_col=None, encoding=encoding(variant))
    assert sorted((t, data.label_names[y]) for t, y in zip(data.texts, data.y)) == sorted(
        (t + "\n", lab) for t, lab in TEXTS)


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("name", ["tab", "semicolon", "bar", "comma"])
def test_pairs_read_the_same_in_every_form(tmp_path: Path, variant: str, name: str) -> None:
    sep = DELIMITERS[name]
    pairs = [(f"{i}+{i}的和", f"{2 * i}") for i in range(12)]
    path = write(tmp_path / "p.txt", [f"{s}{sep}{t}" for s, t in pairs], variant)
    if name == "comma":  # sentences hold commas: a comma is only taken when given
        with pytest.raises(ValueError, match=r"line 1: no tab between source and target.*--delimiter"):
            read_pairs(path, encoding=encoding(variant))
    else:
        assert read_pairs(path, encoding=encoding(variant)) == pairs
    assert read_pairs(path, encoding=encoding(variant), delimiter=name) == pairs


def test_semicolon_tables_read_decimal_commas(tmp_path: Path) -> None:
    """Excel where the comma is the decimal mark writes semicolon tables of "1,5"."""
    (tmp_path / "s.csv").write_text("t;y;x\n1;1,5;-2,25\n2;2,5;3\n3;;1e3\n4;4,0;0,5\n")
    series = read_series_csv(tmp_path / "s.csv", target="y", time_col="t", features=("x",))
    assert series.values.tolist() == [[1.5, -2.25], [2.5, 3.0], [3.25, 1000.0], [4.0, 0.5]]
    assert read_numbers(_bytes(tmp_path / "n.csv", b"1,5;2\n-0,25;3\n")).tolist() == [[1.5, 2], [-0.25, 3]]
    (tmp_path / "c.csv").write_text('t,y\n1,"1,5"\n2,2\n')  # a comma table: "1,5" is no number
    with pytest.raises(ValueError, match=r"column 'y' of .* is not numeric: row 2 has '1,5'"):
        read_series_csv(tmp_path / "c.csv", target="y")


def _bytes(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


def test_a_header_with_spaces_around_names(tmp_path: Path) -> None:
    table = read_table(_bytes(tmp_path / "h.csv", b"text , label\nhello,a\n"))
    assert list(table.columns) == ["text", "label"]


@pytest.mark.parametrize("language, text, codec, said", [
    ("Chinese (GBK)", "text,label\n这部电影很好看,好\n太无聊了,差\n", "gbk", "gb18030 (Chinese; GB18030 covers GBK and GB2312)"),
    ("Chinese (GB18030)", "text,label\n很好,好\n差劲,差\n", "gb18030", "gb18030"),
    ("Japanese (Shift JIS)", "text,label\nこの映画は面白い,良い\nつまらない,悪い\n", "shift_jis", "shift_jis (Japanese)"),
    ("Western European (cp1252)", "name,label\nMüller,de\nCafé,fr\nGarçon,fr\n", "cp1252",
     "cp1252 (Western European, as Excel saves it)"),
])
def test_a_file_not_in_utf8_names_the_encoding_it_reads_as(tmp_path: Path, language: str, text: str, codec: str,
                                                          said: str) -> None:
    path = _bytes(tmp_path / "x.csv", text.encode(codec))
    guessed = guess_encoding(path.read_bytes())
    assert guessed is not None and text.encode(codec).decode(guessed[0]) == text
    with pytest.raises(ValueError) as error:
        read_table(path)
    message = str(error.value)
    assert message.startswith(f"{path} is not UTF-8 text") and said in message
    assert f"Pass --encoding {guessed[0]}" in message and repr(text.split("\n")[1]) in message
    assert read_table(path, encoding=guessed[0]).shape == (text.count("\n") - 1, 2)


def test_a_file_in_no_common_encoding(tmp_path: Path) -> None:
    path = _bytes(tmp_path / "x.txt", b"a\x81\x8d\x8f\x90\x9d\n")  # bytes that even cp1252 leaves undefined
    with pytest.raises(ValueError, match=r"is not UTF-8 text .*: give its encoding with --encoding NAME"):
        read_text(path)


@pytest.mark.parametrize("check, given, expected", [
    (check_delimiter, "tab", "\t"), (check_delimiter, "\\t", "\t"), (check_delimiter, ";", ";"),
    (check_delimiter, "semicolon", ";"), (check_delimiter, None, None),
    (check_encoding, "GBK", "GBK"), (check_encoding, "utf-8-sig", "utf-8-sig"), (check_encoding, None, None),
])
def test_options_accepted(check: Callable[[str | None], Any], given: str | None, expected: str | None) -> None:
    assert check(given) == expected


@pytest.mark.parametrize("check, given, message", [
    (check_delimiter, ";;", "a delimiter is one character"), (check_delimiter, "a", "a delimiter is one character"),
    (check_delimiter, '"', "a delimiter is one character"), (check_encoding, "gbkk", "unknown encoding 'gbkk'"),
])
def test_options_refused(check: Callable[[str | None], Any], given: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check(given)


def test_the_sniffer_keeps_commas_inside_quotes(tmp_path: Path) -> None:
    rows = ["text,label"] + [f'"hello, world; and {i}",{"ab"[i % 2]}' for i in range(6)]
    data = read_texts(_bytes(tmp_path / "q.csv", "\n".join(rows).encode()), text_col="text", label_col="label")
    assert data.texts[0] == "hello, world; and 0" and np.array_equal(data.y, [0, 1, 0, 1, 0, 1])


def test_the_issues_files_on_the_command_line(tmp_path: Path) -> None:
    """What Excel writes: "CSV UTF-8" (a BOM, CRLF) trains as is; a GBK file gets one line naming
    gb18030, and trains with --encoding gb18030; predict reads GBK input the same way."""
    from click.testing import CliRunner

    from rnnkit.cli import main

    rows = [(("这部电影很好看" if i % 2 else "太无聊了") + str(i), "好" if i % 2 else "差") for i in range(40)]
    lines = ["text,label"] + [f"{t},{lab}" for t, lab in rows]
    write(tmp_path / "bom.csv", lines, "BOM and CRLF (Excel's CSV UTF-8)")
    write(tmp_path / "gbk.csv", lines, "GBK with --encoding gb18030")
    train = ["train", "classify", "--text-col", "text", "--label-col", "label", "--epochs", "1", "--hidden", "8"]
    runner = CliRunner()
    done = runner.invoke(main, [*train, "--data", str(tmp_path / "bom.csv"), "--out", str(tmp_path / "a")])
    assert done.exit_code == 0, done.output
    refused = runner.invoke(main, [*train, "--data", str(tmp_path / "gbk.csv"), "--out", str(tmp_path / "b")])
    assert refused.exit_code == 1 and refused.output == (
        f"Error: {tmp_path / 'gbk.csv'} is not UTF-8 text (invalid continuation byte at byte 14); it reads as gb18030 "
        "(Chinese; GB18030 covers GBK and GB2312): '太无聊了0,差'. Pass --encoding gb18030, or save it as UTF-8\n")
    assert not (tmp_path / "b").exists() and not (tmp_path / "b.partial").exists()
    done = runner.invoke(main, [*train, "--data", str(tmp_path / "gbk.csv"), "--encoding", "gb18030", "--out",
                                str(tmp_path / "b")])
    assert done.exit_code == 0, done.output
    write(tmp_path / "in.txt", ["这部电影很好看", "太无聊了"], "GBK with --encoding gb18030")
    done = runner.invoke(main, ["predict", str(tmp_path / "b"), "--input", str(tmp_path / "in.txt"), "--encoding",
                                "gb18030", "--json"])
    assert done.exit_code == 0 and done.output.count("\n") == 2, done.output
    bad = runner.invoke(main, [*train, "--data", str(tmp_path / "gbk.csv"), "--encoding", "gbkk"])
    assert bad.exit_code == 2 and "Invalid value for '--encoding': unknown encoding 'gbkk'" in bad.output
