"""A model that packs its batch as torch.nn code does (pack_padded_sequence with
enforce_sorted=False, the layer, pad_packed_sequence with total_length) through torch.export and
the ONNX exporter, inside rnnkit.exportable_packing(): the exported graph against eager at other
T and B, the checks torch's packing makes in eager kept at run time, and a loud error without
the context."""

from __future__ import annotations

import contextlib
import warnings
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import rnnkit

CELLS = ("RNN", "LSTM", "GRU", "MinGRU", "MinLSTM")
SIZES = ((11, 5), (2, 2), (7, 3), (4, 1))
"""(T, B) the exported graphs run at; exported at (7, 3)."""


class Packed(nn.Module):
    """pack_padded_sequence -> layer -> pad_packed_sequence(total_length=T); returns the padded
    output and h_n. With initial_state, h_0 (and c_0) come from the batch's size."""

    def __init__(self, cell: str, layers: int, bidirectional: bool, batch_first: bool, initial_state: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.rnn = getattr(rnnkit, cell)(4, 5, num_layers=layers, bidirectional=bidirectional,
                                         batch_first=batch_first, dropout=0.3 if layers > 1 else 0.0)
        self.batch_first, self.initial_state = batch_first, initial_state
        self.two_parts = cell == "LSTM"
        self.parts = layers * (2 if bidirectional else 1)

    def forward(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        packed = pack_padded_sequence(x, lengths, batch_first=self.batch_first, enforce_sorted=False)
        if self.initial_state:
            h0 = torch.linspace(-0.5, 0.5, 5).expand(self.parts, lengths.shape[0], 5)
            out, state = self.rnn(packed, (h0, -h0) if self.two_parts else h0)
        else:
            out, state = self.rnn(packed)
        padded, _ = pad_packed_sequence(out, batch_first=self.batch_first,
                                        total_length=x.shape[1 if self.batch_first else 0])
        return padded, state[0] if isinstance(state, tuple) else state


def batch(model: Packed, steps: int, size: int, seed: int = 1) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(steps, size, 4, generator=generator)
    lengths = torch.randint(1, steps + 1, (size,), generator=generator)
    lengths[size // 2] = steps  # one sequence fills the batch's T
    return (x.transpose(0, 1).contiguous() if model.batch_first else x), lengths


def dynamic(model: Packed) -> tuple[dict[int, Any], dict[int, Any]]:
    steps, size = torch.export.Dim("T", min=2, max=4096), torch.export.Dim("B", min=1, max=4096)
    return ({1: steps, 0: size} if model.batch_first else {0: steps, 1: size}), {0: size}


MATRIX = [(cell, layers, bidirectional, (layers + bidirectional + i) % 2 == 0, (i + bidirectional) % 2 == 1)
          for i, cell in enumerate(CELLS) for layers in (1, 2) for bidirectional in (False, True)]
"""Every cell x layers x bidirectional, batch_first and the initial state each taken both ways
by every cell (dropout between layers, in eval). The whole product with batch_first and the
initial state, 80 cases, was run by hand: the classic cells equal to the bit, the minimal within
9.6e-7."""
FEW = [("LSTM", 2, True, True, False), ("MinGRU", 1, True, False, False)]
"""The default suite's share of MATRIX; CI runs all of it (pytest -m end_to_end)."""


def matrix(cases: list[tuple[Any, ...]], few: list[tuple[Any, ...]]) -> list[Any]:
    return [c if c in few else pytest.param(*c, marks=pytest.mark.end_to_end) for c in cases]


def case_id(case: Any) -> str:
    cell, layers, bidirectional, batch_first, initial_state = case
    return (f"{cell}-{layers}{'-bi' if bidirectional else ''}{'-batch_first' if batch_first else ''}"
            f"{'-h0' if initial_state else ''}")


@pytest.mark.parametrize(("cell", "layers", "bidirectional", "batch_first", "initial_state"), matrix(MATRIX, FEW),
                         ids=[case_id(c) for c in MATRIX])
def test_torch_export_of_a_packing_model_equals_eager(cell: str, layers: int, bidirectional: bool,
                                                      batch_first: bool, initial_state: bool) -> None:
    """torch.export with dynamic T and B: the program gives eager's padded output and h_n at
    other T and B (1e-6; the classic cells' are equal to the bit, as the same operator runs)."""
    model = Packed(cell, layers, bidirectional, batch_first, initial_state).eval()
    with rnnkit.exportable_packing():
        program = torch.export.export(model, batch(model, 7, 3, seed=0), dynamic_shapes=dynamic(model))
    for steps, size in SIZES:
        x, lengths = batch(model, steps, size)
        for got, expected in zip(program.module()(x, lengths), model(x, lengths)):
            torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)


ONNX_CASES = [(cell, *config) for cell in CELLS for config in ((1, False, True, False), (2, True, False, True))]
"""Every cell one layer one way and two layers both ways, batch_first and the initial state each
taken both ways (the whole MATRIX, exported by hand, matched eager to 9.6e-7)."""
ONNX_FEW: list[tuple[Any, ...]] = []  # ONNX takes seconds a case: CI runs them


@pytest.mark.parametrize(("cell", "layers", "bidirectional", "batch_first", "initial_state"),
                         matrix(ONNX_CASES, ONNX_FEW), ids=[case_id(c) for c in ONNX_CASES])
def test_onnx_export_of_a_packing_model_runs_in_onnxruntime(cell: str, layers: int, bidirectional: bool,
                                                            batch_first: bool, initial_state: bool) -> None:
    """torch.onnx.export(dynamo=True) inside exportable_packing: onnxruntime runs the model at
    other T and B with eager's numbers (1e-5) on the valid steps and zeros past each length."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    model = Packed(cell, layers, bidirectional, batch_first, initial_state).eval()
    with rnnkit.exportable_packing(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's own notes on renamed dynamic axes
        program = torch.onnx.export(model, batch(model, 7, 3, seed=0), dynamic_shapes=dynamic(model), dynamo=True,
                                    verbose=False)
    assert program is not None
    session = ort.InferenceSession(program.model_proto.SerializeToString())
    for steps, size in SIZES:
        x, lengths = batch(model, steps, size)
        feeds = {i.name: a.numpy() for i, a in zip(session.get_inputs(), (x, lengths))}
        for got, expected in zip(session.run(None, feeds), model(x, lengths)):
            torch.testing.assert_close(torch.from_numpy(got), expected, atol=1e-5, rtol=1e-5)


def test_without_the_context_export_fails_naming_it() -> None:
    """torch's own traced packing gives the packed data T rows: rnnkit's layer refuses such a
    batch, naming the context, rather than export something wrong."""
    model = Packed("GRU", 1, False, False, False).eval()
    with pytest.raises(RuntimeError, match=r"GRU: .*rnnkit\.exportable_packing\(\)"):
        torch.export.export(model, batch(model, 7, 3), dynamic_shapes=dynamic(model))


def test_the_exported_graph_keeps_torchs_checks_on_lengths() -> None:
    """What torch's packing refuses in eager the exported graph refuses as it runs: a length of
    0, a length over T, lengths out of order with enforce_sorted=True."""

    class Sorted(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = rnnkit.LSTM(4, 5)

        def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
            out, _ = self.rnn(pack_padded_sequence(x, lengths, enforce_sorted=True))
            return pad_packed_sequence(out, total_length=x.shape[0])[0]

    model = Sorted().eval()
    x = torch.randn(6, 3, 4)
    steps, size = torch.export.Dim("T", min=2), torch.export.Dim("B", min=2)
    with rnnkit.exportable_packing():
        program = torch.export.export(model, (x, torch.tensor([6, 4, 2])),
                                      dynamic_shapes=({0: steps, 1: size}, {0: size}))
    run = program.module()
    torch.testing.assert_close(run(x, torch.tensor([5, 5, 1])), model(x, torch.tensor([5, 5, 1])))
    for bad, words in (([6, 4, 0], "Length of all samples has to be greater than 0"),
                       ([7, 4, 2], "at most the input's number of steps"),
                       ([2, 4, 6], "must be sorted in decreasing order")):
        with pytest.raises(RuntimeError, match=words):
            run(x, torch.tensor(bad))
        with pytest.raises(RuntimeError):  # as torch's packing does in eager
            model(x, torch.tensor(bad))


def test_the_context_changes_no_eager_result() -> None:
    """Called eagerly inside the context, packing runs torch's operators: outputs and gradients
    equal to the bit with those outside it."""
    model = Packed("LSTM", 2, True, False, True)
    x, lengths = batch(model, 9, 4)
    results = []
    for context in (rnnkit.exportable_packing(), contextlib.nullcontext()):
        with context:
            torch.manual_seed(3)  # the same dropout masks
            padded, h_n = model(x.requires_grad_(), lengths)
            grads = torch.autograd.grad((padded.sum() + h_n.square().sum()), [x, *model.parameters()])
            results.append([padded, h_n, *grads])
    for a, b in zip(*results):
        assert torch.equal(a, b)
