"""torch.nn's own module tests, run on rnnkit: every constructor and forward input that torch's
module database (torch.testing._internal.common_modules, the inputs test/test_modules.py drives)
holds for RNN, LSTM, GRU, RNNCell, LSTMCell and GRUCell gives rnnkit's twin (the same weights)
torch's outputs and gradients, on every engine that runs the configuration; every error input
makes rnnkit raise at the same point (construction or forward) an exception of torch's declared
type, so code that catches torch's exceptions catches rnnkit's."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import rnnkit

pytest.importorskip("expecttest")  # torch's test helpers import it (a test extra of rnnkit)
from torch.testing._internal.common_modules import ModuleErrorEnum, module_db  # noqa: E402

TWINS = {torch.nn.RNN: rnnkit.RNN, torch.nn.LSTM: rnnkit.LSTM, torch.nn.GRU: rnnkit.GRU,
         torch.nn.RNNCell: rnnkit.RNNCell, torch.nn.LSTMCell: rnnkit.LSTMCell, torch.nn.GRUCell: rnnkit.GRUCell}
INFOS = {info.name: info for info in module_db if info.module_cls in TWINS}
LAYERS = ("nn.RNN", "nn.LSTM", "nn.GRU")


def inputs(name: str) -> list[Any]:
    info = INFOS[name]
    return list(info.module_inputs_func(info, device="cpu", dtype=torch.float64, requires_grad=True, training=False))


def errors(name: str) -> list[Any]:
    info = INFOS[name]
    return list(info.module_error_inputs_func(info, device="cpu", dtype=torch.float64, requires_grad=False,
                                              training=False))


CASES = [(name, i, engine) for name in sorted(INFOS) for i in range(len(inputs(name)))
         for engine in (("auto", "reference") if name in LAYERS else ("cell",))]
ERROR_CASES = [(name, i) for name in sorted(INFOS) for i in range(len(errors(name)))]


def test_torch_holds_inputs_for_every_recurrent_module() -> None:
    assert set(INFOS) == {"nn.RNN", "nn.LSTM", "nn.GRU", "nn.RNNCell", "nn.LSTMCell", "nn.GRUCell"}
    assert len(CASES) > 60 and len(ERROR_CASES) > 40


def flat(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for part in out for t in flat(part)]


def detached(value: Any) -> Any:
    """A fresh leaf copy of every tensor in a (nested) argument, so each module gets its own."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone().requires_grad_(value.requires_grad)
    if isinstance(value, (tuple, list)):
        return type(value)(detached(v) for v in value)
    return value


@pytest.mark.parametrize("name,index,engine", CASES, ids=[f"{n}-{i}-{e}" for n, i, e in CASES])
def test_module_inputs_match_torch(name: str, index: int, engine: str) -> None:
    case = inputs(name)[index]
    args, kwargs = case.constructor_input.args, case.constructor_input.kwargs
    torch.manual_seed(index)
    theirs = INFOS[name].module_cls(*args, **kwargs).double().eval()
    extra = {"engine": engine} if name in LAYERS else {}
    ours = TWINS[INFOS[name].module_cls](*args, **kwargs, **extra).double().eval()
    ours.load_state_dict(theirs.state_dict())
    forward_args, forward_kwargs = case.forward_input.args, case.forward_input.kwargs
    mine_in, their_in = detached(forward_args), detached(forward_args)
    expected, got = flat(theirs(*their_in, **forward_kwargs)), flat(ours(*mine_in, **forward_kwargs))
    assert [t.shape for t in got] == [t.shape for t in expected]
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)
    sum(t.sum() for t in expected).backward()  # type: ignore[union-attr]
    sum(t.sum() for t in got).backward()  # type: ignore[union-attr]
    for (param, p), q in zip(theirs.named_parameters(), ours.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-9, atol=1e-11, msg=param)
    for a, b in zip(flat([x for x in mine_in if isinstance(x, (torch.Tensor, tuple, list))]),
                    flat([x for x in their_in if isinstance(x, (torch.Tensor, tuple, list))])):
        if b.grad is not None:
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("name,index", ERROR_CASES, ids=[f"{n}-{i}" for n, i in ERROR_CASES])
def test_error_inputs_raise_torch_exception_types(name: str, index: int) -> None:
    error = errors(name)[index]
    case = error.module_error_input
    cls = TWINS[INFOS[name].module_cls]
    args, kwargs = case.constructor_input.args, case.constructor_input.kwargs
    with pytest.raises(Exception) as theirs:  # torch itself, as the database says (test_modules.py: float64)
        module = INFOS[name].module_cls(*args, **kwargs).double()
        if error.error_on == ModuleErrorEnum.FORWARD_ERROR:
            module(*case.forward_input.args, **case.forward_input.kwargs)
    assert isinstance(theirs.value, error.error_type)
    if error.error_on == ModuleErrorEnum.CONSTRUCTION_ERROR:
        with pytest.raises(error.error_type):
            cls(*args, **kwargs)
        return
    ours = cls(*args, **kwargs).double()  # constructs as torch does; the forward call fails
    with pytest.raises(error.error_type):
        ours(*case.forward_input.args, **case.forward_input.kwargs)


# Cases of torch's test/test_nn.py that the module database does not hold (test_RNN_input_size_zero,
# test_RNN_cell_no_broadcasting, test_invalid_dropout_p, test_RNN_nonlinearity, test_rnn_args_check,
# the unbatched-input checks): torch.nn and rnnkit side by side, the same exception type.
def hx(module: type, h: torch.Tensor) -> Any:
    """h_0 for a layer class: (h_0, c_0) for the LSTM."""
    return (h, h.clone()) if module.__name__ == "LSTM" else h


NN_CASES = {
    "input_size 0": lambda m: m(0, 4),
    "cell: h of batch 1 for input of batch 3": lambda m: m(10, 20)(torch.randn(3, 10), torch.randn(1, 20)),
    "cell: input of batch 1 for h of batch 3": lambda m: m(10, 20)(torch.randn(1, 10), torch.randn(3, 20)),
    "dropout -1": lambda m: m(3, 4, 2, dropout=-1),
    "dropout 1.1": lambda m: m(3, 4, 2, dropout=1.1),
    "dropout True": lambda m: m(3, 4, 2, dropout=True),
    "dropout '0.5'": lambda m: m(3, 4, 2, dropout="0.5"),
    "h_0 of the wrong layer count": lambda m: m(3, 4, 2)(torch.randn(5, 2, 3), hx(m, torch.randn(1, 2, 4))),
    "h_0 of the wrong batch": lambda m: m(3, 4)(torch.randn(5, 2, 3), hx(m, torch.randn(1, 3, 4))),
    "input 1-D": lambda m: m(3, 4)(torch.randn(3)),
    "input 4-D": lambda m: m(3, 4)(torch.randn(2, 2, 2, 3)),
    "unbatched input, batched h_0": lambda m: m(3, 4)(torch.randn(5, 3), hx(m, torch.randn(1, 2, 4))),
    "no time step": lambda m: m(3, 4)(torch.randn(0, 2, 3)),
    "input of the wrong size": lambda m: m(3, 4)(torch.randn(5, 2, 6)),
}


@pytest.mark.parametrize("family", ["RNN", "LSTM", "GRU"])
@pytest.mark.parametrize("case", list(NN_CASES))
def test_test_nn_error_cases_as_torch(case: str, family: str) -> None:
    if case.startswith("cell:"):
        family += "Cell"
    with pytest.raises(Exception) as theirs:
        NN_CASES[case](getattr(torch.nn, family))
    with pytest.raises(type(theirs.value)):
        NN_CASES[case](getattr(rnnkit, family))
