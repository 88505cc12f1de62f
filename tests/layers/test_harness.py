"""One harness every layer goes through: shapes in every layout, parameter count, a save and
load round trip, and a few training steps that lower the loss."""

from __future__ import annotations

import io
from typing import Any

import pytest
import torch
from torch import nn

import rnnkit

GATES = {"RNN": 1, "LSTM": 4, "GRU": 3}
CONFIGS: list[dict[str, Any]] = [
    {},
    {"num_layers": 2, "bidirectional": True},
    {"batch_first": True, "bias": False},
    {"layer_norm": True, "recurrent_dropout": 0.2, "zoneout": 0.1, "learn_initial_state": True},
    {"num_layers": 3, "dropout": 0.2, "init": "orthogonal"},
]


def expected_parameter_count(family: str, i: int, h: int, cfg: dict[str, Any]) -> int:
    g, k = GATES[family], cfg.get("num_layers", 1)
    d = 2 if cfg.get("bidirectional") else 1
    total = 0
    for layer in range(k):
        inp = i if layer == 0 else d * h
        per = g * h * (inp + h) + (2 * g * h if cfg.get("bias", True) else 0)
        if cfg.get("layer_norm"):
            per += 2 * g * h + (2 * h if family == "LSTM" else 0)
        total += d * per
    if cfg.get("learn_initial_state"):
        total += k * d * h * (2 if family == "LSTM" else 1)
    return total


@pytest.mark.parametrize("family", list(GATES))
@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: ",".join(c) or "default")
def test_layer_harness(family: str, cfg: dict[str, Any]) -> None:
    torch.manual_seed(0)
    i, h, steps, batch = 3, 5, 6, 4
    layer = getattr(rnnkit, family)(i, h, **cfg)
    d = 2 if cfg.get("bidirectional") else 1
    k = cfg.get("num_layers", 1)
    assert sum(p.numel() for p in layer.parameters()) == expected_parameter_count(family, i, h, cfg)

    x = torch.randn(batch, steps, i) if cfg.get("batch_first") else torch.randn(steps, batch, i)
    out, hidden = layer(x)
    assert out.shape == x.shape[:2] + (d * h,)
    states = hidden if isinstance(hidden, tuple) else (hidden,)
    assert all(s.shape == (k * d, batch, h) for s in states)
    out1, hidden1 = layer(x[0] if cfg.get("batch_first") else x[:, 0])  # unbatched (T, I)
    assert out1.shape == (steps, d * h)

    buffer = io.BytesIO()
    torch.save(layer.state_dict(), buffer)
    buffer.seek(0)
    copy = getattr(rnnkit, family)(i, h, **cfg)
    copy.load_state_dict(torch.load(buffer))
    layer.eval(), copy.eval()
    assert torch.equal(copy(x)[0], layer(x)[0])

    layer.train()
    head = nn.Linear(d * h, 1)
    target = x.sum(dim=-1, keepdim=True).cumsum(dim=1 if cfg.get("batch_first") else 0) * 0.1
    opt = torch.optim.Adam([*layer.parameters(), *head.parameters()], lr=0.02)
    losses = []
    for _ in range(40):
        opt.zero_grad()
        loss = nn.functional.mse_loss(head(layer(x)[0]), target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_regularised_lstm_learns_a_real_task() -> None:
    """An LSTM with every rnnkit option on learns to tell, at every step, whether the running
    sum of its inputs is positive (chance: 0.5; a plain LSTM reaches about 0.98 here)."""
    torch.manual_seed(1)
    layer = rnnkit.LSTM(1, 16, layer_norm=True, recurrent_dropout=0.1, zoneout=0.05,
                        forget_bias=1.0, learn_initial_state=True, init="orthogonal")
    head = nn.Linear(16, 1)
    opt = torch.optim.Adam([*layer.parameters(), *head.parameters()], lr=0.01)

    def batch(size: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.rand(10, size, 1) - 0.5  # (T, B, 1)
        return x, (x.cumsum(0) > 0).float()

    for _ in range(300):
        x, y = batch(32)
        opt.zero_grad()
        nn.functional.binary_cross_entropy_with_logits(head(layer(x)[0]), y).backward()
        opt.step()
    layer.eval()
    with torch.no_grad():
        x, y = batch(512)
        accuracy = ((head(layer(x)[0]) > 0).float() == y).float().mean().item()
    assert accuracy > 0.85, accuracy
