"""Gradient flow against a direct autograd computation; the verdict on constructed vanishing and
exploding cases; Jacobian norms against a closed form; hidden-state statistics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import rnnkit
from rnnkit.diagnostics import gradient_flow, hidden_stats, jacobian_norms, spectral_radii, verdict


def readout_loss(out: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """A loss on the last output and, more weakly, on every output."""
    return (out[-1] * w).sum() + 0.1 * (out * w).sum()


@pytest.mark.parametrize("cls", [rnnkit.RNN, rnnkit.LSTM, rnnkit.GRU, rnnkit.MinGRU, rnnkit.MinLSTM])
@pytest.mark.parametrize("engine", ["reference", "fused"])
def test_gradient_flow_equals_direct_autograd(cls, engine: str) -> None:  # type: ignore[no-untyped-def]
    """dL/dh_t by cutting the sequence at t: h_t becomes a leaf, the prefix's outputs are
    constants, the rest runs on from h_t."""
    torch.manual_seed(0)
    layer = cls(3, 5, engine=engine).double()
    x = torch.randn(9, 2, 3, dtype=torch.float64)
    w = torch.randn(5, dtype=torch.float64)
    flow = gradient_flow(layer, x, lambda m, b: readout_loss(m(b)[0], w))
    direct = []
    for t in range(9):
        with torch.no_grad():
            prefix, state = layer(x[: t + 1])
        h = state[0].clone().requires_grad_(True) if isinstance(state, tuple) else state.clone().requires_grad_(True)
        hx = (h, state[1]) if isinstance(state, tuple) else h
        rest = layer(x[t + 1 :], hx)[0] if t < 8 else x.new_zeros(0, 2, 5)
        out = torch.cat([prefix[:t], h, rest])  # out[t] is h_t itself
        (g,) = torch.autograd.grad(readout_loss(out, w), [h])
        direct.append(float(g.norm()))
    assert list(flow.norms) == [f"{cls.__name__}.l0"]
    np.testing.assert_allclose(flow.norms[f"{cls.__name__}.l0"], direct, rtol=1e-10)
    assert all(p.grad is None for p in layer.parameters())  # parameters' gradients untouched


def test_gradient_flow_of_a_stack_both_ways_with_lengths() -> None:
    torch.manual_seed(1)
    layer = rnnkit.LSTM(3, 4, num_layers=2, bidirectional=True, batch_first=True).double()
    x = torch.randn(3, 7, 3, dtype=torch.float64)
    lengths = torch.tensor([7, 4, 2])
    flow = gradient_flow(layer, (x, lengths), lambda m, b: m(b[0], lengths=b[1])[0].sum())
    assert set(flow.norms) == {"LSTM.l0", "LSTM.l0_reverse", "LSTM.l1", "LSTM.l1_reverse"}
    # the reverse direction of the top layer: dL/dh_t = 1 per unit of each valid sequence at step
    # t through the output, plus the recurrent path; at the last step of the longest sequence, only
    # the output path: a vector of ones over 4 units of 1 sequence
    top = flow.norms["LSTM.l1_reverse"]
    assert top.shape == (7,)
    assert flow.norms["LSTM.l1"][-1] == pytest.approx(2.0)  # forward, step 6: sequence 0 alone, ones(4)
    assert np.all(top > 0)


def rnn_with(w_hh: torch.Tensor, nonlinearity: str = "tanh") -> rnnkit.RNN:
    layer = rnnkit.RNN(1, w_hh.shape[0], nonlinearity=nonlinearity).double()
    with torch.no_grad():
        layer.weight_hh_l0.copy_(w_hh)
        layer.weight_ih_l0.fill_(0.5)
        layer.bias_ih_l0.fill_(0.1)
        layer.bias_hh_l0.zero_()
    return layer


def test_verdict_vanishing_exploding_healthy() -> None:
    torch.manual_seed(0)
    x = torch.rand(100, 4, 1, dtype=torch.float64)
    last = lambda m, b: m(b)[0][-1].sum()  # noqa: E731  # a loss at the end of the sequence
    small = rnn_with(0.1 * torch.linalg.qr(torch.randn(8, 8, dtype=torch.float64))[0])
    v = verdict(gradient_flow(small, x, last))
    assert v.verdict == "vanishing" and v.ratio < 1e-3 and "below 0.001" in v.reason
    large = rnn_with(1.2 * torch.eye(8, dtype=torch.float64), "relu")  # positive states: 1.2^99 growth
    v = verdict(gradient_flow(large, x, last))
    assert v.verdict == "exploding" and v.ratio > 1e3
    identity = rnn_with(torch.eye(8, dtype=torch.float64), "relu")  # the IRNN: the gradient carried intact
    v = verdict(gradient_flow(identity, x, last))
    assert v.verdict == "healthy" and v.ratio == pytest.approx(1.0)
    nan = rnn_with(torch.full((8, 8), float("nan"), dtype=torch.float64))
    assert verdict(gradient_flow(nan, x, last)).verdict == "nan"


def test_jacobian_norms_closed_form() -> None:
    """relu RNN with W_hh = 0.5 I and positive pre-activations: dh_T/dh_k = 0.5^(T-1-k) I."""
    layer = rnn_with(0.5 * torch.eye(4, dtype=torch.float64), "relu")
    x = torch.rand(6, 3, 1, dtype=torch.float64)
    norms = jacobian_norms(layer, x)
    np.testing.assert_allclose(norms, 0.5 ** np.arange(5, -1, -1), rtol=1e-12)
    assert spectral_radii(layer) == {"weight_hh_l0": [pytest.approx(0.5)]}
    gru = rnnkit.GRU(2, 3, init="identity")
    assert spectral_radii(gru)["weight_hh_l0"] == [pytest.approx(1.0)] * 3
    with pytest.raises(ValueError, match="num_layers=1 and bidirectional=False, got num_layers=2"):
        jacobian_norms(rnnkit.GRU(2, 3, num_layers=2), torch.randn(4, 1, 2))


def test_jacobian_norms_of_a_minimal_cell_are_its_decays_multiplied() -> None:
    """minGRU: h_t = (1 - z_t) * h_{t-1} + z_t * h~_t, so dh_T/dh_k = diag(prod_{s>k} (1 - z_s)):
    its spectral norm is the largest of those products over the units. No W_hh: no radii."""
    torch.manual_seed(0)
    layer = rnnkit.MinGRU(2, 3, init="chrono", chrono_max=20.0).double()
    x = torch.randn(6, 4, 2, dtype=torch.float64)
    with torch.no_grad():  # a_t = 1 - z_t, (T, B, H)
        keep = 1 - torch.sigmoid(torch.nn.functional.linear(x, layer.weight_ih_l0, layer.bias_ih_l0)[..., :3])
    after = torch.cat([keep.flip(0).cumprod(0).flip(0)[1:], torch.ones(1, 4, 3, dtype=torch.float64)])  # prod_{s>k}
    np.testing.assert_allclose(jacobian_norms(layer, x), after.amax(dim=2).mean(dim=1).numpy(), rtol=1e-12)
    assert spectral_radii(layer) == {}


@pytest.mark.parametrize("cls", [rnnkit.MinGRU, rnnkit.MinLSTM])
def test_hidden_stats_of_a_minimal_cell(cls) -> None:  # type: ignore[no-untyped-def]
    """h_norm is the output's; kept is the mean share of the state each step keeps (a_t); a gate
    pinned shut by its bias counts as saturated, in its own layer and direction alone."""
    from rnnkit.cells._min import coefficients

    torch.manual_seed(0)
    layer = cls(2, 4, num_layers=2, bidirectional=True)
    with torch.no_grad():
        layer.bias_ih_l1[:4] = -30.0  # the top layer's z (minGRU) or f (minLSTM): below 0.01 everywhere
    x = torch.randn(5, 3, 2)
    stats = hidden_stats(layer, x).stats
    assert sorted(stats) == [f"{cls.__name__}.l{k}{d}" for k in (0, 1) for d in ("", "_reverse")]
    out, _ = layer(x)
    top = out[..., :4].detach()  # the top layer's forward direction
    np.testing.assert_allclose(stats[f"{cls.__name__}.l1"]["h_norm"], top.norm(dim=-1).mean(dim=1).numpy(), rtol=1e-5)
    pre = torch.nn.functional.linear(x, layer.weight_ih_l0, layer.bias_ih_l0).detach()
    log_a, _ = coefficients(pre, layer.kind, "g")
    np.testing.assert_allclose(stats[f"{cls.__name__}.l0"]["kept"], log_a.exp().flatten(1).mean(dim=1).numpy(),
                               rtol=1e-5)
    share = 1.0 if cls is rnnkit.MinGRU else 0.5  # minGRU: z, its only gate; minLSTM: f of (f, i)
    assert all(s >= share for s in stats[f"{cls.__name__}.l1"]["gates_saturated"])
    assert max(stats[f"{cls.__name__}.l1_reverse"]["gates_saturated"]) < share  # the reverse direction's biases untouched
    assert set(stats[f"{cls.__name__}.l1"]) == {"h_norm", "gates_saturated", "kept"}


def test_hidden_stats() -> None:
    torch.manual_seed(0)
    lstm = rnnkit.LSTM(2, 6, forget_bias=20.0)  # the forget gate is pinned open: 1/3 of gate units saturated
    x = torch.randn(5, 3, 2)
    stats = hidden_stats(lstm, x).stats["LSTM.l0"]
    out, _ = lstm(x)
    np.testing.assert_allclose(stats["h_norm"], out.norm(dim=-1).mean(dim=1).detach().numpy(), rtol=1e-5)
    assert all(1 / 3 <= s <= 1 for s in stats["gates_saturated"])
    assert set(stats) == {"h_norm", "saturated", "gates_saturated", "c_norm"}
    rnn = rnn_with(torch.eye(4, dtype=torch.float64) * 50)  # tanh driven hard: saturates after a step
    stats = hidden_stats(rnn, torch.rand(5, 2, 1, dtype=torch.float64), lambda m, b: m(b)).stats["RNN.l0"]
    assert stats["saturated"][-1] == 1.0 and "gates_saturated" not in stats


def test_hidden_trace_is_the_layers_output_of_one_example() -> None:
    """hidden_trace gives one example's h_t in time order up to its length: the layer's own
    output for that example, both directions, layer by layer."""
    from rnnkit.diagnostics import hidden_trace

    torch.manual_seed(0)
    model = rnnkit.GRU(3, 5, num_layers=2, bidirectional=True)
    x, lengths = torch.randn(6, 3, 3), torch.tensor([6, 4, 2])
    out, _ = model(x, lengths=lengths)  # (T, B, 2H)
    trace = hidden_trace(model, (x,), lambda m, b: m(b[0], lengths=lengths), example=1)
    assert sorted(trace) == ["GRU.l0", "GRU.l0_reverse", "GRU.l1", "GRU.l1_reverse"]
    torch.testing.assert_close(torch.from_numpy(trace["GRU.l1"]), out[:4, 1, :5].double())
    torch.testing.assert_close(torch.from_numpy(trace["GRU.l1_reverse"]), out[:4, 1, 5:].double())


def test_a_relu_rnn_has_no_tanh_saturation_and_a_flat_verdict_names_one_number() -> None:
    """The IRNN (a relu RNN, W_hh = I) has no tanh to saturate: no such entry (the plot leaves it
    out of the tanh panel). Its verdict, with one layer, names its one ratio, not a range."""
    irnn = rnnkit.RNN(1, 4, nonlinearity="relu", init="identity")
    x = torch.rand(6, 2, 1)
    assert set(hidden_stats(irnn, x).stats["RNN.l0"]) == {"h_norm"}
    v = verdict(gradient_flow(irnn, x, lambda m, b: m(b)[0][-1].sum()))
    assert v.verdict == "healthy" and "between" not in v.reason
    assert v.reason.startswith(f"earliest/latest gradient norm {v.ratio:.2g}, within")
