"""Cells: one time step of each family, written as its textbook equations.

Each family has a step function (``rnn_tanh_step``, ``rnn_relu_step``, ``lstm_step``,
``gru_step``) mapping x (B, I) and a state to the next state, a :class:`CellSpec` that engines
run, and a module with torch.nn's constructor and parameters (RNNCell, LSTMCell, GRUCell). The
minimal cells' steps (``mingru_step``, ``minlstm_step``, rnnkit.cells._min) have their modules
beside their layers (rnnkit.MinGRUCell, MinLSTMCell).
"""

from rnnkit.cells._base import CellSpec, CellWeights, State, gate_preactivations, input_side, recurrent_side
from rnnkit.cells._gru import GRU_SPEC, GRUCell, gru_step
from rnnkit.cells._lstm import LSTM_SPEC, LSTMCell, lstm_step
from rnnkit.cells._min import mingru_step, minlstm_step
from rnnkit.cells._rnn import RNN_RELU, RNN_TANH, RNNCell, rnn_relu_step, rnn_tanh_step

__all__ = [
    "GRU_SPEC",
    "LSTM_SPEC",
    "RNN_RELU",
    "RNN_TANH",
    "CellSpec",
    "CellWeights",
    "GRUCell",
    "LSTMCell",
    "RNNCell",
    "State",
    "gate_preactivations",
    "input_side",
    "recurrent_side",
    "gru_step",
    "lstm_step",
    "mingru_step",
    "minlstm_step",
    "rnn_relu_step",
    "rnn_tanh_step",
]
