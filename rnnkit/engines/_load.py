"""How many threads the fused kernels use now: torch.get_num_threads(), or fewer while other
processes keep the machine's cores busy.

The kernels' threads meet at every time step. On a machine whose cores are all taken, a thread
that the OS has set aside holds up the others at the next step for a whole time slice, so two
threads can run many times slower than one (a GRU step of (8, 64, 8, 128) took 32x longer with
2 threads than with 1 beside 4 busy processes on 2 cores). So the kernels take only the cores that
other processes leave free, and at least one. Their results do not depend on their thread count
(tests/engines/test_threads.py), so this changes no number, only the time.

Linux only: other processes are counted from /proc (the runnable tasks of /proc/loadavg, less
this process's own running threads), at most every SAMPLE_S seconds and smoothed over the last
few samples. RNNKIT_LOAD_AWARE=0 turns it off: the kernels then always use torch.get_num_threads().
"""

from __future__ import annotations

import os
import time
from pathlib import Path

SAMPLE_S = 0.2
"""Seconds between two looks at the machine's load."""
SMOOTHING = 0.5
"""Weight of the newest sample in the running estimate of the other processes' runnable tasks."""

_state = {"at": -1e9, "others": 0.0}
_ENABLED = os.environ.get("RNNKIT_LOAD_AWARE", "1") != "0" and Path("/proc/loadavg").exists()


def fair_threads(requested: int, others: float, cpus: int) -> int:
    """The threads to use: requested on a machine that others (runnable tasks of other processes,
    on average) leave alone; beside them, as many as the cores they leave free, at least one."""
    if others < 0.5:
        return requested
    free = int(cpus - others + 0.5)
    return max(1, min(requested, free))


def _others_running() -> int | None:
    """Runnable tasks of other processes now, or None if /proc cannot tell."""
    try:
        running = int(Path("/proc/loadavg").read_text().split()[3].split("/")[0])
        mine = 0
        for task in os.scandir("/proc/self/task"):
            try:
                stat = Path(task.path, "stat").read_text()
            except OSError:  # the thread ended meanwhile
                continue
            mine += stat[stat.rindex(")") + 2] == "R"
    except (OSError, ValueError, IndexError):
        return None
    return max(0, running - mine)


def threads_now(requested: int) -> int:
    """The fused kernels' thread count for a call now: see the module's docstring."""
    if not _ENABLED or requested <= 1:
        return requested
    now = time.monotonic()
    if now - _state["at"] >= SAMPLE_S:
        sample = _others_running()
        _state["at"] = now
        if sample is not None:
            _state["others"] = (1 - SMOOTHING) * _state["others"] + SMOOTHING * sample
    return fair_threads(requested, _state["others"], os.cpu_count() or 1)
