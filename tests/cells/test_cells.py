"""Cells: parity with torch.nn's cells, one step rebuilt by hand from the equations, and a
layer equal to a loop over its own cell."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import Tensor, nn

import rnnkit
from tests.helpers import assert_close, assert_grads_match, weighted_sum

CELLS = {
    "rnn_tanh": (lambda *a, **k: nn.RNNCell(*a, nonlinearity="tanh", **k),
                 lambda *a, **k: rnnkit.RNNCell(*a, nonlinearity="tanh", **k)),
    "rnn_relu": (lambda *a, **k: nn.RNNCell(*a, nonlinearity="relu", **k),
                 lambda *a, **k: rnnkit.RNNCell(*a, nonlinearity="relu", **k)),
    "lstm": (nn.LSTMCell, rnnkit.LSTMCell),
    "gru": (nn.GRUCell, rnnkit.GRUCell),
}


@pytest.mark.parametrize(
    "family, batched, with_hx, bias, dtype",
    list(itertools.product(CELLS, [True, False], [True, False], [True, False], [torch.float32, torch.float64])),
)
def test_cell_matches_torch(family: str, batched: bool, with_hx: bool, bias: bool, dtype: torch.dtype) -> None:
    torch.manual_seed(3)
    make_theirs, make_ours = CELLS[family]
    theirs = make_theirs(4, 6, bias=bias, dtype=dtype)
    ours = make_ours(4, 6, bias=bias, dtype=dtype)
    ours.load_state_dict(theirs.state_dict())
    lead = (5,) if batched else ()
    x = torch.randn(*lead, 4, dtype=dtype, requires_grad=True)
    hx = None
    if with_hx:
        hx = torch.randn(*lead, 6, dtype=dtype, requires_grad=True)
        if family == "lstm":
            hx = (hx, torch.randn(*lead, 6, dtype=dtype, requires_grad=True))
    out_t, out_o = theirs(x, hx), ours(x, hx)
    outs_t = list(out_t) if isinstance(out_t, tuple) else [out_t]
    outs_o = list(out_o) if isinstance(out_o, tuple) else [out_o]
    for a, b in zip(outs_o, outs_t):
        assert a.shape == b.shape
        assert_close(a, b, "cell output")
    weighted_sum(outs_t).backward()
    gx_t = x.grad.clone()
    x.grad = None
    weighted_sum(outs_o).backward()
    assert_close(x.grad, gx_t, "grad of x")
    assert_grads_match(ours, theirs)


@pytest.mark.parametrize("family", CELLS)
def test_same_default_initialisation_as_torch(family: str) -> None:
    make_theirs, make_ours = CELLS[family]
    torch.manual_seed(11)
    theirs = make_theirs(3, 7)
    torch.manual_seed(11)
    ours = make_ours(3, 7)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    for (name, a), b in zip(ours.state_dict().items(), theirs.state_dict().values()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("layer", [nn.RNN, nn.LSTM, nn.GRU])
def test_same_default_initialisation_as_torch_layers(layer: type[nn.Module]) -> None:
    torch.manual_seed(5)
    theirs = layer(3, 7, 2, bidirectional=True)
    torch.manual_seed(5)
    ours = getattr(rnnkit, layer.__name__)(3, 7, 2, bidirectional=True)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    for (name, a), b in zip(ours.state_dict().items(), theirs.state_dict().values()):
        assert torch.equal(a, b), name


# -- one step by hand ----------------------------------------------------------------------------
def sigmoid(v: Tensor) -> Tensor:
    return 1.0 / (1.0 + torch.exp(-v))


def layer_norm(v: Tensor, gain: Tensor, shift: Tensor | float = 0.0, eps: float = 1e-5) -> Tensor:
    mean = v.mean(-1, keepdim=True)
    var = ((v - mean) ** 2).mean(-1, keepdim=True)  # biased variance, as Ba et al.
    return gain * (v - mean) / torch.sqrt(var + eps) + shift


def gate(w: Tensor, k: int, h: int) -> Tensor:
    return w[k * h : (k + 1) * h]


@pytest.mark.parametrize("layer_norm_on", [False, True])
def test_lstm_step_by_hand(layer_norm_on: bool) -> None:
    torch.manual_seed(0)
    cell = rnnkit.LSTMCell(3, 4, dtype=torch.float64, layer_norm=layer_norm_on)
    if layer_norm_on:
        with torch.no_grad():  # gains and shift away from their initial 1 and 0
            for p in (cell.ln_weight_ih, cell.ln_weight_hh, cell.ln_weight_c, cell.ln_bias_c):
                p.uniform_(0.5, 1.5)
    x, h, c = (torch.randn(2, n, dtype=torch.float64) for n in (3, 4, 4))
    W, U, b, bh, H = cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh, 4
    wx, uh = x @ W.T, h @ U.T
    if layer_norm_on:
        wx, uh = layer_norm(wx, cell.ln_weight_ih), layer_norm(uh, cell.ln_weight_hh)
    pre = wx + uh + b + bh
    i, f, g, o = (pre[:, k * H : (k + 1) * H] for k in range(4))
    c_new = sigmoid(f) * c + sigmoid(i) * torch.tanh(g)
    c_out = layer_norm(c_new, cell.ln_weight_c, cell.ln_bias_c) if layer_norm_on else c_new
    h_new = sigmoid(o) * torch.tanh(c_out)
    h_got, c_got = cell(x, (h, c))
    assert_close(h_got, h_new, "h")
    assert_close(c_got, c_new, "c")


@pytest.mark.parametrize("layer_norm_on", [False, True])
def test_gru_step_by_hand(layer_norm_on: bool) -> None:
    torch.manual_seed(1)
    cell = rnnkit.GRUCell(3, 4, dtype=torch.float64, layer_norm=layer_norm_on)
    x, h = torch.randn(2, 3, dtype=torch.float64), torch.randn(2, 4, dtype=torch.float64)
    H = 4
    W, U = cell.weight_ih, cell.weight_hh
    if layer_norm_on:
        with torch.no_grad():
            cell.ln_weight_ih.uniform_(0.5, 1.5)
            cell.ln_weight_hh.uniform_(0.5, 1.5)
        gi = layer_norm(x @ W.T, cell.ln_weight_ih, cell.bias_ih)
        gh = layer_norm(h @ U.T, cell.ln_weight_hh, cell.bias_hh)
    else:
        gi, gh = x @ W.T + cell.bias_ih, h @ U.T + cell.bias_hh
    r = sigmoid(gi[:, :H] + gh[:, :H])
    z = sigmoid(gi[:, H : 2 * H] + gh[:, H : 2 * H])
    n = torch.tanh(gi[:, 2 * H :] + r * gh[:, 2 * H :])  # reset gate on W_hn h + b_hn
    assert_close(cell(x, h), (1 - z) * n + z * h, "h")


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_rnn_step_by_hand(nonlinearity: str) -> None:
    torch.manual_seed(2)
    cell = rnnkit.RNNCell(3, 4, nonlinearity=nonlinearity, dtype=torch.float64)
    x, h = torch.randn(2, 3, dtype=torch.float64), torch.randn(2, 4, dtype=torch.float64)
    pre = x @ cell.weight_ih.T + cell.bias_ih + h @ cell.weight_hh.T + cell.bias_hh
    expected = torch.tanh(pre) if nonlinearity == "tanh" else pre.clamp(min=0)
    assert_close(cell(x, h), expected, "h")


def test_lstm_with_projection_step_matches_torch_layer() -> None:
    """One step of a projected LSTM layer: h' = W_hr (sigmoid(o) * tanh(c'))."""
    torch.manual_seed(4)
    layer = nn.LSTM(3, 5, proj_size=2, dtype=torch.float64)
    x = torch.randn(1, 4, 3, dtype=torch.float64)
    h0, c0 = torch.randn(1, 4, 2, dtype=torch.float64), torch.randn(1, 4, 5, dtype=torch.float64)
    _, (h1, c1) = layer(x, (h0, c0))
    w = rnnkit.cells.CellWeights(layer.weight_ih_l0, layer.weight_hh_l0, layer.bias_ih_l0,
                                 layer.bias_hh_l0, layer.weight_hr_l0)
    h, c = rnnkit.cells.lstm_step(x[0], (h0[0], c0[0]), w)
    assert_close(h, h1[0], "h")
    assert_close(c, c1[0], "c")


# -- a layer is a loop over its own cell ---------------------------------------------------------
@pytest.mark.parametrize("family", ["RNN", "LSTM", "GRU"])
@pytest.mark.parametrize("layer_norm_on", [False, True])
def test_layer_equals_loop_over_its_cell(family: str, layer_norm_on: bool) -> None:
    torch.manual_seed(9)
    layer = getattr(rnnkit, family)(3, 5, layer_norm=layer_norm_on, dtype=torch.float64)
    cell = getattr(rnnkit, family + "Cell")(3, 5, layer_norm=layer_norm_on, dtype=torch.float64)
    cell.load_state_dict({name.removesuffix("_l0"): p for name, p in layer.state_dict().items()})
    x = torch.randn(6, 2, 3, dtype=torch.float64)
    out, hidden = layer(x)
    state = None
    steps = []
    for t in range(6):
        state = cell(x[t], state)
        steps.append(state[0] if isinstance(state, tuple) else state)
    assert_close(out, torch.stack(steps), "outputs")
    final = hidden if isinstance(hidden, tuple) else (hidden,)
    mine = state if isinstance(state, tuple) else (state,)
    for a, b in zip(final, mine):
        assert_close(a[0], b, "final state")
