"""Text classification: readers, vocabulary from the training split only, padding that never
changes a prediction, the bundled surnames, a CSV run end to end, resume from the command line."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from rnnkit.cli import main
from rnnkit.data import Vocabulary, load_dataset, pad_batch, read_texts
from rnnkit.models import NToOne, NToOneConfig
from rnnkit.pipelines import classify
from rnnkit.training import TrainConfig


def reviews(n: int = 240, seed: int = 0) -> list[tuple[str, str]]:
    """A learnable sentiment task: the label is whether 'good' or 'bad' words are the majority."""
    rng = random.Random(seed)
    good, bad, filler = ["good", "great", "fine"], ["bad", "awful", "poor"], ["the", "film", "was", "plot", "and"]
    rows = []
    for i in range(n):
        label = "pos" if i % 2 else "neg"
        words = rng.choices(filler, k=rng.randint(2, 9)) + rng.choices(good if label == "pos" else bad, k=2)
        words += rng.choices(bad if label == "pos" else good, k=rng.randint(0, 1))
        rng.shuffle(words)
        rows.append((" ".join(words) + " .", label))
    return rows


def write_csv(path: Path, rows: list[tuple[str, str]], sep: str = ",") -> Path:
    import csv

    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter=sep)
        writer.writerow(["review", "sentiment"])
        writer.writerows(rows)
    return path


def test_vocabulary_and_padding() -> None:
    vocab = Vocabulary.build(["a b a", "b c"], "word")
    assert vocab.itos == ["<pad>", "<unk>", "a", "b", "c"]
    assert vocab.encode("a d c") == [2, 1, 4] and vocab.unknown("a d e d") == ["d", "e"]
    assert Vocabulary.build(["a b a", "b c"], "word", max_size=1).itos == ["<pad>", "<unk>", "a"]
    assert Vocabulary.build(["Ab!"], "char").itos[2:] == ["A", "b", "!"]
    tokens, lengths = pad_batch([[2, 3, 4], [], [5]], max_length=2)
    assert tokens.tolist() == [[2, 3], [1, 0], [5, 0]] and lengths.tolist() == [2, 1, 1]
    with pytest.raises(ValueError, match="tokens must be one of char, word, got 'bpe'"):
        Vocabulary.build(["a"], "bpe")


@pytest.mark.parametrize("pooling", ["last", "mean", "max", "attention"])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_padding_never_changes_a_prediction(pooling: str, cell: str) -> None:
    torch.manual_seed(0)
    model = NToOne(NToOneConfig(input_size=0, outputs=3, cell=cell, hidden_size=8, pooling=pooling,
                                vocab_size=20, embed_dim=5)).eval()
    texts = [[3, 4, 5], [6, 7, 8, 9, 10, 11, 12], [13]]
    tokens, lengths = pad_batch(texts)
    tokens[0, 3:] = 19  # garbage in the padding must not matter either
    batched = model(tokens, lengths)
    for row, ids in enumerate(texts):
        alone = model(torch.tensor([ids]), torch.tensor([len(ids)]))
        torch.testing.assert_close(batched[row], alone[0], rtol=1e-5, atol=1e-6)


def test_readers(tmp_path) -> None:  # type: ignore[no-untyped-def]
    rows = reviews(12)
    for name, sep in (("r.csv", ","), ("r.tsv", "\t")):
        data = read_texts(write_csv(tmp_path / name, rows, sep), text_col="review", label_col="sentiment")
        assert data.texts == [t for t, _ in rows] and data.label_names == ["neg", "pos"]
        assert data.y.tolist() == [int(label == "pos") for _, label in rows]
    for label in ("neg", "pos"):
        (tmp_path / "folder" / label).mkdir(parents=True)
    for i, (text, label) in enumerate(rows):
        (tmp_path / "folder" / label / f"{i}.txt").write_text(text, encoding="utf-8")
    data = read_texts(tmp_path / "folder", text_col=None, label_col=None)
    assert sorted(zip(data.texts, (data.label_names[i] for i in data.y))) == sorted(rows)


@pytest.mark.parametrize("content, kwargs, message", [
    ("review,sentiment\na,pos\n", {"text_col": "text", "label_col": "sentiment"},
     "has no column 'text'; its columns are 'review', 'sentiment'"),
    ("review,sentiment\na,pos\n,neg\nb,neg\n", {"text_col": "review", "label_col": "sentiment"},
     "empty 'review' on line 3"),
    ("review,sentiment\na,pos\nb,pos\n", {"text_col": "review", "label_col": "sentiment"},
     r"has 1 label \(pos\): a classifier needs at least 2"),
    ("review,sentiment\na,pos\n", {"text_col": None, "label_col": None},
     "is a file: name its columns with --text-col and --label-col"),
])
def test_reader_errors(tmp_path, content: str, kwargs: dict, message: str) -> None:  # type: ignore[no-untyped-def,type-arg]
    (tmp_path / "d.csv").write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        read_texts(tmp_path / "d.csv", **kwargs)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no <label>/\\*.txt files"):
        read_texts(tmp_path / "empty", text_col=None, label_col=None)


def test_surnames_are_real_and_unambiguous() -> None:
    data = load_dataset("surnames")
    assert len(data.label_names) == 9 and len(data.texts) > 5000
    assert len(set(data.texts)) == len(data.texts)  # a name under two languages was left out
    by_name = {t: data.label_names[y] for t, y in zip(data.texts, data.y)}
    assert by_name["Virtanen"] == "Finnish" and by_name["Schmidt"] == "German"
    assert np.bincount(data.y).min() > 200


def test_text_run_end_to_end(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = write_csv(tmp_path / "reviews.csv", reviews(400))
    cfg = classify.ClassifyConfig(data=str(path), text_col="review", label_col="sentiment", tokens="word",
                                  hidden_size=16, embed_dim=8, pooling="attention",
                                  train=TrainConfig(epochs=20, lr=1e-2, seed=0, patience=None))
    metrics = classify.train(cfg, tmp_path / "run")
    assert metrics["baseline"]["accuracy"] == pytest.approx(0.5, abs=0.03)
    assert metrics["test"]["accuracy"] >= 0.9
    extras = json.loads((tmp_path / "run" / "extras.json").read_text())
    assert extras["vocabulary"]["itos"][:2] == ["<pad>", "<unk>"] and "good" in extras["vocabulary"]["itos"]
    probs, labels, unknown = classify.predict_texts(tmp_path / "run", ["good great film .", "awful bad plot zzz ."])
    assert labels == ["neg", "pos"] and probs.argmax(1).tolist() == [1, 0]
    assert unknown == [[], ["zzz"]]
    result = CliRunner().invoke(main, ["predict", str(tmp_path / "run"), "the plot was great and good", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["label"] == "pos"


def test_vocabulary_comes_from_the_training_split_only(tmp_path) -> None:  # type: ignore[no-untyped-def]
    rows = reviews(60)
    rows[-1] = ("qqq rare", rows[-1][1])  # one word in one text only: in at most one split
    path = write_csv(tmp_path / "r.csv", rows)
    cfg = classify.ClassifyConfig(data=str(path), text_col="review", label_col="sentiment", tokens="word",
                                  hidden_size=4, embed_dim=4, train=TrainConfig(epochs=1))
    classify.train(cfg, tmp_path / "run")
    itos = json.loads((tmp_path / "run" / "extras.json").read_text())["vocabulary"]["itos"]
    tr, _, _ = classify.split(classify.load_data(cfg).y, 0.15, 0.15, 0)
    assert ("qqq" in itos) == (len(rows) - 1 in set(tr.tolist()))


def test_cli_resume_continues_a_stopped_run(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """train 2 epochs, resume to 4: the same history and metrics as 4 epochs at once; a run that
    died mid-way (only RUN.partial left) is continued too. (On rows of numbers of the user's, whose
    learning rate follows the plateaus: digits' cosine schedule spans the epochs asked for, so
    that 2 epochs resumed to 4 are another schedule than 4 at once.)"""
    runner = CliRunner()
    rng = np.random.default_rng(0)
    rows = [",".join(f"{v:.3f}" for v in rng.normal(size=6)) + f",{k % 3}" for k in range(120)]
    (tmp_path / "rows.csv").write_text("a,b,c,d,e,f,label\n" + "\n".join(rows) + "\n", encoding="utf-8")
    args = ["train", "classify", "--data", str(tmp_path / "rows.csv"), "--label-col", "label", "--steps", "3",
            "--hidden", "16", "--lr", "0.01"]
    whole = runner.invoke(main, [*args, "--epochs", "4", "--out", str(tmp_path / "whole")])
    assert whole.exit_code == 0, whole.output
    first = runner.invoke(main, [*args, "--epochs", "2", "--out", str(tmp_path / "part")])
    assert first.exit_code == 0, first.output
    again = runner.invoke(main, ["train", "classify", "--resume", str(tmp_path / "part"), "--epochs", "4"])
    assert again.exit_code == 0, again.output
    history = lambda name: (tmp_path / name / "history.csv").read_text().splitlines()  # noqa: E731
    metrics = lambda name: json.loads((tmp_path / name / "metrics.json").read_text())["test"]  # noqa: E731
    strip = lambda lines: [line.rsplit(",", 1)[0] for line in lines]  # all but the seconds column  # noqa: E731
    assert strip(history("part")) == strip(history("whole")) and metrics("part") == metrics("whole")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["part", "rows.csv", "whole"]
    # a process that died: RUN.partial with its checkpoint; --resume finishes it
    import shutil

    shutil.copytree(tmp_path / "whole", tmp_path / "dead.partial")
    (tmp_path / "dead.partial" / "metrics.json").unlink()
    result = runner.invoke(main, [*args, "--epochs", "4", "--out", str(tmp_path / "dead")])
    assert result.exit_code == 1 and "an unfinished run is at" in result.output
    result = runner.invoke(main, ["train", "classify", "--resume", str(tmp_path / "dead"), "--epochs", "5"])
    assert result.exit_code == 0, result.output
    assert len(history("dead")) == 1 + 5 and not (tmp_path / "dead.partial").exists()
    # resumed without --epochs, a run keeps its own number (5), not the command's default (40)
    shutil.copytree(tmp_path / "whole", tmp_path / "again.partial")
    result = runner.invoke(main, ["train", "classify", "--resume", str(tmp_path / "again")])
    assert result.exit_code == 0, result.output
    assert len(history("again")) == 1 + 4


@pytest.mark.parametrize("args, message", [
    (["train", "classify", "--resume", "{tmp}/x", "--lr", "0.1"], "drop --lr (only --epochs may change)"),
    (["train", "classify", "--resume", "{tmp}/x"], "nothing to resume at"),
    (["train", "classify", "--data", "{tmp}"], "holds no <label>/*.txt files"),
    (["predict", "{run}"], "give the texts to classify as arguments, or --input FILE"),
])
def test_cli_text_errors(tmp_path, args: list[str], message: str) -> None:  # type: ignore[no-untyped-def]
    run = tmp_path / "run"
    path = write_csv(tmp_path / "r.csv", reviews(40))
    assert CliRunner().invoke(main, ["train", "classify", "--data", str(path), "--text-col", "review", "--label-col",
                                     "sentiment", "--hidden", "4", "--epochs", "1", "--out", str(run)]).exit_code == 0
    before = sorted(p.name for p in tmp_path.iterdir())
    result = CliRunner().invoke(main, [a.format(tmp=tmp_path, run=run) for a in args])
    assert result.exit_code in (1, 2), result.output
    assert message in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_a_refused_run_leaves_no_folder(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Errors found before training (a bad setting, TensorBoard missing) write nothing."""
    import builtins

    result = CliRunner().invoke(main, ["train", "classify", "--epochs", "0", "--out", str(tmp_path / "a")])
    assert result.exit_code == 1 and "epochs must be an int >= 1, got 0" in result.output
    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):  # type: ignore[no-untyped-def]
        if name == "torch.utils.tensorboard":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    result = CliRunner().invoke(main, ["train", "classify", "--tensorboard", "--out", str(tmp_path / "b")])
    assert result.exit_code == 1 and "pip install 'rnnkit[tensorboard]'" in result.output
    assert list(tmp_path.iterdir()) == []
