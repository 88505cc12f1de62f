"""What bounds a small LSTM's training step: torch.nn.LSTM, rnnkit.LSTM, and an autograd Function
that does no work with the same inputs and outputs, one training step each at (T, B, I, H) =
(20, 1, 1, 20), paired (3000 shuffled rounds, medians); then the layer against its fused
Function called directly, the kernels alone, and each forward alone.

    python benchmarks/small_lstm_bound.py                              # 1 layer
    python benchmarks/small_lstm_bound.py --layers 2 --bidirectional   # a stack

The Function is the layer's: the whole-stack Function (run_stack), one kernel call a pass for
all cells at this size. The empty Function takes and returns what it does (x, every cell's
weights; out and every cell's h_n, c_n), and "kernels alone" times the stack's forward and
backward kernel calls (run_stack_forward, run_stack_backward) on the same tensors, with no
autograd; and each of the two C calls alone, its tensors and ctypes arguments made once.
"""
import argparse
import ctypes

import torch

import rnnkit
from rnnkit.bench import paired_medians
from rnnkit.engines import _compiled
from rnnkit.engines._fused import run_stack_backward, run_stack_forward, stack_plan
from rnnkit.engines._fused_op import run_stack

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
def step_function(): out, _ = run_stack("LSTM", args.layers, D, x, None, flat); out.sum().backward()
def function_forward(): run_stack("LSTM", args.layers, D, x, None, flat)


plan = stack_plan(_compiled.load(), "LSTM", x.dtype, args.layers, D, T, B, I, 4 * H, H, 0, torch.get_num_threads())
detached = [None if t is None else t.detach() for t in flat]
needs_flat = [t is not None for t in flat]


def kernels_alone():
    """The stack's forward and backward kernel calls, with no autograd."""
    out, h_n, c_n, *saved = run_stack_forward(plan, "LSTM", args.layers, D, x, None, detached)
    run_stack_backward(plan, "LSTM", args.layers, D, x, None, detached, saved, torch.ones_like(out), None, None,
                       False, needs_flat)


# The C calls alone: the same two calls on tensors and ctypes arguments made once
out0, h0_, c0_, inner0, revs0, works0 = run_stack_forward(plan, "LSTM", args.layers, D, x, None, detached)
weights = (ctypes.c_void_p * len(detached))(*[None if t is None else t.data_ptr() for t in detached])
scratch0 = torch.empty(T, B, H)
grads0 = [None if t is None else torch.empty_like(t) for t in detached]
grad_ptrs = (ctypes.c_void_p * len(grads0))(*[None if g is None else g.data_ptr() for g in grads0])
d_out0, bscratch0 = torch.ones_like(out0), torch.empty(plan.scratch)
ptr = lambda t: None if t is None else t.data_ptr()  # noqa: E731
fargs_c = (plan.ints, ptr(x), None, weights, ptr(inner0), ptr(out0), ptr(revs0), ptr(h0_), ptr(c0_), ptr(works0),
           plan.work_at_c, ptr(scratch0))
bargs_c = (plan.ints, ptr(x), None, weights, ptr(inner0), ptr(revs0), ptr(works0), plan.work_at_c, ptr(d_out0), None,
           None, grad_ptrs, None, 0, ptr(bscratch0))
def forward_c(): plan.forward(*fargs_c)
def backward_c(): plan.backward(*bargs_c)


print("---")
rounds({"rnnkit": step_rnnkit, "Function direct": step_function, "empty Function": step_empty,
        "kernels alone": kernels_alone, "forward kernel call, C only": forward_c,
        "backward kernel call, C only": backward_c, "layer forward only": lambda: m(x),
        "Function forward only": function_forward})
