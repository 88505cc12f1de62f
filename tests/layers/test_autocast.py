"""Under torch.autocast, rnnkit's layers and cells return what torch.nn's return: the dtype torch
computes each module in (rnnkit._autocast), and its numbers within that dtype's rounding; the
parameters stay float32 and get float32 gradients."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import rnnkit
from rnnkit._autocast import compute_dtype

TOLERANCE = {torch.bfloat16: 4e-2, torch.float16: 5e-3, torch.float32: 4e-2}
"""Largest difference from torch.nn's numbers (outputs in [-1, 1]): a few units in the last place
of the lower precision; float32 results too, as torch computes parts of them in the lower one."""


def _outputs(module: torch.nn.Module, x: torch.Tensor, form: str) -> list[torch.Tensor]:
    if form == "packed":
        out, state = module(pack_padded_sequence(x, [5, 3, 2], enforce_sorted=False))
        out = out.data
    elif form == "unbatched":
        out, state = module(x[:, 0])
    elif form == "cell":
        result = module(x[0])
        return list(result) if isinstance(result, tuple) else [result]
    else:
        out, state = module(x)
    return [out, *(state if isinstance(state, tuple) else (state,))]


CASES = [(name, options, form) for name in ("RNN", "LSTM", "GRU")
         for options in ({}, {"num_layers": 2, "bidirectional": True}, *([{"proj_size": 3}] if name == "LSTM" else []))
         for form in ("plain", "packed", "unbatched")] + [(name, {}, "cell") for name in ("RNNCell", "LSTMCell", "GRUCell")]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bfloat16", "float16"])
@pytest.mark.parametrize("name, options, form", CASES, ids=[f"{n}-{o}-{f}" for n, o, f in CASES])
def test_autocast_on_cpu_as_torch_nn(name: str, options: dict[str, Any], form: str, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    ours = getattr(rnnkit, name)(4, 6, **options)
    theirs = getattr(torch.nn, name)(4, 6, **options)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(5, 3, 4)
    with torch.autocast("cpu", dtype=dtype):
        expected = compute_dtype(name, "cpu", packed=form == "packed", proj="proj_size" in options)
        got = _outputs(ours, x, form)
        try:
            want: list[torch.Tensor] | None = _outputs(theirs, x, form)
        except RuntimeError:  # torch's own LSTM has no float16 on CPU (oneDNN); rnnkit runs it
            want = None
    assert compute_dtype(name, "cpu") is None  # autocast is off again
    assert expected in (dtype, torch.float32) and got[0].dtype == expected, [t.dtype for t in got]
    if want is None:
        assert name == "LSTM" and dtype == torch.float16 and "proj_size" not in options
        assert all(t.dtype == torch.float16 for t in got)
        return
    assert [t.dtype for t in got] == [t.dtype for t in want]  # (an LSTM with proj_size: c_n float32, as torch's)
    for a, b in zip(got, want):
        torch.testing.assert_close(a.float(), b.float(), atol=TOLERANCE[b.dtype], rtol=0)


@pytest.mark.parametrize("name, options", [("LSTM", {"num_layers": 2}), ("LSTM", {"layer_norm": True}),
                                           ("GRU", {"recurrent_dropout": 0.2}), ("RNN", {"learn_initial_state": True})])
def test_gradients_reach_the_float32_parameters(name: str, options: dict[str, Any]) -> None:
    """Every engine auto picks under autocast trains: float32 gradients, close to the float32 run's."""
    torch.manual_seed(0)
    layer = getattr(rnnkit, name)(4, 6, **options)
    x = torch.randn(5, 3, 4, requires_grad=True)
    grads = []
    for on in (False, True):
        torch.manual_seed(1)  # the same masks
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=on):
            out = layer(x)[0]
        grads.append(torch.autograd.grad(out.float().pow(2).sum(), [x, *layer.parameters()]))
    for a, b in zip(*grads):
        assert b.dtype == torch.float32
        assert float((b - a).norm() / a.norm()) < 0.1  # bfloat16 keeps about 3 digits; layer norm loses some


def test_an_engine_that_cannot_run_the_dtype_says_so() -> None:
    layer = rnnkit.LSTM(4, 6, engine="fused")
    with torch.autocast("cpu", dtype=torch.bfloat16), pytest.raises(
            ValueError, match=r"LSTM: engine='fused' cannot run this layer: it runs float32 and float64, and the "
                              r"input is torch.bfloat16"):
        layer(torch.randn(5, 3, 4))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # GRU stays float32 on CPU, as torch.nn's: fused runs it
        assert rnnkit.GRU(4, 6, engine="fused")(torch.randn(5, 3, 4))[0].dtype == torch.float32


def test_cuda_policy_is_the_lower_precision_everywhere(monkeypatch: pytest.MonkeyPatch) -> None:
    """(No GPU here: the policy's table.) cuDNN's RNNs and the fused cell kernels are on autocast's
    CUDA lower-precision list."""
    from rnnkit import _autocast

    monkeypatch.setattr(_autocast, "_enabled", lambda device: True)
    monkeypatch.setattr(_autocast, "_lower", lambda device: torch.float16)
    for name in ("RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell"):
        assert compute_dtype(name, "cuda", packed=True) == torch.float16
    assert [compute_dtype(n, "cpu", packed=True) for n in ("RNN", "LSTM", "GRU", "LSTMCell")] == [
        torch.float16, torch.float32, torch.float32, torch.float32]
    assert compute_dtype("LSTM", "cpu") == compute_dtype("LSTM", "cpu", packed=True, proj=True) == torch.float16
    assert compute_dtype("LSTM", "mps") is None
