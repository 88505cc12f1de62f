"""The engine boundary: reversal within lengths, engine selection, and the reference engine."""

from __future__ import annotations

import torch

import rnnkit
from rnnkit.engines import ENGINES, reverse_padded


def test_reverse_padded_reverses_each_sequence_in_its_length() -> None:
    x = torch.arange(4 * 3, dtype=torch.float64).view(4, 3)  # (T, B)
    lengths = torch.tensor([4, 1, 3])
    got = reverse_padded(x.unsqueeze(2), lengths).squeeze(2)
    expected = x.clone()
    for b, n in enumerate(lengths.tolist()):
        expected[:n, b] = x[:n, b].flip(0)
    assert torch.equal(got, expected)
    assert torch.equal(reverse_padded(got.unsqueeze(2), lengths).squeeze(2), x)  # its own inverse
    assert torch.equal(reverse_padded(x, None), x.flip(0))


def test_engine_choice_is_visible() -> None:
    layer = rnnkit.LSTM(3, 4)
    x = torch.randn(5, 2, 3)
    assert layer.engine_for(x) in ENGINES
    assert repr(layer) == "LSTM(3, 4)"  # torch.nn's repr: 'auto' is the default
    assert "engine='reference'" in repr(rnnkit.LSTM(3, 4, engine="reference"))
    assert rnnkit.GRU(3, 4, engine="reference").engine_for(x) == "reference"
