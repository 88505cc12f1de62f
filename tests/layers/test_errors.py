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
        (lambda: rnnkit.LSTM(10, 20, proj_size=20), ValueError, r"LSTM: proj_size has to be smaller than hidden_size \(20\), got 20"),
        (lambda: rnnkit.LSTM(10, 20, proj_size=-1), ValueError, r"LSTM: proj_size should be a positive integer or zero to disable projections, got -1"),
        (lambda: rnnkit.GRU(10, 20, dropout=1.5), ValueError, r"GRU: dropout should be a number in range \[0, 1\] representing the probability of an element being zeroed, got 1.5"),
        (lambda: rnnkit.GRU(10, 20, dropout=-0.1), ValueError, r"GRU: dropout should be a number in range \[0, 1\] .*, got -0.1"),
        (lambda: rnnkit.GRU(10, 20, proj_size=5), ValueError, r"proj_size argument is only supported for LSTM, not RNN or GRU"),
        (lambda: rnnkit.RNN(10, 20, proj_size=0), ValueError, r"proj_size argument is only supported for LSTM, not RNN or GRU"),
        (lambda: rnnkit.GRU(10, 20, dropout="0.5"), TypeError, r"GRU: dropout should be a number in range \[0, 1\] representing the probability of an element being zeroed, got str '0.5'"),
        (lambda: rnnkit.RNN(10, 20, nonlinearity="sigmoid"), ValueError, r"RNN: Unknown nonlinearity 'sigmoid'. Select from 'tanh' or 'relu'."),
        (lambda: rnnkit.RNNCell(10, 20, nonlinearity="gelu"), RuntimeError, r"RNNCell: Unknown nonlinearity: gelu"),
        (lambda: rnnkit.LSTM(10, 0), ValueError, r"LSTM: hidden_size must be greater than zero, got 0"),
        (lambda: rnnkit.LSTM(10.0, 20), TypeError, r"LSTM: input_size should be of type int, got: float \(10.0\)"),
        (lambda: rnnkit.LSTM(10, 20, num_layers=0), ValueError, r"LSTM: num_layers must be greater than zero, got 0"),
        (lambda: rnnkit.LSTM(10, 20, bidirectional=1), TypeError, r"LSTM: bidirectional should be of type bool, got: int \(1\)"),
        (lambda: rnnkit.LSTM(10, 20, recurrent_dropout=1.0), ValueError, r"LSTM: recurrent_dropout should be a number in range \[0, 1\), got 1.0"),
        (lambda: rnnkit.LSTM(10, 20, zoneout=1.5), ValueError, r"LSTM: zoneout should be a number in range \[0, 1\], got 1.5"),
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
         r"LSTM: input.size\(-1\) must be equal to input_size. Expected 10, got 11 \(input of shape \(5, 3, 11\)\)"),
        (lambda: LSTM(torch.randn(5, 3, 10, 1)), ValueError,
         r"LSTM: Expected input to be 2D or 3D, got 4D instead: \(T, B, I\), or \(T, I\) unbatched, got shape \(5, 3, 10, 1\)"),
        (lambda: GRU_BF(torch.randn(10)), ValueError,
         r"GRU: Expected input to be 2D or 3D, got 1D instead: \(B, T, I\)"),
        (lambda: LSTM(torch.zeros(0, 3, 10)), ValueError, r"LSTM: Expected sequence length to be larger than 0 in RNN"),
        (lambda: LSTM(torch.ones(5, 3, 10, dtype=torch.int64)), TypeError,
         r"LSTM: expected input to be a floating-point tensor \(torch.float32\), got torch.int64"),
        (lambda: LSTM(X.double()), TypeError,
         r"LSTM: RNN input dtype \(torch.float64\) does not match weight dtype \(torch.float32\). Convert input: input.to\(torch.float32\), or convert model: model.to\(torch.float64\)"),
        (lambda: LSTM([[1.0]]), TypeError, r"LSTM: expected input to be a Tensor, got list"),
        (lambda: LSTM(X, (torch.zeros(2, 3, 21), torch.zeros(2, 3, 20))), ValueError,
         r"LSTM: Expected hidden\[0\] size \(2, 3, 20\), got \[2, 3, 21\] \(h_0: \(num_layers \* num_directions, batch, hidden_size\)\)"),
        (lambda: LSTM(X, (torch.zeros(2, 3, 20), torch.zeros(1, 3, 20))), ValueError,
         r"LSTM: Expected hidden\[1\] size \(2, 3, 20\), got \[1, 3, 20\]"),
        (lambda: LSTM(X, torch.zeros(2, 3, 20)), TypeError, r"LSTM: expected hx to be a pair \(h_0, c_0\), got Tensor"),
        (lambda: LSTM(X[:, 0], (torch.zeros(2, 1, 20), torch.zeros(2, 1, 20))), ValueError,
         r"LSTM: For unbatched 2-D input, hx and cx should also be 2-D but got \(3-D, 3-D\) tensors"),
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
         r"LSTMCell: input has inconsistent input_size: got 11 expected 10 \(input of shape \(3, 11\)\)"),
        (lambda: rnnkit.GRUCell(10, 20)(torch.randn(2, 3, 10)), ValueError,
         r"GRUCell: Expected input to be 1D or 2D, got 3D instead: \(B, I\), or \(I,\) unbatched, got shape \(2, 3, 10\)"),
        (lambda: rnnkit.GRUCell(10, 20)(torch.randn(3, 10), torch.randn(3, 21)), ValueError,
         r"GRUCell: hidden0 has inconsistent hidden_size: got 21, expected 20 \(h of shape \(3, 21\)\)"),
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


def _torch_error_inputs() -> list[Any]:
    """Every error input that torch's module tests (common_modules.module_db) give its recurrent
    modules and cells, in train and eval mode: (name, training, the ErrorModuleInput)."""
    from torch.testing._internal.common_modules import module_db

    found = []
    for info in module_db:
        name = info.module_cls.__name__
        if info.module_cls.__module__ != "torch.nn.modules.rnn" or info.module_error_inputs_func is None:
            continue
        for training in (True, False):
            for error in info.module_error_inputs_func(info, device="cpu", dtype=torch.float32, requires_grad=False,
                                                       training=training):
                found.append(pytest.param(name, training, error, id=f"{name}-{'train' if training else 'eval'}-"
                                                                   f"{error.error_regex[:50]}"))
    return found


@pytest.mark.parametrize("name, training, error", _torch_error_inputs())
def test_torchs_error_inputs_raise_torchs_type_and_words(name: str, training: bool, error: Any) -> None:
    """The exception type and the message regex that torch's own tests expect, for each error input
    of torch's module tests (rnnkit's message adds its context around torch's words)."""
    given = error.module_error_input
    with pytest.raises(error.error_type, match=error.error_regex):
        module = getattr(rnnkit, name)(*given.constructor_input.args, **given.constructor_input.kwargs)
        module.train(training)
        module(*given.forward_input.args, **given.forward_input.kwargs)


def test_torchs_error_inputs_are_all_here() -> None:
    assert len(_torch_error_inputs()) >= 20  # torch 2.13: 116 over RNN, LSTM, GRU and the three cells
