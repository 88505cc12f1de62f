"""rnnkit.RNN, rnnkit.LSTM and rnnkit.GRU: torch.nn's layers, written on rnnkit's cells."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence

from rnnkit.cells import GRU_SPEC, LSTM_SPEC, RNN_RELU, RNN_TANH
from rnnkit.layers._base import Lengths, RecurrentLayer

_SHARED_DOC = """
    Args (torch.nn's, same positions and defaults):
        input_size: I, features of the input.
        hidden_size: H, features of the hidden state.
        num_layers: K, stacked layers; layer k > 0 reads layer k-1's output.
        bias: use bias_ih and bias_hh.
        batch_first: input and output are (B, T, *) instead of (T, B, *); h_0 and h_n are not.
        dropout: dropout probability on each layer's output except the last's, in [0, 1].
        bidirectional: add a layer that reads each sequence backwards; D = 2.

    rnnkit's own options, keyword-only and off by default:
        layer_norm: layer normalisation (Ba, Kiros & Hinton 2016) of W_ih x and W_hh h before the
            bias (and of c before its tanh, LSTM); gains ln_weight_ih_l{k}, ln_weight_hh_l{k}.
        recurrent_dropout: probability p of dropping units of h_{t-1} where it enters W_hh, one
            mask per sequence held over all steps (Gal & Ghahramani 2016), in [0, 1).
        zoneout: probability p that each unit of the state keeps its previous value at each step
            in training (Krueger et al. 2016), in [0, 1]. At eval zoneout is the identity (as
            Chainer's zoneout), so a trained model exports to torch.nn unchanged; the paper's
            variant uses the expectation p h_{t-1} + (1-p) h_t at eval instead.
        learn_initial_state: learn h_0 (and c_0) as parameters initial_h (K*D, R), initial_c
            (K*D, H), used when hx is None.
        init: 'default' (torch.nn's uniform), 'orthogonal' (each gate block of weight_hh
            orthogonal, Saxe et al. 2014) or 'identity' (weight_hh blocks the identity and biases
            zero: with nonlinearity='relu' the IRNN of Le et al. 2015); LSTM and GRU also
            'chrono' (Tallec & Ollivier 2018): the gates' biases log(U(1, chrono_max - 1)), the
            forget (LSTM) or update (GRU) gate open for dependencies of up to chrono_max steps,
            the LSTM's input gate its negative.
        chrono_max: LSTM and GRU with init='chrono': T_max, the longest dependency expected in
            steps (e.g. the sequence length).
        engine: 'auto' (the fastest engine for the configuration and device) or 'reference'
            (the cell's step in a Python loop); see rnnkit.engines.
        device, dtype: of the parameters.

    Call ``layer(input, hx=None, *, lengths=None)``:
        input: (T, B, I), or (B, T, I) with batch_first, or (T, I) unbatched, or a PackedSequence.
        lengths: B sequence lengths in [1, T] for a right-padded batch (list or 1-D tensor);
            each sequence's final state is the one at its own last valid step, outputs past it
            are zero, and the reverse direction starts at each sequence's last valid step.
"""


def _refuse_proj_size(owner: str, proj_size: int | None) -> None:
    """torch.nn.RNN and GRU take no proj_size, and say so with a ValueError."""
    if proj_size is not None:
        raise ValueError(f"{owner}: proj_size argument is only supported for LSTM, not RNN or GRU "
                         f"(got proj_size={proj_size})")


class RNN(RecurrentLayer):
    __doc__ = (
        """A multi-layer Elman RNN, a drop-in for :class:`torch.nn.RNN`.

    Each layer computes ``h_t = act(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)``, act tanh or relu
    (``nonlinearity``). Parameters weight_ih_l{k}[_reverse] (H, I or D*H), weight_hh_l{k} (H, H),
    bias_ih_l{k} (H,), bias_hh_l{k} (H,), named and shaped as torch.nn.RNN's.
"""
        + _SHARED_DOC
        + """        hx: h_0 (K*D, B, H), or (K*D, H) unbatched; zeros if None.

    Returns (output, h_n): output (T, B, D*H) (batch_first: (B, T, D*H); unbatched (T, D*H);
    a PackedSequence for a packed input) and h_n (K*D, B, H) (unbatched (K*D, H)).
    """
    )

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        nonlinearity: str = "tanh",
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        layer_norm: bool = False,
        recurrent_dropout: float = 0.0,
        zoneout: float = 0.0,
        learn_initial_state: bool = False,
        init: str = "default",
        engine: str = "auto",
        proj_size: int | None = None,
    ) -> None:
        _refuse_proj_size("RNN", proj_size)
        specs = {"tanh": RNN_TANH, "relu": RNN_RELU}
        if nonlinearity not in specs:
            raise ValueError(f"RNN: Unknown nonlinearity {nonlinearity!r}. Select from 'tanh' or 'relu'.")
        self.nonlinearity = nonlinearity
        super().__init__(
            specs[nonlinearity], input_size, hidden_size, num_layers, bias, batch_first, dropout,
            bidirectional, 0, device=device, dtype=dtype, layer_norm=layer_norm,
            recurrent_dropout=recurrent_dropout, zoneout=zoneout, forget_bias=None,
            learn_initial_state=learn_initial_state, init=init, engine=engine,
        )

    def forward(
        self, input: Tensor | PackedSequence, hx: Tensor | None = None, *, lengths: Lengths | None = None
    ) -> tuple[Tensor | PackedSequence, Tensor]:
        output, (h_n,) = self._forward(input, hx, lengths)
        return output, h_n


class LSTM(RecurrentLayer):
    __doc__ = (
        """A multi-layer LSTM, a drop-in for :class:`torch.nn.LSTM`.

    Each layer computes, with torch.nn's gate order i, f, g, o::

        i, f, g, o = (W_ih x_t + b_ih + W_hh h_{t-1} + b_hh).chunk(4)
        c_t = sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(g)
        h_t = sigmoid(o) * tanh(c_t)            # then h_t = W_hr h_t with proj_size > 0

    Parameters weight_ih_l{k}[_reverse] (4H, I or D*R), weight_hh_l{k} (4H, R), bias_ih_l{k}
    (4H,), bias_hh_l{k} (4H,), weight_hr_l{k} (P, H), named and shaped as torch.nn.LSTM's;
    R = proj_size P if > 0 else H.
"""
        + _SHARED_DOC
        + """        hx: (h_0, c_0) with h_0 (K*D, B, R), c_0 (K*D, B, H) (unbatched without B);
            zeros if None.

    proj_size: P, project h to P features (Sak et al. 2014), 0 <= P < H.
    forget_bias: initial value of the forget gate's bias (rnnkit's, keyword-only).

    Returns (output, (h_n, c_n)): output (T, B, D*R) (batch_first: (B, T, D*R); unbatched
    (T, D*R); a PackedSequence for a packed input), h_n (K*D, B, R), c_n (K*D, B, H).
    """
    )

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        layer_norm: bool = False,
        recurrent_dropout: float = 0.0,
        zoneout: float = 0.0,
        forget_bias: float | None = None,
        learn_initial_state: bool = False,
        init: str = "default",
        engine: str = "auto",
        chrono_max: float | None = None,
    ) -> None:
        super().__init__(
            LSTM_SPEC, input_size, hidden_size, num_layers, bias, batch_first, dropout,
            bidirectional, proj_size, device=device, dtype=dtype, layer_norm=layer_norm,
            recurrent_dropout=recurrent_dropout, zoneout=zoneout, forget_bias=forget_bias,
            learn_initial_state=learn_initial_state, init=init, engine=engine, chrono_max=chrono_max,
        )

    def forward(
        self,
        input: Tensor | PackedSequence,
        hx: Sequence[Tensor] | None = None,
        *,
        lengths: Lengths | None = None,
    ) -> tuple[Tensor | PackedSequence, tuple[Tensor, Tensor]]:
        output, (h_n, c_n) = self._forward(input, hx, lengths)
        return output, (h_n, c_n)


class GRU(RecurrentLayer):
    __doc__ = (
        """A multi-layer GRU, a drop-in for :class:`torch.nn.GRU`.

    Each layer computes, with torch.nn's gate order r, z, n::

        r = sigmoid(W_ir x_t + b_ir + W_hr h_{t-1} + b_hr)
        z = sigmoid(W_iz x_t + b_iz + W_hz h_{t-1} + b_hz)
        n = tanh(W_in x_t + b_in + r * (W_hn h_{t-1} + b_hn))
        h_t = (1 - z) * n + z * h_{t-1}

    Parameters weight_ih_l{k}[_reverse] (3H, I or D*H), weight_hh_l{k} (3H, H), bias_ih_l{k}
    (3H,), bias_hh_l{k} (3H,), named and shaped as torch.nn.GRU's.
"""
        + _SHARED_DOC
        + """        hx: h_0 (K*D, B, H), or (K*D, H) unbatched; zeros if None.

    Returns (output, h_n): output (T, B, D*H) (batch_first: (B, T, D*H); unbatched (T, D*H);
    a PackedSequence for a packed input) and h_n (K*D, B, H) (unbatched (K*D, H)).
    """
    )

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        layer_norm: bool = False,
        recurrent_dropout: float = 0.0,
        zoneout: float = 0.0,
        learn_initial_state: bool = False,
        init: str = "default",
        engine: str = "auto",
        proj_size: int | None = None,
        chrono_max: float | None = None,
    ) -> None:
        _refuse_proj_size("GRU", proj_size)
        super().__init__(
            GRU_SPEC, input_size, hidden_size, num_layers, bias, batch_first, dropout,
            bidirectional, 0, device=device, dtype=dtype, layer_norm=layer_norm,
            recurrent_dropout=recurrent_dropout, zoneout=zoneout, forget_bias=None,
            learn_initial_state=learn_initial_state, init=init, engine=engine, chrono_max=chrono_max,
        )

    def forward(
        self, input: Tensor | PackedSequence, hx: Tensor | None = None, *, lengths: Lengths | None = None
    ) -> tuple[Tensor | PackedSequence, Tensor]:
        output, (h_n,) = self._forward(input, hx, lengths)
        return output, h_n
