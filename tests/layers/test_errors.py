"""Every bad argument and input gets a TypeError or ValueError naming what was wrong."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import rnnkit


@pytest.mark.parametrize(
    "make, error, message",
    [
        (lambda: rnnkit.LSTM(10, 20, proj_size=20), ValueError, r"LSTM: proj_size must be < hidden_size \(20\), got 20"),
        (lambda: rnnkit.LSTM(10, 20, proj_size=-1), ValueError, r"LSTM: proj_size must be >= 0, got -1"),
        (lambda: rnnkit.GRU(10, 20, dropout=1.5), ValueError, r"GRU: dropout must be in \[0, 1\], got 1.5"),
        (lambda: rnnkit.GRU(10, 20, dropout=-0.1), ValueError, r"GRU: dropout must be in \[0, 1\], got -0.1"),
        (lambda: rnnkit.GRU(10, 20, proj_size=5), ValueError, r"proj_size argument is only supported for LSTM, not RNN or GRU"),
        (lambda: rnnkit.RNN(10, 20, proj_size=0), ValueError, r"proj_size argument is only supported for LSTM, not RNN or GRU"),
        (lambda: rnnkit.GRU(10, 20, dropout="0.5"), TypeError, r"GRU: dropout must be a float, got str '0.5'"),
        (lambda: rnnkit.RNN(10, 20, nonlinearity="sigmoid"), ValueError, r"RNN: unknown nonlinearity 'sigmoid': expected 'tanh' or 'relu'"),
        (lambda: rnnkit.RNNCell(10, 20, nonlinearity="gelu"), ValueError, r"RNNCell: unknown nonlinearity 'gelu'"),
        (lambda: rnnkit.LSTM(10, 0), ValueError, r"LSTM: hidden_size must be >= 1, got 0"),
        (lambda: rnnkit.LSTM(10.0, 20), TypeError, r"LSTM: input_size must be an int, got float 10.0"),
        (lambda: rnnkit.LSTM(10, 20, num_layers=0), ValueError, r"LSTM: num_layers must be >= 1, got 0"),
        (lambda: rnnkit.LSTM(10, 20, bidirectional=1), TypeError, r"LSTM: bidirectional must be a bool, got int 1"),
        (lambda: rnnkit.LSTM(10, 20, recurrent_dropout=1.0), ValueError, r"LSTM: recurrent_dropout must be in \[0, 1\), got 1.0"),
        (lambda: rnnkit.LSTM(10, 20, zoneout=1.5), ValueError, r"LSTM: zoneout must be in \[0, 1\], got 1.5"),
        (lambda: rnnkit.LSTM(10, 20, init="xavier"), ValueError, r"LSTM: init must be one of 'default', 'orthogonal', 'identity', 'chrono', got 'xavier'"),
        (lambda: rnnkit.LSTM(10, 20, engine="fast"), ValueError, r"LSTM: engine must be one of 'auto', 'reference', 'fused', 'native', got 'fast'"),
        (lambda: rnnkit.LSTM(10, 20, bias=False, forget_bias=1.0), ValueError, r"LSTM: forget_bias=1.0 needs bias=True"),
        (lambda: rnnkit.LSTMCell(10, 20, forget_bias="1"), TypeError, r"LSTMCell: forget_bias must be a float or None, got '1'"),
    ],
)
def test_constructor_errors(make: Any, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        make()


@pytest.mark.parametrize("make", [lambda m: m.GRU(10, 20, proj_size=5), lambda m: m.RNN(10, 20, proj_size=0),
                                  lambda m: m.LSTM(10, 0), lambda m: m.LSTM(10, 20, dropout=1.5),
                                  lambda m: m.LSTM(10, 20, bias=1), lambda m: m.LSTM(10.0, 20)])
def test_constructor_errors_are_torchs_types(make: Any) -> None:
    """A bad argument raises what torch.nn raises for it (or a subclass)."""
    with pytest.raises(Exception) as theirs:
        make(torch.nn)
    with pytest.raises(type(theirs.value)):
        make(rnnkit)


def test_what_torch_accepts_rnnkit_accepts() -> None:
    """dropout=1 between layers (every unit dropped), cells of hidden_size 0, and a cell's bias
    given as any truthy value, as torch.nn."""
    torch.manual_seed(0)
    layer = rnnkit.GRU(3, 4, num_layers=2, dropout=1.0)
    theirs = torch.nn.GRU(3, 4, num_layers=2, dropout=1.0)
    theirs.load_state_dict(layer.state_dict())
    x = torch.randn(5, 2, 3)
    torch.testing.assert_close(layer(x)[0], theirs(x)[0])  # the top layer reads zeros in both
    assert repr(layer) == repr(theirs) == "GRU(3, 4, num_layers=2, dropout=1.0)"
    for name in ("RNNCell", "LSTMCell", "GRUCell"):
        ours, torchs = getattr(rnnkit, name)(3, 0), getattr(torch.nn, name)(3, 0)
        out, expected = ours(torch.randn(2, 3)), torchs(torch.randn(2, 3))
        for a, b in zip(out if isinstance(out, tuple) else (out,), expected if isinstance(expected, tuple) else (expected,)):
            assert a.shape == b.shape == (2, 0)
        assert getattr(rnnkit, name)(3, 4, bias=1).bias_ih.shape == (getattr(rnnkit, name)(3, 4).bias_ih.shape)
        assert not hasattr(getattr(rnnkit, name)(3, 4, bias=0), "bias_ih")


def test_dropout_with_one_layer_warns() -> None:
    with pytest.warns(UserWarning, match=r"LSTM: dropout=0.5 acts between stacked layers only"):
        rnnkit.LSTM(10, 20, dropout=0.5)


LSTM = rnnkit.LSTM(10, 20, num_layers=2)
GRU_BF = rnnkit.GRU(10, 20, batch_first=True)
X = torch.randn(5, 3, 10)


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: LSTM(torch.randn(5, 3, 11)), ValueError,
         r"LSTM: expected input with 10 features in its last dimension \(input_size=10\), got shape \(5, 3, 11\)"),
        (lambda: LSTM(torch.randn(5, 3, 10, 1)), ValueError,
         r"LSTM: expected input with 3 dimensions \(T, B, I\) or 2 \(T, I\) unbatched, got 4 of shape \(5, 3, 10, 1\)"),
        (lambda: GRU_BF(torch.randn(10)), ValueError,
         r"GRU: expected input with 3 dimensions \(B, T, I\) or 2 \(T, I\) unbatched, got 1"),
        (lambda: LSTM(torch.zeros(0, 3, 10)), ValueError, r"LSTM: expected at least one time step"),
        (lambda: LSTM(torch.ones(5, 3, 10, dtype=torch.int64)), TypeError,
         r"LSTM: expected input to be a floating-point tensor \(torch.float32\), got torch.int64"),
        (lambda: LSTM(X.double()), TypeError,
         r"LSTM: expected input of dtype torch.float32 \(the dtype of the parameters\), got torch.float64"),
        (lambda: LSTM([[1.0]]), TypeError, r"LSTM: expected input to be a Tensor, got list"),
        (lambda: LSTM(X, (torch.zeros(2, 3, 21), torch.zeros(2, 3, 20))), ValueError,
         r"LSTM: expected h_0 of shape \(2, 3, 20\), got \(2, 3, 21\)"),
        (lambda: LSTM(X, (torch.zeros(2, 3, 20), torch.zeros(1, 3, 20))), ValueError,
         r"LSTM: expected c_0 of shape \(2, 3, 20\), got \(1, 3, 20\)"),
        (lambda: LSTM(X, torch.zeros(2, 3, 20)), TypeError, r"LSTM: expected hx to be a pair \(h_0, c_0\), got Tensor"),
        (lambda: LSTM(X[:, 0], (torch.zeros(2, 1, 20), torch.zeros(2, 1, 20))), ValueError,
         r"LSTM: expected h_0 of shape \(2, 20\), got \(2, 1, 20\)"),
        (lambda: GRU_BF(torch.randn(3, 5, 10), (torch.zeros(1, 3, 20),)), TypeError,
         r"GRU: expected hx to be a Tensor h_0, got tuple"),
        (lambda: LSTM(X, lengths=[6, 2, 1]), ValueError, r"LSTM: expected every length <= 5 \(the input's time steps\), got 6"),
        (lambda: LSTM(X, lengths=[5, 0, 1]), ValueError, r"LSTM: expected every length >= 1, got 0"),
        (lambda: LSTM(X, lengths=[5, 2]), ValueError, r"LSTM: expected 3 lengths \(one per sequence\), got 2"),
        (lambda: LSTM(X, lengths=torch.tensor([5.0, 2.0, 1.0])), TypeError, r"LSTM: expected lengths of an integer dtype, got torch.float32"),
        (lambda: LSTM(X, lengths=torch.tensor([[5, 2, 1]])), ValueError, r"LSTM: expected lengths to be 1-D \(B,\), got shape \(1, 3\)"),
        (lambda: LSTM(X, lengths=[5, 2.5, 1]), TypeError, r"LSTM: expected lengths to be a list of ints or a 1-D tensor"),
        (lambda: LSTM(X[:, 0], lengths=[5]), ValueError, r"LSTM: lengths= needs a batched \(3-D\) input, got a 2-D one"),
        (lambda: LSTM(pack_padded_sequence(X, [5, 2, 1]), lengths=[5, 2, 1]), ValueError,
         r"LSTM: lengths= cannot be given with a PackedSequence"),
        (lambda: rnnkit.LSTMCell(10, 20)(torch.randn(3, 11)), ValueError,
         r"LSTMCell: expected input with 10 features in its last dimension \(input_size=10\), got shape \(3, 11\)"),
        (lambda: rnnkit.GRUCell(10, 20)(torch.randn(2, 3, 10)), ValueError,
         r"GRUCell: expected input with 2 dimensions \(B, I\) or 1 \(I,\), got 3"),
        (lambda: rnnkit.GRUCell(10, 20)(torch.randn(3, 10), torch.randn(3, 21)), ValueError,
         r"GRUCell: expected h of shape \(3, 20\), got \(3, 21\)"),
        (lambda: rnnkit.RNNCell(10, 20)(torch.ones(3, 10, dtype=torch.int32)), TypeError,
         r"RNNCell: expected input to be a floating-point tensor"),
        (lambda: rnnkit.LSTMCell(10, 20)(torch.randn(3, 10), torch.randn(3, 20)), TypeError,
         r"LSTMCell: expected hx to be a pair \(h, c\), got Tensor"),
    ],
)
def test_forward_errors(call: Any, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        call()


T_LSTM = torch.nn.LSTM(10, 20, num_layers=2)
T_GRU_BF = torch.nn.GRU(10, 20, batch_first=True)


@pytest.mark.parametrize(
    "call",
    [
        lambda m: m[0](torch.randn(5, 3, 11)),
        lambda m: m[0](torch.randn(5, 3, 10, 1)),
        lambda m: m[1](torch.randn(10)),
        lambda m: m[0](torch.zeros(0, 3, 10)),
        lambda m: m[0](X.double()),
        lambda m: m[0](X, (torch.zeros(2, 3, 21), torch.zeros(2, 3, 20))),
        lambda m: m[0](X, (torch.zeros(2, 3, 20), torch.zeros(1, 3, 20))),
        lambda m: m[0](X[:, 0], (torch.zeros(2, 1, 20), torch.zeros(2, 1, 20))),
        lambda m: m[1](torch.randn(3, 5, 10), torch.zeros(2, 3, 20)),
        lambda m: m[2](10, 20)(torch.randn(3, 11)),
        lambda m: m[3](10, 20)(torch.randn(2, 3, 10)),
        lambda m: m[3](10, 20)(torch.randn(3, 10), torch.randn(3, 21)),
        lambda m: m[4](10, 20)(torch.randn(3, 10), torch.randn(4, 20)),
    ],
)
def test_forward_errors_are_torchs_types(call: Any) -> None:
    """A bad input raises an exception of the type torch.nn raises for it (rnnkit.InputError is
    both ValueError and RuntimeError, rnnkit.InputTypeError both TypeError and ValueError), so
    code that catches torch's exceptions catches rnnkit's."""
    with pytest.raises(Exception) as theirs:
        call((T_LSTM, T_GRU_BF, torch.nn.LSTMCell, torch.nn.GRUCell, torch.nn.RNNCell))
    with pytest.raises(type(theirs.value)):
        call((LSTM, GRU_BF, rnnkit.LSTMCell, rnnkit.GRUCell, rnnkit.RNNCell))


def test_from_torch_and_to_torch_errors() -> None:
    with pytest.raises(TypeError, match=r"from_torch: expected a torch.nn RNN, LSTM, GRU, RNNCell, LSTMCell or GRUCell, got Linear"):
        rnnkit.from_torch(torch.nn.Linear(2, 3))
    with pytest.raises(ValueError, match=r"LSTM.to_torch: torch.nn.LSTM has no equivalent of layer_norm=True, learn_initial_state=True"):
        rnnkit.LSTM(3, 4, layer_norm=True, learn_initial_state=True).to_torch()
    with pytest.raises(ValueError, match=r"GRUCell.to_torch: torch.nn.GRUCell has no equivalent of layer_norm=True"):
        rnnkit.GRUCell(3, 4, layer_norm=True).to_torch()
    with pytest.warns(UserWarning, match=r"GRU.to_torch: torch.nn.GRU has no recurrent_dropout=0.2, zoneout=0.1"):
        rnnkit.GRU(3, 4, recurrent_dropout=0.2, zoneout=0.1).to_torch()
