"""Training steps beside a synthetic background load: how much slower each implementation runs
when other processes keep the cores busy, against its own time on the idle machine and against
a fair share of the cores.

Each row times, in one process, round by round in a fresh order:
  torch     torch.nn's layer, torch's threads (torch.get_num_threads())
  torch-1   torch.nn's layer on one thread (torch.set_num_threads(1) for the step)
  fused     rnnkit's fused engine, torch's threads
  fused-1   the fused engine on one thread

first on the idle machine, then beside --load busy processes (each a Python loop, as
``rnnkit bench --load``). The fair share: with N busy processes and k threads of ours on C
cores, each runnable thread gets C / (N + k) of a core, so a step that keeps k threads busy may
take (N + k) / C times its idle time (k = torch's threads).

How threads wait for each other is set when torch starts (OpenMP's wait policy): run it twice,

    python benchmarks/load.py --load 2
    OMP_WAIT_POLICY=PASSIVE python benchmarks/load.py --load 2

Times on a shared machine under load are noisy: compare the columns of one run, not runs.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable

import torch

import rnnkit
from rnnkit.bench import background_load, paired_medians
from rnnkit import _busy

SIZES = (("gru", (8, 64, 8, 128)), ("lstm", (20, 1, 1, 20)), ("lstm", (100, 32, 64, 128)),
         ("gru", (100, 64, 256, 256)))


def steps(cell: str, size: tuple[int, int, int, int]) -> dict[str, Callable[[], None]]:
    """One training step (forward, backward of out.sum()) per implementation."""
    steps_, batch, inputs, hidden = size
    reference = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell](inputs, hidden)
    fused = rnnkit.from_torch(reference, engine="fused")
    x = torch.randn(steps_, batch, inputs)
    threads = torch.get_num_threads()

    def step(module: torch.nn.Module, *, one_thread: bool = False) -> Callable[[], None]:
        def run() -> None:
            for p in module.parameters():
                p.grad = None
            if one_thread:
                torch.set_num_threads(1)
            try:
                out, _ = module(x)
                out.sum().backward()
            finally:
                torch.set_num_threads(threads)
        return run

    return {"torch": step(reference), "torch-1": step(reference, one_thread=True), "fused": step(fused),
            "fused-1": step(fused, one_thread=True)}


def measure(budget_s: float) -> dict[tuple[str, tuple[int, int, int, int]], dict[str, float]]:
    """Median ms of a training step per size and implementation, rounds in a fresh order."""
    result = {}
    for cell, size in SIZES:
        fns = steps(cell, size)
        for fn in fns.values():
            fn()
            fn()
        result[(cell, size)] = {name: 1e3 * t for name, t in paired_medians(fns, rounds=5, budget_s=budget_s).items()}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--load", type=int, default=2, help="Busy processes beside the loaded timing.")
    parser.add_argument("--budget", type=float, default=15.0, help="Seconds per size and phase.")
    args = parser.parse_args()
    threads = torch.get_num_threads()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    print(f"torch {torch.__version__}, {threads} threads, {cores} cores, OMP_WAIT_POLICY "
          f"{os.environ.get('OMP_WAIT_POLICY', 'unset')}; training steps (forward + backward), median ms")
    idle = measure(args.budget)
    with background_load(args.load):
        print(f"beside {args.load} busy processes: {_busy.running_elsewhere()} other tasks running")
        loaded = measure(args.budget)
    fair = (args.load + threads) / cores
    print(f"fair share: a step that keeps {threads} threads busy may take {fair:.2f}x its idle time\n")
    names = list(next(iter(idle.values())))
    print(f"{'cell':5} {'T, B, I, H':>17}  " + "  ".join(f"{n:>20}" for n in names))
    for key, times in idle.items():
        cell, size = key
        cells = [f"{times[n]:7.2f} -> {loaded[key][n]:7.2f} {loaded[key][n] / times[n]:4.1f}x" for n in names]
        print(f"{cell:5} {', '.join(map(str, size)):>17}  " + "  ".join(f"{c:>20}" for c in cells))
    print("\nEach cell: idle ms -> loaded ms, and loaded / idle.")


if __name__ == "__main__":
    main()
