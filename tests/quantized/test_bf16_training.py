"""bfloat16 training (rnnkit::fused_stack of bfloat16 tensors, csrc/cpu/bf16_train_kernel.cpp;
rnnkit.layers._bf16.train_stack): the operator's outputs and every gradient against the same
stack in float64 on the same bfloat16 numbers, on every product path; a graph of the gradient
(create_graph); the fake kernel (opcheck); and which calls of a bfloat16 layer take it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from torch import Tensor

import rnnkit
from rnnkit.engines import _library
from rnnkit.engines._fused_op import _present, run_stack
from rnnkit.layers import _bf16

pytestmark = pytest.mark.skipif(isinstance(_library.load(), str), reason="rnnkit's operator library is not built")
NATIVE = not isinstance(_library.load(), str) and _bf16.native()
GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}


def _stack(mode: str, layers: int, directions: int, initial: bool, seed: int = 0) -> list[Tensor | None]:
    """A stack's flat entries (h0, c0, w_ih, b_ih, w_hh, b_hh, w_hr per cell), float32 numbers that
    bfloat16 holds exactly. (T, B, I, H) = (7, 5, 6, 20)."""
    gen = torch.Generator().manual_seed(seed)

    def t(*shape: int, scale: float) -> Tensor:
        return (torch.randn(*shape, generator=gen) * scale).to(torch.bfloat16).float()

    flat: list[Tensor | None] = []
    for layer in range(layers):
        for _ in range(directions):
            inputs = 6 if layer == 0 else directions * 20
            gh = GATES[mode] * 20
            flat += [t(5, 20, scale=0.5) if initial else None,
                     t(5, 20, scale=0.5) if initial and mode == "LSTM" else None,
                     t(gh, inputs, scale=0.3), t(gh, scale=0.1), t(gh, 20, scale=0.3), t(gh, scale=0.1), None]
    return flat


def _run(mode: str, layers: int, directions: int, x: Tensor, lengths: Tensor | None, flat: list[Tensor | None],
         dtype: torch.dtype) -> list[Tensor]:
    """The stack's outputs, final state and the gradients of x and every entry given, of a fixed
    random weighting of out and the state, as float64."""
    xs = x.to(dtype).requires_grad_()
    entries = [None if e is None else e.to(dtype).requires_grad_() for e in flat]
    out, state = run_stack(mode, layers, directions, xs, lengths, entries)
    gen = torch.Generator().manual_seed(1)
    loss = sum((v.double() * torch.randn(v.shape, generator=gen, dtype=torch.float64)).sum() for v in (out, *state))
    grads = torch.autograd.grad(loss, [xs, *[e for e in entries if e is not None]])
    return [v.double() for v in (out, *state, *grads)]


CONFIGS = [(1, 1, False, False), (2, 2, True, True), (3, 1, False, True), (1, 2, True, False)]


@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN_TANH"])
@pytest.mark.parametrize("layers,directions,with_lengths,initial", CONFIGS)
def test_the_operator_and_its_backward_match_float64(mode: str, layers: int, directions: int, with_lengths: bool,
                                                     initial: bool) -> None:
    """Outputs, final states and the gradients of the input, the initial states, the weights and
    the biases, stacked and bidirectional, with lengths: within 3% of the largest value of the same
    stack in float64 on the same bfloat16 numbers (measured: 0.2% to 1.6%; bfloat16 keeps 8
    bits), on AVX-512 BF16's products where the CPU has them and on the plain loops."""
    flat = _stack(mode, layers, directions, initial)
    x = torch.randn(7, 5, 6, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16).float()
    lengths = torch.tensor([7, 3, 5, 1, 7]) if with_lengths else None
    want = _run(mode, layers, directions, x, lengths, flat, torch.float64)
    for path in (0, 2):  # the best this build has; the plain loops
        with _library.policy(int8_path=path):
            got = _run(mode, layers, directions, x, lengths, flat, torch.bfloat16)
        assert len(got) == len(want)
        for i, (g, w) in enumerate(zip(got, want)):
            err = ((g - w).abs().max() / w.abs().max()).item()
            assert err < 0.03, f"output {i} of path {path}: {err:.3g} of its largest value"


def test_a_relu_rnn_trains_near_float64() -> None:
    """A ReLU RNN: one layer within 3% (a unit whose pre-activation bfloat16 moves across 0 changes
    its gradient whole, so deep ReLU stacks in bfloat16 drift further; torch's own bfloat16 ops
    further still)."""
    flat = _stack("RNN_RELU", 1, 1, False)
    x = torch.randn(7, 5, 6, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16).float()
    want = _run("RNN_RELU", 1, 1, x, None, flat, torch.float64)
    got = _run("RNN_RELU", 1, 1, x, None, flat, torch.bfloat16)
    assert max(((g - w).abs().max() / w.abs().max()).item() for g, w in zip(got, want)) < 0.03


def test_a_graph_of_the_gradient_is_the_reference_equations() -> None:
    """create_graph=True through the bfloat16 operator: its autograd kernel differentiates the
    reference equations again (rnnkit::fused_stack_grad_by_reference), so the first and second
    derivatives are those of the reference engine in bfloat16 (within 3% of the largest: the two
    order their bfloat16 sums differently)."""
    torch.manual_seed(0)
    layer = rnnkit.GRU(6, 20, 2, bidirectional=True, engine="reference").to(torch.bfloat16)
    x = torch.randn(7, 5, 6).to(torch.bfloat16)
    flat: list[Tensor | None] = []
    for k in range(layer.num_layers):
        for d in range(layer.num_directions):
            w = layer.cell_weights(k, d)
            flat += [None, None, w.weight_ih, w.bias_ih, w.weight_hh, w.bias_hh, None]
    results = []
    for through_op in (True, False):
        layer.zero_grad()
        xs = x.clone().requires_grad_()
        out = run_stack("GRU", 2, 2, xs, None, flat)[0] if through_op else layer(xs)[0]
        (dx,) = torch.autograd.grad(out.float().sum(), xs, create_graph=True)  # (the forward passes differ)
        dx.float().square().sum().backward()
        results.append([dx, *[p.grad.clone() for p in layer.parameters()]])
    for a, b in zip(*results):
        assert ((a.double() - b.double()).abs().max() / b.double().abs().max()).item() < 0.03


def test_the_operator_passes_opcheck() -> None:
    """torch.library.opcheck for rnnkit::fused_stack of bfloat16 tensors: the schema, the fake
    kernel's shapes and dtypes (every layer's output and float32 workspaces) against the real
    kernel's, and the autograd registration."""
    flat = _stack("LSTM", 2, 2, True)
    weights, present = _present([None if e is None else e.to(torch.bfloat16).requires_grad_() for e in flat])
    x = torch.randn(7, 5, 6).to(torch.bfloat16).requires_grad_()
    torch.library.opcheck(torch.ops.rnnkit.fused_stack.default,
                          (x, torch.tensor([7, 3, 5, 1, 7]), weights, present, "LSTM", 2, 2),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


def test_a_projection_is_refused_by_name() -> None:
    """The bfloat16 kernels have no projection: the operator says so (the layers never send one)."""
    flat = _stack("LSTM", 1, 1, False)
    flat[4] = torch.randn(80, 4)
    flat[6] = torch.randn(4, 20)
    with pytest.raises(RuntimeError, match="projection"):
        run_stack("LSTM", 1, 1, torch.randn(7, 5, 6).to(torch.bfloat16), None,
                  [None if e is None else e.to(torch.bfloat16) for e in flat])


@contextmanager
def _spy() -> Iterator[list[bool]]:
    """Records whether each bfloat16 layer call trained on rnnkit's kernels (train_stack)."""
    seen: list[bool] = []
    real = _bf16.trainable

    def spy(*args: object) -> bool:
        seen.append(real(*args))  # type: ignore[arg-type]
        return seen[-1]

    _bf16.trainable = spy  # type: ignore[assignment]
    try:
        yield seen
    finally:
        _bf16.trainable = real  # type: ignore[assignment]


@pytest.mark.skipif(not NATIVE, reason="this CPU has no AVX-512 BF16: bfloat16 layers keep torch's kernels")
@pytest.mark.parametrize("cell,hidden,taken", [("GRU", 20, True), ("RNN", 20, True), ("LSTM", 256, True),
                                               ("LSTM", 20, False)])
def test_a_bfloat16_layer_trains_on_the_kernels(cell: str, hidden: int, taken: bool) -> None:
    """A bfloat16 layer in training (batch_first, stacked, bidirectional, lengths): a GRU or RNN
    of any size and an LSTM of 256 units or more take rnnkit's kernels, a smaller LSTM oneDNN's;
    either way the gradients stay within 3% of the largest of torch.nn's in float64."""
    torch.manual_seed(0)
    layer = getattr(rnnkit, cell)(6, hidden, 2, bidirectional=True, batch_first=True).to(torch.bfloat16)
    reference = layer.to_torch().double()
    x = torch.randn(5, 7, 6).to(torch.bfloat16)
    lengths = [7, 3, 5, 1, 7]
    with _spy() as seen:
        out, _ = layer(x.requires_grad_(), lengths=lengths)
    packed = torch.nn.utils.rnn.pack_padded_sequence(x.double().detach().requires_grad_(), lengths,
                                                     batch_first=True, enforce_sorted=False)
    want, _ = torch.nn.utils.rnn.pad_packed_sequence(reference(packed)[0], batch_first=True, total_length=7)
    assert seen == [taken] and out.dtype == torch.bfloat16
    weight = torch.randn(out.shape, dtype=torch.float64)
    (out.double() * weight).sum().backward()
    (want * weight).sum().backward()
    for ours, theirs in zip(layer.parameters(), reference.parameters()):
        assert ((ours.grad.double() - theirs.grad).abs().max() / theirs.grad.abs().max()).item() < 0.03


@pytest.mark.skipif(not NATIVE, reason="this CPU has no AVX-512 BF16")
def test_what_the_kernels_do_not_take_runs_as_before() -> None:
    """A projection, dropout between layers in training, recurrent dropout, and an explicit engine:
    the layer's engines as before (and an RNN under autocast, which computes in bfloat16 as torch.nn's
    does, trains on the kernels)."""
    torch.manual_seed(0)
    x = torch.randn(7, 5, 6)
    with _spy() as seen:
        for layer in (rnnkit.LSTM(6, 256, proj_size=4), rnnkit.GRU(6, 20, 2, dropout=0.5),
                      rnnkit.GRU(6, 20, recurrent_dropout=0.2), rnnkit.GRU(6, 20, engine="reference")):
            layer.to(torch.bfloat16)(x.to(torch.bfloat16))[0].float().sum().backward()
        rnn = rnnkit.RNN(6, 20)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out, _ = rnn(x)
        out.float().sum().backward()
    assert seen == [False, False, False, False, True] and out.dtype == torch.bfloat16
    assert rnn.weight_hh_l0.grad is not None and rnn.weight_hh_l0.grad.dtype == torch.float32
