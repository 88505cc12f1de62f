"""Where a compiled training step's time goes beyond eager's, for the model of
compiled_model.py (an embedding, an rnnkit layer on the default engine, a Linear, cross-entropy).

For each model and (T, B), eager and compiled (``torch.compile(model, fullgraph=True)``)
training steps alternate; the script times, in the same steps:

- ``step``: the whole training step (forward, loss, backward);
- ``kernels fwd`` / ``kernels bwd``: the stack's kernel entry in Python (``run_stack_forward``,
  ``run_stack_backward`` in rnnkit/engines/_fused.py: the ctypes call with its pointers and
  outputs), which eager and compiled share;
- compiled only, ``op fwd`` / ``op bwd``: the calls of the operators ``rnnkit::fused_stack`` and
  ``rnnkit::fused_stack_backward`` as the compiled graph makes them (torch's dispatch to the
  Python kernel, then the kernel); op minus kernels is what the operator boundary costs.

Then, for scale, one call of a custom operator that does nothing (``torch.library.custom_op``
with an autograd formula, as rnnkit's operators are; one tensor in and out, a list of 4
weights) made from a compiled function, and the same call made directly under no_grad; and the
same operator defined through ``torch.library.Library`` with no autograd kernel (differentiated
by an autograd.Function that dynamo traces, whose backward is a second such operator), called
from a compiled function.

    python benchmarks/compiled_overhead.py > benchmarks/compiled_overhead.txt

Medians in microseconds. The operators are timed by replacing ``torch.ops.rnnkit.<op>.default``
with a timing wrapper after compiling: the graph's Python wrapper (inductor's default, not
``cpp_wrapper``) looks the operator up at every call.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor

import rnnkit.engines._fused as fused
import rnnkit.engines._fused_op as fused_op
from compiled_model import Classifier

SHAPES = ((20, 1), (12, 64))

samples: dict[str, list[float]] = {}
"""Seconds per timed call, by "<which run> <what>"."""
current = [""]
"""Which run the calls being timed belong to ("eager", "compiled", ...)."""


def timed(fn: Callable[..., Any], name: str) -> Callable[..., Any]:
    def run(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        samples.setdefault(f"{current[0]} {name}", []).append(time.perf_counter() - start)
        return result
    return run


@contextlib.contextmanager
def timing(ops: dict[str, Any]) -> Iterator[None]:
    """Within the block, each operator's calls (name: its torch.ops packet) are timed as name;
    after it, the operators are as they were."""
    raw = {name: packet.default for name, packet in ops.items()}
    for name, packet in ops.items():
        packet.default = timed(raw[name], name)
    try:
        yield
    finally:
        for name, packet in ops.items():
            packet.default = raw[name]


def model_rows(cell: str, shape: tuple[int, int], rounds: int) -> None:
    torch._dynamo.reset()
    torch.manual_seed(0)
    steps, batch = shape
    model = Classifier(cell, 64)
    compiled = torch.compile(model, fullgraph=True)
    tokens, labels = torch.randint(0, 60, (steps, batch)), torch.randint(0, 18, (batch,))

    def step(m: Callable[..., Tensor]) -> None:
        for p in model.parameters():
            p.grad = None
        m(tokens, labels).backward()

    for _ in range(3):  # the first calls compile
        step(model)
        step(compiled)
    samples.clear()
    with timing({"op fwd": torch.ops.rnnkit.fused_stack, "op bwd": torch.ops.rnnkit.fused_stack_backward}):
        for _ in range(rounds):
            for name, m in (("eager", model), ("compiled", compiled)):
                current[0] = name
                timed(step, "step")(m)
    medians = {k: 1e6 * statistics.median(v) for k, v in samples.items()}
    print(f"{cell} (T, B) = {shape}")
    for what in ("step", "kernels fwd", "kernels bwd", "op fwd", "op bwd"):
        eager, comp = medians.get(f"eager {what}"), medians.get(f"compiled {what}")
        print(f"  {what:<12} eager {'-' if eager is None else f'{eager:8.1f}':>8}   compiled {comp:8.1f}")
    boundary = (medians["compiled op fwd"] - medians["compiled kernels fwd"]
                + medians["compiled op bwd"] - medians["compiled kernels bwd"])
    print(f"  compiled - eager step: {medians['compiled step'] - medians['eager step']:.1f}; "
          f"the two operator boundaries: {boundary:.1f}")


@torch.library.custom_op("rnnkit_bench::nothing", mutates_args=(), device_types="cpu")
def nothing(x: Tensor, weights: list[Tensor]) -> Tensor:
    return x.clone()


@nothing.register_fake
def _nothing_fake(x: Tensor, weights: list[Tensor]) -> Tensor:
    return x.new_empty(x.shape)


def _nothing_setup(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
    ctx.count = len(inputs[1])


def _nothing_backward(ctx: Any, grad: Tensor) -> tuple[Any, ...]:
    return grad, [None] * ctx.count


nothing.register_autograd(_nothing_backward, setup_context=_nothing_setup)


_library = torch.library.Library("rnnkit_bench", "FRAGMENT")
_library.define("bare(Tensor x, Tensor[] weights) -> Tensor")
_library.define("bare_backward(Tensor grad, Tensor[] weights) -> Tensor")
_library.impl("bare", lambda x, weights: x.clone(), "CPU")
_library.impl("bare_backward", lambda grad, weights: grad.clone(), "CPU")
torch.library.register_fake("rnnkit_bench::bare", lambda x, weights: x.new_empty(x.shape), lib=_library)
torch.library.register_fake("rnnkit_bench::bare_backward", lambda grad, weights: grad.new_empty(grad.shape),
                            lib=_library)


class _Bare(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, *weights: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(*weights)
        return torch.ops.rnnkit_bench.bare(x, list(weights))

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        weights = ctx.saved_tensors
        return (torch.ops.rnnkit_bench.bare_backward(grad, list(weights)),) + (None,) * len(weights)


def empty_op_rows(rounds: int) -> None:
    weights = [torch.randn(256, 64, requires_grad=True) for _ in range(4)]
    x = torch.randn(20, 1, 32, requires_grad=True)

    def model(x: Tensor) -> Tensor:
        return (torch.ops.rnnkit_bench.nothing.default(x * 2, weights) * weights[0][0, 0]).sum()

    compiled = torch.compile(model, fullgraph=True)
    for _ in range(3):
        compiled(x).backward()
    bare_model = torch.compile(lambda x: (_Bare.apply(x * 2, *weights) * weights[0][0, 0]).sum(), fullgraph=True)
    for _ in range(3):
        bare_model(x).backward()
    samples.clear()
    with timing({"call": torch.ops.rnnkit_bench.nothing}):
        current[0] = "compiled"
        for _ in range(rounds):
            compiled(x).backward()
        current[0] = "direct"
        with torch.no_grad():
            for _ in range(rounds):
                torch.ops.rnnkit_bench.nothing.default(x, weights)
    with timing({"call": torch.ops.rnnkit_bench.bare}):
        current[0] = "bare"
        for _ in range(rounds):
            bare_model(x).backward()
    medians = {k: 1e6 * statistics.median(v) for k, v in samples.items()}
    print(f"a custom operator that does nothing, one call: from a compiled function "
          f"{medians['compiled call']:.1f}, directly {medians['direct call']:.1f}; "
          f"without torch's autograd wrapper, from a compiled function {medians['bare call']:.1f}")


def main() -> None:
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; medians in us")
    for name, label in (("run_stack_forward", "kernels fwd"), ("run_stack_backward", "kernels bwd")):
        wrapper = timed(getattr(fused, name), label)
        setattr(fused, name, wrapper)  # as the operators call it (through run_stack_*_any)
        setattr(fused_op, name, wrapper)  # as the eager autograd Function calls it
    for shape in SHAPES:
        model_rows("LSTM", shape, rounds=300)
    empty_op_rows(rounds=1000)


if __name__ == "__main__":
    main()
