"""The minimal GRU and LSTM (rnnkit.MinGRU, MinLSTM and their cells): the step is the paper's
equations, every engine (the log-space scan in torch, the fused C++ scan) equals the reference
loop in float64, gradients pass gradcheck (gradients of gradients included), and the layer takes
every input form of torch.nn.GRU."""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import rnnkit
from rnnkit.cells._min import coefficients, g, scan_log, scan_sequential
from rnnkit.engines import _library, _min_op

FUSED = _library.unavailable() is None
needs_library = pytest.mark.skipif(not FUSED, reason="rnnkit's operator library is not built here")
LAYERS = {"mingru": rnnkit.MinGRU, "minlstm": rnnkit.MinLSTM}
CELLS = {"mingru": rnnkit.MinGRUCell, "minlstm": rnnkit.MinLSTMCell}
ENGINES = ["scan"] + (["fused"] if FUSED else [])


def test_cells_are_the_papers_equations() -> None:
    torch.manual_seed(0)
    x, h = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64)
    gru = rnnkit.MinGRUCell(3, 5, dtype=torch.float64)
    k, c = (x @ gru.weight_ih.T + gru.bias_ih).chunk(2, -1)
    z = torch.sigmoid(k)
    tilde = torch.where(c >= 0, c + 0.5, torch.sigmoid(c))  # the paper's g
    torch.testing.assert_close(gru(x, h), (1 - z) * h + z * tilde)
    lstm = rnnkit.MinLSTMCell(3, 5, candidate="linear", dtype=torch.float64)
    kf, ki, c = (x @ lstm.weight_ih.T + lstm.bias_ih).chunk(3, -1)
    f, i = torch.sigmoid(kf), torch.sigmoid(ki)
    torch.testing.assert_close(lstm(x, h), f / (f + i) * h + i / (f + i) * c)
    assert lstm(x[0]).shape == (5,) and gru.weight_ih.shape == (10, 3) and lstm.weight_ih.shape == (15, 3)


def test_g_is_positive_and_continuous() -> None:
    x = torch.linspace(-30, 30, 601, dtype=torch.float64)
    assert bool((g(x) > 0).all())
    assert g(torch.tensor([-1e-12, 0.0], dtype=torch.float64)).tolist() == pytest.approx([0.5, 0.5])


@pytest.mark.parametrize("steps", [1, 7, 3000])
def test_log_space_scan_equals_the_loop_for_values_of_any_sign(steps: int) -> None:
    """Long sequences whose products of a_t underflow (0.5^3000) and b_t, h0 of both signs."""
    torch.manual_seed(0)
    log_a = torch.log(torch.rand(steps, 3, 4, dtype=torch.float64) * 0.5 + 0.25)
    b, h0 = torch.randn(steps, 3, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    torch.testing.assert_close(scan_log(log_a, b, h0), scan_sequential(log_a, b, h0), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(scan_log(log_a, b, None), scan_sequential(log_a, b, None), rtol=1e-9, atol=1e-12)


CONFIGS = [
    dict(num_layers=1, bidirectional=False),
    dict(num_layers=2, bidirectional=True, candidate="linear"),
    dict(num_layers=3, bidirectional=False, batch_first=True, layer_norm=True),
]


def _pair(kind: str, config: dict, engine: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    ref = LAYERS[kind](5, 6, engine="reference", dtype=torch.float64, **config)
    other = LAYERS[kind](5, 6, engine=engine, dtype=torch.float64, **config)
    other.load_state_dict(ref.state_dict())
    return ref, other


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
@pytest.mark.parametrize("kind", LAYERS)
def test_engine_equals_the_reference_loop(kind: str, config: dict, engine: str) -> None:
    """Outputs, final states and the gradients of the input, h_0 and every parameter, with and
    without lengths, in float64."""
    ref, other = _pair(kind, config, engine)
    d = 2 if config.get("bidirectional") else 1
    shape = (3, 9, 5) if config.get("batch_first") else (9, 3, 5)
    for lengths in (None, [9, 4, 1]):
        torch.manual_seed(1)
        x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
        h0 = torch.randn(config["num_layers"] * d, 3, 6, dtype=torch.float64, requires_grad=True)
        results = []
        for layer in (ref, other):
            out, h_n = layer(x, h0, lengths=lengths)
            grads = torch.autograd.grad((out * torch.cos(out)).sum() + (h_n ** 2).sum(), [x, h0, *layer.parameters()])
            results.append((out, h_n, *grads))
        for a, b in zip(*results):
            torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-11)


@needs_library
@pytest.mark.parametrize("candidate", ["g", "linear"])
@pytest.mark.parametrize("kind", LAYERS)
def test_fused_operator_passes_gradcheck(kind: str, candidate: str) -> None:
    torch.manual_seed(0)
    gates = 2 if kind == "mingru" else 3
    pre = torch.randn(6, 3, gates * 4, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([6, 2, 5])
    op = lambda p, h: _min_op.min_scan(p, h, lengths, kind, candidate)  # noqa: E731
    assert torch.autograd.gradcheck(op, (pre, h0))
    assert torch.autograd.gradgradcheck(op, (pre, h0))


@pytest.mark.parametrize("engine", ["reference", *ENGINES])
def test_input_forms(engine: str) -> None:
    """Unbatched is batch 1; a PackedSequence is lengths=; padding never changes a sequence's
    numbers; h_n is each direction's state after the sequence's last valid step."""
    torch.manual_seed(0)
    layer = rnnkit.MinLSTM(4, 5, num_layers=2, bidirectional=True, engine=engine)
    x = torch.randn(7, 3, 4)
    lengths = torch.tensor([7, 3, 5])
    out, h_n = layer(x, lengths=lengths)
    assert out.shape == (7, 3, 10) and h_n.shape == (4, 3, 5)
    for b in range(3):
        n = int(lengths[b])
        alone, h_alone = layer(x[:n, b])  # unbatched (T, I)
        torch.testing.assert_close(out[:n, b], alone, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(h_n[:, b], h_alone, rtol=1e-5, atol=1e-6)
        assert bool((out[n:, b] == 0).all())
    packed, h_packed = layer(pack_padded_sequence(x, lengths, enforce_sorted=False))
    torch.testing.assert_close(pad_packed_sequence(packed)[0], out)
    torch.testing.assert_close(h_packed, h_n)


def test_one_step_at_a_time_continues_the_sequence() -> None:
    """Generation: T = 1 calls carrying h_n give the outputs of one call over the sequence."""
    torch.manual_seed(0)
    layer = rnnkit.MinGRU(3, 4, num_layers=2)
    x = torch.randn(6, 2, 3)
    whole, h_whole = layer(x)
    h, steps = None, []
    for t in range(6):
        out, h = layer(x[t:t + 1], h)
        steps.append(out)
    torch.testing.assert_close(torch.cat(steps), whole, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(h, h_whole, rtol=1e-5, atol=1e-6)


def test_auto_engine_and_state_dict_round_trip() -> None:
    torch.manual_seed(0)
    layer = rnnkit.MinGRU(3, 4, bidirectional=True)
    names = sorted(name for name, _ in layer.named_parameters())
    assert names == ["bias_ih_l0", "bias_ih_l0_reverse", "weight_ih_l0", "weight_ih_l0_reverse"]
    from rnnkit.layers._min import min_engine

    assert min_engine("auto", torch.zeros(1)) == ("fused" if FUSED else "scan")
    twin = rnnkit.MinGRU(3, 4, bidirectional=True, engine="reference")
    twin.load_state_dict(layer.state_dict())
    x = torch.randn(5, 2, 3)
    torch.testing.assert_close(twin(x)[0], layer(x)[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("call, error, words", [
    (lambda m: m(torch.randn(4, 2, 3), torch.zeros(1, 3, 4)), rnnkit.InputError, r"Expected hidden size \(1, 2, 4\)"),
    (lambda m: m(torch.randn(4, 2, 5)), rnnkit.InputError, "input.size\\(-1\\) must be equal to input_size"),
    (lambda m: m(torch.randn(4, 2, 3), lengths=[4, 5]), rnnkit.InputError, "every length <= 4"),
    (lambda m: m(torch.randn(4, 2, 3, dtype=torch.float64)), rnnkit.InputTypeError, "does not match weight dtype"),
])
def test_bad_input_says_what_is_wrong(call, error, words) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(error, match=words):
        call(rnnkit.MinGRU(3, 4))


def test_bad_options() -> None:
    with pytest.raises(ValueError, match="candidate must be one of 'g', 'linear', got 'tanh'"):
        rnnkit.MinLSTM(3, 4, candidate="tanh")
    with pytest.raises(ValueError, match="hidden_size must be greater than zero"):
        rnnkit.MinGRU(3, 0)


@pytest.mark.parametrize("engine", ENGINES)
def test_torch_compile_and_export(engine: str) -> None:
    torch.manual_seed(0)
    layer = rnnkit.MinGRU(3, 4, num_layers=2, engine=engine)
    x = torch.randn(6, 2, 3)
    expected, _ = layer(x)
    compiled = torch.compile(layer, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(x)[0], expected, rtol=1e-5, atol=1e-6)
    program = torch.export.export(layer, (x,), dynamic_shapes=({0: torch.export.Dim("T", min=2)},))
    longer = torch.randn(9, 2, 3)
    torch.testing.assert_close(program.module()(longer)[0], layer(longer)[0], rtol=1e-5, atol=1e-6)


def test_vmap_over_examples() -> None:
    torch.manual_seed(0)
    layer = rnnkit.MinLSTM(3, 4)
    xs = torch.randn(5, 6, 2, 3)  # five independent batches
    mapped = torch.func.vmap(lambda x: layer(x)[0])(xs)
    torch.testing.assert_close(mapped, torch.stack([layer(x)[0] for x in xs]), rtol=1e-5, atol=1e-6)


def test_coefficients_are_the_recurrence() -> None:
    """a_t, b_t of the scan reproduce the step: h_t = a_t * h_{t-1} + b_t."""
    torch.manual_seed(0)
    from rnnkit.cells._min import min_step

    for kind, gates in (("mingru", 2), ("minlstm", 3)):
        pre, h = torch.randn(3, gates * 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
        log_a, b = coefficients(pre, kind, "g")
        torch.testing.assert_close(log_a.exp() * h + b, min_step(pre, h, kind, "g"))


def test_under_autocast_the_product_is_bfloat16_and_the_scan_float32() -> None:
    """As torch.nn.GRU on CPU: float32 out; the numbers those of the float32 layer to bfloat16's
    precision in the input projections."""
    torch.manual_seed(0)
    layer = rnnkit.MinLSTM(6, 8, num_layers=2)
    x = torch.randn(20, 3, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, h_n = layer(x)
    assert out.dtype == h_n.dtype == torch.float32
    torch.testing.assert_close(out, layer(x)[0], atol=3e-2, rtol=3e-2)


def test_an_empty_batch() -> None:
    layer = rnnkit.MinGRU(3, 4, num_layers=2, bidirectional=True)
    out, h_n = layer(torch.randn(5, 0, 3))
    assert out.shape == (5, 0, 8) and h_n.shape == (4, 0, 4)


def test_chrono_init_keeps_the_state_for_up_to_chrono_max_steps() -> None:
    """The share of h_{t-1} kept, a_t, at a zero input: about 1 - 1/U with U in [1, chrono_max - 1]
    (torch.nn's initialisation: about 1/2)."""
    torch.manual_seed(0)
    for kind, layer in LAYERS.items():
        m = layer(4, 256, init="chrono", chrono_max=1000)
        log_a, _ = coefficients(m.bias_ih_l0.detach().unsqueeze(0), kind, "g")
        kept = log_a.exp()[0]
        assert float(kept.min()) > 0.45 and float(kept.max()) > 0.99 and float(kept.median()) > 0.99
        plain = layer(4, 256)
        assert float(coefficients(plain.bias_ih_l0.detach().unsqueeze(0), kind, "g")[0].exp().max()) < 0.7
    with pytest.raises(ValueError, match="init='chrono' takes chrono_max > 2"):
        rnnkit.MinGRU(4, 8, init="chrono")


@needs_library
def test_fused_operator_reads_lengths_that_are_a_strided_view() -> None:
    torch.manual_seed(0)
    pre = torch.randn(6, 3, 8, dtype=torch.float64)
    strided = torch.tensor([6, 0, 2, 0, 5])[::2]  # (6, 2, 5), not contiguous
    assert not strided.is_contiguous()
    torch.testing.assert_close(_min_op.min_scan(pre, None, strided, "mingru", "g"),
                               _min_op.min_scan(pre, None, strided.contiguous(), "mingru", "g"), rtol=0, atol=0)


@pytest.mark.parametrize("kind", LAYERS)
def test_layer_norm_normalises_the_input_of_each_layer_after_the_first(kind: str) -> None:
    """layer_norm=True is torch.nn.LayerNorm over the D*H features between stacked layers: the
    same numbers as one-layer layers with F.layer_norm between them, trained LN weights included;
    one layer warns that it does nothing."""
    torch.manual_seed(0)
    stack = LAYERS[kind](4, 5, num_layers=3, bidirectional=True, layer_norm=True, dtype=torch.float64)
    names = [n for n, _ in stack.named_parameters() if n.startswith("layer_norm")]
    assert names == ["layer_norm_weight_l1", "layer_norm_bias_l1", "layer_norm_weight_l2", "layer_norm_bias_l2"]
    assert torch.equal(stack.layer_norm_weight_l1, torch.ones(10, dtype=torch.float64))
    with torch.no_grad():
        for name in names:
            getattr(stack, name).normal_()
    x, lengths = torch.randn(7, 3, 4, dtype=torch.float64), [7, 5, 2]
    out, h_n = stack(x, lengths=lengths)
    h, finals = x, []
    for layer in range(3):
        if layer:
            h = torch.nn.functional.layer_norm(h, (10,), getattr(stack, f"layer_norm_weight_l{layer}"),
                                               getattr(stack, f"layer_norm_bias_l{layer}"))
        single = LAYERS[kind](h.shape[-1], 5, bidirectional=True, dtype=torch.float64)
        single.load_state_dict({k.replace(f"_l{layer}", "_l0"): v for k, v in stack.state_dict().items()
                                if f"_l{layer}" in k and not k.startswith("layer_norm")})
        h, final = single(h, lengths=lengths)
        finals.append(final)
    torch.testing.assert_close(out, h, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(h_n, torch.cat(finals), rtol=1e-12, atol=1e-12)
    out.sum().backward()
    assert all(getattr(stack, name).grad.abs().sum() > 0 for name in names)
    assert "layer_norm=True" in repr(stack)
    with pytest.warns(UserWarning, match="does nothing with num_layers=1"):
        LAYERS[kind](4, 5, layer_norm=True)
