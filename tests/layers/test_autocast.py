"""Under torch.autocast, rnnkit's layers and cells return what torch.nn's return: the dtype torch
computes each module in (rnnkit._autocast), and its numbers within that dtype's rounding; the
parameters stay float32 and get float32 gradients."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pack_padded_sequence

import rnnkit
from rnnkit._autocast import compute_dtype
from rnnkit.layers import _bf16

TOLERANCE = {torch.bfloat16: 2 * 2.0**-8, torch.float16: 2 * 2.0**-11}
"""Largest difference from torch.nn's numbers under autocast to that dtype (outputs in [-1, 1]): two
units in its last place at 1, float32 results included, as torch computes parts of them in the
lower precision (seen here: bfloat16 at most 3.1e-3, float16 4.6e-4)."""


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
        except RuntimeError:  # torch's own LSTM runs oneDNN's kernel, which has no float16 on CPU, nor
            want = None  # bfloat16 on a CPU without AVX-512 BF16; rnnkit runs both
    assert compute_dtype(name, "cpu") is None  # autocast is off again
    assert expected in (dtype, torch.float32) and got[0].dtype == expected, [t.dtype for t in got]
    if want is None:
        assert name == "LSTM" and "proj_size" not in options
        assert all(t.dtype == dtype for t in got)
        if dtype == torch.float16:
            return
        # what oneDNN computes where it has the kernel: float32 arithmetic on the weights and
        # input rounded to bfloat16, the results rounded to it
        with torch.no_grad():
            for p in theirs.parameters():
                p.copy_(p.to(dtype).float())
        want = [t.to(dtype) for t in _outputs(theirs, x.to(dtype).float(), form)]
    assert [t.dtype for t in got] == [t.dtype for t in want]  # (an LSTM with proj_size: c_n float32, as torch's)
    for a, b in zip(got, want):
        torch.testing.assert_close(a.float(), b.float(), atol=TOLERANCE[dtype], rtol=0)


def _gradients(layer: torch.nn.Module, x: torch.Tensor, on: bool) -> list[torch.Tensor]:
    """The gradients of the input and every parameter, with autocast (bfloat16) on or off."""
    torch.manual_seed(1)  # the same masks
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=on):
        out = layer(x)[0]
    return list(torch.autograd.grad(out.float().pow(2).sum(), [x, *layer.parameters()]))


@pytest.mark.parametrize("name", ["RNN", "LSTM", "GRU"])
def test_gradients_under_autocast_are_torch_nns(name: str) -> None:
    """Where torch.nn has the configuration, rnnkit's gradients under autocast are float32 and no
    further from the float32 run's than torch.nn's under autocast (LSTM: the same kernels in
    bfloat16, so the same, each gradient; GRU: float32 throughout, where torch.nn's rounds its
    products; RNN: the same kernels, or on AVX-512 BF16 rnnkit's bfloat16 training kernels, whose
    state and gate math stay float32: closer over all the gradients, not each, since the two round
    differently)."""
    torch.manual_seed(0)
    ours = getattr(rnnkit, name)(4, 6, num_layers=2, bidirectional=True)
    theirs = getattr(torch.nn, name)(4, 6, num_layers=2, bidirectional=True)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(5, 3, 4, requires_grad=True)
    exact = _gradients(ours, x, False)
    try:
        theirs_on = _gradients(theirs, x, True)
    except RuntimeError:  # torch.nn's LSTM on a CPU without AVX-512 BF16: oneDNN has no bfloat16 kernel
        assert name == "LSTM"
        for want, a in zip(exact, _gradients(ours, x, True)):  # float32, and within bfloat16's rounding
            assert a.dtype == torch.float32 and float((a - want).norm()) <= 2.0**-6 * float(want.norm())
        return
    errors = []
    for want, a, b in zip(exact, _gradients(ours, x, True), theirs_on):
        assert a.dtype == b.dtype == torch.float32
        errors.append((float((a - want).norm()), float((b - want).norm())))
    if name == "RNN" and _bf16.native():
        assert sum(a for a, _ in errors) <= sum(b for _, b in errors)
    else:
        assert all(a <= 1.01 * b + 1e-7 for a, b in errors)


@pytest.mark.parametrize("name, options", [("LSTM", {"layer_norm": True}), ("GRU", {"recurrent_dropout": 0.2}),
                                           ("RNN", {"learn_initial_state": True})])
def test_rnnkit_options_train_under_autocast(name: str, options: dict[str, Any]) -> None:
    """rnnkit's own options (the reference engine in bfloat16): float32 gradients pointing where the
    float32 run's do. bfloat16 keeps 8 bits of mantissa, and a layer norm rescales the rounding of
    small products: the gradients here differed from the float32 run's by up to 10.8% of their
    norm (lowest cosine 0.995), the plain reference engine's by 0.7%."""
    torch.manual_seed(0)
    layer = getattr(rnnkit, name)(4, 6, **options)
    x = torch.randn(5, 3, 4, requires_grad=True)
    for a, b in zip(_gradients(layer, x, False), _gradients(layer, x, True)):
        assert b.dtype == torch.float32 and torch.isfinite(b).all()
        assert float(F.cosine_similarity(a.flatten(), b.flatten(), dim=0)) > 0.98


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
