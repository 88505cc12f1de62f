"""Training: a task-agnostic Trainer with clipping, reduce-on-plateau, early stopping."""

from rnnkit.training._trainer import EpochRecord, Trainer, TrainConfig, pick_device, require_tensorboard, world

__all__ = ["EpochRecord", "TrainConfig", "Trainer", "pick_device", "require_tensorboard", "world"]
