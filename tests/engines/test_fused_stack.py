"""A whole stack in one operator (rnnkit::fused_stack, with its autograd kernel in C++): taken by
stacked or bidirectional layers on the fused engine in training, with the reference engine's
numbers and gradients (of the input, the initial state and every weight), as a graph too. Both
forms of its backward pass: one kernel call for all cells (where the stack's plan allows), and
the cells' backward kernels in turn with torch's weight gradients (where it does not: large
sizes)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

import rnnkit
from rnnkit.engines import _library
from rnnkit.layers import _base

CONFIGS = [
    ("LSTM", dict(num_layers=2, bidirectional=True)),
    ("LSTM", dict(num_layers=3, proj_size=3)),
    ("GRU", dict(num_layers=2, bidirectional=True, batch_first=True)),
    ("RNN", dict(num_layers=1, bidirectional=True, nonlinearity="relu")),
    ("GRU", dict(num_layers=2, bias=False)),
    ("LSTM", dict(num_layers=1)),
]


def pair(family: str, options: dict) -> tuple[torch.nn.Module, torch.nn.Module]:  # type: ignore[type-arg]
    torch.manual_seed(0)
    fused = getattr(rnnkit, family)(4, 5, engine="fused", dtype=torch.float64, **options)
    reference = getattr(rnnkit, family)(4, 5, engine="reference", dtype=torch.float64, **options)
    reference.load_state_dict(fused.state_dict())
    return fused, reference


def stack_function(out: torch.Tensor) -> str | None:
    """"stack" when the stack operator's autograd node made out, else None."""
    node = out.grad_fn
    while node is not None and "FusedStack" not in node.name():
        node = node.next_functions[0][0] if node.next_functions else None  # (batch_first: a transpose)
    return None if node is None else "stack"


@pytest.fixture(params=["kernels", "cells"])
def stack_form(request: pytest.FixtureRequest) -> Iterator[str]:
    """Which backward form the stack takes: "kernels" (one call) as at these sizes, or "cells"
    (each cell's backward kernel in turn, the weight gradients torch's), as where the stack's
    plan keeps the weight gradients out of the kernels."""
    settings = {"kernel_weight_grads_max_work": 0} if request.param == "cells" else {}
    with _library.policy(**settings):
        one_call = torch.ops.rnnkit._stack_plan("LSTM", torch.float64, 2, 2, 6, 3, 4, 20, 5, 0)[0]
        assert one_call == (request.param == "kernels")
        yield "stack"


@pytest.mark.parametrize("family, options", CONFIGS)
@pytest.mark.parametrize("with_lengths", [False, True])
@pytest.mark.parametrize("with_hx", [False, True])
def test_the_stack_equals_the_reference_engine(family: str, options: dict, with_lengths: bool,  # type: ignore[type-arg]
                                               with_hx: bool, stack_form: str) -> None:
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
            assert stack_function(out) == stack_form
        parts = state if isinstance(state, tuple) else (state,)
        weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
        ((out * weights).sum() + sum((p * p).sum() for p in parts)).backward()
        results.append([out.detach(), *(p.detach() for p in parts), *(t.grad for t in leaves)])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("family, options", CONFIGS[:3])
def test_the_stack_makes_a_graph_of_its_gradient(family: str, options: dict,  # type: ignore[type-arg]
                                                 stack_form: str) -> None:
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
    """Layer norm, noise or dropout in training, and no gradient keep the per-cell path; one
    cell takes the stack too (its glue is the leaner)."""
    x = torch.randn(4, 2, 3)
    cases = [rnnkit.LSTM(3, 4, num_layers=2, layer_norm=True),
             rnnkit.GRU(3, 4, num_layers=2, dropout=0.5), rnnkit.GRU(3, 4, bidirectional=True, zoneout=0.1)]
    for m in cases:
        out = m.train()(x)[0]
        assert stack_function(out) is None
        out.sum().backward()
    stacked: list[int] = []
    declined: list[bool] = []

    def asked(self: _base.RecurrentLayer, input: torch.Tensor) -> object:
        result = short(self, input)
        declined.append(result is None)
        return result

    original, short = _base.run_stack, _base.RecurrentLayer._train_stack
    try:  # without a gradient there is no node to look for: neither way to the stack operator is taken
        _base.run_stack = lambda *a: (stacked.append(1), original(*a))[1]  # type: ignore[assignment]
        _base.RecurrentLayer._train_stack = asked  # type: ignore[method-assign,assignment]
        with torch.no_grad():
            rnnkit.LSTM(3, 4, num_layers=2)(x)
        assert stacked == [] and declined == [True]
    finally:
        _base.run_stack, _base.RecurrentLayer._train_stack = original, short  # type: ignore[method-assign]
    for m in (rnnkit.GRU(3, 4, num_layers=2, dropout=0.5).eval(), rnnkit.LSTM(3, 4)):  # eval: no dropout
        out = m(x)[0]
        assert stack_function(out) == "stack"
        out.sum().backward()


@pytest.mark.parametrize("family", ["LSTM", "GRU"])
@pytest.mark.parametrize("loss_of", ["out", "h_n", "c_n"])
@pytest.mark.parametrize("frozen", [False, True])
def test_the_stack_gives_the_gradients_asked_for(family: str, loss_of: str, frozen: bool, stack_form: str) -> None:
    """Only some gradients wanted: the input's not (a first layer), the lowest layer frozen, the
    loss of the output alone or of one part of the final state: what is wanted equals the
    reference engine's, and what is not is left None."""
    if loss_of == "c_n" and family != "LSTM":
        pytest.skip("only an LSTM has a cell state")
    fused, reference = pair(family, dict(num_layers=3, bidirectional=True))
    x = torch.randn(7, 4, 4, dtype=torch.float64)
    results = []
    for m in (fused, reference):
        for name, p in m.named_parameters():
            p.requires_grad_(not (frozen and name.endswith(("_l0", "_l0_reverse"))))
            p.grad = None
        out, state = m(x, lengths=[7, 3, 5, 1])
        if m is fused:
            assert stack_function(out) == stack_form
        parts = state if isinstance(state, tuple) else (state,)
        target = {"out": out, "h_n": parts[0], "c_n": parts[-1]}[loss_of]
        (target * torch.linspace(-1, 1, target.numel(), dtype=target.dtype).view_as(target)).sum().backward()
        results.append([p.grad for p in m.parameters()])
    for a, b in zip(*results):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_the_stack_in_float32_equals_torch() -> None:
    """The tutorials' size, float32: a 2-layer bidirectional LSTM as torch.nn.LSTM computes it."""
    torch.manual_seed(0)
    ours = rnnkit.LSTM(1, 20, num_layers=2, bidirectional=True)
    theirs = ours.to_torch()
    x = torch.randn(20, 1, 1, requires_grad=True)
    grads = []
    for m in (ours, theirs):
        x.grad = None
        out, (h, c) = m(x)
        if m is ours:
            assert stack_function(out) == "stack"
        (out.pow(2).sum() + h.sum() + c.sum()).backward()
        grads.append([out.detach(), h.detach(), c.detach(), x.grad, *(p.grad for p in m.parameters())])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("family", ["LSTM", "GRU"])
def test_the_stack_gives_the_bits_of_its_cells(family: str) -> None:
    """At a size whose cells run the batch in parallel slices (on 2 threads), the stack's one
    call a pass gives bit for bit what the cells' kernels called in turn give: outputs, final
    state and every gradient."""
    torch.manual_seed(0)
    layer = getattr(rnnkit, family)(32, 64, num_layers=2, bidirectional=True)
    x = torch.randn(20, 16, 32, requires_grad=True)
    lengths = torch.randint(1, 21, (16,))
    threads = torch.get_num_threads()
    results = []
    try:
        torch.set_num_threads(2)
        for whole in (True, False):
            _base.FUSED_STACK = whole
            x.grad = None
            layer.zero_grad(set_to_none=True)
            out, state = layer(x, lengths=lengths)
            assert (stack_function(out) == "stack") is whole
            parts = state if isinstance(state, tuple) else (state,)
            (out.pow(2).sum() + sum(p.sum() for p in parts)).backward()
            results.append([out.detach(), *(p.detach() for p in parts), x.grad,
                            *(p.grad for p in layer.parameters())])
    finally:
        _base.FUSED_STACK = True
        torch.set_num_threads(threads)
    for a, b in zip(*results):
        assert torch.equal(a, b)
