"""Pipelines: a task = data + model + loss + metrics, handed to the Trainer; one run folder each.

Every pipeline also gives its runs' model and a batch of their data in one form
(rnnkit.tasks.TaskBatch), which the tools that serve every task (diagnose, export) take.
"""

from __future__ import annotations

from pathlib import Path

from rnnkit.runs import NotARunError, read_json
from rnnkit.tasks import TaskBatch


def open_task(run_path: str | Path, size: int = 64) -> TaskBatch:
    """A finished run's model and up to size examples of its validation data, whatever its task."""
    task = read_json(Path(run_path) / "config.json").get("task")
    if task in ("adding", "copy", "selective-copy"):
        from rnnkit.pipelines import memory as pipeline
    elif task == "classify":
        from rnnkit.pipelines import classify as pipeline  # type: ignore[no-redef]
    elif task == "forecast":
        from rnnkit.pipelines import forecast as pipeline  # type: ignore[no-redef]
    elif task == "lm":
        from rnnkit.pipelines import lm as pipeline  # type: ignore[no-redef]
    elif task == "seq2seq":
        from rnnkit.pipelines import seq2seq as pipeline  # type: ignore[no-redef]
    else:
        raise NotARunError(f"{run_path} is a {task!r} run: diagnose and export take classify, forecast, lm, "
                           "seq2seq, adding, copy and selective-copy runs")
    return pipeline.task_batch(run_path, size)


__all__ = ["open_task"]
