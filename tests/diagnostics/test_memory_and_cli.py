"""The long-range memory tasks' generators and baselines, the Trainer's gradient-flow watch and
NaN stop, and `rnnkit diagnose`."""

from __future__ import annotations

import json
import logging
import math

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from torch import nn
from torch.utils.data import TensorDataset

import rnnkit
from rnnkit.cli import main
from rnnkit.data._memory import adding_baseline, adding_problem, copy_baseline, copy_memory, selective_copy
from rnnkit.training import Trainer, TrainConfig


def test_adding_problem() -> None:
    x, y = adding_problem(20000, 10, seed=0)
    assert x.shape == (20000, 10, 2) and y.shape == (20000, 1)
    marks = x[..., 1]
    assert torch.all(marks.sum(1) == 2)
    assert torch.all(marks[:, :5].sum(1) == 1) and torch.all(marks[:, 5:].sum(1) == 1)  # one in each half
    torch.testing.assert_close(y[:, 0], (x[..., 0] * marks).sum(1))
    assert 0 <= float(x[..., 0].min()) and float(x[..., 0].max()) <= 1
    assert float(F.mse_loss(torch.ones_like(y), y)) == pytest.approx(adding_baseline(), abs=0.005)
    assert adding_baseline() == pytest.approx(0.1667, abs=1e-4)


def test_copy_memory_and_its_memoryless_baseline() -> None:
    steps = 30
    x, y = copy_memory(500, steps, seed=0)
    assert x.shape == y.shape == (500, steps + 20)
    assert torch.all((x[:, :10] >= 1) & (x[:, :10] <= 8))
    assert torch.all(x[:, 10 + steps - 1] == 9) and int((x[:, 10:] != 0).sum()) == 500  # blanks but the delimiter
    assert torch.equal(y[:, -10:], x[:, :10]) and torch.all(y[:, :-10] == 0)
    # blanks for sure until the last 10 steps, then a uniform guess over the 8 symbols
    probs = torch.zeros(500, steps + 20, 9)
    probs[:, :-10, 0] = 1.0
    probs[:, -10:, 1:] = 1 / 8
    ce = F.nll_loss(torch.log(probs.clamp_min(1e-30)).transpose(1, 2), y)
    assert float(ce) == pytest.approx(copy_baseline(steps), rel=1e-6)
    assert copy_baseline(steps) == pytest.approx(10 * math.log(8) / (steps + 20))


def test_selective_copy_scatters_the_symbols_and_recalls_them_in_order(tmp_path) -> None:  # type: ignore[no-untyped-def]
    steps = 30
    x, y = selective_copy(400, steps, seed=0)
    assert x.shape == y.shape == (400, steps + 20)
    assert torch.all(x[:, steps + 9] == 9) and torch.all(x[:, steps + 10:] == 0)  # the delimiter, then blanks
    for row, target in zip(x, y):
        kept = row[: steps + 9][row[: steps + 9] != 0]
        assert torch.equal(kept, target[-10:]) and torch.all(target[:-10] == 0)  # the 10 symbols, in order
    places = (x[:, : steps + 9] != 0).float().mean(0)  # every place before the delimiter is used
    assert bool((places > 0.1).all()) and float(places[:10].mean()) < 0.6  # not all at the start, as in copy
    # the command: a run with the memoryless baseline beside it
    result = CliRunner().invoke(main, ["train", "selective-copy", "--steps", "10", "--cell", "gru", "--hidden", "16",
                                       "--train-size", "200", "--epochs", "1", "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert f"(baseline memoryless: blanks, then a uniform guess of the 8 symbols: {copy_baseline(10):.4f}, 0.1250)" in result.output


class Last(nn.Module):
    def __init__(self, scale: float = 0.1) -> None:
        super().__init__()
        self.rnn = rnnkit.RNN(2, 8)
        with torch.no_grad():
            self.rnn.weight_hh_l0.mul_(scale)
        self.head = nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(x.transpose(0, 1))[0][-1])


def test_trainer_watches_the_gradient_flow(caplog) -> None:  # type: ignore[no-untyped-def]
    x, y = adding_problem(64, 60, seed=0)
    torch.manual_seed(0)
    trainer = Trainer(Last(), forward=lambda m, b: (m(b[0]), b[1]), loss_fn=F.mse_loss,
                      metric_fn=lambda o, t: float(F.mse_loss(o, t)), higher_is_better=False,
                      config=TrainConfig(epochs=2, batch_size=16), diagnose_every=2)
    with caplog.at_level(logging.WARNING, logger="rnnkit"):
        trainer.fit(TensorDataset(x[:48], y[:48]), TensorDataset(x[48:], y[48:]))
    assert [d["step"] for d in trainer.diagnoses] == [2, 4, 6]
    assert all(d["verdict"] == "vanishing" for d in trainer.diagnoses)
    warnings = [r.message for r in caplog.records if "gradients vanishing" in r.message]
    assert len(warnings) == 1 and "step 2" in warnings[0]  # once, in words


def test_a_nan_stops_the_run_and_keeps_the_best_weights(tmp_path) -> None:  # type: ignore[no-untyped-def]
    x, y = adding_problem(64, 10, seed=0)
    calls = {"n": 0}

    def forward(m: nn.Module, b: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        out = m(b[0])
        if m.training:
            calls["n"] += 1
            if calls["n"] == 7:  # the 3rd step of epoch 3 (3 batches of 16 per epoch)
                out = out * float("nan")
        return out, b[1]

    torch.manual_seed(0)
    trainer = Trainer(Last(1.0), forward=forward, loss_fn=F.mse_loss, metric_fn=lambda o, t: float(F.mse_loss(o, t)),
                      higher_is_better=False, config=TrainConfig(epochs=5, batch_size=16, patience=None),
                      checkpoint=tmp_path / "c.pt")
    history = trainer.fit(TensorDataset(x[:48], y[:48]), TensorDataset(x[48:], y[48:]))
    assert len(history) == 2 and trainer.failed
    assert "the loss became nan at step 7 (epoch 3, batch 1)" in trainer.stop_reason
    assert torch.load(tmp_path / "c.pt", weights_only=True)["history"][-1]["epoch"] == 2
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    _, metric, _, _ = trainer.evaluate(TensorDataset(x[48:], y[48:]))
    assert metric == pytest.approx(min(r.val_metric for r in history))


def test_cli_diagnose_fresh_cells_and_a_run(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from matplotlib.image import imread

    runner = CliRunner()
    result = runner.invoke(main, ["diagnose", "--cells", "rnn,gru,irnn", "--steps", "40", "--hidden", "16",
                                  "--out", str(tmp_path / "d")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "d" / "diagnostics.json").read_text())
    assert set(report["cells"]) == {"rnn", "gru", "irnn"}
    assert report["cells"]["irnn"]["verdict"]["verdict"] == "healthy"
    assert len(report["cells"]["rnn"]["gradient_flow"]["norms"]["RNN.l0"]) == 40
    assert report["cells"]["irnn"]["spectral_radius"]["weight_hh_l0"] == [pytest.approx(1.0)]
    for name in ("gradient_flow.png", "hidden_stats.png"):
        assert imread(tmp_path / "d" / name).ndim == 3
    assert "irnn   healthy" in result.output
    result = runner.invoke(main, ["train", "copy", "--steps", "10", "--cell", "gru", "--hidden", "16", "--train-size",
                                  "200", "--epochs", "2", "--schedule", "cosine", "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["baseline"]["cross_entropy"] == pytest.approx(10 * math.log(8) / 30)
    rates = [float(line.split(",")[4]) for line in (tmp_path / "run" / "history.csv").read_text().split()[1:]]
    assert rates == pytest.approx([3e-3, 1.5e-3])  # --schedule cosine: down to 0 along a cosine
    result = runner.invoke(main, ["diagnose", str(tmp_path / "run"), "--out", str(tmp_path / "d2")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "d2" / "diagnostics.json").read_text())
    assert len(report["cells"]["model"]["gradient_flow"]["norms"]["rnn.l0"]) == 30
    result = runner.invoke(main, ["diagnose", "--cells", "rnn,transformer", "--out", str(tmp_path / "d3")])
    assert result.exit_code == 1 and "unknown cell ['transformer']" in result.output
    assert not (tmp_path / "d3").exists()


def test_cli_diagnose_forecast_and_lm_runs(tmp_path) -> None:  # type: ignore[no-untyped-def]
    runner = CliRunner()
    assert runner.invoke(main, ["train", "forecast", "--window", "12", "--hidden", "8", "--epochs", "2",
                                "--out", str(tmp_path / "fc")]).exit_code == 0
    result = runner.invoke(main, ["diagnose", str(tmp_path / "fc"), "--out", str(tmp_path / "d1")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "d1" / "diagnostics.json").read_text())
    assert len(report["cells"]["model"]["gradient_flow"]["norms"]["rnn.l0"]) == 12  # one per step of a window
    (tmp_path / "t.txt").write_text("abcabcabd " * 30, encoding="utf-8")
    assert runner.invoke(main, ["train", "lm", "--text", str(tmp_path / "t.txt"), "--context", "6", "--hidden", "8",
                                "--layers", "1", "--epochs", "2", "--out", str(tmp_path / "lm")]).exit_code == 0
    result = runner.invoke(main, ["diagnose", str(tmp_path / "lm"), "--out", str(tmp_path / "d2")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "d2" / "diagnostics.json").read_text())
    assert len(report["cells"]["model"]["gradient_flow"]["norms"]["rnn.l0"]) == 6
    trace = report["hidden_state"]  # the first window's h_t, with the characters it read
    assert trace["layer"] == "rnn.l0" and len(trace["h"]) == 6 and len(trace["h"][0]) == 8
    assert len(trace["tokens"]) == 6 and "".join(trace["tokens"]) in "abcabcabd " * 3
    assert (tmp_path / "d2" / "hidden_state.png").stat().st_size > 0
    pairs = "".join(f"{a}{b}\t{b}{a}\n" for a in "abcd" for b in "efgh")
    (tmp_path / "p.tsv").write_text(pairs, encoding="utf-8")
    assert runner.invoke(main, ["train", "seq2seq", "--data", str(tmp_path / "p.tsv"), "--hidden", "4", "--epochs", "1",
                                "--out", str(tmp_path / "s2s")]).exit_code == 0
    result = runner.invoke(main, ["diagnose", str(tmp_path / "s2s"), "--out", str(tmp_path / "d3")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "d3" / "diagnostics.json").read_text())
    assert set(report["cells"]["model"]["gradient_flow"]["norms"]) == {"encoder.l0", "encoder.l0_reverse"}
    assert len(report["cells"]["model"]["gradient_flow"]["norms"]["encoder.l0"]) == 2  # two source characters
    assert report["hidden_state"]["layer"] == "encoder.l0" and len(report["hidden_state"]["tokens"]) == 2
    cfg = ["train", "caption", "--hidden", "4", "--epochs", "1", "--out", str(tmp_path / "cap")]
    assert runner.invoke(main, cfg).exit_code == 0
    result = runner.invoke(main, ["diagnose", str(tmp_path / "cap"), "--out", str(tmp_path / "d4")])
    assert result.exit_code == 1 and "is a 'caption' run" in result.output and not (tmp_path / "d4").exists()


def test_a_non_finite_validation_loss_stops_the_run(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The validation loss is checked as the training loss is: an inf there (a huge value in the
    validation part of a series) stops the run with the reason, keeping the best epoch's weights."""
    x, y = adding_problem(64, 10, seed=0)
    y_val = y[48:].clone()
    y_val[0] = 1e30  # finite, but its squared error is not in float32
    torch.manual_seed(0)
    trainer = Trainer(Last(1.0), forward=lambda m, b: (m(b[0]), b[1]), loss_fn=F.mse_loss,
                      metric_fn=lambda o, t: float(F.mse_loss(o, t)), higher_is_better=False,
                      config=TrainConfig(epochs=3, batch_size=16, patience=None), checkpoint=tmp_path / "c.pt")
    history = trainer.fit(TensorDataset(x[:48], y[:48]), TensorDataset(x[48:], y_val))
    assert trainer.failed and history == []
    assert trainer.stop_reason == "the validation loss became inf after epoch 1; the weights of the best epoch so far are kept"


@pytest.mark.parametrize("setting, value", [("lr", float("inf")), ("lr", float("nan")), ("clip_norm", float("inf")),
                                            ("max_minutes", float("nan"))])
def test_non_finite_settings_are_refused(setting: str, value: float) -> None:
    with pytest.raises(ValueError, match=f"TrainConfig: {setting} must be a finite number > 0"):
        TrainConfig(**{setting: value}).check()


def test_a_diverged_run_exits_3(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Diverged before its first epoch ended: exit 3, the reason, and no folder (nor RUN.partial).
    Diverged later: the run is finished with the best epoch's weights, metrics.json says
    "stopped": "diverged: ...", the last line says so, and the exit status is 3 too."""
    from rnnkit.training import _trainer

    runner = CliRunner()
    args = ["train", "forecast", "--window", "12", "--hidden", "8", "--epochs", "2"]
    monkeypatch.setattr(_trainer, "MAX_LR", 1e31)  # a learning rate that makes the loss overflow at once
    result = runner.invoke(main, [*args, "--lr", "1e30", "--out", str(tmp_path / "a")])
    assert result.exit_code == 3, result.output
    assert "training diverged before its first epoch ended: the loss became" in result.output
    assert list(tmp_path.iterdir()) == []

    from rnnkit.training import Trainer

    fit = Trainer.fit

    def fit_then_diverge(self, *a, **k):  # type: ignore[no-untyped-def]
        history = fit(self, *a, **k)
        self.failed, self.stop_reason = True, "the loss became nan at step 9 (epoch 3, batch 1)"
        return history

    monkeypatch.setattr(Trainer, "fit", fit_then_diverge)
    result = runner.invoke(main, [*args, "--out", str(tmp_path / "b")])
    assert result.exit_code == 3, result.output
    assert result.output.splitlines()[-1] == "stopped: diverged: the loss became nan at step 9 (epoch 3, batch 1)"
    metrics = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert metrics["stopped"] == "diverged: the loss became nan at step 9 (epoch 3, batch 1)"


def test_memory_runs_take_chrono_for_gated_cells_by_default(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """--init auto (the default): chrono with T_max the sequences' length for lstm and gru,
    torch.nn's for rnn, identity for irnn; an explicit --init holds."""
    from rnnkit.pipelines.memory import resolved_init

    assert [resolved_init(c, "auto") for c in ("lstm", "gru", "rnn")] == ["chrono", "chrono", "default"]
    assert resolved_init("lstm", "orthogonal") == "orthogonal"
    runner = CliRunner()
    for task, cell, extra, init, t_max in (("copy", "lstm", [], "chrono", 30), ("adding", "gru", [], "chrono", 10),
                                          ("adding", "rnn", [], "default", None),
                                          ("adding", "lstm", ["--init", "default"], "default", None)):
        out = tmp_path / f"{task}-{cell}-{init}"
        result = runner.invoke(main, ["train", task, "--steps", "10", "--cell", cell, "--hidden", "8", "--train-size",
                                      "100", "--epochs", "1", *extra, "--out", str(out)])
        assert result.exit_code == 0, result.output
        model = json.loads((out / "config.json").read_text())["model"]
        assert (model["init"], model["chrono_max"]) == (init, t_max)


def test_cli_diagnose_chrono(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """--init chrono sets the gates for --steps steps: at T = 200 the fresh LSTM's first-step
    gradient underflows with torch.nn's initialisation and not with chrono's, and the GRU's is
    healthy; the vanilla RNN has no gate to set and is refused."""
    runner = CliRunner()
    reports = {}
    for init in ("default", "chrono"):
        result = runner.invoke(main, ["diagnose", "--cells", "lstm,gru", "--steps", "200", "--hidden", "32",
                                      "--init", init, "--out", str(tmp_path / init)])
        assert result.exit_code == 0, result.output
        reports[init] = json.loads((tmp_path / init / "diagnostics.json").read_text())["cells"]
    assert reports["default"]["lstm"]["verdict"]["ratio"] < 1e-30
    assert reports["chrono"]["lstm"]["verdict"]["ratio"] > 1e-6
    assert reports["default"]["gru"]["verdict"]["verdict"] == "vanishing"
    assert reports["chrono"]["gru"]["verdict"]["verdict"] == "healthy"
    result = runner.invoke(main, ["diagnose", "--cells", "rnn", "--init", "chrono", "--out", str(tmp_path / "r")])
    assert result.exit_code == 1 and "the vanilla rnn has none" in result.output
    assert not (tmp_path / "r").exists()
    # the minimal cells: torch.nn's initialisation halves the state at every step (2^-200), chrono keeps it
    for init in ("default", "chrono"):
        result = runner.invoke(main, ["diagnose", "--cells", "mingru,minlstm", "--steps", "200", "--hidden", "32",
                                      "--init", init, "--out", str(tmp_path / f"min-{init}")])
        assert result.exit_code == 0, result.output
        reports[init] = json.loads((tmp_path / f"min-{init}" / "diagnostics.json").read_text())["cells"]
    from matplotlib.image import imread  # the minimal cells' share kept is a fourth panel: a wider figure

    assert imread(tmp_path / "min-chrono" / "hidden_stats.png").shape[1] > imread(
        tmp_path / "chrono" / "hidden_stats.png").shape[1] * 1.3
    for cell in ("mingru", "minlstm"):
        assert reports["default"][cell]["verdict"]["ratio"] < 1e-30
        assert reports["chrono"][cell]["verdict"]["verdict"] == "healthy"
        assert reports["chrono"][cell]["spectral_radius"] == {}
    result = runner.invoke(main, ["diagnose", "--cells", "mingru", "--init", "orthogonal", "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and "which mingru does not have" in result.output


def test_memory_model_layer_norm_and_forget_bias() -> None:
    from rnnkit.pipelines.memory import MemoryModel, MemoryModelConfig

    model = MemoryModel(MemoryModelConfig(task="adding", cell="lstm", hidden_size=8, layer_norm=True, forget_bias=1.0))
    assert model.rnn.layer_norm and torch.equal(model.rnn.bias_ih_l0.detach()[8:16], torch.ones(8))
    with pytest.raises(ValueError, match="the gru cell has none"):
        MemoryModelConfig(task="adding", cell="gru", forget_bias=1.0).check()


def test_the_memory_ablation_script_runs(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """benchmarks/memory.py on a tiny grid: one row per cell and remedy that applies, the
    gradient flow of the same weights before and after training, a table and the plots."""
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "memory.py"
    spec = importlib.util.spec_from_file_location("memory_ablation", path)
    ablation = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(ablation)  # type: ignore[union-attr]
    assert [r for c in ablation.CELLS for r in ablation.REMEDIES if ablation.applies(c, r)].count("forget-bias") == 2
    monkeypatch.setattr(sys, "argv", ["memory.py", "--tasks", "adding", "--adding-steps", "12", "--cells", "irnn,ln-lstm",
                                      "--budget", "4", "--hidden", "8", "--out", str(tmp_path)])
    ablation.main()
    saved = json.loads((tmp_path / "results.json").read_text())
    assert sorted((r["cell"], r["remedy"]) for r in saved["results"]) == [
        ("irnn", "clip"), ("irnn", "none"), ("ln-lstm", "chrono"), ("ln-lstm", "clip"), ("ln-lstm", "forget-bias"),
        ("ln-lstm", "none"), ("ln-lstm", "orthogonal")]
    for r in saved["results"]:
        assert len(r["flow_before"]) == len(r["flow_after"]) == 12 and r["flow_before"] != r["flow_after"]
    # the minimal cells, stacked, on selective copy: a row of their own beside the one-layer runs
    monkeypatch.setattr(sys, "argv", ["memory.py", "--tasks", "selective-copy", "--selective-copy-steps", "6",
                                      "--cells", "mingru", "--remedies", "orthogonal,chrono", "--layers", "2",
                                      "--budget", "4", "--hidden", "8", "--out", str(tmp_path)])
    ablation.main()
    saved = json.loads((tmp_path / "results.json").read_text())
    (run,) = [r for r in saved["results"] if r["task"] == "selective-copy"]  # no W_hh to make orthogonal
    assert (run["cell"], run["remedy"], run["layers"]) == ("mingru", "chrono", 2) and len(run["flow_after"]) == 26
    text = (tmp_path / "README.md").read_text()
    assert "| ln-lstm | forget-bias |" in text and "T = 12" in text and "| mingru x2 | chrono |" in text
    assert (tmp_path / "score-adding.png").stat().st_size > 0 and (tmp_path / "gradient_flow-adding-12.png").exists()
    assert (tmp_path / "score-selective-copy.png").stat().st_size > 0
