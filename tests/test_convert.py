"""Weights move both ways between torch.nn and rnnkit, and the numbers stay the same."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import rnnkit
from tests.helpers import assert_close

TORCH_MODULES = [
    lambda: nn.RNN(3, 5, 2, nonlinearity="relu", bidirectional=True, batch_first=True),
    lambda: nn.LSTM(3, 5, 2, proj_size=2, bidirectional=True, bias=False),
    lambda: nn.GRU(3, 5, 3, dropout=0.1),
    lambda: nn.RNNCell(3, 5, nonlinearity="relu"),
    lambda: nn.LSTMCell(3, 5),
    lambda: nn.GRUCell(3, 5, bias=False),
]


def outputs(module: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    result = module(x)
    flat: list[torch.Tensor] = []
    for r in result if isinstance(result, tuple) else (result,):
        flat.extend(r if isinstance(r, tuple) else (r,))
    return flat


@pytest.mark.parametrize("make", TORCH_MODULES)
def test_from_torch_then_to_torch(make) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    theirs = make().double().eval()
    ours = rnnkit.from_torch(theirs).eval()
    assert type(ours).__name__ == type(theirs).__name__
    cell = isinstance(theirs, nn.RNNCellBase)
    x = torch.randn(4, 3, dtype=torch.float64) if cell else torch.randn(4, 2, 3, dtype=torch.float64)
    for a, b in zip(outputs(ours, x), outputs(theirs, x)):
        assert_close(a, b, "output")
    back = ours.to_torch()
    assert type(back) is type(theirs)
    assert repr(back) == repr(theirs)
    for (name, a), b in zip(back.state_dict().items(), theirs.state_dict().values()):
        assert torch.equal(a, b), name
    assert next(back.parameters()).dtype == torch.float64


def test_state_dict_loads_both_ways() -> None:
    torch.manual_seed(1)
    theirs = nn.LSTM(4, 6, 2, bidirectional=True)
    ours = rnnkit.LSTM(4, 6, 2, bidirectional=True)
    ours.load_state_dict(theirs.state_dict())  # strict: the same keys and shapes
    again = nn.LSTM(4, 6, 2, bidirectional=True)
    again.load_state_dict(ours.state_dict())
    x = torch.randn(5, 2, 4)
    assert torch.equal(again(x)[0], theirs(x)[0])


def test_from_torch_with_rnnkit_options() -> None:
    torch.manual_seed(2)
    theirs = nn.GRU(3, 4)
    ours = rnnkit.from_torch(theirs, layer_norm=True, engine="reference")
    assert ours.layer_norm and ours.engine == "reference"
    assert torch.equal(ours.weight_hh_l0, theirs.weight_hh_l0)
    assert torch.equal(ours.ln_weight_ih_l0, torch.ones(12))


def test_trained_with_regularisers_exports_for_inference() -> None:
    torch.manual_seed(3)
    ours = rnnkit.LSTM(3, 4, recurrent_dropout=0.3, zoneout=0.2).eval()
    with pytest.warns(UserWarning, match="computes the same in eval mode"):
        theirs = ours.to_torch().eval()
    x = torch.randn(6, 2, 3)
    assert_close(ours(x)[0], theirs(x)[0], "output")
