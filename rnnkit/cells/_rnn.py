"""The vanilla (Elman) RNN cell: ``h' = act(W_ih x + b_ih + W_hh h + b_hh)``."""

from __future__ import annotations

import torch
from torch import Tensor

from rnnkit import _checks
from rnnkit.cells._base import CellSpec, CellWeights, State, input_side, recurrent_side
from rnnkit.cells._module import RecurrentCell


def rnn_tanh_step(x: Tensor, state: State, w: CellWeights, h_mask: Tensor | None = None) -> State:
    """One step of the tanh RNN. x (B, I), state (h,) with h (B, H); returns (h',).

    gi, gh = W_ih x + b_ih, W_hh h + b_hh
    h' = tanh(gi + gh)
    """
    return rnn_tanh_from_gates(input_side(x, w), state, w, h_mask)


def rnn_tanh_from_gates(gi: Tensor, state: State, w: CellWeights, h_mask: Tensor | None = None) -> State:
    """rnn_tanh_step from gi = W_ih x + b_ih (B, H), the input side of the gates."""
    (h,) = state
    gh = recurrent_side(h if h_mask is None else h * h_mask, w)
    return (torch.tanh(gi + gh),)


def rnn_relu_step(x: Tensor, state: State, w: CellWeights, h_mask: Tensor | None = None) -> State:
    """One step of the ReLU RNN. x (B, I), state (h,) with h (B, H); returns (h',).

    gi, gh = W_ih x + b_ih, W_hh h + b_hh
    h' = relu(gi + gh)
    """
    return rnn_relu_from_gates(input_side(x, w), state, w, h_mask)


def rnn_relu_from_gates(gi: Tensor, state: State, w: CellWeights, h_mask: Tensor | None = None) -> State:
    """rnn_relu_step from gi = W_ih x + b_ih (B, H), the input side of the gates."""
    (h,) = state
    gh = recurrent_side(h if h_mask is None else h * h_mask, w)
    return (torch.relu(gi + gh),)


RNN_TANH = CellSpec(mode="RNN_TANH", gates=1, num_states=1, step=rnn_tanh_step, from_gates=rnn_tanh_from_gates)
RNN_RELU = CellSpec(mode="RNN_RELU", gates=1, num_states=1, step=rnn_relu_step, from_gates=rnn_relu_from_gates)
RNN_SPECS = {"tanh": RNN_TANH, "relu": RNN_RELU}


class RNNCell(RecurrentCell):
    """An Elman RNN cell, ``h' = tanh(W_ih x + b_ih + W_hh h + b_hh)`` (or relu).

    Same constructor, parameters (weight_ih (H, I), weight_hh (H, H), bias_ih (H,),
    bias_hh (H,)) and initialisation as :class:`torch.nn.RNNCell`.

    Args:
        input_size: I, features of x.
        hidden_size: H, features of h.
        bias: use bias_ih and bias_hh.
        nonlinearity: 'tanh' or 'relu'.
        layer_norm: normalise W_ih x and W_hh h (Ba et al. 2016), gains ln_weight_ih/hh (H,).
        init: 'default' (torch.nn's), 'orthogonal' or 'identity' for weight_hh.

    Call ``cell(x, hx=None)``: x (B, I) or (I,) unbatched; hx (B, H) or (H,), zeros if None.
    Returns h' (B, H) or (H,).
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        nonlinearity: str = "tanh",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        layer_norm: bool = False,
        init: str = "default",
    ) -> None:
        if nonlinearity not in RNN_SPECS:
            raise _checks.InputError(f"RNNCell: Unknown nonlinearity: {nonlinearity}. Select from 'tanh' or 'relu'.")
        self.nonlinearity = nonlinearity
        super().__init__(
            RNN_SPECS[nonlinearity],
            input_size,
            hidden_size,
            bias,
            device=device,
            dtype=dtype,
            layer_norm=layer_norm,
            init=init,
        )

    def forward(self, input: Tensor, hx: Tensor | None = None) -> Tensor:
        (h,) = self._run(input, None if hx is None else (hx,))
        return h

    def extra_repr(self) -> str:
        s = super().extra_repr()
        return s if self.nonlinearity == "tanh" else s + f", nonlinearity={self.nonlinearity!r}"
