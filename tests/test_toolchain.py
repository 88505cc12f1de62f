"""rnnkit's layers inside the PyTorch toolchain: the fused kernels as operators (opcheck),
torch.compile, torch.export, ONNX with onnxruntime, TorchScript, torch.func, batched and
higher-order gradients, pruning and weight normalisation, and torch.nn.RNNBase's interface;
each against eager rnnkit, the reference engine or torch.nn."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.utils.prune
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import rnnkit
from rnnkit.engines import _library
from tests.helpers import weighted_sum

needs_kernels = pytest.mark.skipif(isinstance(_library.load(), str), reason="fused kernels unavailable")

CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "lstm": ("LSTM", {}),
    "gru-stacked-bidirectional": ("GRU", {"num_layers": 2, "bidirectional": True}),
    "rnn-relu-batch-first": ("RNN", {"nonlinearity": "relu", "batch_first": True}),
    "lstm-proj-layer-norm-bidirectional": ("LSTM", {"proj_size": 3, "layer_norm": True, "bidirectional": True}),
    "gru-layer-norm-learned-state": ("GRU", {"layer_norm": True, "learn_initial_state": True}),
    "lstm-noise": ("LSTM", {"num_layers": 2, "dropout": 0.3, "recurrent_dropout": 0.2, "zoneout": 0.1}),
}
"""Layer configurations every tool is tried on: stacked, bidirectional, each family, and every
rnnkit option (the noise ones act in training only)."""


def make(config: str, **extra: Any) -> nn.Module:
    name, options = CONFIGS[config]
    torch.manual_seed(0)
    return getattr(rnnkit, name)(4, 6, **options, **extra)


def inputs(layer: nn.Module, steps: int = 7, batch: int = 3) -> Tensor:
    x = torch.randn(steps, batch, 4)
    return x.transpose(0, 1).contiguous() if layer.batch_first else x


def lengths_for(batch: int) -> Tensor:
    return torch.tensor([7, 3, 5, 1, 6, 2][:batch])


def flat(result: Any) -> list[Tensor]:
    out, state = result
    if isinstance(out, PackedSequence):
        out = out.data
    return [out, *(state if isinstance(state, tuple) else (state,))]


def assert_all_close(actual: list[Tensor], expected: list[Tensor], tol: float = 1e-6) -> None:
    assert len(actual) == len(expected)
    for a, b in zip(actual, expected):
        torch.testing.assert_close(a, b, atol=tol, rtol=tol)


# -- the operators -----------------------------------------------------------------------------
@needs_kernels
@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN_TANH"])
@pytest.mark.parametrize("options", ["plain", "all", "layer_norm"])
def test_fused_operators_pass_opcheck(mode: str, options: str) -> None:
    """torch.library.opcheck: the schema, the fake kernel's shapes against the real kernel's, the
    autograd registration and AOT dispatch (what torch.compile relies on), for rnnkit::fused_rnn
    called as the layers call it."""
    torch.manual_seed(0)
    steps, batch, inputs_, hidden = 5, 3, 4, 6
    gates = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1}[mode] * hidden
    lstm = mode == "LSTM"
    full = options == "all"
    size = 2 if lstm and full else hidden

    def t(*shape: int, grad: bool = True) -> Tensor:
        return (torch.randn(*shape, dtype=torch.float64) * 0.5).requires_grad_(grad)

    norm = options == "layer_norm"  # the input side of the gates comes in, and the gains
    args = (t(steps, batch, gates) if norm else t(steps, batch, inputs_), None if norm else t(gates, inputs_),
            None if norm else t(gates), t(batch, size) if full else None,
            t(batch, hidden) if full and lstm else None, t(gates, size), t(gates), t(size, hidden) if lstm and full else None,
            t(gates) if norm else None, t(hidden) if norm and lstm else None, t(hidden) if norm and lstm else None,
            torch.tensor([5, 2, 4]) if full or norm else None,
            torch.rand(batch, size, dtype=torch.float64) if full else None,
            torch.rand(steps, batch, size) < 0.2 if full else None,
            torch.rand(steps, batch, hidden) < 0.2 if full and lstm else None, mode, True)
    torch.library.opcheck(torch.ops.rnnkit.fused_rnn.default, args)
    frozen = tuple(a.detach() if isinstance(a, Tensor) else a for a in args[:-1])
    torch.library.opcheck(torch.ops.rnnkit.fused_rnn.default, (*frozen, False))  # a call not differentiated


@needs_kernels
@pytest.mark.parametrize("mode, layers, directions, proj", [("LSTM", 2, 2, 0), ("GRU", 2, 1, 0), ("LSTM", 1, 2, 2),
                                                             ("RNN_TANH", 3, 2, 0)])
@pytest.mark.parametrize("one_call", [True, False])
def test_stack_operator_passes_opcheck(mode: str, layers: int, directions: int, proj: int, one_call: bool) -> None:
    """torch.library.opcheck for rnnkit::fused_stack (a whole stack, as torch.compile of a
    training step calls it) with lengths and initial states: schema, fake shapes against the
    real kernels', autograd registration (its backward, rnnkit::fused_stack_backward) and AOT
    dispatch; with one kernel call a pass, and with the cells' backward kernels in turn (large
    sizes)."""
    from rnnkit.engines import _fused_op

    torch.manual_seed(0)
    steps, batch, inputs_, hidden = 5, 3, 4, 6
    gates = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1}[mode] * hidden
    size = proj or hidden

    def t(*shape: int) -> Tensor:
        return (torch.randn(*shape, dtype=torch.float64) * 0.5).requires_grad_()

    flat: list[Tensor | None] = []
    for layer in range(layers):
        for _ in range(directions):
            width = inputs_ if layer == 0 else directions * size
            flat += [t(batch, size), t(batch, hidden) if mode == "LSTM" else None, t(gates, width), t(gates),
                     t(gates, size), t(gates), t(size, hidden) if proj else None]
    weights, present = _fused_op._present(flat)
    args = (t(steps, batch, inputs_), torch.tensor([5, 2, 4]), weights, present, mode, layers, directions)
    with _library.policy(**({} if one_call else {"kernel_weight_grads_max_work": 0})):
        plan = torch.ops.rnnkit._stack_plan(mode, torch.float64, layers, directions, steps, batch, inputs_, gates, size,
                                            1 if proj else 0)
        assert plan[0] == one_call
        torch.library.opcheck(torch.ops.rnnkit.fused_stack.default, args)


@needs_kernels
def test_the_backward_operators_refuse_to_be_differentiated() -> None:
    """rnnkit::fused_rnn_backward and rnnkit::fused_stack_backward have autograd kernels of their own
    (no boxed fallback at every backward pass): they give the gradients autograd gives, and where
    autograd records them, a gradient through their outputs fails saying where a graph of the
    gradient comes from (torch's fallback only warned)."""
    torch.manual_seed(0)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    w_ih, w_hh = torch.randn(24, 3, dtype=torch.float64), torch.randn(24, 6, dtype=torch.float64)
    weights, present = [w_ih, w_hh], [False, False, True, False, True, False, False]
    out, _, _, inner, revs, works = torch.ops.rnnkit.fused_stack(x, None, weights, present, "LSTM", 1, 1)
    *_, work = torch.ops.rnnkit.fused_rnn(x, w_ih, None, None, None, w_hh, None, None, None, None, None, None,
                                          None, None, None, "LSTM", True)
    d_out = torch.randn_like(out)
    needs = [True, True, True]

    def stack_backward(ws: list[Tensor]) -> list[Tensor]:
        return torch.ops.rnnkit.fused_stack_backward(d_out, None, None, x, None, ws, present, inner, revs, works,
                                                     "LSTM", 1, 1, needs)

    def cell_backward(w: Tensor) -> tuple[Tensor, ...]:
        return torch.ops.rnnkit.fused_rnn_backward(d_out, None, None, work, x, w_ih, w, None, None, None, None,
                                                   None, None, None, "LSTM", False, False, [True] * 11)

    leaves = [t.clone().requires_grad_() for t in (x, w_ih, w_hh)]
    expected = torch.autograd.grad(torch.ops.rnnkit.fused_stack(leaves[0], None, leaves[1:], present, "LSTM", 1, 1)[0],
                                   leaves, d_out)
    cell = cell_backward(w_hh)  # dx, dw_ih, ..., dw_hh at 5
    for got in (stack_backward(weights), (cell[0], cell[1], cell[5])):
        assert all(torch.equal(a, b) for a, b in zip(got, expected))
    tracked = w_hh.clone().requires_grad_()
    with torch.no_grad():  # as the backward passes call them
        assert torch.equal(stack_backward([w_ih, tracked])[2], expected[2])
        assert torch.equal(cell_backward(tracked)[5], expected[2])
    # where autograd records (a traced training step run as a graph): the same numbers, and a
    # gradient through them fails
    for name, got in (("fused_stack_backward", stack_backward([w_ih, tracked])[2]),
                      ("fused_rnn_backward", cell_backward(tracked)[5])):
        assert torch.equal(got, expected[2]) and got.requires_grad
        with pytest.raises(RuntimeError, match=rf"rnnkit::{name} has no derivative: .* create_graph=True"):
            got.sum().backward()


@needs_kernels
def test_fused_operator_checks_lengths_and_device() -> None:
    """The operators refuse lengths outside [1, T] themselves (a traced layer passes them
    unchecked), and declare CPU kernels only: on CUDA the layers run cuDNN or the reference engine."""
    x = torch.randn(4, 2, 3)
    w_ih, w_hh = torch.randn(5, 3), torch.randn(5, 5)
    with pytest.raises(ValueError, match=r"expected 2 lengths in \[1, 4\], got \[5, 1\]"):
        torch.ops.rnnkit.fused_rnn(x, w_ih, None, None, None, w_hh, None, None, None, None, None,
                                   torch.tensor([5, 1]), None, None, None, "RNN_TANH", False)
    weights = [torch.randn(5, 3), torch.randn(5, 5)]  # a stack of one RNN cell: w_ih, w_hh
    present = [False, False, True, False, True, False, False]
    with pytest.raises(ValueError, match=r"expected 2 lengths in \[1, 4\], got \[5, 1\]"):
        torch.ops.rnnkit.fused_stack(x, torch.tensor([5, 1]), weights, present, "RNN_TANH", 1, 1)
    for op in (torch.ops.rnnkit.fused_rnn.default, torch.ops.rnnkit.fused_rnn_backward.default,
               torch.ops.rnnkit.fused_stack.default, torch.ops.rnnkit.fused_stack_backward.default):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(op.name(), "CPU")
        assert not torch._C._dispatch_has_kernel_for_dispatch_key(op.name(), "CUDA")


@needs_kernels
@pytest.mark.parametrize("tracing_mode", ["real", "fake", "symbolic"])
def test_tracers_see_the_operators(tracing_mode: str) -> None:
    """A tracer that watches plain tensors (make_fx, in each of its modes) still records the operators, forward
    and backward, never the numbers of one run: the traced graph computes other inputs right."""
    from torch.fx.experimental.proxy_tensor import make_fx
    from torch.func import functional_call

    layer = make("lstm-proj-layer-norm-bidirectional")

    def step(x: Tensor, weights: Tensor, params: dict[str, Tensor]) -> list[Tensor]:
        out = functional_call(layer, params, (x,), {"lengths": [7, 2, 5]})[0]
        return [out, *torch.autograd.grad((out * weights).sum(), [x, *params.values()])]

    def arguments() -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        x = inputs(layer).requires_grad_()
        params = {k: torch.randn_like(v).requires_grad_() for k, v in layer.named_parameters()}
        return x, torch.randn(7, 3, 6), params  # out: (T, B, D*R)

    graph = make_fx(step, tracing_mode=tracing_mode)(*arguments())
    targets = [n.target for n in graph.graph.nodes if n.op == "call_function"]
    assert targets.count(torch.ops.rnnkit.fused_rnn.default) == 2
    assert targets.count(torch.ops.rnnkit.fused_rnn_backward.default) == 2
    other = arguments()
    assert_all_close(graph(*other), step(*other), 1e-5)


# -- torch.compile -------------------------------------------------------------------------------
@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("call", ["plain", "lengths-list", "lengths-tensor", "packed", "packed-sorted", "unbatched"])
def test_compile_fullgraph_equals_eager(config: str, call: str) -> None:
    """torch.compile(fullgraph=True) traces every configuration without a graph break (or it
    raises), forward and backward, in training (the masks drawn as eager draws them) and at eval,
    and gives eager's outputs and gradients. (aot_eager: dynamo, fake tensors and AOTAutograd,
    without the time of generating code; test_compile_inductor runs the whole compiler.)"""
    torch._dynamo.reset()
    layer = make(config)
    x = inputs(layer, batch=4)
    kwargs: dict[str, Any] = {}
    if call == "lengths-list":
        kwargs["lengths"] = [7, 3, 5, 1]
    elif call == "lengths-tensor":
        kwargs["lengths"] = lengths_for(4)
    elif call.startswith("packed"):
        if layer.batch_first:
            pytest.skip("a PackedSequence has no layout")
        sorted_ = call == "packed-sorted"
        x = pack_padded_sequence(x, [7, 6, 3, 1] if sorted_ else [7, 3, 5, 1], enforce_sorted=sorted_)
    elif call == "unbatched":
        x = x[0] if layer.batch_first else x[:, 0]
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    params = list(layer.parameters())
    for training in (True, False):
        layer.train(training)
        results = []
        for run in (layer, compiled):
            torch.manual_seed(5)  # the same dropout, recurrent dropout and zoneout masks
            data = x.data if isinstance(x, PackedSequence) else x
            leaf = data.detach().clone().requires_grad_()
            arg = PackedSequence(leaf, *x[1:]) if isinstance(x, PackedSequence) else leaf
            outs = flat(run(arg, **kwargs))
            results.append(outs + list(torch.autograd.grad(weighted_sum(outs), [leaf, *params])))
        assert_all_close(results[1], results[0])


@needs_kernels
def test_compile_inductor_equals_eager() -> None:
    """The default backend (inductor, generated code around the opaque operator) too."""
    torch._dynamo.reset()
    layer = make("lstm-proj-layer-norm-bidirectional")
    x = inputs(layer)
    compiled = torch.compile(layer, fullgraph=True)
    with warnings.catch_warnings():  # inductor's own use of torch.jit, deprecated upstream
        warnings.filterwarnings("ignore", message=".*torch.jit.* is deprecated", category=DeprecationWarning)
        got = flat(compiled(x, lengths=[7, 2, 5]))
    assert_all_close(got, flat(layer(x, lengths=[7, 2, 5])), 1e-5)


@pytest.mark.parametrize("family, call", [("LSTM", "plain"), ("GRU", "plain"), ("GRU", "lengths"), ("RNN", "packed")])
def test_compile_native_engine_equals_eager(family: str, call: str) -> None:
    """engine='native' (what engine='auto' runs on CUDA) compiles with fullgraph=True and equals
    eager: torch's kernel stays in the graph where the tools take it (GRU and RNN without
    lengths), and the reference equations stand in where they do not (variable lengths, packed
    by torch.nn.utils.rnn, which dynamo refuses; oneDNN's LSTM kernel on CPU, which inductor
    mishandles)."""
    torch._dynamo.reset()
    layer = getattr(rnnkit, family)(4, 5, bidirectional=True, engine="native")
    x = torch.randn(6, 3, 4)
    kwargs: dict[str, Any] = {"lengths": [6, 2, 4]} if call == "lengths" else {}
    graphs: list[torch.fx.GraphModule] = []

    def backend(gm: torch.fx.GraphModule, example_inputs: Any) -> Any:
        graphs.append(gm)  # dynamo's graph: the calls the layer made, before AOTAutograd
        return torch._dynamo.lookup_backend("aot_eager")(gm, example_inputs)

    compiled = torch.compile(layer, fullgraph=True, backend=backend)
    params = list(layer.parameters())
    results = []
    for run in (layer, compiled):
        leaf = x.clone().requires_grad_()
        arg = pack_padded_sequence(leaf, [6, 2, 4], enforce_sorted=False) if call == "packed" else leaf
        outs = flat(run(arg, **kwargs))
        results.append(outs + list(torch.autograd.grad(weighted_sum(outs), [leaf, *params])))
    assert_all_close(results[1], results[0], 1e-5)
    kernel = {"LSTM": torch.lstm, "GRU": torch.gru, "RNN": torch.rnn_tanh}[family]
    in_graph = any(n.target is kernel for g in graphs for n in g.graph.nodes)
    assert in_graph == (family != "LSTM" and call == "plain")


def test_engines_for_compile_per_device(monkeypatch: Any) -> None:
    """The engine a compiled call runs, per device (a meta tensor stands for CUDA's): torch's
    kernels unless they meet variable lengths, or oneDNN's LSTM on CPU; other engines as chosen."""
    from rnnkit.engines import ENGINES, for_tools

    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)

    def pick(family: str, engine: str, device: str, lengths: bool) -> str:
        config = getattr(rnnkit, family)(4, 5)._config()
        return for_tools(ENGINES[engine], config, torch.empty(6, 3, 4, device=device), lengths=lengths).name

    assert pick("LSTM", "native", "meta", False) == "native"  # cuDNN, as torch.nn
    assert pick("GRU", "native", "meta", False) == "native"
    assert pick("LSTM", "native", "meta", True) == "reference"
    assert pick("GRU", "native", "cpu", False) == "native"
    assert pick("GRU", "native", "cpu", True) == "reference"
    assert pick("LSTM", "native", "cpu", False) == "reference"
    assert pick("LSTM", "fused", "cpu", True) == "fused"
    assert pick("GRU", "reference", "meta", True) == "reference"


@needs_kernels
def test_compile_sees_one_operator_for_a_stack() -> None:
    """torch.compile of a training step: a stacked bidirectional layer is one operator each way
    (rnnkit::fused_stack and its backward), not one per layer and direction, and equals eager."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    graphs: list[Any] = []

    def capture(gm: Any, _: Any) -> Any:
        graphs.append(gm)
        return make_boxed_func(gm.forward)

    torch._dynamo.reset()
    layer = make("gru-stacked-bidirectional")
    compiled = torch.compile(layer, fullgraph=True, backend=aot_autograd(fw_compiler=capture, bw_compiler=capture))
    results = []
    data = inputs(layer)
    for run in (layer, compiled):
        x = data.clone().requires_grad_()
        outs = flat(run(x, lengths=lengths_for(3)))
        results.append(outs + list(torch.autograd.grad(weighted_sum(outs), [x, *layer.parameters()])))
    assert_all_close(results[1], results[0])
    targets = [n.target for g in graphs for n in g.graph.nodes if n.op == "call_function"]
    assert targets.count(torch.ops.rnnkit.fused_stack.default) == 1
    assert targets.count(torch.ops.rnnkit.fused_stack_backward.default) == 1
    assert torch.ops.rnnkit.fused_rnn.default not in targets


# -- torch.export and ONNX ---------------------------------------------------------------------
class Tagger(nn.Module):
    """A model as users export one: a recurrent layer and a linear head on its output."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.rnn = layer
        self.head = nn.Linear(layer.out_size * layer.num_directions, 2)

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        out, _ = self.rnn(x, lengths=lengths)
        return self.head(out)


def dynamic(layer: nn.Module) -> tuple[dict[int, Any], dict[int, Any]]:
    steps, batch = torch.export.Dim("T", min=2, max=4096), torch.export.Dim("B", min=2, max=4096)
    return ({1: steps, 0: batch} if layer.batch_first else {0: steps, 1: batch}), {0: batch}


@pytest.mark.parametrize("config", list(CONFIGS))
def test_export_with_dynamic_length_and_batch(config: str) -> None:
    """torch.export.export with dynamic T and B: the exported program gives eager's outputs at
    other T and B, and holds the fused operator (one per layer and direction) rather than an
    unrolled loop."""
    model = Tagger(make(config)).eval()
    x = inputs(model.rnn)
    program = torch.export.export(model, (x, lengths_for(3)), dynamic_shapes=dynamic(model.rnn))
    for steps, batch in ((11, 5), (2, 2), (7, 3)):
        other = inputs(model.rnn, steps, batch)
        lengths = lengths_for(batch).clamp(max=steps)
        torch.testing.assert_close(program.module()(other, lengths), model(other, lengths), atol=1e-6, rtol=1e-6)
    if _library.unavailable() is None:
        ops = [n.target for n in program.graph.nodes if n.op == "call_function"]
        calls = model.rnn.num_layers * model.rnn.num_directions
        assert ops.count(torch.ops.rnnkit.fused_rnn.default) == calls


@pytest.mark.parametrize("family", ["GRU", "RNN"])
def test_export_native_engine_with_dynamic_length(family: str) -> None:
    """engine='native' exports with dynamic T and B too: on CPU torch's GRU and RNN kernels would
    fix T in the graph, so the exported program holds the reference equations (a scan over
    time), with eager's numbers at other T and B."""
    layer = getattr(rnnkit, family)(4, 5, engine="native").eval()
    sizes = {0: torch.export.Dim("T"), 1: torch.export.Dim("B")}
    program = torch.export.export(layer, (torch.randn(6, 3, 4),), dynamic_shapes=(sizes,))
    for steps, batch in ((11, 5), (2, 2)):
        x = torch.randn(steps, batch, 4)
        assert_all_close(flat(program.module()(x)), flat(layer(x)), 1e-5)
    kernel = {"GRU": torch.ops.aten.gru.input, "RNN": torch.ops.aten.rnn_tanh.input}[family]
    assert all(n.target is not kernel for n in program.graph.nodes)


SLOW = pytest.mark.end_to_end  # ONNX exports, 4-10 s each: CI runs them (pytest -m end_to_end), the default run one
ONNX_CONFIGS = ["lstm", pytest.param("gru-stacked-bidirectional", marks=SLOW),
                pytest.param("lstm-proj-layer-norm-bidirectional", marks=SLOW),
                pytest.param("rnn-relu-batch-first", marks=SLOW), pytest.param("gru-layer-norm-learned-state", marks=SLOW)]


@pytest.mark.parametrize("config", ONNX_CONFIGS)
def test_onnx_export_runs_in_onnxruntime(config: str, tmp_path: Path) -> None:
    """torch.onnx.export(dynamo=True) exports the recurrence as an ONNX Scan: onnxruntime runs
    the model at other T and B with eager's numbers (1e-5), lengths, projection and layer
    normalisation included."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    model = Tagger(make(config)).eval()
    x = inputs(model.rnn)
    with warnings.catch_warnings():  # the exporter's own notes on renamed dynamic axes
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, (x, lengths_for(3)), dynamic_shapes=dynamic(model.rnn), dynamo=True)
    assert program is not None
    path = tmp_path / "model.onnx"
    program.save(str(path))
    session = ort.InferenceSession(str(path))
    for steps, batch in ((11, 5), (3, 2)):
        other = inputs(model.rnn, steps, batch)
        lengths = lengths_for(batch).clamp(max=steps)
        feeds = {i.name: a.numpy() for i, a in zip(session.get_inputs(), (other, lengths))}
        (got,) = session.run(None, feeds)
        torch.testing.assert_close(torch.from_numpy(got), model(other, lengths).detach(), atol=1e-5, rtol=1e-5)
    assert any(node.op_type == "Scan" for node in _all_nodes(program.model_proto.graph))


@needs_kernels
@SLOW
def test_onnx_from_an_exported_program_with_the_operator(tmp_path: Path) -> None:
    """A program exported first (torch.export, holding rnnkit::fused_rnn) converts to ONNX after
    run_decompositions(rnnkit.engines.onnx_decompositions()): the operator becomes the reference
    equations in one scan (ONNX Scan)."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    model = Tagger(make("lstm-proj-layer-norm-bidirectional")).eval()
    x = inputs(model.rnn)
    program = torch.export.export(model, (x, lengths_for(3)), dynamic_shapes=dynamic(model.rnn))
    assert any(n.target == torch.ops.rnnkit.fused_rnn.default for n in program.graph.nodes)
    from rnnkit.engines import onnx_decompositions

    onnx_program = torch.onnx.export(program.run_decompositions(onnx_decompositions()), dynamo=True, verbose=False)
    assert onnx_program is not None
    onnx_program.save(str(tmp_path / "model.onnx"))
    session = ort.InferenceSession(str(tmp_path / "model.onnx"))
    other, lengths = inputs(model.rnn, 9, 4), lengths_for(4)
    (got,) = session.run(None, {i.name: a.numpy() for i, a in zip(session.get_inputs(), (other, lengths))})
    torch.testing.assert_close(torch.from_numpy(got), model(other, lengths).detach(), atol=1e-5, rtol=1e-5)


def _all_nodes(graph: Any) -> list[Any]:
    nodes = list(graph.node)
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.g is not None and len(attribute.g.node):
                nodes += _all_nodes(attribute.g)
    return nodes


def test_legacy_onnx_exporter_is_refused(tmp_path: Path) -> None:
    """The TorchScript-based exporter would record one run's numbers as constants: rnnkit's
    layers refuse it and name the exporter to use."""
    model = Tagger(rnnkit.LSTM(4, 6)).eval()
    x = torch.randn(5, 2, 4)
    cache = torch.is_autocast_cache_enabled()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            with pytest.raises(Exception, match=r"torch.onnx.export\(model, args, dynamo=True\)"):
                torch.onnx.export(model, (x, torch.tensor([5, 3])), str(tmp_path / "m.onnx"), dynamo=False)
    finally:  # torch's exporter turns autocast's weight cache off and, when tracing raises, leaves it off
        torch.set_autocast_cache_enabled(cache)
    assert not (tmp_path / "m.onnx").exists()


# -- TorchScript -------------------------------------------------------------------------------
@pytest.mark.parametrize("config", ["lstm", "gru-stacked-bidirectional", "lstm-proj-layer-norm-bidirectional"])
def test_jit_trace_saves_and_runs_at_other_lengths(config: str, tmp_path: Path) -> None:
    """torch.jit.trace passes its own check, saves, loads, and the loaded module gives eager's
    outputs at another T (the fused operator is one node of the traced graph)."""
    layer = make(config).eval()
    x = inputs(layer)
    with warnings.catch_warnings():  # torch.jit is deprecated upstream; it still works
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("error", torch.jit.TracerWarning)  # no value the trace would fix silently
        traced = torch.jit.trace(layer, (x,))
        traced.save(str(tmp_path / "layer.pt"))
        loaded = torch.jit.load(str(tmp_path / "layer.pt"))
    other = inputs(layer, 12, 2)
    assert_all_close(flat(loaded(other)), flat(layer(other)))


@pytest.mark.parametrize("family", ["LSTM", "GRU"])
def test_jit_trace_with_torch_kernels(family: str, tmp_path: Path) -> None:
    """engine='native' (what auto runs on CUDA) traces too: the trace passes its own check (run
    again under no_grad, torch's kernels get the same training flag), saves, loads, gives eager's
    outputs at another T, and trains (its backward)."""
    layer = getattr(rnnkit, family)(3, 4, num_layers=2, bidirectional=True, engine="native")
    x = torch.randn(5, 2, 3)
    with warnings.catch_warnings():  # torch.jit is deprecated upstream; it still works
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("error", torch.jit.TracerWarning)
        traced = torch.jit.trace(layer, (x,))
        traced.save(str(tmp_path / "layer.pt"))
        loaded = torch.jit.load(str(tmp_path / "layer.pt"))
    other = torch.randn(9, 3, 3, requires_grad=True)
    got, expected = flat(loaded(other)), flat(layer(other))
    assert_all_close(got, expected)
    assert_all_close(list(torch.autograd.grad(got[0].sum(), other)), list(torch.autograd.grad(expected[0].sum(), other)))


def test_jit_script_is_refused_with_what_to_use() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        with pytest.raises(RuntimeError, match=r"LSTM: torch.jit.script cannot compile rnnkit's layers .* torch.jit.trace"):
            torch.jit.script(nn.Sequential(rnnkit.LSTM(3, 4)))


# -- torch.func and batched gradients ------------------------------------------------------------
@pytest.mark.parametrize("engine", ["auto", "native", "reference"])
@pytest.mark.parametrize("family", ["LSTM", "GRU"])
def test_torch_func_transforms_equal_the_reference_engine(engine: str, family: str) -> None:
    """vmap, jacrev, jacfwd, grad over parameters (functional_call), autograd.grad with
    is_grads_batched and jacobian(vectorize=True) give the reference engine's numbers."""
    from torch.func import functional_call, grad, jacfwd, jacrev, vmap

    torch.manual_seed(0)
    options = {"bidirectional": True, "proj_size": 2} if family == "LSTM" else {"num_layers": 2}
    layer = getattr(rnnkit, family)(3, 4, dtype=torch.float64, engine=engine, **options)
    reference = getattr(rnnkit, family)(3, 4, dtype=torch.float64, engine="reference", **options)
    reference.load_state_dict(layer.state_dict())
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    stack = torch.randn(3, 5, 2, 3, dtype=torch.float64)
    cotangents = torch.randn(4, 5, 2, layer.out_size * layer.num_directions, dtype=torch.float64)

    def results(m: nn.Module) -> list[Tensor]:
        f = lambda x_: m(x_, lengths=[5, 3])[0]  # noqa: E731
        params = dict(m.named_parameters())
        xg = x.clone().requires_grad_()
        batched, = torch.autograd.grad(f(xg), xg, cotangents, is_grads_batched=True)
        per_param = grad(lambda p: functional_call(m, p, (x,))[0].pow(2).sum())(params)
        return [vmap(f)(stack), jacrev(f)(x), jacfwd(f)(x), batched,
                torch.autograd.functional.jacobian(f, x, vectorize=True), *per_param.values()]

    with warnings.catch_warnings():  # torch.func's own use of torch.jit.script, deprecated upstream
        warnings.filterwarnings("ignore", message=".*torch.jit.script. is deprecated", category=DeprecationWarning)
        assert_all_close(results(layer), results(reference), 1e-10)


def test_forward_mode_ad_with_torch_kernels() -> None:
    """engine='native' under forward-mode AD (torch.func.jvp, jacfwd): oneDNN's LSTM kernel (float32
    on CPU), as cuDNN's, has no forward-mode derivative, so such a call runs the reference
    equations and gives the reference engine's numbers."""
    from torch.func import jvp

    torch.manual_seed(0)
    layer = rnnkit.LSTM(3, 4, num_layers=2, engine="native")
    reference = rnnkit.LSTM(3, 4, num_layers=2, engine="reference")
    reference.load_state_dict(layer.state_dict())
    x, tangent = torch.randn(5, 2, 3), torch.randn(5, 2, 3)
    got = jvp(lambda x_: layer(x_)[0], (x,), (tangent,))
    expected = jvp(lambda x_: reference(x_)[0], (x,), (tangent,))
    assert_all_close(list(got), list(expected), 1e-5)


# -- torch.nn's contract ------------------------------------------------------------------------
@pytest.mark.parametrize("engine", ["auto", "fused", "native", "reference"])
@pytest.mark.parametrize("family", ["LSTM", "GRU", "RNN"])
def test_empty_batch_as_torch(engine: str, family: str) -> None:
    """A batch of 0 sequences gives torch.nn's empty outputs and states, and zero-size gradients."""
    if engine == "fused" and _library.unavailable() is not None:
        pytest.skip("fused kernels unavailable")
    ours = getattr(rnnkit, family)(3, 4, num_layers=2, bidirectional=True, engine=engine)
    theirs = getattr(nn, family)(3, 4, num_layers=2, bidirectional=True)
    x = torch.randn(5, 0, 3, requires_grad=True)
    got, expected = flat(ours(x)), flat(theirs(x))
    assert [t.shape for t in got] == [t.shape for t in expected]
    got[0].sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape


@pytest.mark.parametrize("family", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("options", [{}, {"num_layers": 2, "bidirectional": True, "bias": False, "batch_first": True,
                                          "dropout": 0.5}])
def test_torch_internal_attributes_and_repr(family: str, options: dict[str, Any]) -> None:
    """What third-party code reads of torch.nn.RNNBase: _flat_weights_names, _all_weights,
    _flat_weights, all_weights, check_forward_args, permute_hidden; and repr, all as torch.nn's
    when no rnnkit option is set."""
    if family == "LSTM":
        options = dict(options, proj_size=2)
    ours, theirs = getattr(rnnkit, family)(3, 4, **options), getattr(nn, family)(3, 4, **options)
    theirs.load_state_dict(ours.state_dict())
    assert repr(ours) == repr(theirs)
    assert ours._flat_weights_names == theirs._flat_weights_names
    assert ours._all_weights == theirs._all_weights
    assert all(torch.equal(a, b) for a, b in zip(ours._flat_weights, theirs._flat_weights))
    assert [[p.shape for p in w] for w in ours.all_weights] == [[p.shape for p in w] for w in theirs.all_weights]
    x = torch.randn(2, 5, 3) if ours.batch_first else torch.randn(5, 2, 3)
    h = torch.zeros(ours.num_layers * ours.num_directions, 2, ours.out_size)
    hidden: Any = (h, torch.zeros(h.shape[0], 2, 4)) if family == "LSTM" else h
    ours.check_forward_args(x, hidden, None)
    theirs.check_forward_args(x, hidden, None)
    bad = torch.zeros(h.shape[0], 3, h.shape[2])
    with pytest.raises(RuntimeError, match="Expected hidden"):
        ours.check_forward_args(x, (bad, hidden[1]) if family == "LSTM" else bad, None)
    order = torch.tensor([1, 0])
    state: Any = h + torch.arange(2.0).view(1, 2, 1)
    if family == "LSTM":
        state = (state, torch.randn(h.shape[0], 2, 4))
    torch.testing.assert_close(ours.permute_hidden(state, order), theirs.permute_hidden(state, order))
    assert "engine" not in repr(ours) and "engine='reference'" in repr(getattr(rnnkit, family)(3, 4, engine="reference"))


@pytest.mark.parametrize("tool", ["prune", "weight_norm", "weight_norm_hook", "spectral_norm"])
@pytest.mark.parametrize("engine", ["auto", "reference"])
def test_prune_and_weight_norm_as_torch(tool: str, engine: str) -> None:
    """torch.nn.utils.prune, weight_norm (the parametrization and the old hook form) and
    spectral_norm on any weight: the layer computes with the treated weights, as torch.nn.LSTM
    given the same treatment, and trains them (gradients reach the original parameters)."""
    ours, theirs = rnnkit.LSTM(3, 5, num_layers=2, engine=engine), nn.LSTM(3, 5, num_layers=2)
    theirs.load_state_dict(ours.state_dict())
    for module in (ours, theirs):
        for name in ("weight_hh_l0", "weight_ih_l1"):
            torch.manual_seed(1)
            if tool == "prune":
                nn.utils.prune.random_unstructured(module, name, amount=0.5)
            elif tool == "weight_norm":
                nn.utils.parametrizations.weight_norm(module, name)
            elif tool == "spectral_norm":
                nn.utils.parametrizations.spectral_norm(module, name)
            else:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", FutureWarning)
                    nn.utils.weight_norm(module, name)
    ours.eval(), theirs.eval()  # spectral_norm's power iteration runs in training only
    x = torch.randn(4, 2, 3)
    with warnings.catch_warnings():  # torch.nn.LSTM: its weights are no longer one contiguous chunk
        warnings.simplefilter("ignore", UserWarning)
        got, expected = flat(ours(x)), flat(theirs(x))
    assert_all_close(got, expected)
    trained = [p for p in ours.parameters() if p.requires_grad]
    grads = torch.autograd.grad(weighted_sum(got), trained)
    assert all(g is not None for g in grads) and len(grads) == len(list(theirs.parameters()))


def test_copy_pickle_and_save_as_torch() -> None:
    """deepcopy, pickle and torch.save/torch.load of a whole layer give a layer that computes the same."""
    import copy
    import io
    import pickle

    layer = make("lstm-proj-layer-norm-bidirectional").eval()
    x = inputs(layer)
    buffer = io.BytesIO()
    torch.save(layer, buffer)
    buffer.seek(0)
    for other in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer)), torch.load(buffer, weights_only=False)):
        assert_all_close(flat(other(x)), flat(layer(x)), 0.0)
