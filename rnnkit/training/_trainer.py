"""The Trainer: a training loop that knows nothing about tasks.

A pipeline hands it a model, a loss, a metric and two datasets; the Trainer runs epochs of Adam
with gradient clipping by norm, lowers the learning rate when the validation metric stops
improving (reduce on plateau), stops early, keeps the best weights, and records one row of
history per epoch. It logs and calls back; it never prints.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

log = logging.getLogger("rnnkit")

Batch = Sequence[Tensor]
ForwardFn = Callable[[nn.Module, Batch], tuple[Tensor, Tensor]]
"""forward(model, batch) -> (output, target): what the loss and the metric compare."""
MetricFn = Callable[[Tensor, Tensor], float]
"""metric(outputs, targets) over a whole split -> a number."""


@dataclass
class TrainConfig:
    """How to train. Every field is validated by :meth:`check`."""

    epochs: int = 40
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.0
    clip_norm: float | None = 1.0  # gradient clipping by global norm; None: off
    patience: int | None = 10  # early stopping: epochs without a better validation metric
    lr_patience: int = 4  # reduce on plateau: epochs without improvement before lr *= lr_factor
    lr_factor: float = 0.5
    seed: int = 0
    device: str = "auto"  # "auto": cuda if available, else cpu

    def check(self) -> TrainConfig:
        for name in ("epochs", "batch_size", "lr_patience"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"TrainConfig: {name} must be an int >= 1, got {value!r}")
        if self.patience is not None and (not isinstance(self.patience, int) or self.patience < 1):
            raise ValueError(f"TrainConfig: patience must be an int >= 1 or None, got {self.patience!r}")
        if not self.lr > 0:
            raise ValueError(f"TrainConfig: lr must be > 0, got {self.lr!r}")
        if self.clip_norm is not None and not self.clip_norm > 0:
            raise ValueError(f"TrainConfig: clip_norm must be > 0 or None, got {self.clip_norm!r}")
        if not 0 < self.lr_factor < 1:
            raise ValueError(f"TrainConfig: lr_factor must be in (0, 1), got {self.lr_factor!r}")
        return self


@dataclass
class EpochRecord:
    """One row of history.csv."""

    epoch: int
    train_loss: float
    val_loss: float
    val_metric: float
    lr: float
    grad_norm: float  # mean global gradient norm before clipping
    clipped: float  # fraction of steps whose gradient was clipped
    seconds: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class Trainer:
    """Trains ``model`` with ``loss_fn(output, target)``; selects by ``metric_fn`` on validation.

    Args:
        model: any nn.Module.
        forward: forward(model, batch) -> (output, target), the task's one step.
        loss_fn: loss(output, target) -> scalar tensor.
        metric_fn: metric(outputs, targets) over the validation split; higher is better unless
            ``higher_is_better=False``.
        config: a TrainConfig.
        on_epoch: called with each EpochRecord (a CLI prints it; the Trainer only logs).
        collate_fn: for the DataLoaders (variable-length batches).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        forward: ForwardFn,
        loss_fn: Callable[[Tensor, Tensor], Tensor],
        metric_fn: MetricFn,
        config: TrainConfig,
        higher_is_better: bool = True,
        on_epoch: Callable[[EpochRecord], None] | None = None,
        collate_fn: Callable[[list[Any]], Batch] | None = None,
    ) -> None:
        self.config = config.check()
        self.device = pick_device(config.device)
        self.model = model.to(self.device)
        self.forward, self.loss_fn, self.metric_fn = forward, loss_fn, metric_fn
        self.sign = 1.0 if higher_is_better else -1.0
        self.on_epoch = on_epoch
        self.collate_fn = collate_fn
        self.history: list[EpochRecord] = []
        self.best_metric = -math.inf
        self.best_epoch = 0

    def _batches(self, data: Dataset[Any], *, shuffle: bool, generator: torch.Generator | None) -> DataLoader[Any]:
        return DataLoader(data, batch_size=self.config.batch_size, shuffle=shuffle,
                          generator=generator, collate_fn=self.collate_fn)

    def _to_device(self, batch: Batch) -> Batch:
        return [t.to(self.device) if isinstance(t, Tensor) else t for t in batch]

    @torch.no_grad()
    def evaluate(self, data: Dataset[Any]) -> tuple[float, float, Tensor, Tensor]:
        """(loss, metric, outputs, targets) over data, in eval mode."""
        self.model.eval()
        outputs, targets, total, count = [], [], 0.0, 0
        for batch in self._batches(data, shuffle=False, generator=None):
            output, target = self.forward(self.model, self._to_device(batch))
            total += self.loss_fn(output, target).item() * len(target)
            count += len(target)
            outputs.append(output.cpu())
            targets.append(target.cpu())
        out, tgt = torch.cat(outputs), torch.cat(targets)
        return total / max(count, 1), self.metric_fn(out, tgt), out, tgt

    def fit(self, train: Dataset[Any], val: Dataset[Any]) -> list[EpochRecord]:
        """Train, keep the weights of the best validation epoch, and load them at the end."""
        cfg = self.config
        torch.manual_seed(cfg.seed)
        generator = torch.Generator().manual_seed(cfg.seed)
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimiser = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimiser, mode="max", factor=cfg.lr_factor, patience=cfg.lr_patience
        )
        best_state = copy.deepcopy(self.model.state_dict())
        for epoch in range(1, cfg.epochs + 1):
            start = time.perf_counter()
            self.model.train()
            losses, norms, clipped = [], [], 0
            for batch in self._batches(train, shuffle=True, generator=generator):
                output, target = self.forward(self.model, self._to_device(batch))
                loss = self.loss_fn(output, target)
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                norm = float(nn.utils.clip_grad_norm_(params, cfg.clip_norm if cfg.clip_norm else math.inf))
                if not math.isfinite(norm):
                    raise FloatingPointError(f"Trainer: the gradient norm became {norm} in epoch {epoch}")
                clipped += int(cfg.clip_norm is not None and norm > cfg.clip_norm)
                norms.append(norm)
                losses.append(loss.item())
                optimiser.step()
            val_loss, metric, _, _ = self.evaluate(val)
            scheduler.step(self.sign * metric)
            record = EpochRecord(epoch, sum(losses) / len(losses), val_loss, metric,
                                 optimiser.param_groups[0]["lr"], sum(norms) / len(norms),
                                 clipped / len(norms), time.perf_counter() - start)
            self.history.append(record)
            log.info("epoch %d: train loss %.4f, val loss %.4f, val metric %.4f", epoch,
                     record.train_loss, val_loss, metric)
            if self.on_epoch is not None:
                self.on_epoch(record)
            if self.sign * metric > self.best_metric:
                self.best_metric, self.best_epoch = self.sign * metric, epoch
                best_state = copy.deepcopy(self.model.state_dict())
            elif cfg.patience is not None and epoch - self.best_epoch >= cfg.patience:
                log.info("early stop after epoch %d (best %d)", epoch, self.best_epoch)
                break
        self.model.load_state_dict(best_state)
        return self.history
