"""One step at a time, as a model generates one token after another: a layer called on one time
step of one sequence (T = 1, B = 1; or of two) with the state carried in, under torch.no_grad. rnnkit's
default engine as it ships, and with its kernels made to transpose the weights into panels at
every call as they did before (rnnkit_rows_mode_max = 0), beside torch.nn with the same weights,
paired in one process (shuffled rounds, medians), on torch's thread count and on one thread.

    python benchmarks/one_step.py > benchmarks/one_step.txt

Over so few rows (T * B <= 2) the fused kernels read a large W_hh (and the other weights) where
they lie, by dot products along their rows, instead of transposing them into panels for each call
(rnn_kernels.c: ROWS_MODE_MIN_WEIGHTS).
"""

import torch

import rnnkit
from rnnkit.bench import paired_medians
from rnnkit.engines import _library

LAYERS = (("LSTM", 64, 256, 2, 1), ("LSTM", 64, 256, 2, 2), ("GRU", 64, 256, 2, 1), ("LSTM", 64, 128, 2, 1),
          ("LSTM", 32, 64, 2, 1), ("LSTM", 1, 20, 1, 1))
"""(cell, I, H, layers, B): the language model's default (rnnkit train lm), smaller ones, the tutorials'."""

loaded = _library.load()
assert not isinstance(loaded, str), loaded
shipped = torch.ops.rnnkit._policy("rows_mode_max")

print(f"torch {torch.__version__}; T = 1, no_grad; median us; ratio = torch.nn / each (above 1: faster "
      "than torch.nn)")
for threads in (torch.get_num_threads(), 1):
    torch.set_num_threads(threads)
    for cell, inputs, hidden, layers, batch in LAYERS:
        torch.manual_seed(0)
        ref = getattr(torch.nn, cell)(inputs, hidden, num_layers=layers)
        ours = rnnkit.from_torch(ref)
        x = torch.randn(1, batch, inputs)
        h = torch.randn(layers, batch, hidden)
        state = (h, torch.randn(layers, batch, hidden)) if cell == "LSTM" else h

        def step(module: torch.nn.Module, rows: int) -> None:
            torch.ops.rnnkit._policy("rows_mode_max", rows)
            with torch.no_grad():
                module(x, state)

        with torch.no_grad():
            largest = (ref(x, state)[0] - ours(x, state)[0]).abs().max().item()
        fns = {"torch.nn": lambda: step(ref, shipped), "rnnkit": lambda: step(ours, shipped),
               "rnnkit, panels": lambda: step(ours, 0)}
        for f in fns.values():
            for _ in range(200):
                f()
        t = {k: v * 1e6 for k, v in paired_medians(fns, rounds=3000, budget_s=0, seed=None).items()}
        torch.ops.rnnkit._policy("rows_mode_max", shipped)
        print(f"{threads} thread(s), {cell} I={inputs} H={hidden} layers={layers} B={batch}: torch.nn {t['torch.nn']:.1f}, "
              f"rnnkit {t['rnnkit']:.1f} ({t['torch.nn'] / t['rnnkit']:.2f}x), rnnkit with panels "
              f"{t['rnnkit, panels']:.1f} ({t['torch.nn'] / t['rnnkit, panels']:.2f}x); largest difference "
              f"{largest:.1e}", flush=True)
