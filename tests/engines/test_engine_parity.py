"""The fused and native engines against the reference engine: outputs, final states and every
gradient over generated configurations (rnnkit's training-time options included: the layer
draws the masks, so with the same seed both engines see the same ones); gradcheck; the kernels'
own exp and tanh; and how engine='auto' chooses and falls back."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import rnnkit
from rnnkit.engines import _library
from tests.helpers import assert_close, weighted_sum
from tests.test_gradcheck import check as gradcheck_module

pytestmark = pytest.mark.skipif(
    isinstance(_library.load(), str), reason=f"fused kernels unavailable: {_library.load()}"
)

FAMILIES = {"rnn_tanh": ("RNN", {"nonlinearity": "tanh"}), "rnn_relu": ("RNN", {"nonlinearity": "relu"}),
            "lstm": ("LSTM", {}), "gru": ("GRU", {})}


@dataclass(frozen=True)
class Case:
    family: str
    options: tuple[tuple[str, Any], ...]
    inputs: str  # batched | unbatched | lengths | packed
    with_hx: bool
    training: bool
    steps: int
    batch: int
    input_size: int
    hidden_size: int
    seed: int


@st.composite
def cases(draw: st.DrawFn, *, noise: bool = True) -> Case:
    """noise=False: no recurrent dropout, zoneout or layer norm (what torch's own kernels run)."""
    options = {
        "num_layers": draw(st.integers(1, 3)),
        "bidirectional": draw(st.booleans()),
        "batch_first": draw(st.booleans()),
        "bias": draw(st.booleans()),
        "recurrent_dropout": draw(st.sampled_from([0.0, 0.3] if noise else [0.0])),
        "zoneout": draw(st.sampled_from([0.0, 0.25, 1.0] if noise else [0.0])),
        "layer_norm": draw(st.booleans()) if noise else False,
        "learn_initial_state": draw(st.booleans()),
    }
    if options["num_layers"] > 1:
        options["dropout"] = draw(st.sampled_from([0.0, 0.4]))
    family = draw(st.sampled_from(list(FAMILIES)))
    hidden = draw(st.sampled_from([1, 2, 5, 17, 40]))
    if family == "lstm" and hidden > 1:
        options["proj_size"] = draw(st.sampled_from([0, 0, 1, hidden - 1]))
    return Case(
        family=family,
        options=tuple(options.items()),
        inputs=draw(st.sampled_from(["batched", "unbatched", "lengths", "packed"])),
        with_hx=draw(st.booleans()),
        training=draw(st.booleans()),
        # sizes up to 40: the per-step products' partial tiles and panels, and whole ones
        steps=draw(st.integers(1, 6)),
        batch=draw(st.integers(1, 5)),
        input_size=draw(st.integers(1, 6)),
        hidden_size=hidden,
        seed=draw(st.integers(0, 2**16)),
    )


def outputs(result: tuple[Any, Any]) -> list[Tensor]:
    out, hidden = result
    if isinstance(out, torch.nn.utils.rnn.PackedSequence):
        out = pad_packed_sequence(out)[0]
    return [out, *(hidden if isinstance(hidden, tuple) else (hidden,))]


def check_case(case: Case, dtype: torch.dtype, engine: str = "fused", *, grad: bool = True) -> None:
    """The layer on engine against the same layer on the reference engine; grad=False: the
    forward pass alone under torch.no_grad (the fused engine then keeps nothing for a backward)."""
    if dtype == torch.float32 and dict(case.options).get("layer_norm"):
        # In float32 a layer-normalised RNN's gradients are only good to ~2e-4 in either engine
        # (layer norm divides by small standard deviations: 1/sqrt(eps) ~ 316 at h_0 = 0), so the
        # engines cannot agree to 1e-5. float64 checks these cases to 1e-10, and
        # test_fused_layer_norm_float32_is_as_accurate_as_reference checks float32 against the truth.
        case = dataclasses.replace(case, options=tuple((k, False if k == "layer_norm" else v) for k, v in case.options))
    name, extra = FAMILIES[case.family]
    options = dict(case.options, **extra)
    torch.manual_seed(case.seed)
    ref = getattr(rnnkit, name)(case.input_size, case.hidden_size, engine="reference", dtype=dtype, **options)
    fused = getattr(rnnkit, name)(case.input_size, case.hidden_size, engine=engine, dtype=dtype, **options)
    with torch.no_grad():  # torch.nn's initialisation for the weights; learned states off 0,
        for name_, p in ref.named_parameters():  # layer-norm gains and shifts off 1 and 0
            if name_.startswith("initial_"):
                p.uniform_(-0.5, 0.5)
            elif name_.startswith("ln_"):
                p.uniform_(0.5, 1.5)
    fused.load_state_dict(ref.state_dict())
    ref.train(case.training), fused.train(case.training)

    d = 2 if options["bidirectional"] else 1
    k = options["num_layers"]
    batched = case.inputs != "unbatched"
    lead = (case.batch, case.steps) if options["batch_first"] else (case.steps, case.batch)
    x = torch.randn(*lead, case.input_size, dtype=dtype)
    if not batched:
        x = x[0] if options["batch_first"] else x[:, 0]
    x.requires_grad_(True)
    lengths = torch.randint(1, case.steps + 1, (case.batch,))
    lengths[0] = case.steps
    hx_leaves: list[Tensor] = []
    hx: Any = None
    if case.with_hx:
        lead = (k * d, case.batch) if batched else (k * d,)
        sizes = [options.get("proj_size") or case.hidden_size] + ([case.hidden_size] if name == "LSTM" else [])
        hx_leaves = [torch.randn(*lead, size, dtype=dtype, requires_grad=True) for size in sizes]
        hx = tuple(hx_leaves) if name == "LSTM" else hx_leaves[0]

    results = []
    for layer in (ref, fused):
        torch.manual_seed(case.seed + 1)  # the same masks for both engines
        with torch.set_grad_enabled(grad):
            if case.inputs == "lengths":
                result = layer(x, hx, lengths=lengths)
            elif case.inputs == "packed":
                result = layer(pack_padded_sequence(x, lengths, batch_first=options["batch_first"], enforce_sorted=False), hx)
            else:
                result = layer(x, hx)
        results.append(outputs(result))
    for a, b in zip(results[1], results[0]):
        assert_close(a, b, f"{engine} vs reference")
    if not grad:
        assert not any(a.requires_grad for a in results[1])
        return
    grads = [torch.autograd.grad(weighted_sum(outs), [x, *hx_leaves, *layer.parameters()],
                                 retain_graph=True, allow_unused=True)  # initial_h unused with hx
             for outs, layer in zip(results, (ref, fused))]
    names = ["input"] + ["hx"] * len(hx_leaves) + [n for n, _ in ref.named_parameters()]
    for name_, g_ref, g_fused in zip(names, *grads):
        assert (g_ref is None) == (g_fused is None), name_
        if g_ref is not None:
            assert_close(g_fused, g_ref, f"grad of {name_}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@settings(max_examples=120, deadline=None, derandomize=True)
@given(case=cases())
def test_fused_matches_reference(case: Case, dtype: torch.dtype) -> None:
    check_case(case, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@settings(max_examples=60, deadline=None, derandomize=True)
@given(case=cases())
def test_fused_inference_matches_reference(case: Case, dtype: torch.dtype) -> None:
    check_case(case, dtype, grad=False)


@pytest.mark.parametrize("family, hidden, extra", [
    ("lstm", 128, {}), ("lstm", 256, {"proj_size": 64}), ("gru", 160, {}), ("rnn_tanh", 256, {}),
    ("lstm", 128, {"layer_norm": True, "bidirectional": True})])
@pytest.mark.parametrize("steps, batch", [(1, 1), (2, 1), (1, 2)])
@pytest.mark.parametrize("grad", [True, False])
def test_fused_one_step_with_large_weights_matches_reference(family: str, hidden: int, extra: dict[str, Any],
                                                             steps: int, batch: int, grad: bool) -> None:
    """A step or two with a large W_hh, where the forward kernel reads the weights where they lie
    (dot products along their rows) instead of in panels, as when a model generates one token at
    a time: the reference engine's outputs, and in training its gradients (the backward pass
    keeps its panels and reads the forward's saved arrays)."""
    gates = {"lstm": 4, "gru": 3, "rnn_tanh": 1}[family] * hidden
    rows_max = torch.ops.rnnkit._policy("rows_mode_max")
    min_weights = torch.ops.rnnkit._policy("rows_mode_min_weights")
    assert steps * batch <= rows_max and gates * extra.get("proj_size", hidden) >= min_weights  # the case it tests
    options = {"num_layers": 2, "bidirectional": False, "batch_first": False, "bias": True, "recurrent_dropout": 0.0,
               "zoneout": 0.0, "layer_norm": False, "learn_initial_state": False, **extra}
    case = Case(family=family, options=tuple(options.items()), inputs="lengths", with_hx=True, training=True,
                steps=steps, batch=batch, input_size=8, hidden_size=hidden, seed=0)
    check_case(case, torch.float64, grad=grad)


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("grad", [True, False])
def test_fused_matches_reference_at_larger_sizes(family: str, grad: bool) -> None:
    """Sizes where the per-step products run whole register tiles (16 rows) over many column
    panels, in both directions, with lengths."""
    for layer_norm in (False, True):
        options = (("num_layers", 2), ("bidirectional", True), ("batch_first", False), ("bias", True),
                   ("recurrent_dropout", 0.2), ("zoneout", 0.1), ("layer_norm", layer_norm),
                   ("learn_initial_state", False)) + ((("proj_size", 24),) if family == "lstm" else ())
        for dtype in (torch.float32, torch.float64):
            check_case(Case(family, options, "lengths", True, True, 7, 16, 24, 64, seed=3), dtype, grad=grad)


def _ln_gradients(engine: str, dtype: torch.dtype, family: str, hidden: int, seed: int) -> list[Tensor]:
    """Outputs and all gradients of a layer-normalised layer; weights, inputs and the loss drawn
    in float64 and cast, so that float32 and float64 runs compute the same function."""
    torch.manual_seed(seed)
    layer = getattr(rnnkit, family)(3, hidden, num_layers=2, bidirectional=True, layer_norm=True,
                                    engine=engine, dtype=torch.float64)
    with torch.no_grad():
        for name, p in layer.named_parameters():
            if name.startswith("ln_"):
                p.uniform_(0.5, 1.5)
    layer = layer.to(dtype)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(5, 3, 3, generator=g, dtype=torch.float64).to(dtype).requires_grad_(True)
    out, hidden_state = layer(x, lengths=[5, 2, 4])
    parts = [out, *(hidden_state if isinstance(hidden_state, tuple) else (hidden_state,))]
    loss = sum((p * torch.randn(p.shape, generator=g, dtype=torch.float64).to(dtype)).sum() for p in parts)
    return parts + list(torch.autograd.grad(loss, [x, *layer.parameters()]))


@pytest.mark.parametrize("family", ["RNN", "LSTM", "GRU"])
@pytest.mark.parametrize("hidden", [2, 7, 32])
def test_fused_layer_norm_float32_is_as_accurate_as_reference(family: str, hidden: int) -> None:
    """Against the float64 truth, the fused engine's largest float32 error over all outputs and
    gradients (relative to 1 + |truth|) and three seeds is within 1e-5, or, where the reference
    engine's own largest float32 error exceeds that, within twice it. (Over seeds, not per seed:
    the two engines sum in different orders, so which of them rounds worse on one draw is chance.)"""

    def error(result: list[Tensor], truth: list[Tensor]) -> float:
        return max(((r.double() - t).abs() / (1 + t.abs())).max().item() for r, t in zip(result, truth))

    err_ref = err_fused = 0.0
    for seed in range(3):
        truth = _ln_gradients("reference", torch.float64, family, hidden, seed)
        err_ref = max(err_ref, error(_ln_gradients("reference", torch.float32, family, hidden, seed), truth))
        err_fused = max(err_fused, error(_ln_gradients("fused", torch.float32, family, hidden, seed), truth))
    assert err_fused <= max(1e-5, 2 * err_ref), (err_fused, err_ref)


def test_fused_gradcheck_projected_lstm() -> None:
    torch.manual_seed(2)
    layer = rnnkit.LSTM(2, 4, num_layers=2, proj_size=2, bidirectional=True, zoneout=0.3,
                        recurrent_dropout=0.3, engine="fused", dtype=torch.float64)
    x = torch.randn(4, 3, 2, dtype=torch.float64)
    gradcheck_module(layer, (x,), {"lengths": [4, 1, 3]}, seed=1)


@pytest.mark.parametrize("family", ["RNN", "LSTM", "GRU"])
@pytest.mark.parametrize("layer_norm", [False, True])
def test_fused_gradcheck(family: str, layer_norm: bool) -> None:
    torch.manual_seed(0)
    layer = getattr(rnnkit, family)(2, 3, num_layers=2, bidirectional=True, recurrent_dropout=0.3,
                                    zoneout=0.3, layer_norm=layer_norm, engine="fused", dtype=torch.float64)
    with torch.no_grad():  # away from h_0 = 0, where LN(W_hh h_0) has zero variance
        for name, p in layer.named_parameters():
            if name.startswith("ln_"):
                p.uniform_(0.5, 1.5)
    x = torch.randn(4, 3, 2, dtype=torch.float64)
    h0 = torch.randn(4, 3, 3, dtype=torch.float64)
    hx = (h0, torch.randn(4, 3, 3, dtype=torch.float64)) if family == "LSTM" else h0
    gradcheck_module(layer, (x,), {"lengths": [4, 1, 3], "hx": hx}, seed=1)


def test_fused_relu_gradcheck() -> None:
    torch.manual_seed(1)
    layer = rnnkit.RNN(2, 3, nonlinearity="relu", engine="fused", dtype=torch.float64)
    gradcheck_module(layer, (torch.randn(5, 2, 2, dtype=torch.float64),))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@settings(max_examples=60, deadline=None, derandomize=True)
@given(case=cases(noise=False))
def test_native_matches_reference(case: Case, dtype: torch.dtype) -> None:
    check_case(case, dtype, engine="native")


def test_native_refuses_what_torch_lacks() -> None:
    x = torch.randn(4, 2, 3)
    for option, message in ((dict(layer_norm=True), "layer_norm=True"), (dict(zoneout=0.1), "zoneout=0.1"),
                            (dict(recurrent_dropout=0.2), "recurrent_dropout=0.2")):
        with pytest.raises(ValueError, match=rf"LSTM: engine='native' cannot run this layer: torch's kernels have no {message}"):
            rnnkit.LSTM(3, 5, engine="native", **option)(x)


def test_auto_picks_the_fastest_engine_that_runs_the_layer() -> None:
    """CPU: fused, but torch's oneDNN for wide LSTMs (H >= 512, B * H > 1024) run without
    gradients; what an engine lacks falls through."""
    x = torch.randn(4, 2, 3)
    assert rnnkit.LSTM(3, 5).engine_for(x) == "fused"
    assert rnnkit.GRU(3, 600).engine_for(x) == "fused"
    assert rnnkit.LSTM(3, 600).engine_for(x) == "fused"  # trained: the fused engine at any width
    with torch.no_grad():
        assert rnnkit.LSTM(3, 600).engine_for(x) == "native"  # B * H = 1200 > FUSED_LSTM_MAX_WIDTH
        assert rnnkit.LSTM(3, 500).engine_for(x) == "fused"  # B * H = 1000
        one = torch.randn(4, 1, 3)  # (T, B=1, I), or (B=4, T, I) with batch_first
        assert rnnkit.LSTM(3, 600).engine_for(one) == "fused"  # B * H = 600
        assert rnnkit.LSTM(3, 600, batch_first=True).engine_for(one) == "native"  # B * H = 2400
        assert rnnkit.LSTM(3, 300, batch_first=True).engine_for(one) == "fused"  # H = 300 < 512
        assert rnnkit.LSTM(3, 600, zoneout=0.1).engine_for(x) == "fused"  # native has no zoneout
        assert rnnkit.LSTM(3, 600, layer_norm=True).engine_for(x) == "fused"
        assert rnnkit.LSTM(3, 5, proj_size=2, layer_norm=True).engine_for(x) == "fused"
        assert rnnkit.LSTM(3, 600, proj_size=2).engine_for(x) == "native"
    frozen = rnnkit.LSTM(3, 600).requires_grad_(False)  # nothing to differentiate: as no_grad
    assert frozen.engine_for(x) == "native"
    assert frozen.engine_for(x.requires_grad_()) == "fused"
    assert rnnkit.GRU(3, 5).engine_for(x.to(torch.bfloat16)) == "native"
    with pytest.raises(ValueError, match=r"GRU: engine='fused' cannot run this layer: it runs float32 and float64, and the input is torch.bfloat16"):
        rnnkit.GRU(3, 5, engine="fused", dtype=torch.bfloat16)(x.to(torch.bfloat16))


def test_auto_falls_back_quietly_when_the_kernels_are_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_library, "load", lambda: "no C compiler found")
    x = torch.randn(4, 2, 3)
    layer = rnnkit.GRU(3, 5)
    assert layer.engine_for(x) == "native"
    assert rnnkit.GRU(3, 5, zoneout=0.1).engine_for(x) == "reference"
    assert layer(x)[0].shape == (4, 2, 5)
    with pytest.raises(ValueError, match=r"GRU: engine='fused' cannot run this layer: no C compiler found"):
        rnnkit.GRU(3, 5, engine="fused")(x)


@pytest.mark.parametrize("dtype, ulps", [(torch.float32, 4), (torch.float64, 4)])
def test_kernel_tanh_and_sigmoid_match_torch(dtype: torch.dtype, ulps: int) -> None:
    """The kernels' own exp and tanh, seen through cells whose pre-activation is the input:
    an RNN with W_ih = I, W_hh = 0 outputs tanh(x); a GRU with W_ih = [0; 0; I] and
    W_hh = 0 outputs (1 - sigmoid(0)) tanh(x) = tanh(x) / 2; over x in [-30, 30]."""
    x = torch.linspace(-30, 30, 60001, dtype=dtype)
    x = torch.cat([x, torch.tensor([1e-8, -1e-8, 0.6249, 0.6251, -0.6251, 1e-30], dtype=dtype)])
    n = x.numel()
    eps = torch.finfo(dtype).eps
    rnn = rnnkit.RNN(1, 1, bias=False, engine="fused", dtype=dtype)
    with torch.no_grad():
        rnn.weight_ih_l0.fill_(1.0)
        rnn.weight_hh_l0.zero_()
        out, _ = rnn(x.view(1, n, 1))
    expected = torch.tanh(x)
    err = (out.view(-1) - expected).abs()
    assert err.max().item() <= ulps * eps, err.max().item()  # |tanh| <= 1: in ulps of 1
    small = x.abs() < 0.625  # near 0 the odd polynomial keeps the relative precision too
    relative = err[small] / expected[small].abs().clamp(min=torch.finfo(dtype).tiny)
    assert relative.max().item() <= ulps * eps, relative.max().item()
    lstm = rnnkit.LSTM(1, 1, bias=False, engine="fused", dtype=dtype)
    with torch.no_grad():
        lstm.weight_ih_l0.copy_(torch.tensor([[0.0], [0.0], [0.0], [1.0]], dtype=dtype))  # o = sigmoid(x)
        lstm.weight_hh_l0.zero_()
        c0 = torch.full((1, n, 1), 0.5, dtype=dtype)  # c = sigmoid(0) * 0.5 = 0.25 (i*g = 0.5 * 0)
        out, _ = lstm(x.view(1, n, 1), (torch.zeros(1, n, 1, dtype=dtype), c0))
    expected = torch.sigmoid(x) * torch.tanh(torch.tensor(0.25, dtype=dtype))
    err = (out.view(-1) - expected).abs()
    assert err.max().item() <= ulps * eps, err.max().item()


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("split", ["slices", "products", "shared forward", "one thread"])
def test_fused_parallel_threads(family: str, split: str) -> None:
    """With the thresholds lowered, three threads run the batch as slices (unevenly sized); or,
    the batch left whole, share each step's products and the input projection; or share them in
    the forward pass while the backward pass runs slices (as for large weights over few rows); or
    one thread runs all. Slices project their input at every step; a whole batch projects its
    input in chunks of 2 steps, or all 6 at once. Everything still equals the reference engine,
    options included."""
    if split != "one thread" and not _library.kernels_parallel():
        pytest.skip("the kernels were built without OpenMP: they run on one thread")
    threads = 1 if split == "one thread" else 3
    chunk = {"slices": 1, "products": 2, "shared forward": 2, "one thread": 6}[split]  # slices: not used
    gates = {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 4, "gru": 3}[family]
    with _library.policy(threads=threads, parallel_min_rows=100 if split == "products" else 1, parallel_min_work=0,
                         step_parallel_min_work=0, shared_step_min_bytes=0 if split == "shared forward" else 2**62):
        slices = 1 if split == "products" else threads
        plan = _library.plan("LSTM", torch.float64, 5, 7, 0, 8, 2)
        assert plan["backward_slices"] == slices
        assert plan["slices"] == (1 if split == "shared forward" else slices)
        assert plan["threads"] == (1 if split in ("slices", "one thread") else 3)
        assert plan["backward_threads"] == (3 if split == "products" else 1)
        for layer_norm in (False, True):
            options = (("num_layers", 2), ("bidirectional", True), ("batch_first", True), ("bias", True),
                       ("recurrent_dropout", 0.2), ("zoneout", 0.1), ("layer_norm", layer_norm),
                       ("learn_initial_state", True)) + ((("proj_size", 3),) if family == "lstm" else ())
            hidden = 5 if split in ("slices", "one thread") else 40  # shared: several column panels
            # one step of the projection is batch * G*H numbers
            with _library.policy(projection_chunk=chunk * 7 * gates * hidden):
                for grad in (True, False):
                    check_case(Case(family, options, "lengths", False, True, 6, 7, 3, hidden, seed=11),
                               torch.float64, grad=grad)


def test_fused_kernels_on_several_threads_at_once() -> None:
    """The operators let go of the GIL, so kernels called from several Python threads run at once and
    must share nothing but their inputs. Layers of different sizes (their last weight panels
    partly filled), run by four threads at once and again one after another, give exactly the
    numbers each gave alone; an error in a thread fails the test too."""
    import threading

    torch.manual_seed(3)
    layers = [rnnkit.LSTM(16, 70, engine="fused"), rnnkit.GRU(8, 90, engine="fused"),
              rnnkit.LSTM(16, 75, engine="fused", layer_norm=True)]
    inputs = [torch.randn(7, 3, layer.input_size) for layer in layers]

    def run(index: int) -> list[Tensor]:
        layer, x = layers[index], inputs[index]
        out, state = layer(x)
        grads = torch.autograd.grad(weighted_sum([out, *state]), list(layer.parameters()))
        return [out.detach(), *[s.detach() for s in state], *grads]

    expected = [run(i) for i in range(len(layers))]
    failures: list[str] = []

    def worker(first: int) -> None:
        for call in range(12):
            index = (first + call) % len(layers)
            try:
                got = run(index)
            except Exception as error:  # a thread's exception would otherwise only be printed
                failures.append(f"layer {index}, call {call} of thread {first}: {error!r}")
                continue
            if not all(torch.equal(a, b) for a, b in zip(got, expected[index])):
                failures.append(f"layer {index}, call {call} of thread {first}")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures
    worker(0)
    assert not failures, failures


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("grads, workspace", [("torch", "block"), ("kernel", "parts"), ("torch", "parts")])
def test_fused_weight_gradients_and_workspaces(family: str, grads: str, workspace: str) -> None:
    """Above KERNEL_WEIGHT_GRADS_MAX_WORK the weight gradients are torch's products after the
    backward kernel, not the kernel's; above WORKSPACE_BLOCK_MAX each array of the backward
    kernel's workspace is its own tensor (the forward kernel's, an output of rnnkit::fused_rnn,
    is always one). The same numbers either way, every option on."""
    settings = {"kernel_weight_grads_max_work": 0} if grads == "torch" else {}
    if workspace == "parts":
        settings["workspace_block_max"] = 0
    with _library.policy(**settings):
        plan = _library.plan("GRU", torch.float64, 5, 4, 3, 18, 6)
        assert (plan["weight_threads"] == 0) == (grads == "torch")
        assert plan["dlayout_parts"] == plan["unsaved_parts"] == (workspace == "parts")
        for layer_norm in (False, True):
            options = (("num_layers", 2), ("bidirectional", True), ("batch_first", False), ("bias", True),
                       ("recurrent_dropout", 0.2), ("zoneout", 0.1), ("layer_norm", layer_norm),
                       ("learn_initial_state", False)) + ((("proj_size", 3),) if family == "lstm" else ())
            for inputs in ("batched", "lengths"):
                check_case(Case(family, options, inputs, True, True, 5, 4, 3, 6, seed=5), torch.float64)


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("frozen", [("weight_ih", "bias_ih", "ln_bias_c"), ("weight_hh", "ln_weight_c", "ln_weight_hh"),
                                    ("bias_hh", "ln_weight_ih", "weight_hr")])
@pytest.mark.parametrize("layer_norm", [False, True])
def test_fused_gradients_with_some_parameters_frozen(family: str, frozen: tuple[str, ...], layer_norm: bool) -> None:
    """Frozen parameters get no gradient, and the others the reference engine's: the kernels
    compute each gradient only when asked, so each must stand without the others."""
    name, extra = FAMILIES[family]
    options = dict(extra, layer_norm=layer_norm, num_layers=2, bidirectional=True, **({"proj_size": 3} if family == "lstm" else {}))
    torch.manual_seed(3)
    ref = getattr(rnnkit, name)(4, 6, engine="reference", dtype=torch.float64, **options)
    fused = getattr(rnnkit, name)(4, 6, engine="fused", dtype=torch.float64, **options)
    with torch.no_grad():
        for p in ref.parameters():
            p.uniform_(-0.5, 0.5)
    fused.load_state_dict(ref.state_dict())
    x = torch.randn(5, 3, 4, dtype=torch.float64)
    grads = []
    for layer in (ref, fused):
        for pname, p in layer.named_parameters():
            p.requires_grad_(not pname.startswith(frozen))
        trained = [p for p in layer.parameters() if p.requires_grad]
        grads.append(torch.autograd.grad(weighted_sum(outputs(layer(x))), trained))
    assert len(grads[0]) == len(grads[1]) > 0
    for g_fused, g_ref in zip(grads[1], grads[0]):
        assert_close(g_fused, g_ref, "grad")


@pytest.mark.parametrize("engine", ["fused", "native"])
@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("loss", ["sum", "square"])
def test_double_backward_equals_reference(engine: str, family: str, loss: str) -> None:
    """Gradients of gradients (create_graph=True: a gradient penalty's) equal the reference
    engine's, for the inputs and every parameter; the fused engine hands over to the reference
    equations for them, also when the incoming gradient is constant (y.sum()), where a
    hand-written backward pass without a graph would give an incomplete second derivative.
    The fused engine runs its options too (training: recurrent dropout and zoneout masks)."""
    name, extra = FAMILIES[family]
    options: dict[str, Any] = dict(extra, num_layers=2, bidirectional=True)
    if engine == "fused":
        options.update(layer_norm=True, recurrent_dropout=0.3, zoneout=0.2, learn_initial_state=True,
                       **({"proj_size": 3} if family == "lstm" else {}))
    torch.manual_seed(4)
    reference = getattr(rnnkit, name)(4, 6, engine="reference", dtype=torch.float64, **options)
    layer = getattr(rnnkit, name)(4, 6, engine=engine, dtype=torch.float64, **options)
    layer.load_state_dict(reference.state_dict())
    x = torch.randn(5, 3, 4, dtype=torch.float64)
    results = []
    for module in (reference, layer):
        torch.manual_seed(9)  # the same masks in both
        xg = x.clone().requires_grad_()
        inputs = [xg, *module.parameters()]
        y = outputs(module(xg, lengths=[5, 2, 4]))
        first = torch.autograd.grad(sum(t.sum() for t in y) if loss == "sum" else weighted_sum(y), inputs,
                                    create_graph=True)
        second = torch.autograd.grad(weighted_sum(list(first), seed=7), inputs)
        results.append((first, second))
    for kind, ours, theirs in (("first", results[1][0], results[0][0]), ("second", results[1][1], results[0][1])):
        for index, (a, b) in enumerate(zip(ours, theirs)):
            torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-9, msg=lambda m: f"{kind} derivative {index}: {m}")
        assert any(t.abs().sum() > 0 for t in ours[1:]), kind


@pytest.mark.parametrize("engine", ["fused", "native", "reference"])
@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("garbage", [float("nan"), float("inf")])
def test_padding_never_reaches_a_gradient(engine: str, family: str, garbage: float) -> None:
    """NaN or inf in the padding of a batch given with lengths=: every engine gives the outputs,
    states and gradients (of the input and every parameter) that the same batch padded with
    zeros gives, all finite, and the padding's own gradient is zero; options on where the
    engine runs them, in training (masks) and both directions."""
    name, extra = FAMILIES[family]
    options: dict[str, Any] = dict(extra, num_layers=2, bidirectional=True)
    if engine != "native":
        options.update(layer_norm=True, recurrent_dropout=0.2, zoneout=0.1,
                       **({"proj_size": 3} if family == "lstm" else {}))
    torch.manual_seed(0)
    layer = getattr(rnnkit, name)(4, 5, engine=engine, dtype=torch.float64, **options)
    clean = torch.randn(6, 3, 4, dtype=torch.float64)
    clean[4:, 2] = 0.0  # lengths 6, 6, 4
    dirty = clean.clone()
    dirty[4:, 2] = garbage
    results = []
    for x in (clean, dirty):
        torch.manual_seed(1)  # the same masks
        leaf = x.clone().requires_grad_()
        outs = outputs(layer(leaf, lengths=[6, 6, 4]))
        grads = torch.autograd.grad(weighted_sum(outs), [leaf, *layer.parameters()])
        results.append(outs + list(grads))
    for got, expected in zip(results[1], results[0]):
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, expected, atol=0, rtol=0)
    assert results[1][len(results[1]) - len(list(layer.parameters())) - 1][4:, 2].abs().sum() == 0
