"""Paired in one process: a layer's training step as one operator for all its layers and directions
(rnnkit::fused_stack: one kernel call a pass) against one operator per layer and direction
(rnnkit::fused_rnn), and torch.nn.

    python benchmarks/stack.py > benchmarks/stack.txt

rnnkit.layers._base.FUSED_STACK switches the whole-stack Function; each round times the three
in a shuffled order; medians.
"""
import torch, rnnkit
from rnnkit.bench import paired_medians
import rnnkit.layers._base as base

def bench(family, size, layers, bidirectional, dx, rounds=300):
    t, b, i, h = size
    torch.manual_seed(0)
    ref = getattr(torch.nn, family)(i, h, num_layers=layers, bidirectional=bidirectional)
    m = rnnkit.from_torch(ref)
    x = torch.randn(t, b, i, requires_grad=dx)
    def step(mod):
        out, _ = mod(x); out.sum().backward()
    def stack_on(): base.FUSED_STACK = True; step(m)
    def stack_off(): base.FUSED_STACK = False; step(m)
    fns = {"torch": lambda: step(ref), "per cell": stack_off, "stack": stack_on}
    for f in fns.values():
        for _ in range(5): f()
    def clear():
        for p in (*ref.parameters(), *m.parameters()): p.grad = None
        x.grad = None
    medians = paired_medians(fns, rounds=min(rounds, 12), max_rounds=rounds, budget_s=8, before=clear)
    base.FUSED_STACK = True
    ms = {k: v * 1e3 for k, v in medians.items()}
    print(f"{family} {size} layers={layers} bidir={bidirectional} dx={dx}: torch {ms['torch']:.3f} ms, per cell {ms['per cell']:.3f} "
          f"({ms['torch']/ms['per cell']:.2f}x), stack {ms['stack']:.3f} ({ms['torch']/ms['stack']:.2f}x); stack/per-cell time {ms['stack']/ms['per cell']:.3f}", flush=True)

for family in ("LSTM", "GRU"):
    bench(family, (20, 1, 1, 20), 2, True, False)
    bench(family, (20, 1, 1, 20), 2, True, True)
bench("LSTM", (20, 1, 1, 20), 2, False, False)
bench("LSTM", (20, 1, 1, 20), 1, False, False)
bench("LSTM", (6, 5, 100, 200), 2, True, True)
bench("LSTM", (6, 5, 100, 200), 1, False, False)
bench("LSTM", (28, 64, 28, 128), 1, False, False, rounds=100)
bench("LSTM", (100, 64, 256, 256), 1, False, True, rounds=40)
bench("LSTM", (50, 32, 128, 256), 2, True, True, rounds=40)
bench("LSTM", (100, 32, 64, 256), 2, False, True, rounds=40)
