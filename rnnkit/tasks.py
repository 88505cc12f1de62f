"""The interface every task's runs share: a trained model and a batch of its data.

``rnnkit diagnose RUN`` and ``rnnkit export RUN`` need the same of any task: its model, a batch
of its validation data, and the task's loss on it. Each pipeline provides a ``task_batch(run,
size)`` that returns a TaskBatch (``rnnkit.pipelines.open_task`` picks the run's pipeline); the
tools take a TaskBatch and know no task.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor, nn

BATCH, TIME = "batch", "time"
"""The names of an input's dimensions that vary from call to call (TaskBatch.axes)."""


@dataclass(frozen=True)
class TaskBatch:
    """A trained model and a batch of its validation data.

    task: the run's task ('classify', 'forecast', 'lm', ...).
    model: in eval mode; ``model(*inputs)`` runs the batch.
    inputs: the model's inputs, e.g. tokens (B, T) and lengths (B,).
    loss: the task's loss of a model on inputs (a scalar), its targets held inside.
    axes: for each input, its dimensions that vary: {0: BATCH, 1: TIME} for tokens (B, T).
    not_exportable: None, or why the model does not export as one graph (a Python decoding loop).
    step_labels: for text, the tokens the first example reads, one per step (the hidden-state
    plot writes them on its time axis); None for numbers.
    """

    task: str
    model: nn.Module
    inputs: tuple[Tensor, ...]
    loss: Callable[[nn.Module, tuple[Tensor, ...]], Tensor]
    axes: tuple[dict[int, str], ...]
    not_exportable: str | None = None
    step_labels: tuple[str, ...] | None = None
