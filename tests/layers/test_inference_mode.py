"""The layers under torch.inference_mode(), as serving code runs them: the numbers of no_grad, in
inference tensors, on every engine, and the layer trains as before afterwards."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import rnnkit

LAYERS = [("LSTM", {"num_layers": 2, "bidirectional": True}), ("GRU", {}), ("RNN", {"nonlinearity": "relu"}),
          ("LSTM", {"proj_size": 3}), ("LSTM", {"layer_norm": True}), ("MinGRU", {"num_layers": 2}),
          ("MinLSTM", {"bidirectional": True})]


@pytest.mark.parametrize("engine", ["auto", "fused", "reference"])
@pytest.mark.parametrize("name, options", LAYERS, ids=[f"{n}-{o}" for n, o in LAYERS])
def test_inference_mode_gives_no_grads_numbers(name: str, options: dict[str, Any], engine: str) -> None:
    torch.manual_seed(0)
    layer = getattr(rnnkit, name)(4, 6, engine=engine, **options)
    x = torch.randn(5, 3, 4)
    for lengths in (None, [5, 2, 3]):
        with torch.no_grad():
            out, state = layer(x, lengths=lengths)
        with torch.inference_mode():
            served, served_state = layer(x, lengths=lengths)
        assert served.is_inference() and all(s.is_inference() for s in served_state)
        assert torch.equal(served, out) and all(torch.equal(a, b) for a, b in zip(served_state, state))
    # the layer's parameters are untouched: a training step gives a fresh copy's gradients
    fresh = getattr(rnnkit, name)(4, 6, engine=engine, **options)
    fresh.load_state_dict(layer.state_dict())
    grads = [torch.autograd.grad(m(x)[0].pow(2).sum(), list(m.parameters())) for m in (layer, fresh)]
    assert all(torch.equal(a, b) for a, b in zip(*grads))


def test_cells_under_inference_mode() -> None:
    torch.manual_seed(0)
    for cell in (rnnkit.LSTMCell(4, 6), rnnkit.GRUCell(4, 6), rnnkit.RNNCell(4, 6)):
        x = torch.randn(3, 4)
        with torch.no_grad():
            want = cell(x)
        with torch.inference_mode():
            got = cell(x)
        for a, b in zip(got if isinstance(got, tuple) else (got,), want if isinstance(want, tuple) else (want,)):
            assert a.is_inference() and torch.equal(a, b)


@pytest.mark.parametrize("dtype", ["int8", "bfloat16"])
def test_low_precision_layers_under_inference_mode(dtype: str) -> None:
    """The int8 layer (rnnkit.quantize) and a bfloat16 one, as a server runs them."""
    torch.manual_seed(0)
    layer = rnnkit.LSTM(4, 6, num_layers=2, bidirectional=True).eval()
    x = torch.randn(5, 3, 4)
    if dtype == "int8":
        layer = rnnkit.quantize(torch.nn.ModuleDict({"rnn": layer}))["rnn"]
    else:
        layer, x = layer.to(torch.bfloat16), x.to(torch.bfloat16)
    for lengths in (None, [5, 2, 3]):
        with torch.no_grad():
            want = layer(x, lengths=lengths)[0]
        with torch.inference_mode():
            got = layer(x, lengths=lengths)[0]
        assert got.is_inference() and torch.equal(got, want)
