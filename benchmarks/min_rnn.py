"""Training speed of the minimal GRU and LSTM (rnnkit.MinGRU, MinLSTM) against the GRU: one
training step (forward and backward of one layer, loss = sum of the outputs) at
(T, B, I, H) = (T, 32, 64, 128), T = 64 to 4096, paired in one process (shuffled rounds,
medians): the minGRU on its fused engine (rnnkit::min_scan) and on the torch scan (log space),
the minLSTM fused, rnnkit's fused GRU and torch.nn.GRU with the same H.

    python benchmarks/min_rnn.py > benchmarks/min_rnn.txt   # about 10 minutes on 2 cores

Ratios above 1: the minimal layer is that many times faster.
"""

from __future__ import annotations

import argparse

import torch

import rnnkit
from rnnkit.bench import paired_medians
from rnnkit.engines import _library

B, I, H = 32, 64, 128


def step(layer: torch.nn.Module, x: torch.Tensor) -> None:
    out = layer(x)[0]
    out.sum().backward()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", default="64,128,256,512,1024,2048,4096")
    parser.add_argument("--budget", type=float, default=8.0, help="Seconds per row at most (3 rounds at least).")
    args = parser.parse_args()
    loaded = _library.load()
    assert not isinstance(loaded, str), loaded
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; (T, {B}, {I}, {H}); one layer, "
          "training step (forward + backward), median ms")
    names = ["minGRU fused", "minGRU scan", "minLSTM fused", "GRU fused", "torch.nn.GRU"]
    print(f"{'T':>5} " + " ".join(f"{n:>14}" for n in names) +
          "   minGRU fused vs: GRU fused, torch.nn.GRU, minGRU scan")
    for steps in (int(s) for s in args.steps.split(",")):
        torch.manual_seed(0)
        layers = {"minGRU fused": rnnkit.MinGRU(I, H, engine="fused"), "minGRU scan": rnnkit.MinGRU(I, H, engine="scan"),
                  "minLSTM fused": rnnkit.MinLSTM(I, H, engine="fused"), "GRU fused": rnnkit.GRU(I, H, engine="fused"),
                  "torch.nn.GRU": torch.nn.GRU(I, H)}
        x = torch.randn(steps, B, I)
        fns = {name: (lambda layer=layer: step(layer, x)) for name, layer in layers.items()}
        for fn in fns.values():
            fn()
        times = paired_medians(fns, rounds=3, budget_s=args.budget,
                               before=lambda: [p.grad.zero_() for m in layers.values() for p in m.parameters()
                                               if p.grad is not None])
        ours = times["minGRU fused"]
        print(f"{steps:>5} " + " ".join(f"{times[n] * 1e3:>14.2f}" for n in names) +
              f"   {times['GRU fused'] / ours:6.1f}x {times['torch.nn.GRU'] / ours:6.1f}x "
              f"{times['minGRU scan'] / ours:6.1f}x", flush=True)


if __name__ == "__main__":
    main()
