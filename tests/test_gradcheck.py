"""torch.autograd.gradcheck in float64: every cell, and layers with each of rnnkit's options
(random options with a seed fixed inside the checked function, so every evaluation draws the
same masks). Parameters are inputs of the check, so their gradients are checked too."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.func import functional_call

import rnnkit


def check(module: nn.Module, args: tuple[Tensor, ...], kwargs: dict[str, Any] | None = None, seed: int | None = None) -> None:
    names = [n for n, _ in module.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_(True) for _, p in module.named_parameters())
    inputs = tuple(a.detach().clone().requires_grad_(True) for a in args)

    def f(*flat: Tensor) -> tuple[Tensor, ...]:
        if seed is not None:
            torch.manual_seed(seed)
        xs, ps = flat[: len(inputs)], flat[len(inputs) :]
        result = functional_call(module, dict(zip(names, ps)), xs, kwargs or {})
        parts: list[Tensor] = []
        for r in result if isinstance(result, tuple) else (result,):
            parts.extend(r if isinstance(r, tuple) else (r,))
        return tuple(parts)

    assert torch.autograd.gradcheck(f, inputs + params, eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("family", ["RNNCell", "LSTMCell", "GRUCell"])
@pytest.mark.parametrize("layer_norm", [False, True])
def test_cells(family: str, layer_norm: bool) -> None:
    torch.manual_seed(0)
    cell = getattr(rnnkit, family)(3, 4, layer_norm=layer_norm, dtype=torch.float64)
    x = torch.randn(2, 3, dtype=torch.float64)
    h = torch.randn(2, 4, dtype=torch.float64)
    if family == "LSTMCell":
        check(cell, (x,), {"hx": (h, torch.randn(2, 4, dtype=torch.float64))})
    else:
        check(cell, (x, h))


def test_relu_rnn_cell() -> None:
    torch.manual_seed(1)
    cell = rnnkit.RNNCell(3, 4, nonlinearity="relu", dtype=torch.float64)
    check(cell, (torch.randn(2, 3, dtype=torch.float64), torch.randn(2, 4, dtype=torch.float64)))


OPTIONS: dict[str, dict[str, Any]] = {
    "plain": {},
    "layer_norm": {"layer_norm": True},
    "recurrent_dropout": {"recurrent_dropout": 0.3},
    "zoneout": {"zoneout": 0.3},
    "learn_initial_state": {"learn_initial_state": True},
    "orthogonal": {"init": "orthogonal"},
    "stacked_dropout": {"num_layers": 2, "dropout": 0.3},
    "bidirectional": {"bidirectional": True, "num_layers": 2},
}


@pytest.mark.parametrize("family", ["RNN", "LSTM", "GRU"])
@pytest.mark.parametrize("option", list(OPTIONS))
def test_layers_with_each_option(family: str, option: str) -> None:
    torch.manual_seed(2)
    layer = getattr(rnnkit, family)(2, 3, dtype=torch.float64, **OPTIONS[option])
    x = torch.randn(3, 2, 2, dtype=torch.float64)
    check(layer, (x,), seed=3)


@pytest.mark.parametrize("family", ["RNN", "LSTM", "GRU"])
def test_layers_with_lengths(family: str) -> None:
    torch.manual_seed(4)
    layer = getattr(rnnkit, family)(2, 3, bidirectional=True, dtype=torch.float64)
    x = torch.randn(4, 3, 2, dtype=torch.float64)
    check(layer, (x,), {"lengths": [4, 1, 3]})


def test_lstm_with_projection_forget_bias_and_everything() -> None:
    torch.manual_seed(5)
    layer = rnnkit.LSTM(2, 4, num_layers=2, proj_size=2, bidirectional=True, layer_norm=True,
                        recurrent_dropout=0.2, zoneout=0.2, forget_bias=1.0,
                        learn_initial_state=True, dtype=torch.float64)
    with torch.no_grad():  # away from h_0 = 0, where LN(W_hh h_0) has zero variance and
        layer.initial_h.normal_()  # finite differences cannot follow its 1/sqrt(eps) slope
        layer.initial_c.normal_()
    x = torch.randn(3, 2, 2, dtype=torch.float64)
    check(layer, (x,), {"lengths": [3, 2]}, seed=6)
