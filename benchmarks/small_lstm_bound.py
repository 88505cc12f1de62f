"""What bounds a small LSTM's training step: torch.nn.LSTM, rnnkit.LSTM, and an autograd Function
that does no work with the same inputs and outputs, one training step each at (T, B, I, H) =
(20, 1, 1, 20), paired (3000 shuffled rounds, medians); then the layer against its stack
operator called directly, the layer's general path (without its short way to the operator for the
common training call, RecurrentLayer._train_stack), the operators without autograd, and each
forward alone.

    python benchmarks/small_lstm_bound.py                              # 1 layer
    python benchmarks/small_lstm_bound.py --layers 2 --bidirectional   # a stack

The operator is the layer's: rnnkit::fused_stack (run_stack), one kernel call a pass for all
cells at this size, with its autograd kernel in C++. The empty Function takes and returns what it
does (x, every cell's weights; out and every cell's h_n, c_n). "operators, no autograd" calls
rnnkit::fused_stack and rnnkit::fused_stack_backward on tensors that need no gradient: the
dispatcher and the C++ kernels (planning, allocation, the C calls), without autograd.
"""
import argparse

import torch

import rnnkit
from rnnkit.bench import paired_medians
from rnnkit.engines._fused_op import _present, run_stack

parser = argparse.ArgumentParser()
parser.add_argument("--layers", type=int, default=1)
parser.add_argument("--bidirectional", action="store_true")
parser.add_argument("--rounds", type=int, default=3000)
args = parser.parse_args()
torch.manual_seed(0)
T, B, I, H = 20, 1, 1, 20
D = 2 if args.bidirectional else 1
CELLS = args.layers * D
ref = torch.nn.LSTM(I, H, num_layers=args.layers, bidirectional=args.bidirectional)
m = rnnkit.from_torch(ref)
x = torch.randn(T, B, I)
params = list(m.parameters())


class Empty(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, *ws):
        ctx.save_for_backward(x, *ws)
        return (x.new_empty(T, B, D * H), *[x.new_empty(B, H) for _ in range(2 * CELLS)])

    @staticmethod
    def backward(ctx, *grads):
        saved = ctx.saved_tensors
        return (None, *[torch.empty_like(w) for w in saved[1:]])


def rounds(fns, extra=()):
    for f in fns.values():
        for _ in range(200):
            f()

    def clear():
        for p in (*params, *extra):
            p.grad = None

    for k, t in paired_medians(fns, rounds=args.rounds, budget_s=0, before=clear, seed=None).items():
        print(f"{k}: {t * 1e6:.1f} us")


def step_torch(): out, _ = ref(x); out.sum().backward()
def step_rnnkit(): out, _ = m(x); out.sum().backward()
def step_empty(): out, *_ = Empty.apply(x, *params); out.sum().backward()


print(f"LSTM (T, B, I, H) = ({T}, {B}, {I}, {H}), {args.layers} layer(s), {D} direction(s); "
      f"{torch.get_num_threads()} threads")
rounds({"torch.nn": step_torch, "rnnkit": step_rnnkit, "empty Function": step_empty}, tuple(ref.parameters()))

cells = [m.cell_weights(layer, direction) for layer in range(args.layers) for direction in range(D)]
flat = [t for w in cells for t in (None, None, w.weight_ih, w.bias_ih, w.weight_hh, w.bias_hh, None)]
def step_operator(): out, _ = run_stack("LSTM", args.layers, D, x, None, flat); out.sum().backward()
def operator_forward(): run_stack("LSTM", args.layers, D, x, None, flat)


weights, present = _present([None if t is None else t.detach() for t in flat])
needs = [False] + [True] * len(weights)


def operators_alone():
    """rnnkit::fused_stack and its backward operator, with no autograd."""
    out, h_n, c_n, inner, revs, works = torch.ops.rnnkit.fused_stack.default(x, None, weights, present, "LSTM",
                                                                             args.layers, D)
    torch.ops.rnnkit.fused_stack_backward.default(torch.ones_like(out), None, None, x, None, weights, present, inner,
                                                  revs, works, "LSTM", args.layers, D, needs)


def step_general():
    """The layer with its short way to the operator (RecurrentLayer._train_stack) switched off."""
    m._train_stack = lambda input: None
    try:
        step_rnnkit()
    finally:
        del m._train_stack


print("---")
rounds({"rnnkit": step_rnnkit, "rnnkit, general path": step_general, "operator direct": step_operator,
        "empty Function": step_empty, "operators, no autograd": operators_alone, "layer forward only": lambda: m(x),
        "operator forward only": operator_forward})
