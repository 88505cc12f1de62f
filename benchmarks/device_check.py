"""The checks and figures that need a GPU, as one short script for a session that has one.

    PYTHONPATH=. PYTHONUNBUFFERED=1 python3 benchmarks/device_check.py --device cuda | tee device_check-cuda.txt

(from the repository's root, with the torch already there: rnnkit's own dependencies are few).
On CPU, ``--engine native`` takes the route that engine='auto' takes on CUDA (torch's kernels),
so that the script and that route can be tried without a GPU (device_check-cpu-native.txt).

It prints, on the device given (cpu runs it all too, to try the script without a GPU):

1. parity: rnnkit's layers (engine='auto', and the engine it picked) against torch.nn's, the
   same weights, in float32: outputs, final states and every gradient (input's included),
   largest absolute difference, for LSTM, GRU and RNN plain, stacked bidirectional, with
   lengths, from a PackedSequence, and an LSTM with a projection;
2. rnnkit's own options (layer_norm, zoneout off in eval) on the device against the same layer
   on CPU in float64, and gradients of gradients (create_graph=True) likewise (cuDNN has none:
   on CUDA torch's kernels pass by raising as torch.nn does, the reference engine by its numbers);
3. torch.func (vmap, jacrev, jacfwd) and batched gradients on the device against CPU float64;
   torch.compile(fullgraph=True): equal to eager (outputs and gradients), with and without
   lengths, and which of torch's recurrent kernels the graph kept;
4. torch.export with dynamic T and B: the program at other T and B against eager;
5. speed: a training step (forward, backward to the weights and input) and a forward pass
   under no_grad, torch.nn against rnnkit (auto) and the reference engine, alternating in one
   process, medians in ms and the ratio torch.nn / rnnkit.

Each check prints a line ending in "ok" or "FAILED"; the script ends by counting the failures
(exit status 1 if any). Tolerances: 1e-4 where both sides run the same kernels (parity,
compile), 1e-3 against CPU float64 for float32 on the device (TF32 is turned off).
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

import rnnkit
from rnnkit.bench import paired_medians

failures: list[str] = []
ENGINE = ["auto"]
"""The engine of rnnkit's layers in the checks (--engine): 'native' on CPU tries the CUDA route."""


def report(name: str, ok: bool, detail: str) -> None:
    print(f"{name:<58} {detail:<40} {'ok' if ok else 'FAILED'}", flush=True)
    if not ok:
        failures.append(name)


def guarded(name: str, check: Callable[[], None]) -> None:
    """Run one check; an exception is a failure, printed, and the script goes on."""
    try:
        check()
    except Exception as error:  # noqa: BLE001 (every failure is reported, none stops the rest)
        report(name, False, f"{type(error).__name__}: {str(error).splitlines()[0][:80]}")
        traceback.print_exc(limit=3, file=sys.stdout)


def tensors(result: Any) -> list[Tensor]:
    """The tensors of a layer's result (output, or PackedSequence's data, and the state parts)."""
    out, state = result
    first = out.data if isinstance(out, PackedSequence) else out
    return [first, *(state if isinstance(state, tuple) else (state,))]


def largest_difference(a: list[Tensor], b: list[Tensor]) -> float:
    return max(float((x.detach().double() - y.detach().double()).abs().max()) if x.numel() else 0.0
               for x, y in zip(a, b))


def run_with_grads(layer: nn.Module, x: Tensor, call: str) -> list[Tensor]:
    """Outputs and final state, then the gradients of a fixed weighted sum of them to the input
    and every parameter."""
    leaf = x.detach().clone().requires_grad_()
    kwargs: dict[str, Any] = {}
    arg: Any = leaf
    lengths = [x.shape[0]] + [max(1, x.shape[0] - 2 - i) for i in range(x.shape[1] - 1)]
    packed_lengths = call == "lengths" and not isinstance(layer, rnnkit.layers.RecurrentLayer)
    if call == "lengths" and not packed_lengths:
        kwargs["lengths"] = lengths
    elif call == "packed" or packed_lengths:  # torch.nn takes lengths as a PackedSequence
        arg = pack_padded_sequence(leaf, lengths, enforce_sorted=False)
    result = layer(arg, **kwargs)
    if packed_lengths:
        result = (pad_packed_sequence(result[0], total_length=x.shape[0])[0], result[1])
    outs = tensors(result)
    weights = [torch.linspace(-1, 1, t.numel(), device=t.device).view_as(t) for t in outs]
    loss = sum((o * w).sum() for o, w in zip(outs, weights))
    return [o.detach() for o in outs] + list(torch.autograd.grad(loss, [leaf, *layer.parameters()]))


def parity(device: torch.device) -> None:
    cases: list[tuple[str, dict[str, Any], str]] = []
    for family in ("LSTM", "GRU", "RNN"):
        cases += [(family, {}, "plain"), (family, {"num_layers": 2, "bidirectional": True}, "plain"),
                  (family, {"num_layers": 2, "bidirectional": True}, "lengths"), (family, {}, "packed")]
    cases.append(("LSTM", {"proj_size": 8, "num_layers": 2}, "plain"))
    for family, options, call in cases:
        name = f"parity {family} {options or ''} {call}".replace("'", "")

        def check(family: str = family, options: dict[str, Any] = options, call: str = call, name: str = name) -> None:
            torch.manual_seed(0)
            theirs = getattr(nn, family)(16, 32, **options).to(device)
            ours = rnnkit.from_torch(theirs, engine=ENGINE[0])
            x = torch.randn(12, 5, 16, device=device)
            difference = largest_difference(run_with_grads(ours, x, call), run_with_grads(theirs, x, call))
            report(name, difference <= 1e-4, f"{ours.engine_for(x)}, {difference:.1e}")

        guarded(name, check)


def own_options(device: torch.device) -> None:
    for family, options in (("LSTM", {"layer_norm": True}), ("GRU", {"layer_norm": True, "bidirectional": True}),
                            ("LSTM", {"zoneout": 0.1, "recurrent_dropout": 0.1})):
        name = f"rnnkit options {family} {options}".replace("'", "")

        def check(family: str = family, options: dict[str, Any] = options, name: str = name) -> None:
            torch.manual_seed(0)
            layer = getattr(rnnkit, family)(16, 32, **options).eval()
            x = torch.randn(12, 5, 16)
            expected = run_with_grads(layer.double(), x.double(), "lengths")
            on_device = layer.float().to(device)
            got = run_with_grads(on_device, x.to(device), "lengths")
            difference = largest_difference([g.cpu() for g in got], expected)
            report(name, difference <= 1e-3, f"{on_device.engine_for(x.to(device))}, {difference:.1e}")

        guarded(name, check)


def double_backward(device: torch.device) -> None:
    """Gradients of gradients (create_graph=True) on the device against the reference engine on
    CPU in float64. cuDNN has no double backward: on CUDA, torch's kernels (engine='auto' there)
    raise as torch.nn's layers do, which passes as documented; the reference engine must work."""
    engines = [ENGINE[0]] + (["reference"] if device.type == "cuda" and ENGINE[0] != "reference" else [])
    for family in ("LSTM", "GRU"):
        for engine in engines:
            name = f"double backward {family} 2x2 lengths, {engine}"

            def check(family: str = family, engine: str = engine, name: str = name) -> None:
                torch.manual_seed(0)
                layer = getattr(rnnkit, family)(16, 32, num_layers=2, bidirectional=True, engine=engine)
                reference = getattr(rnnkit, family)(16, 32, num_layers=2, bidirectional=True, engine="reference")
                reference.load_state_dict(layer.state_dict())
                x = torch.randn(12, 5, 16)
                runs = ((reference, torch.device("cpu"), torch.float64), (layer, device, torch.float32))
                results = []
                for module, dev, dtype in runs:
                    module = module.to(dev, dtype)
                    xg = x.to(dev, dtype).requires_grad_()
                    inputs = [xg, *module.parameters()]
                    out = module(xg, lengths=[12, 7, 9, 3, 12])[0]
                    first = torch.autograd.grad(out.pow(2).sum(), inputs, create_graph=True)
                    try:
                        second = torch.autograd.grad(sum(g.pow(2).sum() for g in first), inputs)
                    except (RuntimeError, NotImplementedError) as error:
                        cudnn = "cudnn" in str(error).lower() and layer.engine_for(xg) == "native"
                        report(name, cudnn, "raises as torch.nn: cuDNN has no double backward" if cudnn
                               else f"{type(error).__name__}: {str(error)[:60]}")
                        return
                    results.append([t.cpu() for t in (*first, *second)])
                scale = max(float(t.abs().max()) for t in results[0])
                difference = largest_difference(results[1], results[0]) / scale
                report(name, difference <= 1e-4, f"{layer.engine_for(x.to(device))}, relative {difference:.1e}")

            guarded(name, check)


def transforms(device: torch.device) -> None:
    """torch.func's vmap, jacrev and jacfwd, and batched gradients (is_grads_batched), on the
    device against the reference engine on CPU in float64."""
    from torch.func import jacfwd, jacrev, vmap

    for family in ("LSTM", "GRU"):
        name = f"torch.func {family} bidirectional"

        def check(family: str = family, name: str = name) -> None:
            torch.manual_seed(0)
            layer = getattr(rnnkit, family)(3, 4, bidirectional=True, engine=ENGINE[0])
            reference = getattr(rnnkit, family)(3, 4, bidirectional=True, engine="reference").double()
            reference.load_state_dict(layer.state_dict())
            x, stack = torch.randn(5, 2, 3), torch.randn(3, 5, 2, 3)
            cotangents = torch.randn(4, 5, 2, 8)

            def results(m: nn.Module, dev: torch.device, dtype: torch.dtype) -> list[Tensor]:
                m = m.to(dev, dtype)
                f = lambda x_: m(x_, lengths=[5, 3])[0]  # noqa: E731
                xd = x.to(dev, dtype)
                xg = xd.clone().requires_grad_()
                batched, = torch.autograd.grad(f(xg), xg, cotangents.to(dev, dtype), is_grads_batched=True)
                return [t.cpu() for t in (vmap(f)(stack.to(dev, dtype)), jacrev(f)(xd), jacfwd(f)(xd), batched)]

            expected = results(reference, torch.device("cpu"), torch.float64)
            difference = largest_difference(results(layer, device, torch.float32), expected)
            report(name, difference <= 1e-4, f"{layer.engine_for(x.to(device))}, {difference:.1e}")

        guarded(name, check)


def compiled(device: torch.device) -> None:
    kernels = {torch.lstm, torch.gru, torch.rnn_tanh}
    for family in ("LSTM", "GRU"):
        for call in ("plain", "lengths"):
            name = f"compile fullgraph {family} 2x2 {call}"

            def check(family: str = family, call: str = call, name: str = name) -> None:
                torch._dynamo.reset()
                torch.manual_seed(0)
                layer = getattr(rnnkit, family)(16, 32, num_layers=2, bidirectional=True, engine=ENGINE[0]).to(device)
                graphs: list[Any] = []

                def backend(gm: Any, example_inputs: Any) -> Any:
                    graphs.append(gm)
                    return torch._dynamo.lookup_backend("inductor")(gm, example_inputs)

                fast = torch.compile(layer, fullgraph=True, backend=backend)
                x = torch.randn(12, 5, 16, device=device)
                difference = largest_difference(run_with_grads(fast, x, call), run_with_grads(layer, x, call))
                kept = sorted({n.target.__name__ for g in graphs for n in g.graph.nodes if n.target in kernels})
                report(name, difference <= 1e-4, f"torch kernels kept: {kept or 'none'}, {difference:.1e}")

            guarded(name, check)


def exported(device: torch.device) -> None:
    for family in ("LSTM", "GRU"):
        name = f"export dynamic T, B {family} 2x2"

        def check(family: str = family, name: str = name) -> None:
            torch.manual_seed(0)
            layer = getattr(rnnkit, family)(16, 32, num_layers=2, bidirectional=True, engine=ENGINE[0])
            layer = layer.to(device).eval()
            sizes = {0: torch.export.Dim("T", min=2, max=4096), 1: torch.export.Dim("B", min=2, max=4096)}
            program = torch.export.export(layer, (torch.randn(12, 5, 16, device=device),), dynamic_shapes=(sizes,))
            difference = 0.0
            for steps, batch in ((30, 7), (3, 2)):
                x = torch.randn(steps, batch, 16, device=device)
                difference = max(difference, largest_difference(tensors(program.module()(x)), tensors(layer(x))))
            report(name, difference <= 1e-4, f"{difference:.1e}")

        guarded(name, check)


def speed(device: torch.device, budget_s: float) -> None:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    print("\nspeed, median ms (ratio = torch.nn / each; above 1: faster than torch.nn)")
    for family, (steps, batch, inputs, hidden) in (("LSTM", (100, 64, 256, 256)), ("GRU", (100, 64, 256, 256)),
                                                   ("LSTM", (20, 1, 1, 20)), ("LSTM", (100, 32, 512, 512))):
        torch.manual_seed(0)
        theirs = getattr(nn, family)(inputs, hidden).to(device)
        layers = {"torch.nn": theirs, "rnnkit": rnnkit.from_torch(theirs),
                  "reference": rnnkit.from_torch(theirs, engine="reference")}
        x = torch.randn(steps, batch, inputs, device=device)
        x_grad = x.clone().requires_grad_()

        def train(m: nn.Module) -> Callable[[], None]:
            def run() -> None:
                m(x_grad)[0].sum().backward()
                sync()
            return run

        def forward(m: nn.Module) -> Callable[[], None]:
            def run() -> None:
                with torch.no_grad():
                    m(x)
                sync()
            return run

        for mode, make in (("training step", train), ("forward", forward)):
            fns = {name: make(m) for name, m in layers.items()}
            for fn in fns.values():
                fn()
            ms = {k: 1e3 * v for k, v in paired_medians(fns, rounds=5, budget_s=budget_s).items()}
            cells = "  ".join(f"{k} {v:8.3f} ({ms['torch.nn'] / v:.2f}x)" for k, v in ms.items())
            print(f"{family} {(steps, batch, inputs, hidden)} {mode:<13} {cells}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--engine", default="auto", help="rnnkit's engine in the checks (native on CPU: the CUDA route)")
    parser.add_argument("--budget", type=float, default=3.0, help="seconds per timed row")
    parser.add_argument("--no-speed", action="store_true", help="the checks only")
    args = parser.parse_args()
    device = torch.device(args.device)
    ENGINE[0] = args.engine
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, "
              f"{torch.cuda.get_device_name(device)}")
    else:
        print(f"torch {torch.__version__}, {device}, {torch.get_num_threads()} threads")
    print(f"rnnkit's layers: engine={args.engine!r}")
    for part in (parity, own_options, double_backward, transforms, compiled, exported):
        part(device)
    if not args.no_speed:
        speed(device, args.budget)
    print(f"\n{len(failures)} failed" + (f": {', '.join(failures)}" if failures else ""))
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
