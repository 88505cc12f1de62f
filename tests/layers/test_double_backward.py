"""Gradients of gradients (create_graph=True, as a gradient penalty or torch's
test_LSTM_differentiable_backward_using_oneDNN takes them) through every input form a layer takes
(time-major, batch_first, unbatched, a PackedSequence, lengths=) on every engine: the first and
second derivatives of the input and every parameter equal the reference engine's."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import rnnkit
from tests.helpers import weighted_sum

FAMILIES = {"rnn": "RNN", "lstm": "LSTM", "gru": "GRU"}
FORMS = ("time-major", "batch_first", "unbatched", "packed", "lengths")
LENGTHS = [5, 2, 4]


def _run(layer: torch.nn.Module, x: torch.Tensor, form: str) -> list[torch.Tensor]:
    """The layer's outputs for x (T, B, I) given in form, as plain tensors."""
    if form == "batch_first":
        out, state = layer(x.transpose(0, 1))
    elif form == "unbatched":
        out, state = layer(x[:, 0])
    elif form == "packed":
        out, state = layer(pack_padded_sequence(x, LENGTHS, enforce_sorted=False))
        out = pad_packed_sequence(out, total_length=x.shape[0])[0]
    elif form == "lengths":
        out, state = layer(x, lengths=LENGTHS)
    else:
        out, state = layer(x)
    return [out, *(state if isinstance(state, tuple) else (state,))]


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("engine", ["fused", "native"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_double_backward_in_every_input_form(family: str, engine: str, form: str) -> None:
    options: dict[str, Any] = {"num_layers": 2, "bidirectional": True, "batch_first": form == "batch_first"}
    torch.manual_seed(0)
    reference = getattr(rnnkit, FAMILIES[family])(3, 4, engine="reference", dtype=torch.float64, **options)
    layer = getattr(rnnkit, FAMILIES[family])(3, 4, engine=engine, dtype=torch.float64, **options)
    layer.load_state_dict(reference.state_dict())
    x = torch.randn(5, 3, 3, dtype=torch.float64)
    results = []
    for module in (reference, layer):
        xg = x.clone().requires_grad_()
        inputs = [xg, *module.parameters()]
        first = torch.autograd.grad(weighted_sum(_run(module, xg, form)), inputs, create_graph=True)
        second = torch.autograd.grad(weighted_sum(list(first), seed=7), inputs)
        results.append((first, second))
    for kind, ours, theirs in (("first", results[1][0], results[0][0]), ("second", results[1][1], results[0][1])):
        for index, (a, b) in enumerate(zip(ours, theirs)):
            torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-9, msg=lambda m: f"{kind} derivative {index}: {m}")
    assert results[1][1][0].abs().sum() > 0  # the input's second derivative is not trivially zero


@pytest.mark.parametrize("batch_first", [False, True])
def test_the_issues_case(batch_first: bool) -> None:
    """test_LSTM_differentiable_backward_using_oneDNN's steps, in float32, on the default engine."""
    net = rnnkit.LSTM(3, 3, 2, batch_first=batch_first)
    x = torch.rand(10, 12, 3, requires_grad=True)
    out, _ = net(x)
    d = torch.autograd.grad(out, x, torch.ones_like(out), create_graph=True)[0]
    d.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
