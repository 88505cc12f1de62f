"""What one call of an rnnkit operator costs beyond its kernel, from eager code and from a compiled
graph, beside a Python custom operator (torch.library.custom_op, what rnnkit's operators were
until they moved to C++) that does no work. Medians of paired rounds in one process, in us.

    python benchmarks/op_boundary.py

Rows:
- ``rnnkit::fused_rnn, no grad``: a one-step RNN of one unit (T = B = I = H = 1), its kernel next
  to nothing; called directly, and from a function compiled by torch.compile (inductor).
- ``rnnkit::fused_rnn, training``: the same with weights that need gradients, forward and backward
  (the C++ autograd kernel, then rnnkit::fused_rnn_backward).
- ``Python custom op``: an operator defined in Python that returns an empty tensor, with and without
  an autograd formula (torch.library.custom_op and register_autograd), the same ways.
"""
from __future__ import annotations

import torch
from torch import Tensor

from rnnkit.bench import paired_medians
from rnnkit.engines import _library

loaded = _library.load()
assert not isinstance(loaded, str), loaded


@torch.library.custom_op("bench::nothing", mutates_args=(), device_types="cpu")
def nothing(x: Tensor, w: Tensor) -> Tensor:
    return x.new_empty(1)


@nothing.register_fake
def _(x: Tensor, w: Tensor) -> Tensor:
    return x.new_empty(1)


nothing.register_autograd(lambda ctx, g: (None, torch.zeros_like(ctx.w)),
                          setup_context=lambda ctx, inputs, output: setattr(ctx, "w", inputs[1]))

x = torch.randn(1, 1, 1)
w_ih, w_hh = torch.randn(1, 1), torch.randn(1, 1)
w_ih_g, w_hh_g = w_ih.clone().requires_grad_(), w_hh.clone().requires_grad_()


def fused(w1: Tensor, w2: Tensor, save: bool) -> Tensor:
    return torch.ops.rnnkit.fused_rnn.default(x, w1, None, None, None, w2, None, None, None, None, None, None, None,
                                              None, None, "RNN_TANH", save)[0]


def op_eager() -> None:
    fused(w_ih, w_hh, False)


def op_train() -> None:
    fused(w_ih_g, w_hh_g, True).sum().backward()


def py_eager() -> None:
    nothing(x, w_ih)


def py_train() -> None:
    nothing(x, w_hh_g).sum().backward()


compiled_op = torch.compile(lambda w1, w2: fused(w1, w2, False))
compiled_op_train = torch.compile(lambda w1, w2: fused(w1, w2, True).sum())
compiled_py = torch.compile(lambda a, b: nothing(a, b))
compiled_py_train = torch.compile(lambda a, b: nothing(a, b).sum())
fns = {
    "rnnkit::fused_rnn, no grad: eager": op_eager,
    "rnnkit::fused_rnn, no grad: compiled": lambda: compiled_op(w_ih, w_hh),
    "rnnkit::fused_rnn, training: eager": op_train,
    "rnnkit::fused_rnn, training: compiled": lambda: compiled_op_train(w_ih_g, w_hh_g).backward(),
    "Python custom op, no grad: eager": py_eager,
    "Python custom op, no grad: compiled": lambda: compiled_py(x, w_ih),
    "Python custom op, training: eager": py_train,
    "Python custom op, training: compiled": lambda: compiled_py_train(x, w_hh_g).backward(),
}


def clear() -> None:
    w_ih_g.grad = w_hh_g.grad = None


for fn in fns.values():  # compile, and warm up
    for _ in range(50):
        clear()
        fn()
print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; one call, median us")
for name, seconds in paired_medians(fns, rounds=2000, budget_s=0, before=clear).items():
    print(f"{name:40s} {seconds * 1e6:7.1f}")
