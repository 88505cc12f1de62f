"""The layer's short way to its training operator (RecurrentLayer._train_stack): the common
training call (a plain tensor, no initial state or lengths, on the fused engine) goes straight to
rnnkit::fused_stack, and must give the general path's bits; every other call must take the
general path, with its choices and its errors."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from torch.nn.utils import prune

import rnnkit
from rnnkit.engines import _library
from rnnkit.layers import _base

pytestmark = pytest.mark.skipif(_library.unavailable() is not None, reason="rnnkit's operator library is not built")


@pytest.fixture
def taken(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[bool]]:
    """Whether each call since took the short way (True: also when the operator raised there) or
    the general path (False)."""
    seen: list[bool] = []
    short = _base.RecurrentLayer._train_stack

    def spy(self: _base.RecurrentLayer, input: Any) -> Any:
        try:
            result = short(self, input)
        except RuntimeError:
            seen.append(True)
            raise
        seen.append(result is not None)
        return result

    monkeypatch.setattr(_base.RecurrentLayer, "_train_stack", spy)
    yield seen


def _general(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_base.RecurrentLayer, "_train_stack", lambda self, input: None)


def _step(layer: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Outputs, final state and every gradient of one training step."""
    layer.zero_grad(set_to_none=True)
    x = x.detach().requires_grad_(x.requires_grad)
    out, state = layer(x)
    parts = state if isinstance(state, tuple) else (state,)
    (out.pow(2).sum() + sum(p.sum() for p in parts)).backward()
    grads = [p.grad for p in layer.parameters()]
    return [out.detach(), *(p.detach() for p in parts), *([x.grad] if x.requires_grad else []), *grads]


CASES = [
    ("LSTM", dict(), torch.float32, True),
    ("LSTM", dict(num_layers=2, bidirectional=True), torch.float32, True),
    ("LSTM", dict(num_layers=2, proj_size=3, batch_first=True), torch.float64, False),
    ("GRU", dict(num_layers=2, bias=False, batch_first=True), torch.float32, True),
    ("GRU", dict(bidirectional=True, dropout=0.5), torch.float64, True),  # one layer: dropout does nothing
    ("RNN", dict(nonlinearity="relu", num_layers=3), torch.float32, False),
    ("RNN", dict(bidirectional=True, engine="fused"), torch.float32, True),
]


@pytest.mark.parametrize("family, options, dtype, input_grad", CASES)
def test_the_short_way_gives_the_general_paths_bits(monkeypatch: pytest.MonkeyPatch, taken: list[bool], family: str,
                                                    options: dict[str, Any], dtype: torch.dtype,
                                                    input_grad: bool) -> None:
    torch.manual_seed(0)
    with warnings.catch_warnings():  # (dropout with one layer: a warning that it does nothing)
        warnings.simplefilter("ignore", UserWarning)
        layer = getattr(rnnkit, family)(4, 6, dtype=dtype, **options)
    x = torch.randn(7, 3, 4, dtype=dtype, requires_grad=input_grad)
    short = _step(layer, x)
    assert taken == [True]
    _general(monkeypatch)
    general = _step(layer, x)
    assert len(short) == len(general)
    for a, b in zip(short, general):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)


def test_a_pruned_layer_trains_by_the_short_way_with_its_mask(monkeypatch: pytest.MonkeyPatch,
                                                              taken: list[bool]) -> None:
    """torch.nn.utils.prune replaces a parameter by a plain tensor attribute; the short way reads
    it as the general path does."""
    torch.manual_seed(0)
    layer = rnnkit.LSTM(4, 6)
    prune.l1_unstructured(layer, "weight_hh_l0", amount=0.5)
    x = torch.randn(5, 2, 4)
    short = _step(layer, x)
    assert taken == [True]
    _general(monkeypatch)
    for a, b in zip(short, _step(layer, x)):
        assert torch.equal(a, b)
    assert bool((layer.weight_hh_l0_orig.grad[layer.weight_hh_l0_mask == 0] == 0).all())


def _no_grad(layer: torch.nn.Module, x: torch.Tensor) -> Any:
    with torch.no_grad():
        return layer(x)


def _frozen(layer: torch.nn.Module, x: torch.Tensor) -> Any:
    layer.requires_grad_(False)
    return layer(x.detach())


def _autocast(layer: torch.nn.Module, x: torch.Tensor) -> Any:
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return layer(x)


def _func_grad(layer: torch.nn.Module, x: torch.Tensor) -> Any:
    return torch.func.grad(lambda v: layer(v)[0].sum())(x)


def _forward_ad(layer: torch.nn.Module, x: torch.Tensor) -> Any:
    import torch.autograd.forward_ad as fwAD

    with fwAD.dual_level():
        return layer(fwAD.make_dual(x, torch.ones_like(x)))


def _debug_log(layer: torch.nn.Module, x: torch.Tensor) -> Any:
    logger = logging.getLogger("rnnkit")
    level = logger.level
    logger.setLevel(logging.DEBUG)
    try:
        return layer(x)
    finally:
        logger.setLevel(level)


def _no_stack(layer: torch.nn.Module, x: torch.Tensor) -> Any:
    _base.FUSED_STACK = False
    try:
        return layer(x)
    finally:
        _base.FUSED_STACK = True


def _probed(layer: torch.nn.Module, x: torch.Tensor) -> Any:
    from rnnkit.diagnostics._flow import probing

    with probing(layer):
        return layer(x)


GENERAL: list[tuple[str, dict[str, Any], Callable[[torch.nn.Module, torch.Tensor], Any]]] = [
    ("no grad", {}, _no_grad),
    ("nothing needs a gradient", {}, _frozen),
    ("the reference engine", {"engine": "reference"}, lambda m, x: m(x)),
    ("torch's kernels", {"engine": "native"}, lambda m, x: m(x)),
    ("layer_norm", {"layer_norm": True}, lambda m, x: m(x)),
    ("zoneout in training", {"zoneout": 0.1}, lambda m, x: m(x)),
    ("recurrent dropout in training", {"recurrent_dropout": 0.1}, lambda m, x: m(x)),
    ("dropout between layers in training", {"num_layers": 2, "dropout": 0.1}, lambda m, x: m(x)),
    ("a learned initial state", {"learn_initial_state": True}, lambda m, x: m(x)),
    ("an initial state", {}, lambda m, x: m(x, (torch.zeros(1, 2, 6), torch.zeros(1, 2, 6)))),
    ("lengths", {}, lambda m, x: m(x, lengths=[5, 3])),
    ("a packed input", {}, lambda m, x: m(torch.nn.utils.rnn.pack_padded_sequence(x, [5, 3]))),
    ("an unbatched input", {}, lambda m, x: m(x[:, 0])),
    ("a float16 input", {"dtype": torch.float16}, lambda m, x: m(x.half())),
    ("autocast", {}, _autocast),
    ("torch.func.grad", {}, _func_grad),
    ("forward-mode AD", {}, _forward_ad),
    ("the engine's debug log", {}, _debug_log),
    ("the stack operator switched off", {}, _no_stack),
    ("jit.trace", {}, lambda m, x: torch.jit.trace(m, (x,), check_trace=False)),
    ("diagnostics' probes", {}, _probed),
]


@pytest.mark.parametrize("name, options, call", GENERAL, ids=[name for name, _, _ in GENERAL])
@pytest.mark.filterwarnings("ignore:.*torch.jit.* is deprecated:DeprecationWarning")  # torch's, upstream
def test_every_other_call_takes_the_general_path(taken: list[bool], name: str, options: dict[str, Any],
                                                 call: Callable[[torch.nn.Module, torch.Tensor], Any]) -> None:
    torch.manual_seed(0)
    layer = rnnkit.LSTM(4, 6, **options)
    x = torch.randn(5, 2, 4, requires_grad=True)
    call(layer, x)
    assert True not in taken


def test_layers_left_in_eval_with_dropout_take_the_short_way(taken: list[bool]) -> None:
    """Dropout between layers, recurrent dropout and zoneout act in training only."""
    layer = rnnkit.GRU(4, 6, num_layers=2, dropout=0.3, recurrent_dropout=0.2, zoneout=0.1).eval()
    layer(torch.randn(5, 2, 4, requires_grad=True))
    assert taken == [True]


@pytest.mark.parametrize("make, words", [
    (lambda: torch.randn(5, 2, 3, requires_grad=True), "input.size(-1) must be equal to input_size. Expected 4, got 3"),
    (lambda: torch.randn(5, 2, 4, dtype=torch.float64, requires_grad=True),
     "RNN input dtype (torch.float64) does not match weight dtype (torch.float32)"),
    (lambda: torch.randn(0, 2, 4, requires_grad=True), "Expected sequence length to be larger than 0"),
])
def test_bad_input_gets_the_general_paths_error(taken: list[bool], make: Callable[[], torch.Tensor],
                                                words: str) -> None:
    with pytest.raises((ValueError, TypeError, RuntimeError)) as raised:
        rnnkit.LSTM(4, 6)(make())
    assert words in str(raised.value)
    assert True not in taken


def test_an_empty_batch_takes_the_general_path(taken: list[bool]) -> None:
    out, (h, c) = rnnkit.LSTM(4, 6)(torch.randn(5, 0, 4, requires_grad=True))
    assert out.shape == (5, 0, 6) and h.shape == (1, 0, 6) and True not in taken


def test_a_weight_in_another_dtype_gets_the_same_error_by_both_ways(monkeypatch: pytest.MonkeyPatch,
                                                                    taken: list[bool]) -> None:
    """The short way checks the input against the first weight only, as the general path does;
    the operator checks the others, on both ways."""
    layer = rnnkit.LSTM(4, 6, num_layers=2)
    layer.weight_hh_l1.data = layer.weight_hh_l1.data.double()
    x = torch.randn(5, 2, 4, requires_grad=True)
    with pytest.raises(RuntimeError) as short:
        layer(x)
    assert taken == [True]
    _general(monkeypatch)
    with pytest.raises(RuntimeError) as general:
        layer(x)
    assert "cell 1's w_hh" in str(short.value) and str(short.value) == str(general.value)
