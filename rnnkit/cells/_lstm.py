"""The LSTM cell (Hochreiter & Schmidhuber 1997, with the forget gate of Gers et al. 2000)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from rnnkit.cells._base import LAYER_NORM_EPS, CellSpec, CellWeights, State, input_side, recurrent_side
from rnnkit.cells._module import RecurrentCell


def lstm_step(x: Tensor, state: State, w: CellWeights, h_mask: Tensor | None = None) -> State:
    """One LSTM step. x (B, I), state (h, c) with h (B, R), c (B, H); returns (h', c').

    gi, gh = W_ih x + b_ih, W_hh h + b_hh        # (B, 4H) each
    i, f, g, o = (gi + gh).chunk(4, -1)          # torch.nn's gate order
    c' = sigmoid(f) * c + sigmoid(i) * tanh(g)
    h' = sigmoid(o) * tanh(c')                   # tanh(LN(c')) with layer_norm
    h' = W_hr h'                                 # only with proj_size > 0: (B, H) -> (B, R)
    """
    return lstm_from_gates(input_side(x, w), state, w, h_mask)


def lstm_from_gates(gi: Tensor, state: State, w: CellWeights, h_mask: Tensor | None = None) -> State:
    """lstm_step from gi = W_ih x + b_ih (B, 4H), the input side of the gates."""
    h, c = state
    gh = recurrent_side(h if h_mask is None else h * h_mask, w)
    i, f, g, o = (gi + gh).chunk(4, -1)  # each (B, H)
    c_next = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    c_out = c_next
    if w.ln_weight_c is not None:
        c_out = F.layer_norm(c_next, c_next.shape[-1:], w.ln_weight_c, w.ln_bias_c, LAYER_NORM_EPS)
    h_next = torch.sigmoid(o) * torch.tanh(c_out)
    if w.weight_hr is not None:
        h_next = F.linear(h_next, w.weight_hr)  # (B, H) -> (B, P)
    return h_next, c_next


LSTM_SPEC = CellSpec(mode="LSTM", gates=4, num_states=2, step=lstm_step, from_gates=lstm_from_gates)


class LSTMCell(RecurrentCell):
    """An LSTM cell with torch.nn's gate order i, f, g, o.

    Same constructor, parameters (weight_ih (4H, I), weight_hh (4H, H), bias_ih (4H,),
    bias_hh (4H,)) and initialisation as :class:`torch.nn.LSTMCell`.

    Args:
        input_size: I, features of x.
        hidden_size: H, features of h and c.
        bias: use bias_ih and bias_hh.
        layer_norm: layer-normalised LSTM (Ba et al. 2016): LN on W_ih x, W_hh h (gains
            ln_weight_ih/hh (4H,)) and on c before its tanh (ln_weight_c, ln_bias_c (H,)).
        init: 'default' (torch.nn's), 'orthogonal' or 'identity' for weight_hh; or 'chrono':
            the gates' biases for dependencies of up to chrono_max steps (Tallec & Ollivier 2018).
        chrono_max: T_max of init='chrono', the longest dependency expected, in steps.
        forget_bias: initial value of the forget gate's bias (None: torch.nn's init).

    Call ``cell(x, hx=None)``: x (B, I) or (I,) unbatched; hx a pair (h, c) of (B, H) or (H,),
    zeros if None. Returns (h', c'), each (B, H) or (H,).
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        layer_norm: bool = False,
        init: str = "default",
        chrono_max: float | None = None,
        forget_bias: float | None = None,
    ) -> None:
        super().__init__(
            LSTM_SPEC,
            input_size,
            hidden_size,
            bias,
            device=device,
            dtype=dtype,
            layer_norm=layer_norm,
            init=init,
            chrono_max=chrono_max,
            forget_bias=forget_bias,
        )

    def forward(
        self, input: Tensor, hx: tuple[Tensor, Tensor] | None = None
    ) -> tuple[Tensor, Tensor]:
        h, c = self._run(input, hx)
        return h, c
