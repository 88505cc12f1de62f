"""The fused engine's numbers do not depend on its thread count, nor on how its work is shared
among threads (slices of the batch, or each step's products): OMP_NUM_THREADS or
torch.set_num_threads changes its speed, never its results."""

from __future__ import annotations

import pytest
import torch

import rnnkit
from rnnkit.engines import _library


def _outputs(layer: torch.nn.Module, x: torch.Tensor, lengths: list[int]) -> list[torch.Tensor]:
    x = x.clone().requires_grad_()
    out, state = layer(x, lengths=lengths)
    states = state if isinstance(state, tuple) else (state,)
    loss = out.square().sum() + sum(s.square().sum() for s in states)
    grads = torch.autograd.grad(loss, [x, *layer.parameters()])
    return [out.detach(), *[s.detach() for s in states], *grads]


@pytest.mark.parametrize("cell", ["RNN", "LSTM", "GRU"])
@pytest.mark.parametrize("layer_norm", [True, False])
def test_the_fused_engine_gives_the_same_bits_on_any_thread_count(cell: str, layer_norm: bool) -> None:
    """1, 2 and 3 threads, with the thresholds lowered so that the batch runs as slices (2 and 3
    of them) or the threads share each step's products: every output and gradient is bitwise
    the same. With layer norm each cell is its own call; without, the stack is one kernel call
    a pass. The plan is made in C++ (rnnkit/csrc/cpu/plan.cpp)."""
    if isinstance(_library.load(), str) or not _library.kernels_parallel():
        pytest.skip("the fused kernels are not built with OpenMP here")
    torch.manual_seed(0)
    extra = {"proj_size": 5} if cell == "LSTM" else {}
    layer = getattr(rnnkit, cell)(6, 24, num_layers=2, bidirectional=True, layer_norm=layer_norm, engine="fused",
                                  **extra)
    x, lengths = torch.randn(9, 11, 6), [9, 9, 8, 7, 5, 5, 4, 3, 2, 1, 1]
    for rows in (1, 100):  # slices of at least 1 row; or one slice, the steps' products shared
        with _library.policy(parallel_min_work=0, step_parallel_min_work=0, parallel_min_rows=rows):
            results, slices = [], set()
            for threads in (1, 2, 3):  # the kernels' threads (torch's own reductions keep theirs)
                with _library.policy(threads=threads):
                    results.append(_outputs(layer, x, lengths))
                    plan = _library.plan("LSTM", torch.float32, 9, 11, 6, 96, 24)
                slices.add((plan["backward_slices"], plan["threads"]))
        assert len(slices) == 3, slices  # the calls really were split three ways
        for other in results[1:]:
            for a, b in zip(results[0], other):
                assert torch.equal(a, b)
