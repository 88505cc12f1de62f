"""The Trainer: a training loop that knows nothing about tasks.

A pipeline hands it a model, a loss, a metric and two datasets; the Trainer runs epochs of Adam
with gradient clipping by norm, lowers the learning rate when the validation metric stops
improving (reduce on plateau), stops early, keeps the best weights, and records one row of
history per epoch. It logs and calls back; it never prints (a progress bar, when asked for,
draws on stderr).

Checkpoints: with ``checkpoint=PATH`` it saves, after every epoch and atomically, all it needs to
go on (weights, optimiser, scheduler, random number generators, history, best weights);
``fit(..., resume=True)`` continues from there and gives the same numbers as a run that never
stopped. SIGTERM or SIGINT during fit (rnnkit.training._signals) ends the step under way, saves a
checkpoint in the middle of the epoch (the batches done, the shuffle's and the dropout's random
state, a truncated-BPTT forward's carried state) and raises Interrupted; resuming from it also gives
the numbers of a run that never stopped.

Data parallel: under ``torchrun --nproc_per_node N`` (WORLD_SIZE > 1 in the environment) it
joins the process group (gloo on CPU, nccl on CUDA), wraps the model in
DistributedDataParallel and gives each process 1/N of every epoch's training data. Every
process evaluates the whole validation split, so all take the same decisions; only the main
process (rank 0) writes checkpoints and TensorBoard files.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from rnnkit import _busy
from rnnkit.training._signals import Interrupted, requested, stop_on_signals

log = logging.getLogger("rnnkit")

Batch = Sequence[Tensor]
ForwardFn = Callable[[nn.Module, Batch], tuple[Tensor, Tensor]]
"""forward(model, batch) -> (output, target): what the loss and the metric compare."""
MetricFn = Callable[[Tensor, Tensor], float]
"""metric(outputs, targets) over a whole split -> a number."""
MAX_LR = 10.0
SCHEDULES = ("plateau", "cosine", "anneal")
"""The largest learning rate TrainConfig accepts: Adam's step is about lr per weight, so above it
every step throws the weights far out (and near 3e38 the step overflows float32)."""


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
    schedule: str = "plateau"  # "plateau": the above; "cosine", "anneal": see schedule_factor
    seed: int = 0
    device: str = "auto"  # "auto": cuda if available, else cpu
    max_minutes: float | None = None  # a time budget: no epoch starts that would end past it

    def check(self) -> TrainConfig:
        for name in ("epochs", "batch_size", "lr_patience"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"TrainConfig: {name} must be an int >= 1, got {value!r}")
        if self.patience is not None and (not isinstance(self.patience, int) or self.patience < 1):
            raise ValueError(f"TrainConfig: patience must be an int >= 1 or None, got {self.patience!r}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"TrainConfig: lr must be a finite number > 0, got {self.lr!r}")
        if self.lr > MAX_LR:  # Adam moves each weight by up to about lr a step
            raise ValueError(f"TrainConfig: lr must be at most {MAX_LR:g} (Adam moves each weight by about lr a step; "
                             f"usual values are 1e-4 to 1e-2), got {self.lr!r}")
        if self.clip_norm is not None and not (math.isfinite(self.clip_norm) and self.clip_norm > 0):
            raise ValueError(f"TrainConfig: clip_norm must be a finite number > 0 or None, got {self.clip_norm!r}")
        if self.max_minutes is not None and not (math.isfinite(self.max_minutes) and self.max_minutes > 0):
            raise ValueError(f"TrainConfig: max_minutes must be a finite number > 0 or None, got {self.max_minutes!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"TrainConfig: schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if not 0 < self.lr_factor < 1:
            raise ValueError(f"TrainConfig: lr_factor must be in (0, 1), got {self.lr_factor!r}")
        return self


def schedule_factor(schedule: str, epoch: int, epochs: int) -> float:
    """The learning rate of epoch `epoch` (from 0) of `epochs`, as a fraction of TrainConfig.lr.
    cosine: (1 + cos(pi * epoch / epochs)) / 2, from the full rate down towards 0.
    anneal: the full rate for the first 80% of the epochs (from epoch s = ceil(0.8 * epochs) on),
    then down along a cosine, (1 + cos(pi * (epoch - s + 1) / (epochs - s + 1))) / 2: the stable
    phase learns, the last epochs settle the noise of a large rate."""
    epoch = min(epoch, epochs)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))
    start = math.ceil(0.8 * epochs)
    if epoch < start:
        return 1.0
    return 0.5 * (1.0 + math.cos(math.pi * (epoch - start + 1) / (epochs - start + 1)))


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


def world() -> tuple[int, int]:
    """(rank, world size) of this process: (0, 1) unless started by torchrun with N > 1."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def pick_device(name: str) -> torch.device:
    """auto: cuda if available (under torchrun, the GPU of this process's LOCAL_RANK), else cpu."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
        return torch.device("cpu")
    return torch.device(name)


def require_tensorboard() -> Any:
    """torch's SummaryWriter, or an ImportError that says what to install."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ImportError("TensorBoard logging needs the tensorboard package: pip install 'rnnkit[tensorboard]'") from None
    return SummaryWriter


def _tensorboard_writer(folder: Path) -> Any:
    return require_tensorboard()(log_dir=str(folder))


class Trainer:
    """Trains ``model`` with ``loss_fn(output, target)``; selects by ``metric_fn`` on validation.

    Args:
        model: any nn.Module.
        forward: forward(model, batch) -> (output, target), the task's one step.
        loss_fn: loss(output, target) -> scalar tensor.
        metric_fn: metric(outputs, targets) over the validation split; higher is better unless
            ``higher_is_better=False``.
        config: a TrainConfig.
        on_epoch: called with each EpochRecord in the main process (a CLI prints it; the Trainer
            only logs).
        collate_fn: for the DataLoaders (variable-length batches).
        checkpoint: file to save the training state to after every epoch (see ``fit(resume=)``).
        progress: draw a progress bar per epoch (tqdm, on stderr).
        tensorboard: folder for TensorBoard event files (needs the tensorboard package).
        shuffle: draw training batches in random order (False: in the dataset's order, for
            truncated backpropagation through time over a stream).
        diagnose_every: every N training steps, measure the gradient flow through time of the
            model's rnnkit layers on the step's batch (rnnkit.diagnostics, in eval mode) and keep a
            summary in self.diagnoses; warn once, in words, when it vanishes or explodes.
        on_diagnosis: called with each summary (main process).

    A loss or gradient norm that becomes NaN or infinite stops the run: the weights of the best
    epoch so far are kept, the last checkpoint stays as it was, and stop_reason names the step.
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
        checkpoint: str | os.PathLike[str] | None = None,
        progress: bool = False,
        tensorboard: str | os.PathLike[str] | None = None,
        shuffle: bool = True,
        diagnose_every: int | None = None,
        on_diagnosis: Callable[[dict[str, Any]], None] | None = None,
        best_possible: float | None = None,
    ) -> None:
        self.config = config.check()
        self.best_possible = best_possible  # a validation metric that no epoch can beat (exact match 1.0): stop there
        self.rank, self.world_size = world()
        self.device = pick_device(config.device)
        self.model = model.to(self.device)
        self.forward, self.loss_fn, self.metric_fn = forward, loss_fn, metric_fn
        self.sign = 1.0 if higher_is_better else -1.0
        self.on_epoch = on_epoch
        self.collate_fn = collate_fn
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        self.progress = progress and self.is_main
        self.writer = _tensorboard_writer(Path(tensorboard)) if tensorboard is not None and self.is_main else None
        self.history: list[EpochRecord] = []
        self.best_metric = -math.inf
        self.best_epoch = 0
        self.stopped_early = False
        self.shuffle = shuffle
        self.stop_reason = ""
        self.failed = False  # the loss or a gradient became NaN or infinite
        self.diagnose_every = diagnose_every
        self.on_diagnosis = on_diagnosis
        self.diagnoses: list[dict[str, Any]] = []
        self.train_seconds = 0.0
        self._warned: set[str] = set()
        self._saved = ""  # what the checkpoint on disk holds ("epoch 3"), "" before the first

    @property
    def is_main(self) -> bool:
        """True in the process that writes files: the only one, or rank 0 under torchrun."""
        return self.rank == 0

    def _batches(self, data: Dataset[Any], *, shuffle: bool, generator: torch.Generator | None,
                 sampler: DistributedSampler[Any] | None = None) -> DataLoader[Any]:
        return DataLoader(data, batch_size=self.config.batch_size, shuffle=shuffle and sampler is None,
                          sampler=sampler, generator=generator, collate_fn=self.collate_fn)

    def _join_process_group(self) -> nn.Module:
        """The model to train: self.model itself, or wrapped in DDP under torchrun."""
        if self.world_size == 1:
            return self.model
        import torch.distributed as dist
        from torch.nn.parallel import DistributedDataParallel

        if not dist.is_initialized():
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        log.info("data parallel: process %d of %d on %s", self.rank, self.world_size, self.device)
        return DistributedDataParallel(self.model, device_ids=[self.device] if self.device.type == "cuda" else None)

    def _save(self, path: Path, state: dict[str, Any]) -> None:
        """Save a checkpoint whole or not at all; on a full disk the one before stays (DiskFullError
        says which)."""
        from rnnkit.runs import DiskFullError, write_atomically

        try:
            write_atomically(path, lambda f: torch.save(state, f))
        except DiskFullError as error:
            kept = f"the checkpoint saved after {self._saved} is kept" if self._saved else "no checkpoint was saved before"
            raise DiskFullError(f"{error}; {kept}") from None
        partial = state.get("partial")
        self._saved = (f"epoch {partial['epoch']}, batch {partial['batches']}" if partial
                       else f"epoch {len(state['history'])}")

    def _to_device(self, batch: Batch) -> Batch:
        return [t.to(self.device) if isinstance(t, Tensor) else t for t in batch]

    @torch.no_grad()
    def evaluate(self, data: Dataset[Any], model: nn.Module | None = None) -> tuple[float, float, Tensor, Tensor]:
        """(loss, metric, outputs, targets) over data, in eval mode; of model, if given (another form
        of the trained model: rnnkit.quantize's), else of the model trained."""
        model = self.model if model is None else model
        model.eval()
        outputs, targets, total, count = [], [], 0.0, 0
        for batch in self._batches(data, shuffle=False, generator=None):
            output, target = self.forward(model, self._to_device(batch))
            total += self.loss_fn(output, target).item() * len(target)
            count += len(target)
            outputs.append(output.cpu())
            targets.append(target.cpu())
        out, tgt = torch.cat(outputs), torch.cat(targets)
        return total / max(count, 1), self.metric_fn(out, tgt), out, tgt

    def fit(self, train: Dataset[Any], val: Dataset[Any], *, resume: bool = False) -> list[EpochRecord]:
        """Train, keep the weights of the best validation epoch, and load them at the end.
        resume: continue from self.checkpoint (saved by an earlier fit with the same data and
        config, perhaps with more epochs now, or by one that a signal stopped) instead of starting
        afresh. A SIGTERM or SIGINT ends the step under way, saves the checkpoint and raises
        Interrupted (see the module docstring).
        train may change with the epoch: when it has a set_epoch(epoch) method (epochs count from
        1), it is called before each epoch's batches are drawn, and len(train) may differ between
        epochs (a length curriculum, rnnkit.pipelines.memory.LengthCurriculum)."""
        with stop_on_signals():
            return self._fit(train, val, resume=resume)

    def _fit(self, train: Dataset[Any], val: Dataset[Any], *, resume: bool) -> list[EpochRecord]:
        cfg = self.config
        torch.manual_seed(cfg.seed)
        generator = torch.Generator().manual_seed(cfg.seed)
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimiser = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        scheduler: Any
        if cfg.schedule != "plateau":  # stepped once an epoch; on resume with more epochs it follows the new count
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda e: schedule_factor(cfg.schedule, e, cfg.epochs))
        else:
            scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimiser, mode="max", factor=cfg.lr_factor, patience=cfg.lr_patience
            )
        best_state = copy.deepcopy(self.model.state_dict())
        model = self._join_process_group()
        first, partial = 1, None
        if resume:
            if self.world_size > 1:  # the main process may still be preparing the checkpoint's folder
                import torch.distributed as dist

                dist.barrier()
            if self.checkpoint is None or not self.checkpoint.is_file():
                raise FileNotFoundError(f"cannot resume: no checkpoint at {self.checkpoint}")
            try:
                best_state, partial = self._restore(torch.load(self.checkpoint, map_location=self.device,
                                                               weights_only=True), optimiser, scheduler, generator)
            except (RuntimeError, KeyError, ValueError, TypeError, EOFError, OSError) as error:
                reason = str(error).splitlines()[0] if str(error) else type(error).__name__
                raise ValueError(f"cannot resume from {self.checkpoint}: it does not fit this model and its training "
                                 f"({reason})") from None
            first = len(self.history) + 1
            log.info("resuming after %s (best epoch %d)", self._saved, self.best_epoch)
        said = _busy.advice(torch.get_num_threads()) if self.device.type == "cpu" else None
        if said:
            log.warning("Trainer: %s", said)
        began = time.perf_counter() - sum(r.seconds for r in self.history)  # a resumed run counts its past
        for epoch in range(first, cfg.epochs + 1):
            if self.stopped_early:
                break
            if cfg.max_minutes is not None and self.history:
                spent, last = time.perf_counter() - began, self.history[-1].seconds
                if spent + last > 60 * cfg.max_minutes:
                    self.stop_reason = f"time budget of {cfg.max_minutes:g} minute{'' if cfg.max_minutes == 1 else 's'}"
                    log.info("stop before epoch %d: another epoch would pass the %s", epoch, self.stop_reason)
                    break
            start = time.perf_counter()
            model.train()
            steps_before = self.steps(train, epoch - 1)
            if hasattr(train, "set_epoch"):
                train.set_epoch(epoch)
            sampler: DistributedSampler[Any] | None = None  # made each epoch: train may change size (set_epoch)
            if self.world_size > 1:
                sampler = DistributedSampler(train, num_replicas=self.world_size, rank=self.rank, shuffle=self.shuffle,
                                             seed=cfg.seed)
                sampler.set_epoch(epoch)  # its order: from seed + epoch
            losses, norms, clipped, skip = [], [], 0, 0
            if partial is not None:  # the batches done before the stop: drawn again from the same shuffle, skipped
                losses, norms, clipped, skip = partial["losses"], partial["norms"], partial["clipped"], partial["batches"]
                start -= partial["seconds"]
                partial = None
            shuffled_from = generator.get_state()  # a checkpoint inside this epoch draws its batches again from here
            batches = self._batches(train, shuffle=self.shuffle, generator=generator, sampler=sampler)
            bar = self._bar(len(batches), epoch)
            if bar is not None and skip:
                bar.update(skip)
            for i, batch in enumerate(batches):
                if i < skip:
                    continue
                if requested() is not None:  # a signal: stop before this step, as the last one ended
                    if bar is not None:
                        bar.close()
                    self._interrupted(f"in epoch {epoch}, after batch {i} of {len(batches)}", {
                        **self._state(optimiser, scheduler, best_state, shuffled_from),
                        "partial": {"epoch": epoch, "batches": i, "losses": losses, "norms": norms, "clipped": clipped,
                                    "seconds": time.perf_counter() - start,
                                    "forward": getattr(self.forward, "state_dict", lambda: None)()}})
                step = steps_before + i + 1  # counted over the whole run
                batch = self._to_device(batch)
                if self.diagnose_every and step % self.diagnose_every == 0:
                    self._diagnose(batch, step, epoch)
                output, target = self.forward(model, batch)
                loss = self.loss_fn(output, target)
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                norm = float(nn.utils.clip_grad_norm_(params, cfg.clip_norm if cfg.clip_norm else math.inf))
                value = loss.item()
                if not (math.isfinite(value) and math.isfinite(norm)):
                    what, bad = ("loss", value) if not math.isfinite(value) else ("gradient norm", norm)
                    self.stop_reason = (f"the {what} became {bad} at step {step} (epoch {epoch}, batch {i + 1}); "
                                        "the weights of the best epoch so far are kept")
                    log.warning("Trainer: %s", self.stop_reason)
                    self.failed = True
                    break
                clipped += int(cfg.clip_norm is not None and norm > cfg.clip_norm)
                norms.append(norm)
                losses.append(value)
                optimiser.step()
                if bar is not None:
                    bar.update()
                    bar.set_postfix(loss=f"{losses[-1]:.4f}", refresh=False)
            if self.failed:  # no record, no checkpoint: the last good one stays
                if bar is not None:
                    bar.close()
                break
            val_loss, metric, _, _ = self.evaluate(val)
            if not (math.isfinite(val_loss) and math.isfinite(metric)):  # checked like the training loss
                what, bad = ("validation loss", val_loss) if not math.isfinite(val_loss) else ("validation metric", metric)
                self.stop_reason = (f"the {what} became {bad} after epoch {epoch}; the weights of the best epoch "
                                    "so far are kept")
                log.warning("Trainer: %s", self.stop_reason)
                self.failed = True
                if bar is not None:
                    bar.close()
                break
            lr = optimiser.param_groups[0]["lr"]  # the rate this epoch trained at
            scheduler.step() if cfg.schedule != "plateau" else scheduler.step(self.sign * metric)
            record = EpochRecord(epoch, self._mean_over_processes(losses), val_loss, metric, lr, sum(norms) / len(norms),
                                 clipped / len(norms), time.perf_counter() - start)
            if bar is not None:
                bar.set_postfix(train_loss=f"{record.train_loss:.4f}", val_loss=f"{val_loss:.4f}",
                                val_metric=f"{metric:.4f}")
                bar.close()
            self.history.append(record)
            log.info("epoch %d: train loss %.4f, val loss %.4f, val metric %.4f", epoch,
                     record.train_loss, val_loss, metric)
            if self.writer is not None:
                for key, value in record.as_dict().items():
                    if key != "epoch":
                        self.writer.add_scalar(key, value, epoch)
                self.writer.flush()
            if self.on_epoch is not None and self.is_main:
                self.on_epoch(record)
            if self.sign * metric > self.best_metric:
                self.best_metric, self.best_epoch = self.sign * metric, epoch
                best_state = copy.deepcopy(self.model.state_dict())
                if self.best_possible is not None and self.sign * metric >= self.sign * self.best_possible:
                    log.info("stop after epoch %d: the validation metric reached %g", epoch, metric)
                    self.stopped_early = True
                    self.stop_reason = f"the validation metric reached its best possible value, {self.best_possible:g}"
            elif cfg.patience is not None and epoch - self.best_epoch >= cfg.patience:
                log.info("early stop after epoch %d (best %d)", epoch, self.best_epoch)
                self.stopped_early = True
                self.stop_reason = f"no better validation metric in {cfg.patience} epochs"
            if self.checkpoint is not None and self.is_main:
                self._save(self.checkpoint, self._state(optimiser, scheduler, best_state, generator.get_state()))
            if requested() is not None and epoch < cfg.epochs and not self.stopped_early:
                self._interrupted(f"after epoch {epoch}", None)
        if self.writer is not None:
            self.writer.close()
        self.train_seconds = time.perf_counter() - began
        self.model.load_state_dict(best_state)
        if self.world_size > 1:
            self._check_replicas()
        return self.history

    def _batch_count(self, size: int) -> int:
        """The batches of an epoch of size examples in this process (DistributedSampler pads each
        process's share to ceil(size / world_size))."""
        share = -(-size // self.world_size)
        return -(-share // self.config.batch_size)

    def steps(self, train: Dataset[Any], epochs: int) -> int:
        """The training steps (this process's batches) of the first `epochs` epochs of train; a
        train that changes with the epoch is set to each of them in turn (set_epoch)."""
        set_epoch = getattr(train, "set_epoch", None)
        if set_epoch is None:
            return epochs * self._batch_count(len(train))  # type: ignore[arg-type]
        total = 0
        for epoch in range(1, epochs + 1):
            set_epoch(epoch)
            total += self._batch_count(len(train))  # type: ignore[arg-type]
        return total

    def _restore(self, state: dict[str, Any], optimiser: torch.optim.Optimizer, scheduler: Any,
                 generator: torch.Generator) -> tuple[dict[str, Tensor], dict[str, Any] | None]:
        """Put a checkpoint's state into the model, optimiser, scheduler, random generators and this
        Trainer; (the best weights so far, the stopped epoch's progress or None)."""
        self.model.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimiser"])
        scheduler.load_state_dict(state["scheduler"])
        best_state = state["best_model"]
        self.history = [EpochRecord(**r) for r in state["history"]]
        self.best_metric, self.best_epoch = state["best_metric"], state["best_epoch"]
        self.stopped_early, self.stop_reason = state["stopped_early"], state["stop_reason"]
        self.diagnoses = state["diagnoses"]
        self._warned = {d["verdict"] for d in self.diagnoses if "warning" in d}
        torch.set_rng_state(state["rng"])
        generator.set_state(state["generator"])
        if torch.cuda.is_available() and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        partial = state.get("partial")  # stopped by a signal in the middle of the next epoch
        if partial is not None and partial["forward"] is not None:
            self.forward.load_state_dict(partial["forward"])  # type: ignore[attr-defined]
        self._saved = f"epoch {len(self.history)}" + (f", batch {partial['batches']}" if partial else "")
        return best_state, partial

    def _state(self, optimiser: torch.optim.Optimizer, scheduler: Any, best_state: dict[str, Tensor],
               generator: Tensor) -> dict[str, Any]:
        """What a checkpoint holds to go on from here (generator: the shuffle's state to go on from)."""
        return {
            "model": self.model.state_dict(), "optimiser": optimiser.state_dict(),
            "scheduler": scheduler.state_dict(), "best_model": best_state,
            "history": [r.as_dict() for r in self.history], "best_metric": self.best_metric,
            "best_epoch": self.best_epoch, "stopped_early": self.stopped_early,
            "stop_reason": self.stop_reason, "diagnoses": self.diagnoses,
            "rng": torch.get_rng_state(), "generator": generator,
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        }

    def _interrupted(self, where: str, state: dict[str, Any] | None) -> None:
        """Stop on the signal received: save state (None: the checkpoint just saved holds it) and
        raise Interrupted."""
        if self.writer is not None:
            self.writer.close()
        saved = self.checkpoint if self.checkpoint is not None and self.is_main else None
        if saved is not None and state is not None:
            self._save(saved, state)
        number = requested()
        assert number is not None
        log.info("stopped by signal %d %s", number, where)
        raise Interrupted(number, where, saved)

    def _diagnose(self, batch: Batch, step: int, epoch: int) -> None:
        from rnnkit.diagnostics import gradient_flow, verdict

        was_training = self.model.training
        self.model.eval()  # no dropout noise in the measurement, and no random numbers drawn
        try:
            flow = gradient_flow(self.model, batch, lambda m, b: self.loss_fn(*self.forward(m, b)))
        finally:
            self.model.train(was_training)
        v = verdict(flow)
        summary = {"step": step, "epoch": epoch, **v.to_json(),
                   "first_last": {k: [float(n[0]), float(n[-1])] for k, n in flow.norms.items()}}
        self.diagnoses.append(summary)
        log.info("step %d: gradient flow %s (%s)", step, v.verdict, v.reason)
        if v.verdict != "healthy" and v.verdict not in self._warned:
            self._warned.add(v.verdict)
            summary["warning"] = f"step {step}: gradients {v.verdict if v.verdict != 'nan' else 'became NaN'} - {v.reason}"
            log.warning("Trainer: %s", summary["warning"])
        if self.on_diagnosis is not None and self.is_main:
            self.on_diagnosis(summary)

    def _mean_over_processes(self, losses: list[float]) -> float:
        """The epoch's mean training loss over all batches of all processes."""
        if self.world_size == 1:
            return sum(losses) / len(losses)
        import torch.distributed as dist

        total = torch.tensor([sum(losses), len(losses)], dtype=torch.float64, device=self.device)
        dist.all_reduce(total)
        return float(total[0] / total[1])

    def _check_replicas(self) -> None:
        """Every process must end with the same weights; a difference means a broken setup."""
        import torch.distributed as dist

        checksum = torch.stack([p.detach().double().sum() for p in self.model.parameters()]).sum().view(1)
        low, high = checksum.clone(), checksum.clone()
        dist.all_reduce(low, op=dist.ReduceOp.MIN)
        dist.all_reduce(high, op=dist.ReduceOp.MAX)
        if not torch.equal(low, high):
            raise RuntimeError(f"data parallel: the {self.world_size} processes ended with different weights "
                               f"(checksums {float(low):.9g} to {float(high):.9g})")

    def summary(self) -> dict[str, Any]:
        """What metrics.json says of the training itself (after fit)."""
        return {
            "best_epoch": self.best_epoch,
            "epochs_run": len(self.history),
            "train_seconds": round(self.train_seconds, 2),
            "device": str(self.device),
            "processes": self.world_size,
            "stopped": (f"diverged: {self.stop_reason}" if self.failed
                        else self.stop_reason or f"after --epochs {self.config.epochs}"),
            "gradient_flow": self.diagnoses,
        }

    def _bar(self, total: int, epoch: int) -> Any:
        if not self.progress:
            return None
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=f"epoch {epoch}/{self.config.epochs}", unit="batch", leave=True, dynamic_ncols=True)
