"""What every training pipeline does around the Trainer: open the run's working folder (new or
resumed, by the main process only), and rebuild a pipeline config from a run's config.json."""

from __future__ import annotations

import shutil
import types
import typing
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Any, TypeVar

import torch

from rnnkit.runs import (CHECKPOINT, NotARunError, lock_run, partial_path, read_json, reading, release_run,
                         resume_run, start_run, value)
from rnnkit.training import TrainConfig, pick_device, require_tensorboard, world

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
        try:
            work = resume_run(out)[0] if resume else start_run(out, config={"task": task, "pipeline": asdict(cfg)})
        except BaseException:
            release_run(out)  # a run refused leaves nothing, its lock file included
            raise
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
    with reading(folder / "config.json"):
        values = dict(value(saved, "pipeline", dict))
        for key, before in getattr(cls, "BEFORE_FIELD", {}).items():  # settings newer than the run: as it ran
            values.setdefault(key, before)
        saved_train = _typed(TrainConfig, dict(value(values, "train", dict, within="pipeline")), "pipeline.train").check()
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(values) - known)
        if unknown:
            raise NotARunError(f"{folder}/config.json has unknown pipeline settings {unknown}: written by another "
                               "version?")
        values.pop("train")
        cfg = _typed(cls, values, "pipeline", train=saved_train)
        if getattr(cfg, "task", task) != task:
            raise ValueError(f"pipeline.task is {getattr(cfg, 'task')!r} in a {task} run")
        if hasattr(cfg, "check"):
            cfg.check()
    # the changes (--epochs) checked outside: a wrong one is the user's error, not the run's
    cfg.train = replace(saved_train, **{k: v for k, v in changes.items() if v is not None}).check()  # type: ignore[attr-defined]
    return cfg


def _typed(cls: type[C], values: dict[str, Any], where: str, **more: Any) -> C:
    """cls(**values, **more), each of values of its field's declared type (str, int, float, bool,
    None, tuple[X, ...] from a JSON list, and unions of these): TypeError names the first that is not."""
    hints = typing.get_type_hints(cls)
    for key, found in values.items():
        if not _matches(found, hints.get(key, Any)):
            raise TypeError(f"{where}.{key} must be {hints[key]}, got {type(found).__name__} {found!r}")
        if isinstance(found, list):  # JSON has lists where the config has tuples
            values[key] = tuple(found)
    return cls(**values, **more)


def _matches(found: Any, hint: Any) -> bool:
    """Whether a JSON value fits a dataclass field's simple type hint (see _typed)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(found, h) for h in typing.get_args(hint))
    if origin is tuple:
        return isinstance(found, (list, tuple)) and all(_matches(f, typing.get_args(hint)[0]) for f in found)
    if hint is type(None):
        return found is None
    if hint in (int, float):
        return isinstance(found, (int, float) if hint is float else int) and not isinstance(found, bool)
    return hint is Any or not isinstance(hint, type) or isinstance(found, hint)


class Diverged(RuntimeError):
    """Training diverged (a loss or gradient became NaN or infinite) before any epoch ended, so
    the run has nothing to keep: the CLI exits with DIVERGED."""


DIVERGED = 3
"""The exit status of `rnnkit train` when the run diverged (1: an error, 2: a usage error)."""


INT8_CELLS = ("rnn", "lstm", "gru")
"""The pipelines' cells that rnnkit.quantize has an int8 form of."""


def check_int8(cell: str, train: TrainConfig) -> None:
    """Refuse a pipeline's int8=True before it trains, where the int8 evaluation could not run."""
    if cell not in INT8_CELLS:
        raise ValueError(f"int8 evaluation: the {cell} cell has no int8 form (rnnkit.quantize takes "
                         f"{', '.join(INT8_CELLS)})")
    device = pick_device(train.device)
    if device.type != "cpu":
        raise ValueError(f"int8 evaluation runs on the CPU; this run would train on {device} (--device cpu)")


def int8_model(model: torch.nn.Module) -> torch.nn.Module:
    """rnnkit.quantize's form of a trained model, to evaluate it beside the float one (a pipeline's
    int8=True, checked by check_int8 before training)."""
    from rnnkit.quantized import quantize

    return quantize(model)


class _Bfloat16(torch.nn.Module):
    """A model in bfloat16 called as the float one: floating inputs cast to bfloat16, floating
    outputs back to float32 (bf16_model)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *args: Any) -> Any:
        from torch.utils._pytree import tree_map

        def cast(dtype: torch.dtype) -> Any:
            return lambda t: t.to(dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() else t

        return tree_map(cast(torch.float32), self.model(*tree_map(cast(torch.bfloat16), args)))


def bf16_model(model: torch.nn.Module) -> torch.nn.Module:
    """A bfloat16 copy of a trained model, to evaluate it beside the float one (a pipeline's
    bf16=True): its parameters and computation bfloat16 (rnnkit's bfloat16 kernels where the CPU
    has AVX-512 BF16), its inputs and outputs float32 as the float model's."""
    import copy

    return _Bfloat16(copy.deepcopy(model).to(torch.bfloat16)).eval()


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
