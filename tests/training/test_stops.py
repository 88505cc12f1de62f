"""Stops as machines make them: a SIGTERM or SIGINT in the middle of an epoch ends the step under
way, saves a checkpoint that resumes to the very numbers of a run that never stopped (shuffle,
dropout and a truncated-BPTT carried state included); a full disk keeps the checkpoint before."""

from __future__ import annotations

import errno
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

import rnnkit
from rnnkit.pipelines.lm import CarriedState, Streams
from rnnkit.runs import DiskFullError, write_atomically
from rnnkit.training import Interrupted, Trainer, TrainConfig, stop_on_signals


class Dropped(nn.Module):
    """Dropout between the layers, so that the random state matters."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = rnnkit.LSTM(2, 8, num_layers=2, dropout=0.3, batch_first=True)
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(x)[0][:, -1])


def _data() -> tuple[TensorDataset, TensorDataset]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(80, 5, 2, generator=g)
    y = (x.sum((1, 2)) > 0).long()
    return TensorDataset(x[:64], y[:64]), TensorDataset(x[64:], y[64:])


def _trainer(checkpoint: Path | None, forward: Callable[[nn.Module, Any], Any] | None = None) -> Trainer:
    torch.manual_seed(0)
    return Trainer(Dropped(), forward=forward or (lambda m, b: (m(b[0]), b[1])), loss_fn=F.cross_entropy,
                   metric_fn=lambda o, y: float((o.argmax(-1) == y).double().mean()),
                   config=TrainConfig(epochs=3, batch_size=8, patience=None, seed=1), checkpoint=checkpoint)


def _signal_at(step: int, number: int = signal.SIGTERM) -> Callable[[nn.Module, Any], Any]:
    """A forward that sends this process the signal during its step-th call."""
    calls = [0]

    def forward(model: nn.Module, batch: Any) -> Any:
        calls[0] += 1
        if calls[0] == step:
            os.kill(os.getpid(), number)
        return model(batch[0]), batch[1]

    return forward


def _numbers(trainer: Trainer) -> list[tuple[float, ...]]:
    return [(r.train_loss, r.val_loss, r.val_metric, r.grad_norm, r.lr, r.clipped) for r in trainer.history]


@pytest.mark.parametrize("step, where", [(3, "in epoch 1, after batch 3 of 8"), (12, "in epoch 2, after batch 2 of 8"),
                                         (1, "in epoch 1, after batch 1 of 8")])  # validation calls forward too
@pytest.mark.parametrize("number", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_mid_epoch_resumes_to_the_same_numbers(tmp_path: Path, step: int, where: str, number: int) -> None:
    whole = _trainer(None)
    whole.fit(*_data())
    stopped = _trainer(tmp_path / "c.pt", _signal_at(step, number))
    with pytest.raises(Interrupted) as raised:
        stopped.fit(*_data())
    assert raised.value.exit_status == 128 + number and raised.value.where == where
    assert str(raised.value) == (f"training stopped by {signal.Signals(number).name} {where}; its state is saved in "
                                 f"{tmp_path / 'c.pt'}")
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handlers are given back
    resumed = _trainer(tmp_path / "c.pt")
    resumed.fit(*_data(), resume=True)
    assert _numbers(resumed) == _numbers(whole)
    for (name, a), b in zip(whole.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_a_signal_during_validation_stops_after_the_epoch(tmp_path: Path) -> None:
    whole = _trainer(None)
    whole.fit(*_data())
    stopped = _trainer(tmp_path / "c.pt", _signal_at(8 + 1))  # the first validation batch runs forward call 9
    with pytest.raises(Interrupted, match="stopped by SIGTERM after epoch 1;"):
        stopped.fit(*_data())
    resumed = _trainer(tmp_path / "c.pt")
    resumed.fit(*_data(), resume=True)
    assert _numbers(resumed) == _numbers(whole)


def test_truncated_bptt_carries_its_state_across_the_stop(tmp_path: Path) -> None:
    """The lm's streams: batches in order, each chunk starting from the state the one before left."""

    class Chars(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed, self.rnn, self.head = nn.Embedding(5, 4), rnnkit.GRU(4, 8, batch_first=True), nn.Linear(8, 5)

        def forward(self, x: torch.Tensor, h: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
            out, h = self.rnn(self.embed(x), h)
            return self.head(out), h

    ids = torch.randint(0, 5, (2000,), generator=torch.Generator().manual_seed(0))
    train, val = Streams(ids, 0, 1600, rows=4, steps=20), Streams(ids, 1600, 2000, rows=4, steps=20)

    def trainer(checkpoint: Path | None, stop: int | None = None) -> Trainer:
        torch.manual_seed(0)
        carried = CarriedState()
        forward = carried
        if stop is not None:
            calls = [0]

            def forward(m: nn.Module, b: Any) -> Any:  # type: ignore[misc]
                calls[0] += 1
                if calls[0] == stop:
                    os.kill(os.getpid(), signal.SIGTERM)
                return carried(m, b)

            forward.state_dict, forward.load_state_dict = carried.state_dict, carried.load_state_dict  # type: ignore[attr-defined]
        return Trainer(Chars(), forward=forward, loss_fn=F.cross_entropy, metric_fn=lambda o, y: 0.0,
                       config=TrainConfig(epochs=2, batch_size=4, patience=None), checkpoint=checkpoint, shuffle=False)

    whole = trainer(None)
    whole.fit(train, val)
    stopped = trainer(tmp_path / "c.pt", stop=7)
    with pytest.raises(Interrupted, match="in epoch 1, after batch 7"):
        stopped.fit(train, val)
    resumed = trainer(tmp_path / "c.pt")
    resumed.fit(train, val, resume=True)
    assert _numbers(resumed) == _numbers(whole)


def test_without_a_checkpoint_nothing_is_saved() -> None:
    with pytest.raises(Interrupted) as raised:
        _trainer(None, _signal_at(2)).fit(*_data())
    assert raised.value.checkpoint is None and str(raised.value).endswith("after batch 2 of 8")


def test_a_second_signal_stops_at_once(tmp_path: Path) -> None:
    """Run in a child process: the second SIGTERM ends it by the signal, whatever it was doing."""
    import subprocess
    import sys

    code = ("import os, signal, time\nfrom rnnkit.training import stop_on_signals\n"
            "with stop_on_signals(lambda n: print('asked', flush=True)):\n"
            "    os.kill(os.getpid(), signal.SIGTERM)\n    time.sleep(0.1)\n    print('still here', flush=True)\n"
            "    os.kill(os.getpid(), signal.SIGTERM)\n    time.sleep(5)\n    print('not reached')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == -signal.SIGTERM and done.stdout == "asked\nstill here\n", done


def test_blocks_nest_and_restore_the_handlers() -> None:
    before = signal.getsignal(signal.SIGINT)
    with stop_on_signals():
        inner = signal.getsignal(signal.SIGINT)
        with stop_on_signals():
            assert signal.getsignal(signal.SIGINT) is inner
        assert signal.getsignal(signal.SIGINT) is inner and inner is not before
    assert signal.getsignal(signal.SIGINT) is before


def _full_after(calls: int, real: Callable[..., None]) -> Callable[..., None]:
    """torch.save that, from its calls-th call on, writes a part and finds the device full."""
    count = [0]

    def save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        count[0] += 1
        if count[0] < calls:
            return real(obj, f, *args, **kwargs)
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    return save


def test_a_full_disk_keeps_the_checkpoint_before(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch, "save", _full_after(2, torch.save))
    with pytest.raises(DiskFullError) as raised:
        _trainer(tmp_path / "c.pt").fit(*_data())
    message = str(raised.value)
    assert message.startswith(f"cannot write {tmp_path / 'c.pt'}: no space left on the device that holds {tmp_path} (")
    assert message.endswith("MB free); the checkpoint saved after epoch 1 is kept")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]  # no half-written temporary file
    monkeypatch.undo()
    assert len(torch.load(tmp_path / "c.pt", weights_only=True)["history"]) == 1


def test_a_full_disk_before_any_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch, "save", _full_after(1, torch.save))
    with pytest.raises(DiskFullError, match="no checkpoint was saved before$"):
        _trainer(tmp_path / "c.pt").fit(*_data())
    assert list(tmp_path.iterdir()) == []


def test_write_atomically_keeps_the_old_file_on_any_failure(tmp_path: Path) -> None:
    path = tmp_path / "f.json"
    write_atomically(path, b"old")

    def fails(f: Any) -> None:
        f.write(b"ne")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomically(path, fails)
    assert path.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["f.json"]
    write_atomically(path, lambda f: f.write(b"new"))
    assert path.read_bytes() == b"new"


def test_a_checkpoint_of_another_model_is_refused_in_one_line(tmp_path: Path) -> None:
    torch.manual_seed(0)
    other = Trainer(nn.Linear(10, 2), forward=lambda m, b: (m(b[0]), b[1]), loss_fn=F.cross_entropy,
                    metric_fn=lambda o, y: 0.0, config=TrainConfig(epochs=1, batch_size=8), checkpoint=tmp_path / "c.pt")
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(16, 10, generator=g), torch.randint(0, 2, (16,), generator=g))
    other.fit(data, data)
    with pytest.raises(ValueError, match=r"cannot resume from .*c.pt: it does not fit this model and its training "
                                         r"\(Error\(s\) in loading state_dict"):
        _trainer(tmp_path / "c.pt").fit(*_data(), resume=True)
