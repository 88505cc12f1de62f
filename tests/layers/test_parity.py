"""rnnkit's layers against torch.nn's over generated configurations: outputs, final states and
the gradients of every parameter, of the input and of the initial state."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

import rnnkit
from tests.helpers import assert_close, weighted_sum

FAMILIES = ("rnn_tanh", "rnn_relu", "lstm", "gru")
INPUTS = ("batched", "unbatched", "packed_sorted", "packed_unsorted", "lengths")


@dataclass(frozen=True)
class Case:
    family: str
    num_layers: int
    bidirectional: bool
    batch_first: bool
    bias: bool
    proj_size: int
    inputs: str
    with_hx: bool
    steps: int
    batch: int
    input_size: int
    hidden_size: int
    seed: int


@st.composite
def cases(draw: st.DrawFn) -> Case:
    family = draw(st.sampled_from(FAMILIES))
    hidden = draw(st.integers(1, 6))
    proj = draw(st.integers(0, hidden - 1)) if family == "lstm" and hidden > 1 else 0
    return Case(
        family=family,
        num_layers=draw(st.integers(1, 3)),
        bidirectional=draw(st.booleans()),
        batch_first=draw(st.booleans()),
        bias=draw(st.booleans()),
        proj_size=proj,
        inputs=draw(st.sampled_from(INPUTS)),
        with_hx=draw(st.booleans()),
        steps=draw(st.integers(1, 5)),
        batch=draw(st.integers(1, 4)),
        input_size=draw(st.integers(1, 5)),
        hidden_size=hidden,
        seed=draw(st.integers(0, 2**16)),
    )


def make_pair(case: Case, dtype: torch.dtype) -> tuple[nn.Module, rnnkit.layers.RecurrentLayer]:
    args = dict(num_layers=case.num_layers, bias=case.bias, batch_first=case.batch_first,
                bidirectional=case.bidirectional, dtype=dtype)
    if case.family.startswith("rnn"):
        nonlinearity = case.family[4:]
        theirs: nn.Module = nn.RNN(case.input_size, case.hidden_size, nonlinearity=nonlinearity, **args)
        ours = rnnkit.RNN(case.input_size, case.hidden_size, nonlinearity=nonlinearity, engine="reference", **args)
    elif case.family == "lstm":
        theirs = nn.LSTM(case.input_size, case.hidden_size, proj_size=case.proj_size, **args)
        ours = rnnkit.LSTM(case.input_size, case.hidden_size, proj_size=case.proj_size, engine="reference", **args)
    else:
        theirs = nn.GRU(case.input_size, case.hidden_size, **args)
        ours = rnnkit.GRU(case.input_size, case.hidden_size, engine="reference", **args)
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours


def states_of(hidden: Tensor | tuple[Tensor, ...]) -> list[Tensor]:
    return list(hidden) if isinstance(hidden, tuple) else [hidden]


def check_case(case: Case, dtype: torch.dtype) -> None:
    torch.manual_seed(case.seed)
    theirs, ours = make_pair(case, dtype)
    d = 2 if case.bidirectional else 1
    r = case.proj_size or case.hidden_size
    x = torch.randn(case.steps, case.batch, case.input_size, dtype=dtype)
    if case.batch_first:
        x = x.transpose(0, 1).contiguous()
    batched = case.inputs != "unbatched"
    if not batched:
        x = x[0] if case.batch_first else x[:, 0]  # (T, I)
    x.requires_grad_(True)

    lengths = torch.randint(1, case.steps + 1, (case.batch,))
    lengths[torch.randint(case.batch, ())] = case.steps  # the padded length is the longest one
    if case.inputs == "packed_sorted":
        lengths = lengths.sort(descending=True).values

    hx = None
    hx_leaves: list[Tensor] = []
    if case.with_hx:
        shape = (case.num_layers * d, case.batch) if batched else (case.num_layers * d,)
        hx_leaves = [torch.randn(*shape, r, dtype=dtype, requires_grad=True)]
        if case.family == "lstm":
            hx_leaves.append(torch.randn(*shape, case.hidden_size, dtype=dtype, requires_grad=True))
        hx = tuple(hx_leaves) if case.family == "lstm" else hx_leaves[0]

    def to_tensor(out: Tensor | PackedSequence) -> Tensor:
        if isinstance(out, PackedSequence):
            padded, _ = pad_packed_sequence(out, batch_first=case.batch_first, total_length=case.steps)
            return padded
        return out

    if case.inputs.startswith("packed"):
        enforce = case.inputs == "packed_sorted"
        packed = pack_padded_sequence(x, lengths, batch_first=case.batch_first, enforce_sorted=enforce)
        out_t, hid_t = theirs(packed, hx)
        out_o, hid_o = ours(packed, hx)
        assert isinstance(out_o, PackedSequence)
        assert torch.equal(out_o.batch_sizes, out_t.batch_sizes)
        for a, b in ((out_o.sorted_indices, out_t.sorted_indices), (out_o.unsorted_indices, out_t.unsorted_indices)):
            assert (a is None and b is None) or torch.equal(a, b)
        assert_close(out_o.data, out_t.data, "packed output")
    elif case.inputs == "lengths":
        packed = pack_padded_sequence(x, lengths, batch_first=case.batch_first, enforce_sorted=False)
        out_t, hid_t = theirs(packed, hx)
        out_o, hid_o = ours(x, hx, lengths=lengths)
        assert isinstance(out_o, Tensor) and out_o.shape == to_tensor(out_t).shape
    else:
        out_t, hid_t = theirs(x, hx)
        out_o, hid_o = ours(x, hx)
        assert out_o.shape == out_t.shape
    assert_close(to_tensor(out_o), to_tensor(out_t), "output")
    for a, b in zip(states_of(hid_o), states_of(hid_t)):
        assert a.shape == b.shape
        assert_close(a, b, "final state")

    leaves = [x, *hx_leaves]
    grads = []
    for out, hid in ((out_t, hid_t), (out_o, hid_o)):
        loss = weighted_sum([to_tensor(out), *states_of(hid)])
        module = theirs if not grads else ours
        grads.append(torch.autograd.grad(loss, leaves + list(module.parameters()), retain_graph=True))
    n = len(leaves)
    for i, (g_t, g_o) in enumerate(zip(grads[0][:n], grads[1][:n])):
        assert_close(g_o, g_t, "grad of input" if i == 0 else "grad of hx")
    names = [name for name, _ in theirs.named_parameters()]
    ours_grads = dict(zip([name for name, _ in ours.named_parameters()], grads[1][n:]))
    for name, g_t in zip(names, grads[0][n:]):
        assert_close(ours_grads[name], g_t, f"grad of {name}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@settings(max_examples=150, deadline=None, derandomize=True)
@given(case=cases())
def test_matches_torch_nn_on_generated_configurations(case: Case, dtype: torch.dtype) -> None:
    check_case(case, dtype)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("inputs", INPUTS)
def test_every_family_and_input_kind(family: str, inputs: str) -> None:
    """Each family with each input kind, stacked and bidirectional, at least once."""
    case = Case(family, 2, True, inputs == "lengths", True, 2 if family == "lstm" else 0, inputs,
                True, 5, 3, 4, 5, seed=7)
    check_case(case, torch.float64)


def test_train_mode_without_dropout_matches_torch() -> None:
    torch.manual_seed(0)
    theirs = nn.LSTM(3, 4, 2)
    ours = rnnkit.LSTM(3, 4, 2)
    ours.load_state_dict(theirs.state_dict())
    assert ours.training and theirs.training
    x = torch.randn(6, 2, 3)
    assert_close(ours(x)[0], theirs(x)[0], "output")
    theirs.eval(), ours.eval()
    assert_close(ours(x)[0], theirs(x)[0], "output")
