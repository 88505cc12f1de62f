"""What every training pipeline does around the Trainer: open the run's working folder (new or
resumed, by the main process only), and rebuild a pipeline config from a run's config.json."""

from __future__ import annotations

import shutil
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, TypeVar

from rnnkit.runs import (CHECKPOINT, NotARunError, lock_run, partial_path, read_json, release_run, resume_run,
                         start_run)
from rnnkit.training import TrainConfig, require_tensorboard, world

C = TypeVar("C")


def open_run(out: str | Path, task: str, cfg: Any, *, resume: bool, tensorboard: bool = False) -> Path:
    """The checkpoint file of the run at out. The main process creates RUN.partial (or, with
    resume, finds it or copies the finished run there); other processes of a data-parallel run
    only read the checkpoint. What could still fail before training (TensorBoard missing) is
    checked first, so that a refused run leaves no folder."""
    cfg.train.check()
    if tensorboard:
        require_tensorboard()
    rank, _ = world()
    if rank == 0:
        lock_run(out)  # before RUN.partial is looked at: one process owns the run
        work = resume_run(out)[0] if resume else start_run(out, config={"task": task, "pipeline": asdict(cfg)})
    else:
        work = partial_path(out)
    return work / CHECKPOINT


def check_new(out: str | Path) -> None:
    """Before any work: a run folder is never overwritten."""
    if Path(out).exists():
        raise FileExistsError(f"run folder {out} already exists: choose another --out")


def pipeline_config(run: str | Path, task: str, cls: type[C], **changes: Any) -> C:
    """The pipeline config a run at run (finished or RUN.partial) was started with, with changes
    (e.g. more epochs) applied to its TrainConfig."""
    folder = partial_path(run) if partial_path(run).is_dir() else Path(run)
    if not (folder / "config.json").is_file():
        raise NotARunError(f"nothing to resume at {run}: no config.json in {folder}")
    saved = read_json(folder / "config.json")
    if saved.get("task") != task or "pipeline" not in saved:
        raise NotARunError(f"{folder} is a {saved.get('task')!r} run, not a {task} run")
    values = dict(saved["pipeline"])
    for key, value in getattr(cls, "BEFORE_FIELD", {}).items():  # settings newer than the run: as it ran
        values.setdefault(key, value)
    train = TrainConfig(**{**values.pop("train"), **{k: v for k, v in changes.items() if v is not None}})
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - known)
    if unknown:
        raise NotARunError(f"{folder}/config.json has unknown pipeline settings {unknown}: written by another version?")
    for key, value in values.items():  # JSON has lists where the config has tuples
        if isinstance(value, list):
            values[key] = tuple(value)
    return cls(**values, train=train)  # type: ignore[call-arg]


class Diverged(RuntimeError):
    """Training diverged (a loss or gradient became NaN or infinite) before any epoch ended, so
    the run has nothing to keep: the CLI exits with DIVERGED."""


DIVERGED = 3
"""The exit status of `rnnkit train` when the run diverged (1: an error, 2: a usage error)."""


def check_diverged(trainer: Any, out: str | Path | None) -> None:
    """After trainer.fit: a run that diverged before its first epoch ended leaves no folder (its
    RUN.partial is removed) and raises Diverged; one that diverged later is finished as usual,
    with "stopped": "diverged: ..." in its metrics."""
    if not trainer.failed or trainer.history:
        return
    if out is not None and trainer.is_main:
        shutil.rmtree(partial_path(out), ignore_errors=True)
        release_run(out)
    reason = str(trainer.stop_reason).split(";")[0]
    raise Diverged(f"training diverged before its first epoch ended: {reason}; nothing was saved "
                   "(try a smaller --lr, or --clip-norm)")
