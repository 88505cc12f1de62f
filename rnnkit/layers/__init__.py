"""Layers: torch.nn's RNN, LSTM and GRU on rnnkit's cells, with lengths and rnnkit's options."""

from rnnkit.layers._base import RecurrentLayer
from rnnkit.layers._layers import GRU, LSTM, RNN
from rnnkit.layers._min import MinGRU, MinGRUCell, MinLSTM, MinLSTMCell, MinRecurrentLayer

__all__ = ["GRU", "LSTM", "RNN", "MinGRU", "MinGRUCell", "MinLSTM", "MinLSTMCell", "MinRecurrentLayer",
           "RecurrentLayer"]
