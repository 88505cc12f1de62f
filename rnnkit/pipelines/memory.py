"""Long-range memory tasks: the adding problem (N -> 1) and copy memory (N -> N), generated with a
seed (rnnkit.data._memory), trained with the Trainer, scored beside their memoryless baselines.

Cells: rnn, lstm, gru, and irnn (a relu RNN with W_hh initialised to the identity and zero
biases, Le et al. 2015). The training budget is fixed in steps: epochs x train_size / batch_size.
Copy and selective copy at long T train first at T = 100 (a length curriculum: curriculum_stages).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset, TensorDataset

import rnnkit
from rnnkit import _checks
from rnnkit._extras import needs_extras
from rnnkit.data._memory import (RECALL, SYMBOLS, adding_baseline, adding_problem, copy_baseline, copy_memory,
                                 selective_copy)
from rnnkit.pipelines._runs import check_diverged, check_new, open_run, pipeline_config
from rnnkit.runs import NotARunError, finish_run, load_weights, read_run, reading, value
from rnnkit.tasks import BATCH, TIME, TaskBatch
from rnnkit.training import EpochRecord, Trainer, TrainConfig

TASKS = ("adding", "copy", "selective-copy")
MEMORY_CELLS = ("rnn", "lstm", "gru", "irnn", "mingru", "minlstm")
MIN_CELLS = ("mingru", "minlstm")
"""The minimal cells: no W_hh for an init to set; their layer norm sits between stacked layers."""
MEMORY_INITS = ("default", "orthogonal", "identity", "chrono")
RUN_INITS = (*MEMORY_INITS, "auto")
"""A run's init: also "auto", chrono for the gated cells (lstm, gru, and the minimal ones) and
torch.nn's for rnn (irnn: identity, always). Chrono sets the forget or update gate to hold the state about as long as the
sequences; with it an LSTM learns copy memory at T = 100, which it does not with torch.nn's
initialisation in the same budget (recall 0.89 against 0.16 after 12,000 steps)."""


CURRICULUM_FROM = 200
"""curriculum="auto": copy and selective copy at T above this train first at CURRICULUM_START. At
T = 1000 a step costs about 12 times one at T = 100, and a three-layer minGRU trained at T = 100
recalls 0.73 at T = 1000 as it is (benchmarks/README.md, "A length curriculum")."""
CURRICULUM_START = 100
CURRICULUM_SHARE = 0.7
"""curriculum="auto": the share of the epochs trained at CURRICULUM_START (copy at T = 500: 0.94
with 0.5, 0.97 with 0.7, 0.98 with 0.8; benchmarks/README.md)."""
CURRICULUM_MIDDLE_FROM, CURRICULUM_MIDDLE = 1000, 300
CURRICULUM_MIDDLE_SHARES = (0.6, 0.2)
"""curriculum="auto" from T = CURRICULUM_MIDDLE_FROM on (and 5 epochs): these shares of the epochs
at CURRICULUM_START, then at T = CURRICULUM_MIDDLE, then T (selective copy at T = 1000: recall
0.93, against 0.84 without the stage at 300; benchmarks/README.md)."""
COMMAND_EPOCHS = 20
CURRICULUM_EPOCHS = {"copy": 30, "selective-copy": 25}
"""`rnnkit train copy|selective-copy`'s epochs: COMMAND_EPOCHS, or these where curriculum="auto"
trains stages before T, whose epochs cost about the same at any T: set to fit 20 minutes
on the 2-core CPU (copy at T = 500: 0.991 against 0.974 with 20; selective copy at T = 1000 with
three minGRU layers: 0.952 against 0.93; benchmarks/README.md, "A length curriculum")."""


def command_epochs(task: str, steps: int, curriculum: str) -> int:
    """The epochs `rnnkit train TASK` trains without --epochs (adding has its own): see
    CURRICULUM_EPOCHS."""
    staged = curriculum.strip() == "auto" and task in CURRICULUM_EPOCHS and steps > CURRICULUM_FROM
    return CURRICULUM_EPOCHS[task] if staged else COMMAND_EPOCHS


def resolved_init(cell: str, init: str) -> str:
    """The init a run's model is built with: see RUN_INITS."""
    if init != "auto":
        return init
    return "chrono" if cell in ("lstm", "gru", "mingru", "minlstm") else "default"


def _memory_training() -> TrainConfig:
    return TrainConfig(epochs=10, batch_size=50, lr=1e-3, patience=None, lr_patience=1000)


@dataclass
class MemoryModelConfig:
    task: str
    cell: str = "lstm"
    hidden_size: int = 128
    num_layers: int = 1  # stacked layers (the minimal cells' gates read the layer below's states)
    init: str = "default"  # default, orthogonal or identity for W_hh (irnn: identity); lstm, gru: chrono
    chrono_max: float | None = None  # init="chrono": the length of the sequences training starts with
    layer_norm: bool = False  # rnnkit's layer_norm=True: in the cell (classic) or between layers (minimal)
    forget_bias: float | None = None  # lstm: the forget gate's initial bias (Jozefowicz et al. 2015)

    def check(self) -> MemoryModelConfig:
        _checks.check_choice("memory", "task", self.task, TASKS)
        _checks.check_choice("memory", "cell", self.cell, MEMORY_CELLS)
        _checks.check_choice("memory", "init", self.init, MEMORY_INITS)
        _checks.check_int("memory", "hidden_size", self.hidden_size, minimum=1)
        _checks.check_int("memory", "num_layers", self.num_layers, minimum=1)
        if self.forget_bias is not None and self.cell != "lstm":
            raise ValueError(f"memory: forget_bias sets the LSTM's forget gate; the {self.cell} cell has none")
        if self.cell in MIN_CELLS and self.init not in ("default", "chrono"):
            raise ValueError(f"memory: the {self.cell} cell has no W_hh: init must be 'chrono' or 'default' (or "
                             f"'auto'); got init={self.init!r}")
        return self


class MemoryModel(nn.Module):
    """adding: x (B, T, 2) -> (B, 1), read from the last step; copy: symbols (B, T+20) -> logits
    (B, T+20, 9) at every step (input one-hot over the 10 symbols)."""

    def __init__(self, config: MemoryModelConfig) -> None:
        super().__init__()
        self.config = c = config.check()
        inputs = 2 if c.task == "adding" else SYMBOLS + 2
        if c.cell in ("rnn", "irnn"):
            self.rnn: nn.Module = rnnkit.RNN(inputs, c.hidden_size, c.num_layers,
                                             nonlinearity="relu" if c.cell == "irnn" else "tanh",
                                             batch_first=True, init="identity" if c.cell == "irnn" else c.init,
                                             layer_norm=c.layer_norm)
        elif c.cell == "lstm":
            self.rnn = rnnkit.LSTM(inputs, c.hidden_size, c.num_layers, batch_first=True, init=c.init, chrono_max=c.chrono_max,
                                   layer_norm=c.layer_norm, forget_bias=c.forget_bias)
        elif c.cell == "gru":
            self.rnn = rnnkit.GRU(inputs, c.hidden_size, c.num_layers, batch_first=True, init=c.init, chrono_max=c.chrono_max,
                                  layer_norm=c.layer_norm)
        else:
            self.rnn = (rnnkit.MinGRU if c.cell == "mingru" else rnnkit.MinLSTM)(
                inputs, c.hidden_size, c.num_layers, batch_first=True, init=c.init, chrono_max=c.chrono_max,
                layer_norm=c.layer_norm)
        self.head = nn.Linear(c.hidden_size, 1 if c.task == "adding" else SYMBOLS + 1)

    def forward(self, x: Tensor) -> Tensor:
        if self.config.task != "adding":
            x = F.one_hot(x, SYMBOLS + 2).to(self.head.weight.dtype)  # (B, T+20) -> (B, T+20, 10)
        out, _ = self.rnn(x)  # (B, T, H)
        return self.head(out[:, -1]) if self.config.task == "adding" else self.head(out)


def copy_loss(logits: Tensor, target: Tensor) -> Tensor:
    return F.cross_entropy(logits.transpose(1, 2), target)  # mean over every step of every sequence


def copy_accuracy(logits: Tensor, target: Tensor) -> float:
    """The share of the 10 recalled symbols that are right."""
    return float((logits[:, -10:].argmax(-1) == target[:, -10:]).double().mean())


@dataclass
class MemoryConfig:
    task: str = "adding"
    steps: int = 100  # T
    cell: str = "lstm"
    hidden_size: int = 128
    num_layers: int = 1
    init: str = "default"
    layer_norm: bool = False
    forget_bias: float | None = None  # lstm only
    train_size: int = 10000
    val_size: int = 1000
    test_size: int = 1000
    curriculum: str = "auto"  # "off", "auto" or stages "T:EPOCHS,...": see curriculum_stages
    train: TrainConfig = field(default_factory=_memory_training)
    BEFORE_FIELD: ClassVar[dict[str, Any]] = {"curriculum": "off"}  # how runs saved before the setting ran

    def check(self) -> MemoryConfig:
        for name in ("steps", "train_size", "val_size", "test_size"):
            _checks.check_int("memory", name, getattr(self, name), minimum=1)
        _checks.check_choice("memory", "init", self.init, RUN_INITS)
        curriculum_stages(self)
        return self

    @property
    def source(self) -> str:
        return f"{self.task}{self.steps}"


def curriculum_stages(cfg: MemoryConfig) -> list[tuple[int, int]]:
    """The (T, epochs) of each stage of training, the last at cfg.steps for the epochs left.

    cfg.curriculum: "off", one stage; "T:EPOCHS,...", the given stages first (T increasing and
    below cfg.steps; at least one epoch left for the last stage); "auto", copy and selective copy
    at T above CURRICULUM_FROM train CURRICULUM_SHARE of their epochs at T = CURRICULUM_START
    first (from T = 1000 on, with a stage at T = 300 between: CURRICULUM_MIDDLE), everything else
    one stage. Epochs past the stages' sum (a resumed run given more) train at cfg.steps. Raises
    ValueError naming what is wrong."""
    epochs, spec = cfg.train.epochs, cfg.curriculum.strip()
    if spec == "off" or (spec == "auto" and (cfg.task == "adding" or cfg.steps <= CURRICULUM_FROM or epochs < 2)):
        return [(cfg.steps, epochs)]
    if spec == "auto":
        if cfg.steps >= CURRICULUM_MIDDLE_FROM and epochs >= 5:
            first, middle = (max(1, round(share * epochs)) for share in CURRICULUM_MIDDLE_SHARES)
            return [(CURRICULUM_START, first), (CURRICULUM_MIDDLE, middle), (cfg.steps, epochs - first - middle)]
        first = min(epochs - 1, max(1, round(CURRICULUM_SHARE * epochs)))
        return [(CURRICULUM_START, first), (cfg.steps, epochs - first)]
    stages: list[tuple[int, int]] = []
    for part in spec.split(","):
        length, colon, count = part.strip().partition(":")
        try:
            stage = (int(length), int(count))
        except ValueError:
            stage = (0, 0)
        if not colon or min(stage) < 1:
            raise ValueError(f"memory: curriculum must be 'auto', 'off' or stages T:EPOCHS separated by commas "
                             f"(e.g. '100:14'), each number at least 1; got {cfg.curriculum!r}")
        if stage[0] <= (stages[-1][0] if stages else 0) or stage[0] >= cfg.steps:
            raise ValueError(f"memory: the curriculum's lengths must increase and stay below the run's T = {cfg.steps}; "
                             f"got {cfg.curriculum!r}")
        stages.append(stage)
    done = sum(n for _, n in stages)
    if done >= epochs:
        raise ValueError(f"memory: the curriculum {cfg.curriculum!r} takes {done} epochs of the {epochs}: leave at "
                         f"least one for T = {cfg.steps}")
    return [*stages, (cfg.steps, epochs - done)]


def resolved_curriculum(cfg: MemoryConfig) -> str:
    """cfg.curriculum as the stages it resolves to: "off" or "T:EPOCHS,..." (what a run saves, so
    that resuming it with more epochs keeps its stages and trains the new epochs at cfg.steps)."""
    stages = curriculum_stages(cfg)
    return "off" if len(stages) == 1 else ",".join(f"{length}:{count}" for length, count in stages[:-1])


class LengthCurriculum(Dataset[tuple[Tensor, Tensor]]):
    """A training set whose sequences grow longer with the epoch: stages [(T, epochs), ...]
    (curriculum_stages). Each stage's sequences come from a seed of their own, made when the
    stage begins; a stage at T holds train_size * T_first / T of them (at least one), so that
    every epoch holds about as many time steps. The Trainer calls set_epoch before each epoch."""

    def __init__(self, make: Callable[..., tuple[Tensor, Tensor]], stages: list[tuple[int, int]], train_size: int,
                 seed: int) -> None:
        self.make, self.stages, self.seed = make, stages, seed
        self.sizes = [max(1, round(train_size * stages[0][0] / length)) for length, _ in stages]
        self.stage = 0
        self._made: tuple[int, tuple[Tensor, Tensor]] | None = None

    def stage_of(self, epoch: int) -> int:
        """The stage that epoch (from 1) trains in: past the stages' epochs, the last."""
        end = 0
        for i, (_, count) in enumerate(self.stages):
            end += count
            if epoch <= end:
                return i
        return len(self.stages) - 1

    def set_epoch(self, epoch: int) -> None:
        self.stage = self.stage_of(epoch)

    def _tensors(self) -> tuple[Tensor, Tensor]:
        if self._made is None or self._made[0] != self.stage:
            seed = self.seed + 1_000_003 * (len(self.stages) - 1 - self.stage)  # the last stage: the run's seed
            self._made = None  # the stage before is let go first
            self._made = (self.stage, self.make(self.sizes[self.stage], self.stages[self.stage][0], seed=seed))
        return self._made[1]

    def __len__(self) -> int:
        return self.sizes[self.stage]

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        x, y = self._tensors()
        return x[i], y[i]


def make_data(cfg: MemoryConfig) -> tuple[Dataset[tuple[Tensor, ...]], TensorDataset, TensorDataset]:
    """Train, validation and test sets, each from its own seed; the validation and test sets at
    cfg.steps, the training set a LengthCurriculum where curriculum_stages has several stages."""
    make = {"adding": adding_problem, "copy": copy_memory, "selective-copy": selective_copy}[cfg.task]
    seeds = (cfg.train.seed * 3 + 1, cfg.train.seed * 3 + 2, cfg.train.seed * 3 + 3)
    sizes = (cfg.train_size, cfg.val_size, cfg.test_size)
    stages = curriculum_stages(cfg)
    train: Dataset[tuple[Tensor, ...]] = (LengthCurriculum(make, stages, cfg.train_size, seeds[0]) if len(stages) > 1
                                          else TensorDataset(*make(cfg.train_size, cfg.steps, seed=seeds[0])))
    val, test = (TensorDataset(*make(n, cfg.steps, seed=s)) for n, s in zip(sizes[1:], seeds[1:]))
    return train, val, test


@needs_extras
def train(cfg: MemoryConfig, out: str | Path | None, *, on_epoch: Callable[[EpochRecord], None] | None = None,
          resume: bool = False, progress: bool = False, tensorboard: bool = False,
          diagnose_every: int | None = None, on_diagnosis: Callable[[dict[str, Any]], None] | None = None,
          keep: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train and write the run folder at out (None: write nothing); returns metrics.json's content.
    keep: if given, receives the trained model under "model" and the test set under "test"."""
    cfg = replace(cfg.check(), curriculum=resolved_curriculum(cfg))
    # chrono: the length of the sequences training starts with (copy: T + 20). Set for T = 1000, a three-layer minGRU
    # that starts at T = 100 stalls there (train loss 0.20 from the third epoch, gradient norm 0.00)
    stages = curriculum_stages(cfg)
    length = stages[0][0] if cfg.task == "adding" else stages[0][0] + 2 * RECALL
    init = resolved_init(cfg.cell, cfg.init)
    model_cfg = MemoryModelConfig(task=cfg.task, cell=cfg.cell, hidden_size=cfg.hidden_size,
                                  num_layers=cfg.num_layers, init=init,
                                  chrono_max=length if init == "chrono" else None, layer_norm=cfg.layer_norm,
                                  forget_bias=cfg.forget_bias).check()
    if out is not None and not resume:
        check_new(out)
    data = make_data(cfg)
    checkpoint = open_run(out, cfg.task, cfg, resume=resume, tensorboard=tensorboard) if out is not None else None
    torch.manual_seed(cfg.train.seed)
    model = MemoryModel(model_cfg)
    adding = cfg.task == "adding"
    trainer = Trainer(model, forward=lambda m, b: (m(b[0]), b[1]), loss_fn=F.mse_loss if adding else copy_loss,
                      metric_fn=(lambda o, t: float(F.mse_loss(o, t))) if adding else (lambda o, t: float(copy_loss(o, t))),
                      higher_is_better=False, config=cfg.train, on_epoch=on_epoch, checkpoint=checkpoint,
                      progress=progress, tensorboard=checkpoint.parent / "tensorboard" if tensorboard and checkpoint else None,
                      diagnose_every=diagnose_every, on_diagnosis=on_diagnosis)
    history = trainer.fit(data[0], data[1], resume=resume)
    check_diverged(trainer, out)
    loss, _, outputs, targets = trainer.evaluate(data[2])
    if adding:
        test = {"mse": loss}
        baseline: dict[str, Any] = {"name": "always predict 1", "mse": adding_baseline()}
    else:
        test = {"cross_entropy": loss, "recall_accuracy": copy_accuracy(outputs, targets)}
        baseline = {"name": "memoryless: blanks, then a uniform guess of the 8 symbols",
                    "cross_entropy": copy_baseline(cfg.steps), "recall_accuracy": 1 / SYMBOLS}
    metrics = {
        "task": cfg.task, "steps": cfg.steps, "cell": cfg.cell, "test": test, "baseline": baseline,
        "sizes": {"train": cfg.train_size, "validation": cfg.val_size, "test": cfg.test_size},
        "training_steps": trainer.steps(data[0], len(history)),
        "curriculum": [list(stage) for stage in stages],
        "clip_norm": cfg.train.clip_norm, **trainer.summary(),
    }
    if keep is not None:
        keep["model"], keep["test"] = model, data[2]
    if out is None or not trainer.is_main:
        return metrics
    from rnnkit import plots

    rows = [r.as_dict() for r in history]
    config = {"task": cfg.task, "pipeline": asdict(cfg), "model": asdict(model_cfg)}
    finish_run(out, config=config, weights=model.state_dict(), extras={}, metrics=metrics, history=rows,
               plots={"history.png": plots.history(rows, "MSE" if adding else "cross-entropy", baseline=(
                   baseline["name"], baseline["mse" if adding else "cross_entropy"]))})
    return metrics


def load(run_path: str | Path) -> tuple[MemoryModel, dict[str, Any]]:
    run = read_run(run_path)
    if run.config.get("task") not in TASKS:
        raise NotARunError(f"{run.path} is a {run.config.get('task')!r} run, not an adding, copy or selective-copy run")
    with reading(run.path / "config.json"):
        model = MemoryModel(MemoryModelConfig(**value(run.config, "model", dict)))
    load_weights(model, run)
    return model.eval(), run.config


@needs_extras
def task_batch(run_path: str | Path, size: int) -> TaskBatch:
    """The run's model and up to size validation sequences of its task (rnnkit.tasks)."""
    model, config = load(run_path)
    task = str(config["task"])
    generated = make_data(pipeline_config(run_path, task, MemoryConfig))[1]
    x, y = generated.tensors[0][:size], generated.tensors[1][:size]
    loss: Callable[[nn.Module, tuple[Tensor, ...]], Tensor] = (
        (lambda m, b: F.mse_loss(m(*b), y)) if task == "adding" else (lambda m, b: copy_loss(m(*b), y)))
    return TaskBatch(task, model.eval(), (x,), loss, ({0: BATCH, 1: TIME},))
