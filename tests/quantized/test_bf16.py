"""bfloat16 inference (rnnkit::bf16_stack, rnnkit.layers._bf16): the operator against a float64
emulation of its scheme on every product path, the layer's fast path (bfloat16 modules and
autocast) against the float64 layer, and the calls it leaves to the other engines."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

import rnnkit
from rnnkit.engines import _library
from rnnkit.layers import _bf16

pytestmark = pytest.mark.skipif(isinstance(_library.load(), str), reason="rnnkit's operator library is not built")
CASES = [("LSTM", {}), ("GRU", {}), ("RNN", {}), ("RNN", {"nonlinearity": "relu"}), ("LSTM", {"proj_size": 5})]
NATIVE = not isinstance(_library.load(), str) and _bf16.native()


def _rounded(a: Tensor) -> Tensor:
    """a as it enters a product: rounded to bfloat16 (to nearest, ties to even), in float64."""
    return a.to(torch.bfloat16).double()


def emulate(layer: nn.Module, x: Tensor, lengths: list[int]) -> Tensor:
    """The scheme step by step in float64: bfloat16 weights, every product's activations rounded to
    bfloat16, states kept in float32. x (T, B, I) -> out (T, B, D*R)."""
    T, B, _ = x.shape
    D, R = layer.num_directions, layer.out_size
    live = torch.arange(T).unsqueeze(1) < torch.tensor(lengths)
    layer_in = x.float()
    for k in range(layer.num_layers):
        outs = []
        for d in range(D):
            w = layer.cell_weights(k, d)
            h, c = torch.zeros(B, R), torch.zeros(B, layer.hidden_size)
            out = torch.zeros(T, B, R)
            for t in (range(T - 1, -1, -1) if d else range(T)):
                gx = _rounded(layer_in[t]) @ w.weight_ih.double().T + w.bias_ih.double()
                gh = _rounded(h) @ w.weight_hh.double().T + w.bias_hh.double()
                if layer.mode == "LSTM":
                    i, f, g, o = (gx + gh).chunk(4, 1)
                    c_new = torch.sigmoid(f) * c.double() + torch.sigmoid(i) * torch.tanh(g)
                    h_new = torch.sigmoid(o) * torch.tanh(c_new)
                    if w.weight_hr is not None:
                        h_new = _rounded(h_new.float()) @ w.weight_hr.double().T
                elif layer.mode == "GRU":
                    (xr, xz, xn), (hr, hz, hn) = gx.chunk(3, 1), gh.chunk(3, 1)
                    r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
                    h_new, c_new = (1 - z) * torch.tanh(xn + r * hn) + z * h.double(), c.double()
                else:
                    a = gx + gh
                    h_new, c_new = (torch.relu(a) if layer.mode == "RNN_RELU" else torch.tanh(a)), c.double()
                m = live[t].unsqueeze(1)
                h, c = torch.where(m, h_new.float(), h), torch.where(m, c_new.float(), c)
                out[t] = torch.where(m, h_new.float(), 0.0)
            outs.append(out)
        layer_in = torch.cat(outs, 2)
    return layer_in


def _layer(cell: str, extra: dict) -> nn.Module:
    torch.manual_seed(0)
    return getattr(rnnkit, cell)(7, 20, 2, bidirectional=True, **extra).eval().to(torch.bfloat16)


def _call_op(layer: nn.Module, x: Tensor, lengths: list[int]) -> Tensor:
    gates = layer.spec.gates
    pack = torch.ops.rnnkit.bf16_pack
    weights = []
    for k in range(layer.num_layers):
        for d in range(layer.num_directions):
            w = layer.cell_weights(k, d)
            weights += [pack(w.weight_ih, gates), pack(w.weight_hh, gates), w.bias_ih, w.bias_hh,
                        None if w.weight_hr is None else pack(w.weight_hr, 1)]
    out, _, _ = torch.ops.rnnkit.bf16_stack(x, torch.tensor(lengths), None, None, weights, layer.mode,
                                            layer.num_layers, layer.num_directions, layer.hidden_size,
                                            layer.proj_size)
    return out


@pytest.mark.parametrize("cell,extra", CASES)
def test_the_operator_computes_the_scheme_on_every_path(cell: str, extra: dict) -> None:
    """rnnkit::bf16_stack (stacked, bidirectional, lengths) against the scheme emulated in float64,
    with AVX-512 BF16's products (where the CPU has them) and with plain float32 loops: within one
    bfloat16 rounding of the output (4e-3 of values below 1) and mostly far closer."""
    layer = _layer(cell, extra)
    torch.manual_seed(1)
    x, lengths = torch.randn(9, 5, 7).to(torch.bfloat16), [9, 4, 7, 1, 9]
    want = emulate(layer, x, lengths)
    for path in (0, 2):  # the best this build has; the plain loops
        with torch.no_grad(), _library.policy(int8_path=path):
            got = _call_op(layer, x, lengths)
        assert got.dtype == torch.bfloat16
        torch.testing.assert_close(got.float(), want, atol=8e-3, rtol=0)
        assert (got.float() - want).abs().mean() < 1e-3


@pytest.mark.skipif(not NATIVE, reason="this CPU has no AVX-512 BF16: bfloat16 layers keep torch's kernels")
@pytest.mark.parametrize("cell,extra", CASES)
def test_a_bfloat16_layer_in_inference_runs_the_operator(cell: str, extra: dict) -> None:
    """A bfloat16 GRU or RNN under no_grad takes the fast path (rnnkit::bf16_stack), an LSTM
    oneDNN's kernel (as fast or faster); each stays near the float64 layer, its state too."""
    layer = _layer(cell, extra)
    reference = getattr(rnnkit, cell)(7, 20, 2, bidirectional=True, **extra).double().eval()
    reference.load_state_dict(layer.state_dict())
    x, lengths = torch.randn(9, 5, 7), [9, 4, 7, 1, 9]
    calls = []
    real = _bf16.run_stack
    _bf16.run_stack = lambda *args: calls.append(1) or real(*args)  # type: ignore[assignment, func-returns-value]
    try:
        with torch.no_grad():
            out, state = layer(x.to(torch.bfloat16), lengths=lengths)
            want, want_state = reference(x.double(), lengths=lengths)
    finally:
        _bf16.run_stack = real  # type: ignore[assignment]
    assert bool(calls) == (cell != "LSTM") and out.dtype == torch.bfloat16
    assert (out.double() - want).abs().max() < 0.03
    h = state[0] if isinstance(state, tuple) else state
    want_h = want_state[0] if isinstance(want_state, tuple) else want_state
    assert h.dtype == torch.bfloat16 and (h.double() - want_h).abs().max() < 0.03


@pytest.mark.skipif(not NATIVE, reason="this CPU has no AVX-512 BF16")
def test_autocast_inference_takes_the_fast_path_and_training_does_not() -> None:
    """An RNN (which computes in bfloat16 under CPU autocast, as torch.nn's) in inference: the fast
    path; with parameters that require grad (the training path, test_bf16_training.py), or an
    explicit engine, or an LSTM that oneDNN's kernel takes: not this one."""
    torch.manual_seed(0)
    layer = rnnkit.RNN(7, 20, 2).eval()
    x = torch.randn(9, 5, 7)
    with torch.no_grad():
        want, _ = layer(x)
    seen: list[bool] = []
    real = _bf16.usable

    def spy(*args: object) -> bool:
        seen.append(real(*args))  # type: ignore[arg-type]
        return seen[-1]

    _bf16.usable = spy  # type: ignore[assignment]
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            with torch.no_grad():
                out, _ = layer(x)
            assert out.dtype == torch.bfloat16 and (out.float() - want).abs().max() < 0.03
            trained, _ = layer(x)  # parameters that require grad: not the inference path
            trained.float().sum().backward()
        with torch.no_grad():
            reference = rnnkit.RNN(7, 20, 2, engine="reference").to(torch.bfloat16).eval()
            reference(x.to(torch.bfloat16))  # an explicit engine is kept
            lstm = rnnkit.LSTM(7, 20).to(torch.bfloat16).eval()
            lstm(x.to(torch.bfloat16), lengths=[9, 8, 7, 6, 5])  # oneDNN's bfloat16 LSTM
    finally:
        _bf16.usable = real  # type: ignore[assignment]
    assert seen == [True, False, False, False]
    assert layer.weight_hh_l0.grad is not None
