"""The fused engine's numbers do not depend on its thread count (so that its threads may follow
the machine's load), and its threads give way to other processes' on a busy machine."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import torch

import rnnkit
from rnnkit.engines import _compiled, _fused, _load


def _outputs(layer: torch.nn.Module, x: torch.Tensor, lengths: list[int]) -> list[torch.Tensor]:
    x = x.clone().requires_grad_()
    out, state = layer(x, lengths=lengths)
    states = state if isinstance(state, tuple) else (state,)
    loss = out.square().sum() + sum(s.square().sum() for s in states)
    grads = torch.autograd.grad(loss, [x, *layer.parameters()])
    return [out.detach(), *[s.detach() for s in states], *grads]


@pytest.mark.parametrize("cell", ["RNN", "LSTM", "GRU"])
def test_the_fused_engine_gives_the_same_bits_on_any_thread_count(cell: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """1, 2 and 3 threads, with the thresholds lowered so that the batch runs as slices (2 and 3
    of them) or the threads share each step's products: every output and gradient is bitwise
    the same."""
    kernels = _compiled.load()
    if isinstance(kernels, str) or not kernels.parallel:
        pytest.skip("the fused kernels are not built with OpenMP here")
    monkeypatch.setattr(_load, "_ENABLED", False)
    monkeypatch.setattr(_fused, "PARALLEL_MIN_WORK", 0)
    monkeypatch.setattr(_fused, "STEP_PARALLEL_MIN_WORK", 0)
    torch.manual_seed(0)
    extra = {"proj_size": 5} if cell == "LSTM" else {}
    layer = getattr(rnnkit, cell)(6, 24, num_layers=2, bidirectional=True, layer_norm=True, engine="fused", **extra)
    x, lengths = torch.randn(9, 11, 6), [9, 9, 8, 7, 5, 5, 4, 3, 2, 1, 1]
    for rows in (1, 100):  # slices of at least 1 row; or one slice, the steps' products shared
        monkeypatch.setattr(_fused, "PARALLEL_MIN_ROWS", rows)
        _fused._plan.cache_clear()  # plans made under other thresholds
        results, slices = [], set()
        for threads in (1, 2, 3):
            monkeypatch.setattr(torch, "get_num_threads", lambda threads=threads: threads)
            results.append(_outputs(layer, x, lengths))
            plan = _fused._plan(kernels, "LSTM", torch.float32, 9, 11, 6, 96, 24, 0, threads)
            slices.add((plan.backward_slices, plan.threads))
        assert len(slices) == 3, slices  # the calls really were split three ways
        for other in results[1:]:
            for a, b in zip(results[0], other):
                assert torch.equal(a, b)
    _fused._plan.cache_clear()


def test_fair_threads() -> None:
    assert _load.fair_threads(2, 0.0, 2) == 2  # an idle machine: what was asked
    assert _load.fair_threads(8, 0.2, 2) == 8  # more than the cores, if asked, on an idle machine
    assert _load.fair_threads(2, 1.0, 2) == 1  # one busy process on 2 cores: one core left
    assert _load.fair_threads(2, 6.0, 2) == 1  # at least one
    assert _load.fair_threads(16, 40.0, 64) == 16
    assert _load.fair_threads(32, 40.0, 64) == 24


@pytest.mark.skipif(not _load._ENABLED, reason="no /proc/loadavg here, or RNNKIT_LOAD_AWARE=0")
def test_the_threads_give_way_to_busy_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two real busy processes are seen (the test's own threads are not counted), and on a
    2-core machine the kernels then take one thread."""
    monkeypatch.setattr(_load, "_state", {"at": -1e9, "others": 0.0})
    monkeypatch.setattr(_load.os, "cpu_count", lambda: 2)
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        time.sleep(0.5)
        seen = [_load._others_running() for _ in range(5)]
        assert all(s is not None and s >= 2 for s in seen), seen
        for _ in range(3):
            _load._state["at"] = -1e9  # a new sample each time
            threads = _load.threads_now(2)
        assert threads == 1
    finally:
        for process in busy:
            process.kill()
            process.wait()
