"""rnnkit's own layer options do what their papers say: layer_norm, recurrent_dropout,
zoneout, forget_bias, learn_initial_state, init, and torch.nn's dropout between layers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import rnnkit
from tests.helpers import assert_close


def relu_rnn(hidden: int, *, input_size: int | None = None, **options: object) -> rnnkit.RNN:
    layer = rnnkit.RNN(input_size or hidden, hidden, nonlinearity="relu", dtype=torch.float64, **options)
    with torch.no_grad():
        layer.bias_ih_l0.zero_()
        layer.bias_hh_l0.zero_()
    return layer


def test_recurrent_dropout_draws_one_mask_per_sequence() -> None:
    """relu RNN with W_ih = 0 and W_hh = I: h_t = relu(h_{t-1} * m), so with one mask m per
    sequence each unit is 0 from step 1 on or (1/(1-p))^t; a mask per step would mix them."""
    torch.manual_seed(0)
    p, steps = 0.5, 6
    layer = relu_rnn(8, recurrent_dropout=p)
    with torch.no_grad():
        layer.weight_ih_l0.zero_()
        layer.weight_hh_l0.copy_(torch.eye(8))
    x = torch.zeros(steps, 64, 8, dtype=torch.float64)
    h0 = torch.ones(1, 64, 8, dtype=torch.float64)
    out, _ = layer(x, h0)  # (T, B, H)
    scale = (1 / (1 - p)) ** torch.arange(1, steps + 1, dtype=torch.float64)  # (T,)
    dropped = (out == 0).all(dim=0)  # (B, H)
    kept = (out == scale[:, None, None]).all(dim=0)
    assert bool((dropped ^ kept).all()), "a unit changed its mask between steps"
    assert 0.4 < dropped.double().mean().item() < 0.6
    layer.eval()  # the identity at eval
    assert torch.equal(layer(x, h0)[0], torch.ones_like(out))


def test_zoneout_keeps_units_with_a_fresh_mask_each_step() -> None:
    """relu RNN with W_hh = 0, W_ih = I and x_t = t + 1: the candidate state is t + 1, so each
    unit either takes it or keeps its previous value; which, is drawn anew at every step."""
    torch.manual_seed(1)
    p, steps, hidden = 0.5, 6, 8
    layer = relu_rnn(hidden, zoneout=p)
    with torch.no_grad():
        layer.weight_hh_l0.zero_()
        layer.weight_ih_l0.copy_(torch.eye(hidden))
    candidate = torch.arange(1, steps + 1, dtype=torch.float64)[:, None, None]  # (T, 1, 1)
    x = candidate.expand(steps, 64, hidden).clone()
    out, h_n = layer(x)
    previous = torch.cat([torch.zeros(1, 64, hidden, dtype=torch.float64), out[:-1]])
    updated = out == candidate
    assert bool((updated | (out == previous)).all()), "a unit took a value that is neither"
    assert 0.4 < updated.double().mean().item() < 0.6
    constant_pattern = (updated == updated[:1]).all(dim=0).double().mean().item()
    assert constant_pattern < 0.2, "the zoneout mask does not change from step to step"
    assert_close(h_n[0], out[-1], "h_n")
    layer.eval()  # the identity at eval
    assert torch.equal(layer(x)[0], candidate.expand_as(out))


def test_zoneout_one_freezes_the_state_and_zero_changes_nothing() -> None:
    torch.manual_seed(2)
    x = torch.randn(5, 3, 4, dtype=torch.float64)
    h0 = torch.randn(1, 3, 6, dtype=torch.float64)
    c0 = torch.randn(1, 3, 6, dtype=torch.float64)
    frozen = rnnkit.LSTM(4, 6, zoneout=1.0, dtype=torch.float64)
    out, (h_n, c_n) = frozen(x, (h0, c0))
    assert torch.equal(h_n, h0) and torch.equal(c_n, c0)
    assert torch.equal(out, h0.expand_as(out))
    plain = rnnkit.LSTM(4, 6, dtype=torch.float64)
    zero = rnnkit.LSTM(4, 6, zoneout=0.0, recurrent_dropout=0.0, dtype=torch.float64)
    zero.load_state_dict(plain.state_dict())
    assert torch.equal(zero(x)[0], plain(x)[0])


def test_zoneout_on_lstm_keeps_the_cell_state_too() -> None:
    """With W_hh = 0 and a constant input the candidate c' = f*c + i*g; a zoned-out unit of c
    keeps its previous value exactly, at rate p."""
    torch.manual_seed(3)
    layer = rnnkit.LSTM(2, 16, zoneout=0.5, dtype=torch.float64)
    x = torch.randn(8, 32, 2, dtype=torch.float64)
    _, (_, c_all) = layer(x)
    # compare each step's c with the previous one through a loop over single steps
    c = torch.zeros(1, 32, 16, dtype=torch.float64)
    h = torch.zeros(1, 32, 16, dtype=torch.float64)
    torch.manual_seed(4)
    kept = []
    for t in range(8):
        _, (h_new, c_new) = layer(x[t : t + 1], (h, c))
        kept.append((c_new == c).double().mean().item())
        h, c = h_new, c_new
    assert 0.35 < sum(kept) / len(kept) < 0.65


def test_dropout_acts_between_layers_only() -> None:
    torch.manual_seed(5)
    layer = rnnkit.GRU(3, 4, num_layers=2, dropout=0.5, dtype=torch.float64)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    first, second = (rnnkit.GRU(k, 4, dtype=torch.float64) for k in (3, 4))
    first.load_state_dict({k.replace("_l0", "_l0"): v for k, v in layer.state_dict().items() if k.endswith("_l0")})
    second.load_state_dict({k.replace("_l1", "_l0"): v for k, v in layer.state_dict().items() if k.endswith("_l1")})
    torch.manual_seed(6)
    out, _ = layer(x)
    torch.manual_seed(6)
    expected, _ = second(F.dropout(first(x)[0], 0.5, training=True))
    assert_close(out, expected, "output")
    layer.eval()
    assert_close(layer(x)[0], second(first(x)[0])[0], "eval output")


def test_forget_bias_sets_the_forget_gate_slice() -> None:
    layer = rnnkit.LSTM(3, 4, num_layers=2, bidirectional=True, forget_bias=1.0)
    for name, p in layer.named_parameters():
        if name.startswith("bias_ih"):
            assert torch.equal(p[4:8], torch.ones(4)), name
        if name.startswith("bias_hh"):
            assert torch.equal(p[4:8], torch.zeros(4)), name
    assert not torch.equal(layer.bias_ih_l0[:4], torch.ones(4))  # other gates keep torch's init


@pytest.mark.parametrize("family", ["RNN", "LSTM", "GRU"])
def test_learned_initial_state_is_used_and_trained(family: str) -> None:
    torch.manual_seed(7)
    layer = getattr(rnnkit, family)(3, 4, num_layers=2, learn_initial_state=True, dtype=torch.float64)
    learned = [layer.initial_h] + ([layer.initial_c] if family == "LSTM" else [])
    assert hasattr(layer, "initial_c") == (family == "LSTM")
    for p in learned:
        assert p.shape == (2, 4) and torch.equal(p, torch.zeros(2, 4, dtype=torch.float64))
        with torch.no_grad():
            p.normal_()
    x = torch.randn(5, 3, 3, dtype=torch.float64)
    given = tuple(p[:, None].expand(2, 3, 4) for p in learned)
    assert_close(layer(x)[0], layer(x, given if family == "LSTM" else given[0])[0], "output")
    layer(x)[0].sum().backward()
    for p in learned:
        assert p.grad is not None and p.grad.abs().sum() > 0


@pytest.mark.parametrize("family", ["RNN", "LSTM", "GRU"])
def test_orthogonal_and_identity_init(family: str) -> None:
    gates = {"RNN": 1, "LSTM": 4, "GRU": 3}[family]
    ortho = getattr(rnnkit, family)(3, 5, init="orthogonal", dtype=torch.float64)
    for block in ortho.weight_hh_l0.detach().view(gates, 5, 5):
        assert_close(block @ block.T, torch.eye(5, dtype=torch.float64), "W W^T")
    ident = getattr(rnnkit, family)(3, 5, init="identity", dtype=torch.float64)
    for block in ident.weight_hh_l0.detach().view(gates, 5, 5):
        assert torch.equal(block, torch.eye(5, dtype=torch.float64))
    assert torch.equal(ident.bias_ih_l0, torch.zeros_like(ident.bias_ih_l0))


def test_orthogonal_init_with_projection_is_semi_orthogonal() -> None:
    layer = rnnkit.LSTM(3, 6, proj_size=2, init="orthogonal", dtype=torch.float64)
    for block in layer.weight_hh_l0.detach().view(4, 6, 2):  # (H, R) blocks: orthonormal columns
        assert_close(block.T @ block, torch.eye(2, dtype=torch.float64), "W^T W")


@pytest.mark.parametrize("family", ["RNN", "LSTM", "GRU"])
def test_layer_norm_parameters_and_names(family: str) -> None:
    layer = getattr(rnnkit, family)(3, 5, bidirectional=True, layer_norm=True)
    gates = {"RNN": 1, "LSTM": 4, "GRU": 3}[family]
    names = dict(layer.named_parameters())
    for suffix in ("_l0", "_l0_reverse"):
        assert names["ln_weight_ih" + suffix].shape == (gates * 5,)
        assert names["ln_weight_hh" + suffix].shape == (gates * 5,)
        assert torch.equal(names["ln_weight_ih" + suffix], torch.ones(gates * 5))
        assert ("ln_weight_c" + suffix in names) == (family == "LSTM")


def test_layer_norm_makes_the_layer_invariant_to_input_scale() -> None:
    """LN(W_ih (a x)) = LN(W_ih x) up to LN's eps: a layer-normalised RNN all but ignores the
    scale of its input, while a plain one does not."""
    torch.manual_seed(8)
    layer = rnnkit.GRU(4, 6, layer_norm=True, dtype=torch.float64)
    x = torch.randn(5, 3, 4, dtype=torch.float64)
    assert (layer(x * 7.0)[0] - layer(x)[0]).abs().max() < 1e-3
    plain = rnnkit.GRU(4, 6, dtype=torch.float64)
    assert (plain(x * 7.0)[0] - plain(x)[0]).abs().max() > 0.1


def test_lengths_equal_running_each_sequence_alone() -> None:
    """Padding never changes a result: each sequence of a padded batch gives what it gives alone."""
    torch.manual_seed(9)
    layer = rnnkit.LSTM(3, 4, num_layers=2, bidirectional=True, batch_first=True, dtype=torch.float64)
    lengths = [5, 2, 4]
    x = torch.randn(3, 5, 3, dtype=torch.float64)
    x_padded = x.clone()
    for b, n in enumerate(lengths):
        x_padded[b, n:] = 1e3  # garbage in the padding must not leak
    out, (h_n, c_n) = layer(x_padded, lengths=torch.tensor(lengths))
    for b, n in enumerate(lengths):
        alone, (h_b, c_b) = layer(x[b : b + 1, :n])
        assert_close(out[b, :n], alone[0], f"output of sequence {b}")
        assert torch.equal(out[b, n:], torch.zeros_like(out[b, n:]))
        assert_close(h_n[:, b], h_b[:, 0], f"h_n of sequence {b}")
        assert_close(c_n[:, b], c_b[:, 0], f"c_n of sequence {b}")


@pytest.mark.parametrize("cls", [rnnkit.LSTM, rnnkit.GRU, rnnkit.LSTMCell, rnnkit.GRUCell])
def test_chrono_init_follows_the_paper(cls: type) -> None:
    """Tallec & Ollivier 2018: the forget (LSTM) or update (GRU, torch's h' = (1 - z) n + z h)
    gate's bias b = log(u), u ~ U(1, T_max - 1), per unit; the LSTM's input gate -b; the hidden
    side's slices 0; the first cell's other numbers as the default init draws them under the
    same seed."""
    H, t_max = 2000, 50
    lstm = cls in (rnnkit.LSTM, rnnkit.LSTMCell)
    layer = cls is rnnkit.LSTM or cls is rnnkit.GRU
    options = {"num_layers": 2, "bidirectional": True} if layer else {}
    torch.manual_seed(0)
    chrono = cls(3, H, init="chrono", chrono_max=t_max, **options)
    torch.manual_seed(0)
    default = cls(3, H, **options)
    suffixes = [f"_l{k}{d}" for k in range(2) for d in ("", "_reverse")] if layer else [""]
    for suffix in suffixes:
        b_ih, b_hh = getattr(chrono, "bias_ih" + suffix).detach(), getattr(chrono, "bias_hh" + suffix).detach()
        u = b_ih[H : 2 * H].exp()  # the forget / update gate's
        assert 1 - 1e-6 <= float(u.min()) and float(u.max()) <= (t_max - 1) * (1 + 1e-6)  # float32's exp(log(u))
        assert abs(float(u.mean()) - t_max / 2) < 1.0  # the mean of U(1, 49), 25; its std over 2000 units is 0.3
        assert abs(float((u < t_max / 2).double().mean()) - 0.5) < 0.05  # half below the middle: uniform
        assert torch.equal(b_hh[H : 2 * H], torch.zeros(H))
        if lstm:
            assert torch.equal(b_ih[:H], -b_ih[H : 2 * H]) and torch.equal(b_hh[:H], torch.zeros(H))
        if suffix == suffixes[0]:  # the first cell's draws precede the first chrono draw
            kept = slice(2 * H, None) if lstm else slice(0, H)  # g, o (LSTM); r (GRU): untouched
            assert torch.equal(b_ih[kept], getattr(default, "bias_ih" + suffix)[kept])
            for name in ("weight_ih", "weight_hh"):
                assert torch.equal(getattr(chrono, name + suffix), getattr(default, name + suffix))
    before = chrono.state_dict()["bias_ih" + suffixes[0]].clone()
    chrono.reset_parameters()  # draws again, by the same rule
    after = getattr(chrono, "bias_ih" + suffixes[0]).detach()[H : 2 * H].exp()
    assert not torch.equal(before, getattr(chrono, "bias_ih" + suffixes[0])) and 1 - 1e-6 <= float(after.min())
    assert f"init='chrono', chrono_max={float(t_max)}" in repr(chrono)


def test_chrono_init_refusals() -> None:
    with pytest.raises(ValueError, match="a vanilla RNN has no gates"):
        rnnkit.RNN(3, 4, init="chrono")
    with pytest.raises(ValueError, match="needs chrono_max"):
        rnnkit.LSTM(3, 4, init="chrono")
    with pytest.raises(ValueError, match="needs chrono_max.*got 2"):
        rnnkit.GRUCell(3, 4, init="chrono", chrono_max=2)
    with pytest.raises(ValueError, match="chrono_max=5 is for init='chrono'"):
        rnnkit.GRU(3, 4, chrono_max=5)
    with pytest.raises(ValueError, match="needs bias=True"):
        rnnkit.LSTM(3, 4, bias=False, init="chrono", chrono_max=10)
