"""A whole stack in one autograd Function (_EagerFusedStack): taken by stacked or bidirectional
layers on the fused engine in plain eager training, with the reference engine's numbers and
gradients (of the input, the initial state and every weight), as a graph too."""

from __future__ import annotations

import pytest
import torch

import rnnkit
from rnnkit.engines._fused_op import _EagerFusedStack

CONFIGS = [
    ("LSTM", dict(num_layers=2, bidirectional=True)),
    ("LSTM", dict(num_layers=3, proj_size=3)),
    ("GRU", dict(num_layers=2, bidirectional=True, batch_first=True)),
    ("RNN", dict(num_layers=1, bidirectional=True, nonlinearity="relu")),
    ("GRU", dict(num_layers=2, bias=False)),
]


def pair(family: str, options: dict) -> tuple[torch.nn.Module, torch.nn.Module]:  # type: ignore[type-arg]
    torch.manual_seed(0)
    fused = getattr(rnnkit, family)(4, 5, engine="fused", dtype=torch.float64, **options)
    reference = getattr(rnnkit, family)(4, 5, engine="reference", dtype=torch.float64, **options)
    reference.load_state_dict(fused.state_dict())
    return fused, reference


def uses_the_stack(out: torch.Tensor) -> bool:
    node = out.grad_fn
    while node is not None and "EagerFusedStack" not in type(node).__name__:
        node = node.next_functions[0][0] if node.next_functions else None  # (batch_first: a transpose)
    return node is not None


@pytest.mark.parametrize("family, options", CONFIGS)
@pytest.mark.parametrize("with_lengths", [False, True])
@pytest.mark.parametrize("with_hx", [False, True])
def test_the_stack_equals_the_reference_engine(family: str, options: dict, with_lengths: bool,  # type: ignore[type-arg]
                                               with_hx: bool) -> None:
    fused, reference = pair(family, options)
    batch_first = options.get("batch_first", False)
    x = torch.randn(3, 6, 4, dtype=torch.float64) if batch_first else torch.randn(6, 3, 4, dtype=torch.float64)
    x.requires_grad_()
    lengths = [6, 2, 4] if with_lengths else None
    cells = fused.num_layers * fused.num_directions
    hx = None
    if with_hx:
        h = torch.randn(cells, 3, fused.out_size, dtype=torch.float64, requires_grad=True)
        hx = (h, torch.randn(cells, 3, 5, dtype=torch.float64, requires_grad=True)) if family == "LSTM" else h
    results = []
    for m in (fused, reference):
        leaves = [x, *(hx if isinstance(hx, tuple) else () if hx is None else (hx,)), *m.parameters()]
        for t in leaves:
            t.grad = None
        out, state = m(x, hx, lengths=lengths)
        if m is fused:
            assert uses_the_stack(out)
        parts = state if isinstance(state, tuple) else (state,)
        weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
        ((out * weights).sum() + sum((p * p).sum() for p in parts)).backward()
        results.append([out.detach(), *(p.detach() for p in parts), *(t.grad for t in leaves)])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("family, options", CONFIGS[:3])
def test_the_stack_makes_a_graph_of_its_gradient(family: str, options: dict) -> None:  # type: ignore[type-arg]
    """create_graph=True: double backward through the stack equals the reference engine's."""
    fused, reference = pair(family, options)
    x = torch.randn(5, 2, 4, dtype=torch.float64)
    if options.get("batch_first"):
        x = x.transpose(0, 1).contiguous()
    results = []
    for m in (fused, reference):
        xg = x.clone().requires_grad_()
        out, _ = m(xg, lengths=[5, 3])
        (dx,) = torch.autograd.grad(out.pow(2).sum(), xg, create_graph=True)
        m.zero_grad()
        (dx.pow(2).sum()).backward()
        results.append([dx.detach(), *(p.grad for p in m.parameters())])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


def test_what_the_stack_does_not_take() -> None:
    """One cell, layer norm, noise or dropout in training, and no gradient keep the per-cell path."""
    x = torch.randn(4, 2, 3)
    cases = [rnnkit.LSTM(3, 4), rnnkit.LSTM(3, 4, num_layers=2, layer_norm=True),
             rnnkit.GRU(3, 4, num_layers=2, dropout=0.5), rnnkit.GRU(3, 4, bidirectional=True, zoneout=0.1)]
    calls: list[int] = []
    original = _EagerFusedStack.apply
    try:
        _EagerFusedStack.apply = lambda *a: (calls.append(1), original(*a))[1]  # type: ignore[method-assign]
        for m in cases:
            m.train()(x)[0].sum().backward()
        with torch.no_grad():
            rnnkit.LSTM(3, 4, num_layers=2)(x)
        assert calls == []
        rnnkit.GRU(3, 4, num_layers=2, dropout=0.5).eval()(x)[0].sum().backward()  # eval: no dropout
        assert calls == [1]
    finally:
        _EagerFusedStack.apply = original  # type: ignore[method-assign]
