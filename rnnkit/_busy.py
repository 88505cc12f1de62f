"""A machine that other processes keep busy, and what `rnnkit`'s command line does about it.

Threads that share work meet at the end of each parallel region (OpenMP's, in torch's
operations and in the fused kernels; one runtime, libgomp, serves both). A thread that has
finished its part spins while it waits for the others; on an idle machine that makes the next
region start at once, but on a machine with more runnable threads than cores the spinning thread
takes the core from the one it waits for, and each region then costs a turn of the OS
scheduler. Threads that sleep while they wait (OMP_WAIT_POLICY=PASSIVE) leave the core to the
others, but on an idle machine each region then costs a wake. The wait policy changes no number.
benchmarks/README.md ("Threads, and a busy machine") has the measurements.

So the command line (and only it: a library does not change the process it is imported into)
looks at the machine once at launch, before torch starts its threads: when other processes
already keep the cores busy, it sets OMP_WAIT_POLICY=PASSIVE, unless the user chose a wait
policy (OMP_WAIT_POLICY, GOMP_SPINCOUNT) or turned this off (RNNKIT_ADAPTIVE_THREADS=0).

Standard library only: rnnkit/__init__.py calls prepare_launch() before it imports torch.
"""

from __future__ import annotations

import math
import os
import statistics
import sys
import time
from collections.abc import Mapping, MutableMapping, Sequence

BUSY_PRESSURE = 10.0
"""CPU pressure (Linux's PSI: the share of the last 10 s in which some runnable task waited for
a core, in %) from which the machine counts as busy."""
PRESSURE_FILE = "/proc/pressure/cpu"
STAT_FILE = "/proc/stat"
PRESSURE_EVERY_S = 1.0
"""cpu_pressure reads the file at most this often and keeps the last reading in between."""
_pressure_read = [-math.inf, 0.0]  # when it was last read (time.monotonic), and what it read

LAUNCH_SEEN: tuple[int, int] | None = None
"""(other runnable tasks, cores) that prepare_launch saw when it set OMP_WAIT_POLICY=PASSIVE for
this process; None when it did not."""


def cpu_pressure() -> float:
    """Linux's CPU pressure (PSI) over the last 10 s, in %: the share of the time in which some
    runnable task waited for a core. Read at most every PRESSURE_EVERY_S; 0 where it cannot be
    read (not Linux, a kernel without PSI)."""
    now = time.monotonic()
    if now - _pressure_read[0] >= PRESSURE_EVERY_S:
        _pressure_read[0] = now
        try:
            with open(PRESSURE_FILE, encoding="ascii") as f:
                some = f.readline().split()  # "some avg10=1.23 avg60=... avg300=... total=..."
            _pressure_read[1] = float(some[1].partition("=")[2])
        except (OSError, IndexError, ValueError):
            _pressure_read[0], _pressure_read[1] = math.inf, 0.0  # never read again
    return _pressure_read[1]


def machine_busy() -> bool:
    """Whether runnable tasks waited for a core in at least BUSY_PRESSURE % of the last 10 s."""
    return cpu_pressure() >= BUSY_PRESSURE


def running_elsewhere(samples: int = 5, interval_s: float = 0.01) -> int | None:
    """How many other tasks are running or waiting for a core: the kernel's procs_running, less
    this process's one thread, the median of a few readings (a passing command is not a load).
    None where /proc/stat cannot be read."""
    counts = []
    for i in range(samples):
        if i:
            time.sleep(interval_s)
        try:
            with open(STAT_FILE, encoding="ascii") as f:
                running = next(int(line.split()[1]) for line in f if line.startswith("procs_running"))
        except (OSError, StopIteration, IndexError, ValueError):
            return None
        counts.append(max(0, running - 1))
    return int(statistics.median(counts))


def cores() -> int:
    """The cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def launched_as_cli(argv: Sequence[str], orig_argv: Sequence[str]) -> bool:
    """Whether this process is `rnnkit ...` or `python -m rnnkit ...` (sys.argv, sys.orig_argv)."""
    if not argv:
        return False
    if os.path.basename(argv[0]) in ("rnnkit", "rnnkit.exe"):
        return True
    if argv[0] == "-m" or argv[0].endswith(os.path.join("rnnkit", "__main__.py")):
        return any(a == "-m" and b == "rnnkit" for a, b in zip(orig_argv, orig_argv[1:]))
    return False


def prepare_launch(argv: Sequence[str] | None = None, orig_argv: Sequence[str] | None = None,
                   environ: MutableMapping[str, str] | None = None, torch_loaded: bool | None = None) -> bool:
    """At the command line's launch, before torch is imported: on a machine whose cores other
    processes already keep busy (more runnable threads than cores, counting this process's),
    set OMP_WAIT_POLICY=PASSIVE. Returns whether it did. Nothing happens when this is not the
    command line, torch is already loaded (its threading is set up), the user set a wait
    policy, RNNKIT_ADAPTIVE_THREADS=0, or the process runs one thread."""
    global LAUNCH_SEEN
    argv = sys.argv if argv is None else argv
    orig_argv = getattr(sys, "orig_argv", argv) if orig_argv is None else orig_argv
    environ = os.environ if environ is None else environ
    torch_loaded = "torch" in sys.modules if torch_loaded is None else torch_loaded
    if (torch_loaded or not launched_as_cli(argv, orig_argv) or environ.get("RNNKIT_ADAPTIVE_THREADS") == "0"
            or "OMP_WAIT_POLICY" in environ or "GOMP_SPINCOUNT" in environ):
        return False
    threads = _threads(environ)
    if threads <= 1:
        return False
    available = cores()
    first = running_elsewhere(samples=1)  # an idle machine costs the launch one reading
    if first is None or first + threads <= available:
        return False
    others = running_elsewhere()
    if others is None or others + threads <= available:
        return False
    environ["OMP_WAIT_POLICY"] = "PASSIVE"
    LAUNCH_SEEN = (others, available)
    return True


def _threads(environ: Mapping[str, str]) -> int:
    """The threads torch will run: OMP_NUM_THREADS, else (its default) the cores."""
    try:
        return int(environ.get("OMP_NUM_THREADS", "").split(",")[0])
    except ValueError:
        return cores()


def advice(threads: int) -> str | None:
    """What a training run on CPU with `threads` threads should say about the machine: that the
    launch set OMP_WAIT_POLICY=PASSIVE, or that the machine is busy now and what to set; None
    when there is nothing to say."""
    if LAUNCH_SEEN is not None:
        others, available = LAUNCH_SEEN
        return (f"{others} other tasks were running on {available} cores at launch: waiting threads sleep instead of "
                "spinning (OMP_WAIT_POLICY=PASSIVE, which changes no number; set OMP_WAIT_POLICY yourself to choose)")
    if threads > 1 and "OMP_WAIT_POLICY" not in os.environ and machine_busy():
        return (f"other processes keep this machine's cores busy (CPU pressure {cpu_pressure():.0f}% over 10 s): "
                "OMP_WAIT_POLICY=PASSIVE or OMP_NUM_THREADS=1, set before starting, is often several times faster "
                "on a busy machine")
    return None
