"""Training: a task-agnostic Trainer with clipping, reduce-on-plateau, early stopping."""

from rnnkit.training._signals import Interrupted, stop_on_signals
from rnnkit.training._trainer import EpochRecord, Trainer, TrainConfig, pick_device, require_tensorboard, world

__all__ = ["EpochRecord", "Interrupted", "TrainConfig", "Trainer", "pick_device", "require_tensorboard", "stop_on_signals",
           "world"]
