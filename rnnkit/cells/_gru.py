"""The GRU cell (Cho et al. 2014), in torch.nn's form (reset gate applied to W_hn h + b_hn)."""

from __future__ import annotations

import torch
from torch import Tensor

from rnnkit.cells._base import CellSpec, CellWeights, State, input_side, recurrent_side
from rnnkit.cells._module import RecurrentCell


def gru_step(x: Tensor, state: State, w: CellWeights, h_mask: Tensor | None = None) -> State:
    """One GRU step. x (B, I), state (h,) with h (B, H); returns (h',).

    gi, gh = W_ih x + b_ih, W_hh h + b_hh        # (B, 3H) each
    i_r, i_z, i_n = gi.chunk(3, -1)
    h_r, h_z, h_n = gh.chunk(3, -1)
    r = sigmoid(i_r + h_r)
    z = sigmoid(i_z + h_z)
    n = tanh(i_n + r * h_n)                      # h_n = W_hn h + b_hn
    h' = (1 - z) * n + z * h
    """
    return gru_from_gates(input_side(x, w), state, w, h_mask)


def gru_from_gates(gi: Tensor, state: State, w: CellWeights, h_mask: Tensor | None = None) -> State:
    """gru_step from gi = W_ih x + b_ih (B, 3H), the input side of the gates."""
    (h,) = state
    gh = recurrent_side(h if h_mask is None else h * h_mask, w)
    i_r, i_z, i_n = gi.chunk(3, -1)  # each (B, H)
    h_r, h_z, h_n = gh.chunk(3, -1)
    r = torch.sigmoid(i_r + h_r)
    z = torch.sigmoid(i_z + h_z)
    n = torch.tanh(i_n + r * h_n)
    return ((1 - z) * n + z * h,)


GRU_SPEC = CellSpec(mode="GRU", gates=3, num_states=1, step=gru_step, from_gates=gru_from_gates)


class GRUCell(RecurrentCell):
    """A GRU cell with torch.nn's gate order r, z, n.

    Same constructor, parameters (weight_ih (3H, I), weight_hh (3H, H), bias_ih (3H,),
    bias_hh (3H,)) and initialisation as :class:`torch.nn.GRUCell`.

    Args:
        input_size: I, features of x.
        hidden_size: H, features of h.
        bias: use bias_ih and bias_hh.
        layer_norm: normalise W_ih x and W_hh h (Ba et al. 2016), gains ln_weight_ih/hh (3H,).
        init: 'default' (torch.nn's), 'orthogonal' or 'identity' for weight_hh; or 'chrono':
            the gates' biases for dependencies of up to chrono_max steps (Tallec & Ollivier 2018).
        chrono_max: T_max of init='chrono', the longest dependency expected, in steps.

    Call ``cell(x, hx=None)``: x (B, I) or (I,) unbatched; hx (B, H) or (H,), zeros if None.
    Returns h' (B, H) or (H,).
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
    ) -> None:
        super().__init__(
            GRU_SPEC,
            input_size,
            hidden_size,
            bias,
            device=device,
            dtype=dtype,
            layer_norm=layer_norm,
            init=init,
            chrono_max=chrono_max,
        )

    def forward(self, input: Tensor, hx: Tensor | None = None) -> Tensor:
        (h,) = self._run(input, None if hx is None else (hx,))
        return h
