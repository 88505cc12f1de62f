"""Layers see parameters swapped in by torch.func.functional_call and computed by
torch.nn.utils.parametrize, as torch.nn's layers do."""

from __future__ import annotations

import torch
from torch.func import functional_call
from torch.nn.utils import parametrize

import rnnkit


def test_functional_call_uses_the_given_parameters() -> None:
    torch.manual_seed(0)
    layer = rnnkit.LSTM(3, 4)
    x = torch.randn(5, 2, 3)
    twin = rnnkit.LSTM(3, 4)
    params = dict(twin.named_parameters())
    torch.testing.assert_close(functional_call(layer, params, (x,))[0], twin(x)[0])


class Double(torch.nn.Module):
    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return 2 * w


def test_parametrized_weights() -> None:
    torch.manual_seed(0)
    layer = rnnkit.GRU(3, 4)
    plain = rnnkit.GRU(3, 4)
    plain.load_state_dict(layer.state_dict())
    with torch.no_grad():
        plain.weight_hh_l0.mul_(2)
    parametrize.register_parametrization(layer, "weight_hh_l0", Double())
    x = torch.randn(5, 2, 3)
    torch.testing.assert_close(layer(x)[0], plain(x)[0])
