"""The two classic long-range memory tasks, and selective copying, as seeded generators.

Adding problem (Hochreiter & Schmidhuber 1997, in the form of Le et al. 2015): a sequence of T
steps of two channels; channel 0 holds numbers drawn uniformly from [0, 1], channel 1 marks two
steps with 1 (one drawn uniformly from the first half, one from the second half) and is 0
elsewhere; the target is the sum of the two marked numbers. Always predicting 1 (the target's
mean) scores an MSE of Var(U + U') = 2/12 = 0.167.

Copy memory (Arjovsky et al. 2016): T + 20 steps of symbols: 10 symbols drawn uniformly from
1..8, then T - 1 blanks (0), the delimiter (9), then 10 blanks; the target is T + 10 blanks then
the 10 symbols. Predicting blanks and then a uniform guess over 8 symbols scores a cross-entropy
of 10 log 8 / (T + 20) per step.

Selective copying (Gu & Dao 2023): the same, with the 10 symbols at random places among the
first T + 9 steps instead of at the start; the same baseline.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

BLANK, DELIMITER, SYMBOLS, RECALL = 0, 9, 8, 10


def adding_problem(n: int, steps: int, *, seed: int = 0) -> tuple[Tensor, Tensor]:
    """-> x (n, T, 2) float32, y (n, 1): the sum of the two marked values."""
    if steps < 2:
        raise ValueError(f"the adding problem needs --steps >= 2, got {steps}")
    g = torch.Generator().manual_seed(seed)
    values = torch.rand(n, steps, generator=g)
    half = steps // 2
    first = torch.randint(0, half, (n,), generator=g)
    second = torch.randint(half, steps, (n,), generator=g)
    marks = torch.zeros(n, steps)
    rows = torch.arange(n)
    marks[rows, first] = 1.0
    marks[rows, second] = 1.0
    y = (values[rows, first] + values[rows, second]).unsqueeze(1)
    return torch.stack([values, marks], dim=2), y


def copy_memory(n: int, steps: int, *, seed: int = 0) -> tuple[Tensor, Tensor]:
    """-> x (n, T + 20) int64 symbols, y (n, T + 20) int64 targets (0 blank, 1..8 symbols)."""
    if steps < 1:
        raise ValueError(f"copy memory needs --steps >= 1, got {steps}")
    g = torch.Generator().manual_seed(seed)
    symbols = torch.randint(1, SYMBOLS + 1, (n, RECALL), generator=g)
    x = torch.zeros(n, steps + 2 * RECALL, dtype=torch.int64)
    x[:, :RECALL] = symbols
    x[:, RECALL + steps - 1] = DELIMITER
    y = torch.zeros_like(x)
    y[:, -RECALL:] = symbols
    return x, y


def selective_copy(n: int, steps: int, *, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Selective copying (Gu & Dao 2023): copy memory whose 10 symbols lie at random places among
    the first T + 9 steps (in order, blanks between them), so that what to keep is known only by
    reading it. -> x (n, T + 20) int64, y (n, T + 20) int64, laid out as copy_memory's."""
    if steps < 1:
        raise ValueError(f"selective copy needs --steps >= 1, got {steps}")
    g = torch.Generator().manual_seed(seed)
    symbols = torch.randint(1, SYMBOLS + 1, (n, RECALL), generator=g)
    span = steps + RECALL - 1  # the steps before the delimiter
    places = torch.rand(n, span, generator=g).argsort(dim=1)[:, :RECALL].sort(dim=1).values  # (n, 10), increasing
    x = torch.zeros(n, steps + 2 * RECALL, dtype=torch.int64)
    x.scatter_(1, places, symbols)
    x[:, span] = DELIMITER
    y = torch.zeros_like(x)
    y[:, -RECALL:] = symbols
    return x, y


def adding_baseline() -> float:
    """The MSE of always predicting 1."""
    return 2 / 12


def copy_baseline(steps: int) -> float:
    """The memoryless cross-entropy per step (nats)."""
    return RECALL * math.log(SYMBOLS) / (steps + 2 * RECALL)
