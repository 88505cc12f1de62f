"""Helpers shared by the tests: tolerances and comparisons of layers against torch.nn."""

from __future__ import annotations

import torch
from torch import Tensor, nn

TOL = {torch.float32: 1e-5, torch.float64: 1e-10}
"""The tolerance every parity comparison uses, absolute and relative, by dtype."""


def assert_close(actual: Tensor, expected: Tensor, what: str = "") -> None:
    tol = TOL[expected.dtype]
    torch.testing.assert_close(actual, expected, atol=tol, rtol=tol, msg=lambda m: f"{what}: {m}")


def weighted_sum(tensors: list[Tensor], seed: int = 1234) -> Tensor:
    """A scalar loss that weighs every element of every tensor by a fixed random number, so
    each gradient is different and nonzero."""
    g = torch.Generator().manual_seed(seed)
    total = torch.zeros((), dtype=tensors[0].dtype)
    for t in tensors:
        total = total + (t * torch.randn(t.shape, generator=g, dtype=t.dtype)).sum()
    return total


def assert_grads_match(ours: nn.Module, theirs: nn.Module) -> None:
    theirs_params = dict(theirs.named_parameters())
    for name, p in ours.named_parameters():
        assert p.grad is not None, f"no gradient for {name}"
        assert_close(p.grad, theirs_params[name].grad, f"grad of {name}")
