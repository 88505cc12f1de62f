"""int8 inference (rnnkit.quantized, rnnkit.quantize): the kernels against a float64 emulation of
the same scheme, the error against the float layer, the VNNI and portable products, thread
counts, every input form, the interfaces (torch.nn's layers too, skip, refusals), state_dict
round trips and torch.export."""

from __future__ import annotations

import io
import re
import warnings

import pytest
import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import rnnkit
from rnnkit.engines import _library
from rnnkit.quantized._ops import GATES

pytestmark = pytest.mark.skipif(isinstance(_library.load(), str), reason="rnnkit's operator library is not built")

CASES = [("LSTM", {}), ("GRU", {}), ("RNN", {}), ("RNN", {"nonlinearity": "relu"}), ("LSTM", {"proj_size": 5})]


def _act(a: Tensor) -> Tensor:
    """An activation (M, K) float32 as the kernels quantize it, dequantized, in float64:
    per row sa = max |a| / 127, q = round(a * (127 / max |a|)) (float32 arithmetic)."""
    amax = a.abs().amax(dim=1, keepdim=True)
    inv = torch.where(amax > 0, torch.tensor(127.0) / amax, torch.zeros(()))
    q = torch.round(a * inv).clamp(-127, 127)
    return q.double() * (amax / 127).double()


def _product(a: Tensor, q: nn.Module, name: str) -> Tensor:
    """a (M, K) float32 through the int8 weight `name` of q, in float64."""
    w = getattr(q, name).double() * getattr(q, name + "_scale").double().unsqueeze(1)  # (N, K)
    return _act(a) @ w.T


def emulate(q: nn.Module, x: Tensor, lengths: list[int] | None, h0: Tensor | None, c0: Tensor | None) -> tuple:
    """The int8 scheme step by step: states float32 (as the kernels keep them), products and gate
    math in float64. x (T, B, I) -> out (T, B, D*R), h_n (K*D, B, R), c_n (K*D, B, H)."""
    T, B, _ = x.shape
    D, H, R = (2 if q.bidirectional else 1), q.hidden_size, q.out_size
    G = GATES[q.mode]
    live = torch.ones(T, B, dtype=torch.bool) if lengths is None else (
        torch.arange(T).unsqueeze(1) < torch.tensor(lengths))
    layer_in, h_n, c_n = x, [], []
    for k in range(q.num_layers):
        outs = []
        for d in range(D):
            sfx = f"_l{k}" + ("_reverse" if d else "")
            index = k * D + d
            h = torch.zeros(B, R) if h0 is None else h0[index].clone()
            c = torch.zeros(B, H) if c0 is None else c0[index].clone()
            out = torch.zeros(T, B, R)
            bi = getattr(q, "bias_ih" + sfx).double() if q.bias else torch.zeros(G * H, dtype=torch.float64)
            bh = getattr(q, "bias_hh" + sfx).double() if q.bias else torch.zeros(G * H, dtype=torch.float64)
            for t in (range(T - 1, -1, -1) if d else range(T)):
                gx = _product(layer_in[t], q, "weight_ih" + sfx) + bi
                gh = _product(h, q, "weight_hh" + sfx) + bh
                hp = h.double()
                if q.mode == "LSTM":
                    i, f, g, o = (gx + gh).chunk(4, 1)
                    c_new = torch.sigmoid(f) * c.double() + torch.sigmoid(i) * torch.tanh(g)
                    h_new = torch.sigmoid(o) * torch.tanh(c_new)
                    if q.proj_size:
                        h_new = _product(h_new.float(), q, "weight_hr" + sfx)
                elif q.mode == "GRU":
                    xr, xz, xn = gx.chunk(3, 1)
                    hr, hz, hn = gh.chunk(3, 1)
                    r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
                    h_new = (1 - z) * torch.tanh(xn + r * hn) + z * hp
                    c_new = c.double()
                else:
                    a = gx + gh
                    h_new = torch.relu(a) if q.mode == "RNN_RELU" else torch.tanh(a)
                    c_new = c.double()
                m = live[t].unsqueeze(1)
                h = torch.where(m, h_new.float(), h)
                c = torch.where(m, c_new.float(), c)
                out[t] = torch.where(m, h_new.float(), 0.0)
            outs.append(out)
            h_n.append(h)
            c_n.append(c)
        layer_in = torch.cat(outs, 2)
    return layer_in, torch.stack(h_n), torch.stack(c_n)


def _layer(cell: str, extra: dict, **options: object) -> nn.Module:
    torch.manual_seed(0)
    return getattr(rnnkit, cell)(7, 20, 2, bidirectional=True, **extra, **options).eval()


@pytest.mark.parametrize("cell,extra", CASES)
def test_the_kernels_compute_the_scheme(cell: str, extra: dict) -> None:
    """Stacked, bidirectional, with lengths and an initial state: the kernels' output and final
    state against the scheme emulated in float64 (the same quantized weights and activations),
    within 1e-3: the kernels' float32 gate math, and a rare activation rounded to the other
    integer when float32 and float64 disagree in the last bit."""
    layer = _layer(cell, extra)
    q = rnnkit.quantize(layer)
    torch.manual_seed(1)
    x, lengths = torch.randn(9, 5, 7), [9, 4, 7, 1, 9]
    R = q.out_size
    h0 = torch.randn(4, 5, R) * 0.5
    c0 = torch.randn(4, 5, 20) * 0.5 if cell == "LSTM" else None
    with torch.no_grad():
        out, state = q(x, (h0, c0) if cell == "LSTM" else h0, lengths=lengths)
        with _library.policy(int8_chunk_bytes=1):  # the input projections a step at a time
            stepped, _ = q(x, (h0, c0) if cell == "LSTM" else h0, lengths=lengths)
        with _library.policy(int8_chunk_bytes=5 * 4 * 128 * 4):  # four steps at a time
            chunked, _ = q(x, (h0, c0) if cell == "LSTM" else h0, lengths=lengths)
    assert torch.equal(stepped, out) and torch.equal(chunked, out)
    want_out, want_h, want_c = emulate(q, x, lengths, h0, c0)
    h_n = state[0] if cell == "LSTM" else state
    torch.testing.assert_close(out, want_out, atol=1e-3, rtol=0)
    torch.testing.assert_close(h_n, want_h, atol=1e-3, rtol=0)
    if cell == "LSTM":
        torch.testing.assert_close(state[1], want_c, atol=1e-3, rtol=0)
    assert (out - want_out).abs().median() < 1e-5  # most of it to float32's precision


@pytest.mark.parametrize("cell,extra", CASES)
def test_int8_stays_near_the_float_layer(cell: str, extra: dict) -> None:
    """The cost of the scheme, against the float layer in float64: the output's error at most 2%
    of its RMS in RMS, and 5% of its largest value anywhere (8-bit weights and activations)."""
    layer = _layer(cell, extra)
    q = rnnkit.quantize(layer)
    torch.manual_seed(2)
    x = torch.randn(30, 8, 7)
    with torch.no_grad():
        want, _ = layer.double()(x.double())
        got, _ = q(x)
    err = got.double() - want
    assert err.square().mean().sqrt() < 0.02 * want.square().mean().sqrt()
    assert err.abs().max() < 0.05 * want.abs().max()


@pytest.mark.parametrize("cell,extra", CASES)
def test_every_product_path_gives_the_same_bits(cell: str, extra: dict) -> None:
    """The int8 products by AVX-512 VNNI (where the CPU has it), by AVX2 and by plain C loops sum
    the same integers exactly: the outputs are the same bits, whichever runs."""
    q = rnnkit.quantize(_layer(cell, extra))
    lin = rnnkit.quantize(nn.Linear(37, 50))
    x, lengths = torch.randn(6, 13, 7), [6, 2, 3, 6, 1, 5, 6, 6, 4, 3, 2, 1, 6]
    results = []
    for path in (0, 1, 2):  # the best built, AVX2, plain C
        with torch.no_grad(), _library.policy(int8_path=path):
            results.append((q(x, lengths=lengths)[0], lin(x.repeat(1, 1, 6)[..., :37])))
    for other in results[1:]:
        assert torch.equal(results[0][0], other[0]) and torch.equal(results[0][1], other[1])


@pytest.mark.parametrize("cell,extra", [("LSTM", {"proj_size": 5}), ("GRU", {})])
def test_the_same_bits_on_any_thread_count(cell: str, extra: dict) -> None:
    if not _library.kernels_parallel():
        pytest.skip("the kernels are not built with OpenMP here")
    q = rnnkit.quantize(_layer(cell, extra))
    x = torch.randn(8, 11, 7)
    results = []
    for threads in (1, 2, 3):
        with torch.no_grad(), _library.policy(threads=threads, int8_step_parallel_min_work=0):
            results.append(q(x, lengths=[8, 1, 2, 3, 4, 5, 6, 7, 8, 8, 3])[0])
    assert all(torch.equal(results[0], r) for r in results[1:])


def test_linear_against_the_scheme_and_float() -> None:
    torch.manual_seed(0)
    lin = nn.Linear(70, 45)
    q = rnnkit.quantize(lin)
    x = torch.randn(3, 50, 70)
    with torch.no_grad():
        got = q(x)
        want = lin(x)
    emulated = _product(x.reshape(-1, 70), q, "weight").reshape(3, 50, 45) + lin.bias.double()
    torch.testing.assert_close(got, emulated.float(), atol=1e-5, rtol=1e-5)
    assert (got - want).square().mean().sqrt() < 0.02 * want.square().mean().sqrt()
    assert q(torch.zeros(0, 70)).shape == (0, 45)
    plain = nn.Linear(70, 45, bias=False)
    plain.weight.data.copy_(lin.weight.data)
    no_bias = rnnkit.quantize(plain)
    torch.testing.assert_close(no_bias(x), got - lin.bias.detach(), atol=1e-5, rtol=0)


def test_every_input_form() -> None:
    """batch_first, unbatched, PackedSequence and lengths= give what the time-major padded batch
    gives; a batch of 0 gives empty outputs; torch.nn's layer quantizes as rnnkit's."""
    layer = rnnkit.LSTM(7, 20, 2, bidirectional=True, batch_first=True, proj_size=5).eval()
    q = rnnkit.quantize(layer)
    torch.manual_seed(3)
    x, lengths = torch.randn(4, 6, 7), [6, 2, 5, 3]
    with torch.no_grad():
        out, (h, c) = q(x, lengths=lengths)
        packed, (hp, cp) = q(pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False))
        single, (hs, cs) = q(x[1, :2])
        empty, (he, ce) = q(torch.zeros(0, 6, 7))
    padded, _ = pad_packed_sequence(packed, batch_first=True)
    assert torch.equal(padded, out) and torch.equal(hp, h) and torch.equal(cp, c)
    torch.testing.assert_close(single, out[1, :2], atol=1e-6, rtol=0)
    torch.testing.assert_close(hs, h[:, 1], atol=1e-6, rtol=0)
    assert empty.shape == (0, 6, 10) and he.shape == (4, 0, 5) and ce.shape == (4, 0, 20)
    torch_layer = nn.LSTM(7, 20, 2, bidirectional=True, batch_first=True, proj_size=5)
    torch_layer.load_state_dict(layer.state_dict())
    with torch.no_grad():
        assert torch.equal(rnnkit.quantize(torch_layer)(x, lengths=lengths)[0], out)


def test_learned_initial_state_is_kept() -> None:
    layer = rnnkit.GRU(5, 12, learn_initial_state=True).eval()
    with torch.no_grad():
        layer.initial_h.normal_()
    q = rnnkit.quantize(layer)
    x = torch.randn(4, 3, 5)
    with torch.no_grad():
        assert torch.equal(q(x)[0], q(x, layer.initial_h.unsqueeze(1).expand(1, 3, 12).contiguous())[0])
        assert not torch.equal(q(x)[0], q(x, torch.zeros(1, 3, 12))[0])


class _Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(30, 8)
        self.rnn = rnnkit.LSTM(8, 16, 2)
        self.head = nn.Linear(16, 30)

    def forward(self, tokens: Tensor) -> Tensor:
        out, _ = self.rnn(self.embed(tokens))
        return self.head(out)


def test_quantize_a_model_and_round_trip_its_state_dict() -> None:
    model = _Model().eval()
    q = rnnkit.quantize(model)
    assert isinstance(q.rnn, rnnkit.quantized.LSTM) and isinstance(q.head, rnnkit.quantized.Linear)
    assert isinstance(model.rnn, rnnkit.LSTM)  # a copy: the model is unchanged
    assert isinstance(rnnkit.quantize(model, linear=False).head, nn.Linear)
    assert isinstance(rnnkit.quantize(model, skip=["rnn"]).rnn, rnnkit.LSTM)
    tokens = torch.randint(0, 30, (7, 3))
    with torch.no_grad():
        want = q(tokens)
    buffer = io.BytesIO()
    torch.save(q.state_dict(), buffer)
    state = torch.load(io.BytesIO(buffer.getvalue()))
    assert state["rnn.weight_hh_l0"].dtype == torch.int8 and "rnn.weight_hh_l0_packed" not in state
    other = rnnkit.quantize(_Model().eval())  # other weights, replaced by the loaded ones, repacked
    other.load_state_dict(state)
    with torch.no_grad():
        assert torch.equal(other(tokens), want)
    with pytest.raises(RuntimeError, match="state_dict of a float model"):
        other.load_state_dict(model.state_dict(), strict=False)


def test_refusals_name_what_is_wrong() -> None:
    with pytest.raises(ValueError, match="rnn .*MinGRU.* has no int8 form; pass skip"):
        rnnkit.quantize(nn.ModuleDict({"rnn": rnnkit.MinGRU(3, 4)}))
    with pytest.raises(ValueError, match="layer_norm=True, which has no int8 kernel"):
        rnnkit.quantize(rnnkit.LSTM(3, 4, layer_norm=True))
    assert isinstance(rnnkit.quantize(nn.ModuleDict({"cell": nn.LSTMCell(3, 4)}), skip=["cell"])["cell"], nn.LSTMCell)
    with pytest.raises(ValueError, match="skip names no module"):
        rnnkit.quantize(rnnkit.LSTM(3, 4), skip=["nope"])
    with pytest.raises(ValueError, match="dtype must be 'int8'"):
        rnnkit.quantize(rnnkit.LSTM(3, 4), dtype="int4")
    q = rnnkit.quantize(rnnkit.LSTM(3, 4))
    out, _ = q(torch.randn(2, 1, 3, requires_grad=True))  # runs (a float embedding may come before it)
    with pytest.raises(RuntimeError, match="int8 modules are for inference and have no gradient"):
        out.sum().backward()
    with pytest.raises(RuntimeError, match="int8 modules are for inference and have no gradient"):
        rnnkit.quantize(nn.Linear(3, 2))(torch.randn(4, 3, requires_grad=True)).sum().backward()
    with pytest.raises(rnnkit.InputError, match="Expected hidden size"):
        q(torch.randn(2, 1, 3), (torch.zeros(1, 2, 4), torch.zeros(1, 1, 4)))
    with pytest.raises(TypeError, match="int8 modules compute in float32"):
        q.double()


def test_torch_export_of_a_quantized_model() -> None:
    """torch.export sees one operator, rnnkit::int8_stack, and the program gives the module's numbers."""
    q = rnnkit.quantize(_Model().eval())
    tokens = torch.randint(0, 30, (7, 3))
    program = torch.export.export(q, (tokens,))
    assert any(node.target == torch.ops.rnnkit.int8_stack.default for node in program.graph.nodes)
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    loaded = torch.export.load(io.BytesIO(buffer.getvalue()))
    with torch.no_grad():
        assert torch.equal(loaded.module()(tokens), q(tokens))


def _quantize_dynamic(*args: object, **kwargs: object) -> tuple[nn.Module, list[str]]:
    """torch's quantize_dynamic, and the warnings it gave (its own deprecation notice among them)."""
    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        model = quantize_dynamic(*args, **kwargs)
    return model, [str(w.message) for w in seen]


def test_torch_quantize_dynamic_quantizes_rnnkit_layers_it_is_told_of_and_warns_of_the_others() -> None:
    """torch's deprecated quantize_dynamic: with rnnkit.LSTM in its spec it swaps in rnnkit's int8
    layer (the same numbers as rnnkit.quantize); with torch.nn's types only, it leaves rnnkit's
    layer in float32, and the layer says so."""
    model = _Model().eval()
    tokens = torch.randint(0, 30, (7, 3))
    named, said = _quantize_dynamic(model, {rnnkit.LSTM, nn.Linear}, dtype=torch.qint8)
    assert not any("leaves rnnkit's" in message for message in said)
    assert isinstance(named.rnn, rnnkit.quantized.LSTM)
    with torch.no_grad():
        assert torch.equal(named.rnn(named.embed(tokens))[0], rnnkit.quantize(model).rnn(model.embed(tokens))[0])
    default, said = _quantize_dynamic(model, dtype=torch.qint8)
    assert isinstance(default.rnn, rnnkit.LSTM) and isinstance(default.head, torch.ao.nn.quantized.dynamic.Linear)
    assert any(re.search(r"leaves rnnkit's LSTM \(8, 16, num_layers=2\) in float: .*name rnnkit.LSTM in "
                         r"quantize_dynamic's spec", message) for message in said), said
    with pytest.raises(ValueError, match=r"int8 \(torch.qint8\) only, got a qconfig for torch.float16"):
        _quantize_dynamic(model, {rnnkit.LSTM}, dtype=torch.float16)


@pytest.mark.end_to_end  # 10 s of compiling: CI runs it
def test_torch_compile_of_a_quantized_model() -> None:
    q = rnnkit.quantize(_Model().eval())
    tokens = torch.randint(0, 30, (7, 3))
    compiled = torch.compile(q, fullgraph=True)
    with torch.no_grad():
        assert torch.equal(compiled(tokens), q(tokens))
        assert torch.equal(compiled(tokens[:4, :2]), q(tokens[:4, :2]))
