"""The contract between a layer and the engines that run it.

A layer hands an engine one layer and one direction at a time (the reverse direction as
sequences reversed within their lengths): the input sequence, the initial state, the cell's
weights, the lengths and the random masks. The engine returns every
step's output and the final state. Engines are deterministic given these arguments: the layer
samples all randomness (recurrent dropout, zoneout), so two engines given the same masks must
produce the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

import torch
from torch import Tensor

from rnnkit.cells import CellSpec, CellWeights, State


@dataclass(frozen=True)
class Noise:
    """The random masks of one layer and direction for one forward call.

    h_mask: (B, R) recurrent dropout (Gal & Ghahramani 2016), one mask per sequence, already
        scaled by 1/(1-p); multiplies h_{t-1} where it enters W_hh. None: no recurrent dropout.
    keep: zoneout (Krueger et al. 2016), one bool tensor (T, B, S) per state part (h; h and c
        for LSTM); True keeps the unit's previous value at that step. None: no zoneout.
    """

    h_mask: Tensor | None = None
    keep: tuple[Tensor, ...] | None = None


@dataclass
class Probe:
    """A view into one layer and direction for rnnkit.diagnostics (reference engine only).

    delta: (T, B, R) zeros that require grad, added to h_t after each step (t in processing
        order): the numbers do not change, and dL/d delta_t is the total derivative dL/dh_t,
        through the outputs and through all later steps.
    states: filled by the engine with the state after each step (h, or (h, c)), in processing order.
    """

    delta: Tensor
    states: list[State] = field(default_factory=list)


class LayerConfig(NamedTuple):
    """What an engine may need to decide whether it can run a layer. (A NamedTuple: a layer
    makes one at every call, and a frozen dataclass of these fields took 0.93 us to build here
    against 0.34 us.)"""

    spec: CellSpec
    hidden_size: int
    layer_norm: bool
    recurrent_dropout: float
    zoneout: float


class Engine(Protocol):
    """How a layer runs one direction of one layer over a sequence."""

    name: str

    def unsupported(self, config: LayerConfig, x: Tensor) -> str | None:
        """None if this engine can run config on x's device and dtype, else the reason."""
        ...

    def run(
        self,
        spec: CellSpec,
        x: Tensor,
        state: State | None,
        weights: CellWeights,
        *,
        lengths: Tensor | None,
        noise: Noise,
    ) -> tuple[Tensor, State]:
        """Run one direction of one layer.

        Args:
            x: (T, B, I) time-major input.
            state: initial state, parts (B, S); None for zeros (zero_state).
            lengths: (B,) int64 on x's device, 1 <= lengths <= T, or None for full length.
            noise: masks sampled by the layer.

        Returns:
            out: (T, B, R), h at every step, zero past each sequence's length.
            state: the state at each sequence's last valid step.

        The reverse direction is the layer's business: it hands over each sequence reversed
        within its length (reverse_padded) and reverses the output back.
        """
        ...


def zero_state(spec: CellSpec, x: Tensor, weights: CellWeights) -> State:
    """The all-zero initial state for x (T, B, I): h (B, R)[, c (B, H)]."""
    size, hidden = weights.weight_hh.shape[1], weights.weight_hh.shape[0] // spec.gates
    return (x.new_zeros(x.shape[1], size), x.new_zeros(x.shape[1], hidden))[: spec.num_states]


def reverse_padded(x: Tensor, lengths: Tensor | None) -> Tensor:
    """Reverse each sequence of x (T, B, *) within its own length; padding stays in place.

    Its own inverse: reverse_padded(reverse_padded(x, n), n) == x.
    """
    if lengths is None:
        return x.flip(0)
    steps, batch = x.shape[:2]
    t = torch.arange(steps, device=x.device).unsqueeze(1)  # (T, 1)
    index = torch.where(t < lengths, lengths - 1 - t, t)  # (T, B): source step of each slot
    index = index.view(steps, batch, *([1] * (x.dim() - 2))).expand_as(x)  # (T, B, *)
    return x.gather(0, index)
