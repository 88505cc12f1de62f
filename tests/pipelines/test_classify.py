"""Classification end to end on the bundled digits: run folder, metrics beside the baseline,
predictions; and the command line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from rnnkit.cli import main
from rnnkit.pipelines import classify
from rnnkit.training import TrainConfig


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict]:  # type: ignore[type-arg]
    out = str(tmp_path_factory.mktemp("runs") / "digits")
    cfg = classify.ClassifyConfig(hidden_size=32, train=TrainConfig(epochs=6, lr=1e-2, seed=0))
    return out, classify.train(cfg, out)


def test_metrics_beat_the_majority_baseline(run) -> None:  # type: ignore[no-untyped-def]
    out, metrics = run
    assert metrics["sizes"] == {"train": 1257, "validation": 270, "test": 270, "classes": 10}
    assert metrics["baseline"]["accuracy"] == pytest.approx(0.1, abs=0.01)  # 10 balanced classes
    assert metrics["test"]["accuracy"] > 0.85 > metrics["baseline"]["accuracy"]
    saved = json.loads((Path(out) / "metrics.json").read_text())
    assert saved["test"] == metrics["test"]
    assert len((Path(out) / "history.csv").read_text().splitlines()) == 1 + metrics["epochs_run"]


def test_predict_labels_real_digits(run) -> None:  # type: ignore[no-untyped-def]
    from sklearn.datasets import load_digits

    out, metrics = run
    digits = load_digits()
    probs, labels = classify.predict(out, digits.data[:200])  # raw pixels 0-16, (N, 64)
    assert probs.shape == (200, 10) and labels == [str(d) for d in range(10)]
    assert np.allclose(probs.sum(1), 1, atol=1e-5)
    assert (probs.argmax(1) == digits.target[:200]).mean() > 0.85
    with pytest.raises(ValueError, match=r"expected rows of 64 numbers \(8 steps of 8 features\)"):
        classify.predict(out, np.zeros((2, 63)))


def test_cli_train_predict_and_datasets(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from sklearn.datasets import load_digits

    runner = CliRunner()
    out = tmp_path / "run"
    result = runner.invoke(main, ["train", "classify", "--hidden", "16", "--epochs", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "majority baseline: accuracy 0.1" in result.output and f"run folder: {out}" in result.output
    np.savetxt(tmp_path / "x.csv", load_digits().data[:3], delimiter=",", fmt="%d")
    result = runner.invoke(main, ["predict", str(out), "--input", str(tmp_path / "x.csv"), "--json"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.output.splitlines()]
    assert len(lines) == 3 and abs(sum(lines[0]["probabilities"].values()) - 1) < 1e-5
    result = runner.invoke(main, ["datasets"])
    assert result.exit_code == 0 and "digits" in result.output and "licence" in result.output


@pytest.mark.parametrize("args, message", [
    (["train", "classify", "--dataset", "nope", "--out", "{tmp}/a"], "unknown dataset 'nope'"),
    (["train", "classify", "--out", "{tmp}"], "already exists"),
    (["predict", "{tmp}", "--input", "{tmp}/x.csv"], "is not an rnnkit run folder"),
])
def test_cli_errors_are_one_line_and_write_nothing(tmp_path, args: list[str], message: str) -> None:  # type: ignore[no-untyped-def]
    before = sorted(p.name for p in tmp_path.iterdir())
    result = CliRunner().invoke(main, [a.format(tmp=tmp_path) for a in args])
    assert result.exit_code == 1
    assert message in result.output and result.output.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_run_folder_has_its_plots(run) -> None:  # type: ignore[no-untyped-def]
    from matplotlib.image import imread

    out, _ = run
    for name in ("confusion_matrix.png", "history.png"):
        image = imread(Path(out) / "plots" / name)
        assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 200, name


def test_feature_csv(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A CSV of numbers: label column plus T*F columns, read as T steps of F features."""
    from rnnkit.data import read_feature_table

    rng = np.random.default_rng(0)
    x = rng.normal(size=(90, 6)).round(3)
    labels = np.where(x[:, 4] + x[:, 5] > 0, "up", "down")  # decided by the last step's two features
    lines = ["a,b,c,d,e,f,kind"] + [",".join(map(str, row)) + f",{y}" for row, y in zip(x, labels)]
    (tmp_path / "f.csv").write_text("\n".join(lines) + "\n")
    data = read_feature_table(tmp_path / "f.csv", "kind", steps=3)
    assert data.x.shape == (90, 3, 2) and data.label_names == ["down", "up"]
    np.testing.assert_allclose(data.x[:, 2], x[:, 4:6].astype(np.float32))
    with pytest.raises(ValueError, match="has 6 feature columns, which --steps 4 does not divide"):
        read_feature_table(tmp_path / "f.csv", "kind", steps=4)
    (tmp_path / "g.csv").write_text("a,b,kind\n1,2,x\n3,oops,y\n")
    with pytest.raises(ValueError, match="line 3, column 'b' is 'oops', not a number"):
        read_feature_table(tmp_path / "g.csv", "kind", steps=1)
    (tmp_path / "h.csv").write_text("a,b,kind\n1,2,x\n3,4,y\n-inf,5,x\n")
    with pytest.raises(ValueError, match="line 4, column 'a' is '-inf', not a finite number"):
        read_feature_table(tmp_path / "h.csv", "kind", steps=1)
    metrics = classify.train(classify.ClassifyConfig(data=str(tmp_path / "f.csv"), label_col="kind", steps=3,
                                                     hidden_size=8, train=TrainConfig(epochs=2)), tmp_path / "run")
    assert metrics["sizes"]["train"] + metrics["sizes"]["validation"] + metrics["sizes"]["test"] == 90
    probs, labels = classify.predict(tmp_path / "run", x[:4])
    assert probs.shape == (4, 2) and labels == ["down", "up"]


def test_a_bundled_set_trains_with_its_own_settings_unless_given() -> None:
    """digits: the settings chosen on validation (benchmarks/digits_defaults.py); options given
    on the command line win; the user's data and other sets get TrainConfig's defaults."""
    from rnnkit.pipelines.classify import training

    own = training("digits", epochs=None, batch_size=None, lr=3e-3, seed=0)
    assert (own.epochs, own.batch_size, own.schedule, own.patience) == (60, 32, "cosine", None)
    given = training("digits", epochs=5, batch_size=None, lr=1e-3, seed=1)
    assert (given.epochs, given.batch_size, given.lr, given.seed) == (5, 32, 1e-3, 1)
    for dataset in (None, "surnames"):
        plain = training(dataset, epochs=None, batch_size=None, lr=3e-3, seed=0)
        assert (plain.epochs, plain.batch_size, plain.schedule, plain.patience) == (40, 64, "plateau", 10)
