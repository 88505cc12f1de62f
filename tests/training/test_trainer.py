"""The Trainer: repeatable with a seed, clipping reported, early stopping, best weights kept."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

import rnnkit
from rnnkit.training import Trainer, TrainConfig


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = rnnkit.GRU(2, 8, batch_first=True)
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(x)[0][:, -1])


def data(seed: int = 0, n: int = 96) -> tuple[TensorDataset, TensorDataset]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, 2, generator=g)
    y = (x.sum((1, 2)) > 0).long()  # the sign of the sum: learnable
    return TensorDataset(x[: n * 3 // 4], y[: n * 3 // 4]), TensorDataset(x[n * 3 // 4 :], y[n * 3 // 4 :])


def accuracy(out: torch.Tensor, y: torch.Tensor) -> float:
    return float((out.argmax(-1) == y).double().mean())


def fit(config: TrainConfig) -> tuple[Trainer, list]:  # type: ignore[type-arg]
    torch.manual_seed(config.seed)
    trainer = Trainer(Tiny(), forward=lambda m, b: (m(b[0]), b[1]), loss_fn=F.cross_entropy,
                      metric_fn=accuracy, config=config)
    return trainer, trainer.fit(*data())


def test_a_seed_repeats_the_run_exactly() -> None:
    _, a = fit(TrainConfig(epochs=4, batch_size=16, seed=3))
    _, b = fit(TrainConfig(epochs=4, batch_size=16, seed=3))
    _, c = fit(TrainConfig(epochs=4, batch_size=16, seed=4))
    strip = lambda h: [(r.train_loss, r.val_loss, r.val_metric, r.grad_norm) for r in h]  # noqa: E731
    assert strip(a) == strip(b)
    assert strip(a) != strip(c)


def test_it_learns_and_keeps_the_best_weights() -> None:
    trainer, history = fit(TrainConfig(epochs=25, batch_size=16, lr=1e-2, patience=None))
    best = max(r.val_metric for r in history)
    assert best > 0.8
    _, metric, _, _ = trainer.evaluate(data()[1])
    assert metric == pytest.approx(best)  # the weights of the best epoch were restored
    assert trainer.best_epoch == 1 + [r.val_metric for r in history].index(best)


def test_clipping_is_reported() -> None:
    _, history = fit(TrainConfig(epochs=2, batch_size=16, clip_norm=1e-4))
    assert all(r.clipped == 1.0 and r.grad_norm > 1e-4 for r in history)
    _, history = fit(TrainConfig(epochs=2, batch_size=16, clip_norm=None))
    assert all(r.clipped == 0.0 for r in history)


def test_early_stopping_and_reduce_on_plateau() -> None:
    """With a learning rate too small to change anything, the metric never improves after
    epoch 1: training stops after `patience` more epochs, and the rate was lowered on the way."""
    _, history = fit(TrainConfig(epochs=50, batch_size=16, lr=1e-6, patience=3, lr_patience=1))
    assert len(history) == 4
    assert history[-1].lr < history[0].lr


def test_a_run_stops_when_the_metric_reaches_its_best_possible_value() -> None:
    """best_possible: the first epoch whose validation metric reaches it ends the run, keeping
    its weights; short of it the run goes on."""
    config = TrainConfig(epochs=25, batch_size=16, lr=1e-2, patience=None)
    _, full = fit(config)
    target = max(r.val_metric for r in full)
    first = 1 + [r.val_metric >= target for r in full].index(True)
    assert first < len(full)  # else the test could not tell
    torch.manual_seed(config.seed)
    trainer = Trainer(Tiny(), forward=lambda m, b: (m(b[0]), b[1]), loss_fn=F.cross_entropy, metric_fn=accuracy,
                      config=config, best_possible=target)
    history = trainer.fit(*data())
    assert len(history) == first and trainer.best_epoch == first
    assert trainer.stop_reason == f"the validation metric reached its best possible value, {target:g}"
    assert [r.val_metric for r in history] == [r.val_metric for r in full[:first]]


@pytest.mark.parametrize("field, value, message", [
    ("epochs", 0, "epochs must be an int >= 1, got 0"),
    ("lr", -1.0, "lr must be a finite number > 0, got -1.0"),
    ("clip_norm", 0.0, "clip_norm must be a finite number > 0 or None, got 0.0"),
    ("lr_factor", 1.5, r"lr_factor must be in \(0, 1\), got 1.5"),
    ("patience", 0, "patience must be an int >= 1 or None, got 0"),
    ("schedule", "step", "schedule must be one of plateau, cosine, anneal, got 'step'"),
])
def test_bad_config(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TrainConfig(**{field: value}).check()  # type: ignore[arg-type]


class Dropped(Tiny):
    """Tiny with dropout, so that resuming must also restore the random number generator."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.dropout(self.rnn(x)[0][:, -1], 0.3, self.training))


class Stop(Exception):
    pass


def make(config: TrainConfig, checkpoint, **kwargs) -> Trainer:  # type: ignore[no-untyped-def]
    torch.manual_seed(config.seed)
    return Trainer(Dropped(), forward=lambda m, b: (m(b[0]), b[1]), loss_fn=F.cross_entropy, metric_fn=accuracy,
                   config=config, checkpoint=checkpoint, **kwargs)


@pytest.mark.parametrize("schedule", ["plateau", "cosine"])
def test_resume_continues_exactly(tmp_path, schedule: str) -> None:  # type: ignore[no-untyped-def]
    """A run stopped after epoch 3 and resumed ends with the history and weights of a run that
    never stopped."""
    config = TrainConfig(epochs=6, batch_size=16, seed=5, patience=None, schedule=schedule)
    whole = make(config, tmp_path / "whole.pt")
    whole.fit(*data())

    def die(record) -> None:  # type: ignore[no-untyped-def]
        if record.epoch == 3:
            raise Stop

    broken = make(config, tmp_path / "broken.pt", on_epoch=die)
    with pytest.raises(Stop):
        broken.fit(*data())
    assert torch.load(tmp_path / "broken.pt", weights_only=True)["history"][-1]["epoch"] == 2
    resumed = make(config, tmp_path / "broken.pt")
    resumed.fit(*data(), resume=True)
    strip = lambda h: [(r.epoch, r.train_loss, r.val_loss, r.val_metric, r.lr, r.grad_norm) for r in h]  # noqa: E731
    assert strip(resumed.history) == strip(whole.history)
    assert resumed.best_epoch == whole.best_epoch
    for name, value in whole.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name
    # a finished run given more epochs goes on from its last epoch
    more = make(TrainConfig(epochs=8, batch_size=16, seed=5, patience=None, schedule=schedule), tmp_path / "whole.pt")
    more.fit(*data(), resume=True)
    assert [r.epoch for r in more.history] == list(range(1, 9))
    assert strip(more.history[:6]) == strip(whole.history)


def test_cosine_schedule() -> None:
    """Epoch e (from 1) trains at lr * (1 + cos(pi * (e - 1) / epochs)) / 2: the full rate first,
    then down along a cosine towards 0; the validation metric plays no part."""
    _, history = fit(TrainConfig(epochs=6, batch_size=16, lr=1e-2, patience=None, schedule="cosine"))
    expected = [1e-2 * (1 + math.cos(math.pi * e / 6)) / 2 for e in range(6)]
    assert [r.lr for r in history] == pytest.approx(expected, rel=1e-12)
    _, plateau = fit(TrainConfig(epochs=6, batch_size=16, lr=1e-2, patience=None))
    assert plateau[0].lr == 1e-2 and history[-1].lr < 1e-3


def test_anneal_schedule() -> None:
    """anneal: the full rate for the first 80% of the epochs, then down along a cosine, never 0."""
    _, history = fit(TrainConfig(epochs=10, batch_size=16, lr=1e-2, patience=None, schedule="anneal"))
    assert [r.lr for r in history[:8]] == [1e-2] * 8
    assert [r.lr for r in history[8:]] == pytest.approx([1e-2 * (1 + math.cos(math.pi * k / 3)) / 2 for k in (1, 2)])


def test_resume_without_a_checkpoint(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(FileNotFoundError, match="cannot resume: no checkpoint at"):
        make(TrainConfig(epochs=1), tmp_path / "none.pt").fit(*data(), resume=True)


def test_progress_bar_and_tensorboard(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trainer = make(TrainConfig(epochs=2, batch_size=16), None, progress=True, tensorboard=tmp_path / "tb")
    trainer.fit(*data())
    err = capsys.readouterr().err
    assert "epoch 1/2" in err and "epoch 2/2" in err and "5/5" in err  # 72 examples in batches of 16
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert {"train_loss", "val_loss", "val_metric", "lr", "grad_norm"} <= set(events.Tags()["scalars"])
    losses = [(e.step, e.value) for e in events.Scalars("train_loss")]
    assert losses == [(r.epoch, pytest.approx(r.train_loss)) for r in trainer.history]


def test_an_early_stopped_run_stays_stopped_when_resumed(tmp_path) -> None:  # type: ignore[no-untyped-def]
    config = TrainConfig(epochs=50, batch_size=16, lr=1e-6, patience=2, lr_patience=1)
    first = make(config, tmp_path / "c.pt", diagnose_every=5)
    first.fit(*data())
    assert first.stopped_early and first.stop_reason == "no better validation metric in 2 epochs"
    again = make(TrainConfig(epochs=60, batch_size=16, lr=1e-6, patience=2, lr_patience=1), tmp_path / "c.pt")
    again.fit(*data(), resume=True)
    assert len(again.history) == len(first.history) and again.stop_reason == first.stop_reason
    assert again.diagnoses == first.diagnoses and len(first.diagnoses) > 0



@pytest.mark.parametrize("case", ["idle", "busy now", "busy at launch"])
def test_a_busy_machine_is_named_when_training_starts(case: str, monkeypatch: pytest.MonkeyPatch,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    """Training on CPU with several threads says once that the machine is busy, with what to set
    (rnnkit._busy.advice), or that the launch set OMP_WAIT_POLICY=PASSIVE; nothing when idle."""
    from rnnkit import _busy

    monkeypatch.setattr(_busy, "machine_busy", lambda: case == "busy now")
    monkeypatch.setattr(_busy, "cpu_pressure", lambda: 42.0)
    monkeypatch.setattr(_busy, "LAUNCH_SEEN", (3, 2) if case == "busy at launch" else None)
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    with caplog.at_level("WARNING", logger="rnnkit"):
        fit(TrainConfig(epochs=2, batch_size=16))
    said = [r.getMessage() for r in caplog.records if "OMP_WAIT_POLICY" in r.getMessage()]
    assert len(said) == (0 if case == "idle" else 1), said
    if case == "busy now":
        assert "CPU pressure 42%" in said[0] and "OMP_WAIT_POLICY=PASSIVE or OMP_NUM_THREADS=1" in said[0]
    if case == "busy at launch":
        assert "3 other tasks were running on 2 cores at launch" in said[0]
