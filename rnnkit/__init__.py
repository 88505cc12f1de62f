"""rnnkit: recurrent neural networks on PyTorch, as the textbook writes them.

Cells (RNNCell, LSTMCell, GRUCell) are the equations of one time step with torch.nn's
parameters; layers (RNN, LSTM, GRU) stack them, run both directions, take padded batches with
``lengths=`` or PackedSequence, and hand the time loop to an engine. MinGRU and MinLSTM (and
their cells) are the minimal forms whose gates read the input alone (Feng et al. 2024): every
step at once by a scan, with the same interface.

Shape glossary, used by every docstring:

    T  time steps            B  batch size           I  input_size (features of x)
    H  hidden_size           R  size of h: proj_size if > 0, else H
    G  gates (RNN 1, LSTM 4, GRU 3)
    D  directions (2 if bidirectional, else 1)       K  num_layers

Time-major tensors are (T, B, *); with ``batch_first=True`` inputs and outputs are (B, T, *)
while states stay (K*D, B, *). An unbatched input drops B: (T, I) for a layer, (I,) for a cell.
"""

from rnnkit import _busy

_busy.prepare_launch()  # the command line on a busy machine: before torch starts its threads

from rnnkit._checks import InputError, InputTypeError
from rnnkit._convert import from_torch, to_torch
from rnnkit.engines._library import library_path
from rnnkit.cells import GRUCell, LSTMCell, RNNCell
from rnnkit.layers import GRU, LSTM, RNN, MinGRU, MinGRUCell, MinLSTM, MinLSTMCell
from rnnkit.layers._packing import exportable_packing
from rnnkit.quantized import quantize

__version__ = "0.1.0"

__all__ = ["GRU", "LSTM", "RNN", "GRUCell", "InputError", "InputTypeError", "LSTMCell", "MinGRU", "MinGRUCell",
           "MinLSTM", "MinLSTMCell", "RNNCell", "__version__", "exportable_packing",
           "library_path", "from_torch", "quantize", "to_torch"]
