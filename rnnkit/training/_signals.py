"""Stopping a training run the way schedulers and people stop it: SIGTERM (what `docker stop`,
Slurm and Kubernetes send before they kill) and SIGINT (Ctrl-C).

Inside ``stop_on_signals()`` the first of these signals only asks to stop: the Trainer finishes the
training step it is in, saves its checkpoint and raises Interrupted, and the caller says how to
continue. A second signal stops the process at once, as it would have without rnnkit (the
checkpoint on disk is whole either way: it is written to a temporary file and renamed).

Signals are the process's, so the request is too: one flag for the process, set only while a
``stop_on_signals`` block is open in the main thread of a process that trains alone (under
torchrun the launcher stops its workers, which must stop at the same step).
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

SIGNALS = (signal.SIGTERM, signal.SIGINT)

_requested: list[int] = []  # the signals received while a block was open, in order
_depth = 0  # open stop_on_signals blocks; the outermost installs the handlers and restores them


class Interrupted(Exception):
    """Training stopped on a signal between two steps; its state is in checkpoint (None: the
    Trainer had no checkpoint, and nothing was saved). exit_status: the shell's convention for a
    process ended by that signal (143 for SIGTERM, 130 for SIGINT)."""

    def __init__(self, signal_number: int, where: str, checkpoint: os.PathLike[str] | None) -> None:
        self.signal_number, self.where, self.checkpoint = signal_number, where, checkpoint
        self.signal_name = signal.Signals(signal_number).name
        self.exit_status = 128 + signal_number
        saved = f"; its state is saved in {checkpoint}" if checkpoint is not None else ""
        super().__init__(f"training stopped by {self.signal_name} {where}{saved}")


def requested() -> int | None:
    """The first stopping signal received inside an open block, or None."""
    return _requested[0] if _requested else None


@contextmanager
def stop_on_signals(on_signal: Callable[[int], None] | None = None) -> Iterator[None]:
    """Inside: SIGTERM and SIGINT ask training to stop after its current step (requested());
    on_signal(number) is called when the first arrives (say that it will stop). Blocks nest. Does
    nothing outside the main thread or under torchrun (WORLD_SIZE > 1)."""
    global _depth
    if threading.current_thread() is not threading.main_thread() or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        yield
        return
    before: dict[int, Any] = {}
    if _depth == 0:
        _requested.clear()

        def handle(number: int, frame: FrameType | None) -> None:
            if _requested:  # a second signal: end the process at once, with the signal's exit status
                signal.signal(number, signal.SIG_DFL)
                signal.raise_signal(number)
                return
            _requested.append(number)
            if on_signal is not None:
                on_signal(number)

        before = {number: signal.signal(number, handle) for number in SIGNALS}
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if _depth == 0:
            for number, handler in before.items():
                signal.signal(number, handler)
            _requested.clear()
