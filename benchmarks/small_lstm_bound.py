"""What bounds a small LSTM's training step: torch.nn.LSTM, rnnkit.LSTM, and an autograd Function
that does no work with the same inputs and outputs, one training step each at (T, B, I, H) =
(20, 1, 1, 20), paired (3000 shuffled rounds, medians); then the layer against its fused
Function called directly, and each forward alone.

    python benchmarks/small_lstm_bound.py
"""
import random, statistics, time
import torch, rnnkit
torch.manual_seed(0)
T, B, I, H = 20, 1, 1, 20
ref = torch.nn.LSTM(I, H)
m = rnnkit.from_torch(ref)
x = torch.randn(T, B, I)
params = list(m.parameters())

class Empty(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, *ws):
        ctx.save_for_backward(x, *ws)
        return x.new_empty(T, B, H), x.new_empty(B, H), x.new_empty(B, H)
    @staticmethod
    def backward(ctx, *grads):
        saved = ctx.saved_tensors
        return (None, *[torch.empty_like(w) for w in saved[1:]])

def step_torch(): out, _ = ref(x); out.sum().backward()
def step_rnnkit(): out, _ = m(x); out.sum().backward()
def step_empty(): out, h, c = Empty.apply(x, *params); out.sum().backward()
fns = {"torch.nn": step_torch, "rnnkit": step_rnnkit, "empty Function": step_empty}
for f in fns.values():
    for _ in range(200): f()
samples = {k: [] for k in fns}
order = list(fns)
for r in range(3000):
    random.shuffle(order)
    for k in order:
        for p in (*params, *ref.parameters()): p.grad = None
        s = time.perf_counter(); fns[k](); samples[k].append(time.perf_counter() - s)
for k, v in samples.items():
    print(f"{k}: {statistics.median(v) * 1e6:.1f} us")

from rnnkit.engines._fused_op import _EagerFusedRNN
w = m.cell_weights(0)
fargs = (x, w.weight_ih, w.bias_ih, None, None, w.weight_hh, w.bias_hh, None, None, None, None, None, None, None, None, "LSTM", True)
def step_function(): out, h, c, _ = _EagerFusedRNN.apply(*fargs); out.sum().backward()
def step_forward_only(): m(x)
def step_function_forward_only(): _EagerFusedRNN.apply(*fargs)
fns = {"rnnkit": step_rnnkit, "Function direct": step_function, "empty Function": step_empty,
       "layer forward only": step_forward_only, "Function forward only": step_function_forward_only}
samples = {k: [] for k in fns}
order = list(fns)
for r in range(3000):
    random.shuffle(order)
    for k in order:
        for p in params: p.grad = None
        s = time.perf_counter(); fns[k](); samples[k].append(time.perf_counter() - s)
print("---")
for k, v in samples.items():
    print(f"{k}: {statistics.median(v) * 1e6:.1f} us")
