"""Speed of rnnkit's engines against torch.nn, measured in one process.

For each cell and size it times the forward pass (no grad), the forward plus the backward of
``y.sum()`` to the weights, and (``+dx``) the same with the input's gradient too, as in a model
where a layer below (an embedding, another layer) is trained; alternating between the
implementations round by round (in a shuffled order each round) so that a noisy machine slows
all of them alike, and reports medians and the ratio torch.nn time / rnnkit time (above 1:
rnnkit is faster). Achieved GFLOP/s are given beside the sgemm peak measured on the machine.

Besides the engines, ``compiled`` times the layer under torch.compile(fullgraph=True).
Run it as ``rnnkit bench`` or ``python -m rnnkit.bench``.
"""

from __future__ import annotations

import contextlib
import platform
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

import rnnkit
from rnnkit.engines import ENGINES

DEFAULT_SIZES: tuple[tuple[int, int, int, int], ...] = (
    (20, 1, 1, 20), (6, 5, 100, 200), (28, 64, 28, 128),
    (100, 32, 64, 128), (100, 64, 256, 256), (100, 32, 512, 512),
)
"""(T, B, I, H): steps, batch, input size, hidden size."""

CELLS = ("lstm", "gru", "rnn", "lstm_ln")
"""lstm_ln is rnnkit's layer-normalised LSTM, timed against plain torch.nn.LSTM."""

GATES = {"lstm": 4, "gru": 3, "rnn": 1, "lstm_ln": 4}

COMPILED = "compiled"
"""Not an engine: the layer on engine='auto' under torch.compile(fullgraph=True), timed beside
the eager engines (its first calls, in the warm-up, compile it)."""


@dataclass
class Row:
    cell: str
    size: tuple[int, int, int, int]
    mode: str  # "forward", "forward+backward" (weight gradients) or "forward+backward+dx" (and the input's)
    ms: dict[str, float]  # median milliseconds by implementation ("torch", "fused", ...)
    ratio: dict[str, float] = field(default_factory=dict)  # torch ms / rnnkit engine ms
    gflops: dict[str, float] = field(default_factory=dict)


@dataclass
class Report:
    rows: list[Row]
    sgemm_gflops: float
    machine: str
    torch_version: str
    threads: int
    background_load: int = 0  # busy processes run beside the timing (background_load)


@contextlib.contextmanager
def background_load(processes: int) -> Iterator[None]:
    """While the block runs, `processes` other processes each keep one core busy (a Python loop):
    a synthetic load, to see how the implementations share a busy machine. They are killed after."""
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(processes)]
    try:
        if busy:
            time.sleep(1.0)  # the busy processes running before the first timing
        yield
    finally:
        for process in busy:
            process.kill()
            process.wait()


def sgemm_peak(n: int = 2048, repeats: int = 5) -> float:
    """GFLOP/s of one float32 n x n x n matrix product, the best of a few."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = min(_time(lambda: torch.mm(a, b)) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def flops(cell: str, size: tuple[int, int, int, int], mode: str) -> float:
    """Multiply-adds of the matrix products, x2: forward 2 T B G H (I + H); the backward to the
    weights and the state twice that, less the input's product 2 T B G H I unless dx is asked."""
    steps, batch, inputs, hidden = size
    forward = 2.0 * steps * batch * GATES[cell] * hidden * (inputs + hidden)
    if mode == "forward":
        return forward
    dx = 2.0 * steps * batch * GATES[cell] * hidden * inputs
    return 3 * forward - (0.0 if mode.endswith("+dx") else dx)


def _time(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def paired_medians(fns: dict[str, Callable[[], object]], *, rounds: int, budget_s: float,
                   max_rounds: int | None = None, before: Callable[[], object] | None = None,
                   seed: int | None = 0) -> dict[str, float]:
    """Median seconds of each function, timed round by round, each round every function once in a
    fresh order (so that none always runs in the wake of the same other: its threads, its caches),
    for at least `rounds` rounds and until budget_s seconds have passed, at most max_rounds.
    before (untimed) runs ahead of every call: clearing gradients, say."""
    samples: dict[str, list[float]] = {name: [] for name in fns}
    order = list(fns.items())
    shuffle = random.Random(seed).shuffle
    start, done = time.perf_counter(), 0
    while (max_rounds is None or done < max_rounds) and (done < rounds or time.perf_counter() - start < budget_s):
        shuffle(order)
        for name, fn in order:
            if before is not None:
                before()
            samples[name].append(_time(fn))
        done += 1
    return {name: statistics.median(s) for name, s in samples.items()}


def _modules(cell: str, size: tuple[int, int, int, int], engines: Sequence[str]) -> dict[str, nn.Module]:
    _, _, inputs, hidden = size
    torch_type = {"lstm": nn.LSTM, "lstm_ln": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[cell]
    reference = torch_type(inputs, hidden)
    modules: dict[str, nn.Module] = {"torch": reference}
    for engine in engines:
        layer_engine = "auto" if engine == COMPILED else engine
        if cell == "lstm_ln":
            module: nn.Module = rnnkit.LSTM(inputs, hidden, layer_norm=True, engine=layer_engine)
        else:
            module = rnnkit.from_torch(reference, engine=layer_engine)
        if engine == COMPILED:
            module = torch.compile(module, fullgraph=True)  # type: ignore[assignment]
        modules[engine] = module
    return modules


def _runnable(module: nn.Module, x: torch.Tensor) -> bool:
    if not isinstance(module, rnnkit.layers.RecurrentLayer) or module.engine == "auto":
        return True
    return ENGINES[module.engine].unsupported(module._config(), x) is None


def bench_one(
    cell: str, size: tuple[int, int, int, int], engines: Sequence[str], *, repeats: int, budget_s: float,
    input_grad: bool = True,
) -> list[Row]:
    """Time one cell at one size; returns a forward row, a forward+backward row (weight gradients)
    and, with input_grad, a forward+backward+dx row (the input's gradient too)."""
    steps, batch, inputs, _ = size
    x = torch.randn(steps, batch, inputs)
    x_grad = x.clone().requires_grad_()
    modules = {k: m for k, m in _modules(cell, size, engines).items() if _runnable(m, x)}
    params = [p for m in modules.values() for p in m.parameters()]

    def forward(m: nn.Module) -> Callable[[], object]:
        def run() -> object:
            with torch.no_grad():
                return m(x)
        return run

    def train_step(m: nn.Module, inp: torch.Tensor = x) -> Callable[[], object]:
        def run() -> object:
            out, _ = m(inp)
            out.sum().backward()
            return None
        return run

    def clear_grads() -> None:
        for p in params:
            p.grad = None
        x_grad.grad = None

    passes: list[tuple[str, Callable[[nn.Module], Callable[[], object]]]] = [
        ("forward", forward), ("forward+backward", train_step)]
    if input_grad:
        passes.append(("forward+backward+dx", lambda m: train_step(m, x_grad)))
    rows = []
    for mode, make in passes:
        fns = {name: make(m) for name, m in modules.items()}
        for fn in fns.values():  # warm up: first calls build kernels and caches
            fn()
            fn()
        medians = paired_medians(fns, rounds=3, max_rounds=repeats, budget_s=budget_s, before=clear_grads)
        ms = {name: 1e3 * t for name, t in medians.items()}
        row = Row(cell, size, mode, ms)
        work = flops(cell, size, mode)
        for name, value in ms.items():
            row.gflops[name] = work / (value / 1e3) / 1e9
            if name != "torch":
                row.ratio[name] = ms["torch"] / value
        rows.append(row)
    return rows


def run(
    *,
    cells: Sequence[str] = CELLS,
    sizes: Sequence[tuple[int, int, int, int]] = DEFAULT_SIZES,
    engines: Sequence[str] = ("fused", "reference"),
    repeats: int = 101,
    budget_s: float = 4.0,
    seed: int = 0,
    progress: Callable[[Row], None] | None = None,
    load: int = 0,
    input_grad: bool = True,
) -> Report:
    """Benchmark every cell at every size. ``budget_s`` caps the time spent per row (at least 3
    rounds run). ``progress`` is called with each row as it is done. ``load``: busy processes
    run beside it all (background_load); the sgemm peak is measured before they start."""
    torch.manual_seed(seed)
    rows: list[Row] = []
    peak = sgemm_peak()
    with background_load(load):
        for cell in cells:
            for size in sizes:
                for row in bench_one(cell, size, engines, repeats=repeats, budget_s=budget_s, input_grad=input_grad):
                    rows.append(row)
                    if progress is not None:
                        progress(row)
    return Report(rows, peak, f"{platform.machine()} {platform.processor() or platform.system()}",
                  torch.__version__, torch.get_num_threads(), load)


def format_row(row: Row, engines: Sequence[str]) -> str:
    t, b, i, h = row.size
    cells = [f"{row.cell:<8}", f"{t:>4} {b:>3} {i:>4} {h:>4}", f"{row.mode:<19}", f"{row.ms['torch']:>9.3f}"]
    for engine in engines:
        if engine in row.ms:
            cells.append(f"{row.ms[engine]:>9.3f} {row.ratio[engine]:>6.2f}x")
        else:
            cells.append(f"{'-':>9} {'-':>7}")
    best = engines[0] if engines and engines[0] in row.gflops else "torch"
    cells.append(f"{row.gflops['torch']:>7.1f} {row.gflops[best]:>7.1f}")
    return "  ".join(cells)


def header(engines: Sequence[str]) -> str:
    cols = [f"{'cell':<8}", f"{'T':>4} {'B':>3} {'I':>4} {'H':>4}", f"{'pass':<19}", f"{'torch ms':>9}"]
    cols += [f"{e + ' ms':>9} {'ratio':>7}" for e in engines]
    cols.append(f"{'GF/s torch':>7} {engines[0] if engines else 'torch'}")
    return "  ".join(cols)


def to_json(report: Report) -> dict[str, object]:
    return asdict(report)


if __name__ == "__main__":  # pragma: no cover
    from rnnkit.cli import bench

    bench(prog_name="python -m rnnkit.bench")
