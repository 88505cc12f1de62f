"""What every cell family shares: the weights of one step, their creation and initialisation,
and the (optionally layer-normalised) gate pre-activations.

Shapes (glossary in :mod:`rnnkit`): G gates (1 RNN, 4 LSTM, 3 GRU), H hidden_size,
I input size, R = proj_size if proj_size > 0 else H (the size of the recurrent h).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LAYER_NORM_EPS = 1e-5
INITS = ("default", "orthogonal", "identity", "chrono")

State = tuple[Tensor, ...]
"""A cell's state: ``(h,)`` for RNN and GRU, ``(h, c)`` for LSTM; each (B, R) or (B, H)."""


class CellWeights(NamedTuple):
    """The parameters of one cell (one layer and direction of a layer), torch.nn's layout."""

    weight_ih: Tensor  # (G*H, I)
    weight_hh: Tensor  # (G*H, R)
    bias_ih: Tensor | None = None  # (G*H,)
    bias_hh: Tensor | None = None  # (G*H,)
    weight_hr: Tensor | None = None  # (P, H), LSTM with proj_size = P > 0
    ln_weight_ih: Tensor | None = None  # (G*H,) gain of LN(W_ih x), layer_norm=True
    ln_weight_hh: Tensor | None = None  # (G*H,) gain of LN(W_hh h), layer_norm=True
    ln_weight_c: Tensor | None = None  # (H,) gain of LN(c), layer-normalised LSTM
    ln_bias_c: Tensor | None = None  # (H,) shift of LN(c), layer-normalised LSTM


def weights_as(weights: CellWeights, dtype: torch.dtype) -> CellWeights:
    """The weights cast to dtype (differentiably: gradients reach the parameters in theirs)."""
    return weights._replace(**{name: t.to(dtype) for name, t in weights._asdict().items() if t is not None})


StepFn = Callable[[Tensor, State, CellWeights, "Tensor | None"], State]
"""``step(x, state, weights, h_mask)``: x (B, I); or, for a spec's ``from_gates``, gi (B, G*H),
the input side of the gates (input_side), computed for all steps before a loop."""


@dataclass(frozen=True)
class CellSpec:
    """A cell family: its torch mode name, gate count, state arity and step function.

    ``step(x, state, weights, h_mask)`` maps x (B, I) and a state to the next state; h_mask
    (B, R) or None multiplies h_{t-1} where it enters W_hh (recurrent dropout).
    ``from_gates(gi, state, weights, h_mask)`` is the same step from gi = input_side(x, weights)
    (B, G*H): ``step(x, ...) == from_gates(input_side(x, weights), ...)``.
    """

    mode: str  # torch.nn's mode: 'RNN_TANH', 'RNN_RELU', 'LSTM', 'GRU'
    gates: int
    num_states: int
    step: StepFn
    from_gates: StepFn


def gate_preactivations(x: Tensor, h: Tensor, w: CellWeights) -> tuple[Tensor, Tensor]:
    """Return ``gi = W_ih x + b_ih`` and ``gh = W_hh h + b_hh``, each (B, G*H).

    With layer normalisation (Ba, Kiros & Hinton 2016) each product is normalised over its
    G*H features before the bias, which then acts as the shift:
    ``gi = ln_weight_ih * LN(W_ih x) + b_ih`` and ``gh = ln_weight_hh * LN(W_hh h) + b_hh``.
    """
    return input_side(x, w), recurrent_side(h, w)


def input_side(x: Tensor, w: CellWeights) -> Tensor:
    """``gi = W_ih x + b_ih``, or ``ln_weight_ih * LN(W_ih x) + b_ih``: x (*, I) -> (*, G*H).
    It reads no state, so a loop may compute it for all steps at once, (T, B, I) -> (T, B, G*H)."""
    if w.ln_weight_ih is None:
        return F.linear(x, w.weight_ih, w.bias_ih)
    width = (w.weight_ih.shape[0],)
    return F.layer_norm(F.linear(x, w.weight_ih), width, w.ln_weight_ih, w.bias_ih, LAYER_NORM_EPS)


def recurrent_side(h: Tensor, w: CellWeights) -> Tensor:
    """``gh = W_hh h + b_hh``, or ``ln_weight_hh * LN(W_hh h) + b_hh``: h (B, R) -> (B, G*H)."""
    if w.ln_weight_hh is None:
        return F.linear(h, w.weight_hh, w.bias_hh)
    width = (w.weight_hh.shape[0],)
    return F.layer_norm(F.linear(h, w.weight_hh), width, w.ln_weight_hh, w.bias_hh, LAYER_NORM_EPS)


def parameter_shapes(
    *,
    gates: int,
    input_size: int,
    hidden_size: int,
    bias: bool,
    proj_size: int = 0,
    layer_norm: bool = False,
    lstm: bool = False,
) -> dict[str, tuple[int, ...]]:
    """Names (without layer suffix) and shapes of one cell's parameters, in torch.nn's order."""
    rec = proj_size if proj_size > 0 else hidden_size
    shapes: dict[str, tuple[int, ...]] = {
        "weight_ih": (gates * hidden_size, input_size),
        "weight_hh": (gates * hidden_size, rec),
    }
    if bias:
        shapes["bias_ih"] = (gates * hidden_size,)
        shapes["bias_hh"] = (gates * hidden_size,)
    if proj_size > 0:
        shapes["weight_hr"] = (proj_size, hidden_size)
    if layer_norm:
        shapes["ln_weight_ih"] = (gates * hidden_size,)
        shapes["ln_weight_hh"] = (gates * hidden_size,)
        if lstm:
            shapes["ln_weight_c"] = (hidden_size,)
            shapes["ln_bias_c"] = (hidden_size,)
    return shapes


@torch.no_grad()
def init_cell_weights(
    w: CellWeights,
    *,
    hidden_size: int,
    gates: int,
    init: str = "default",
    forget_bias: float | None = None,
    chrono_max: float | None = None,
) -> None:
    """Initialise one cell's parameters in place.

    default: every weight and bias ~ U(-1/sqrt(H), 1/sqrt(H)), as torch.nn.
    orthogonal: W_hh's G blocks of shape (H, R) each (semi-)orthogonal (Saxe et al. 2014).
    identity: W_hh's blocks the identity and the biases zero (the IRNN of Le et al. 2015).
    chrono: the weights as default, and the gates' biases set for dependencies of up to
    chrono_max steps (Tallec & Ollivier 2018, "Can recurrent neural networks warp time?"): b ~
    log(U(1, chrono_max - 1)) per unit; LSTM (gates i, f, g, o): forget bias b, input bias -b;
    GRU (gates r, z, n, with h' = (1 - z) n + z h): update bias b, so that z starts near
    1 - 1/U and the state keeps its value for about U steps. The matching slices of bias_hh are 0.
    Layer-norm gains start at 1 and the cell-norm shift at 0. ``forget_bias`` (LSTM) sets the
    forget-gate slice of bias_ih to that value and of bias_hh to 0 (Jozefowicz et al. 2015).
    """
    bound = 1.0 / math.sqrt(hidden_size) if hidden_size > 0 else 0.0  # a cell of 0 units has no weights
    for name, p in w._asdict().items():
        if p is None:
            continue
        if name.startswith("ln_weight"):
            p.fill_(1.0)
        elif name == "ln_bias_c":
            p.zero_()
        else:
            p.uniform_(-bound, bound)
    blocks = w.weight_hh.view(gates, hidden_size, w.weight_hh.shape[1])  # (G, H, R): one block per gate
    if init == "orthogonal":
        for block in blocks:
            nn.init.orthogonal_(block)
    elif init == "identity":
        for block in blocks:
            nn.init.eye_(block)
        for b in (w.bias_ih, w.bias_hh):
            if b is not None:
                b.zero_()
    elif init == "chrono" and w.bias_ih is not None and w.bias_hh is not None:
        if chrono_max is None or gates not in (3, 4):
            raise ValueError("init='chrono' needs chrono_max and the gates of an LSTM or a GRU")
        b = torch.empty_like(w.bias_ih[:hidden_size]).uniform_(1.0, chrono_max - 1.0).log_()  # (H,)
        w.bias_ih[hidden_size : 2 * hidden_size] = b  # LSTM: f; GRU: z
        w.bias_hh[hidden_size : 2 * hidden_size] = 0.0
        if gates == 4:  # LSTM: the input gate opens as the forget gate closes
            w.bias_ih[:hidden_size] = -b
            w.bias_hh[:hidden_size] = 0.0
    if forget_bias is not None and w.bias_ih is not None and w.bias_hh is not None:
        w.bias_ih[hidden_size : 2 * hidden_size] = forget_bias  # gates i, f, g, o: f is 2nd
        w.bias_hh[hidden_size : 2 * hidden_size] = 0.0
