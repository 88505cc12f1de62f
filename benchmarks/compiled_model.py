"""torch.compile on a whole model around an rnnkit layer, against the same model eager: where the
per-call cost of torch.compile is paid once for the model, not once for the layer.

The model is the tutorials' classifier: an embedding (vocabulary 60, 32 wide), a recurrent layer
(rnnkit.LSTM or rnnkit.GRU, default engine; LSTM2x2: an LSTM of 2 layers, bidirectional), the
last step's output through a Linear to 18 classes, cross-entropy. A training step is forward,
loss and backward (the optimizer's step is the same code either way and left out); inference is
the forward pass under no_grad. Compiled: ``torch.compile(model, fullgraph=True)``. The same
model, and (for scale) torch's per-call cost alone: the same model with the recurrent layer
replaced by a Linear of the same sizes. Beside them, the model with torch.nn's layer in place of
rnnkit's (the same weights), compiled as users compile it, ``torch.compile(model)``: dynamo does not
trace torch.nn's recurrent layers (it refuses them under fullgraph=True), so the layer runs eager
between two compiled graphs. Its training step against the compiled model with rnnkit's (vs
torch.nn: above 1, rnnkit's compiled model is faster).

    python benchmarks/compiled_model.py > benchmarks/compiled_model.txt

Rounds alternate eager and compiled in a fresh order; medians in microseconds.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import rnnkit
from rnnkit.bench import paired_medians

SHAPES = ((20, 1), (12, 64), (50, 32))
"""(T, B) of the batches: a tutorial's one sequence, a batch of names, a batch of sentences."""


class Classifier(nn.Module):
    def __init__(self, cell: str, hidden: int, family: object = rnnkit) -> None:
        """family: rnnkit, or torch.nn for its own layers."""
        super().__init__()
        self.embed = nn.Embedding(60, 32)
        if cell == "linear":
            self.rnn: nn.Module = nn.Linear(32, hidden)
        elif cell == "LSTM2x2":  # 2 layers, bidirectional: one operator for the stack when compiled
            self.rnn = getattr(family, "LSTM")(32, hidden, num_layers=2, bidirectional=True)
        else:
            self.rnn = getattr(family, cell)(32, hidden)
        self.head = nn.Linear(hidden * (2 if cell == "LSTM2x2" else 1), 18)
        self.cell = cell

    def forward(self, tokens: Tensor, labels: Tensor) -> Tensor:
        x = self.embed(tokens)  # (T, B, 32)
        out = torch.tanh(self.rnn(x)) if self.cell == "linear" else self.rnn(x)[0]
        return F.cross_entropy(self.head(out[-1]), labels)


class TorchClassifier(Classifier):
    """The model with torch.nn's layer. Its forward is its own code: dynamo keeps its compiled
    graphs per code object, and guards checked for the twin's graphs at each call of
    Classifier.forward slowed the compiled rnnkit model's step (GRU at (20, 1): 884 us in this
    script's rows with a shared forward, 445 us for the same compiled step timed without the twin)."""

    def __init__(self, cell: str, hidden: int) -> None:
        super().__init__(cell, hidden, torch.nn)

    def forward(self, tokens: Tensor, labels: Tensor) -> Tensor:
        return F.cross_entropy(self.head(self.rnn(self.embed(tokens))[0][-1]), labels)


def timings(cell: str, shape: tuple[int, int], hidden: int, budget_s: float) -> dict[str, float]:
    torch._dynamo.reset()  # each row compiles its own model afresh
    torch.manual_seed(0)
    steps, batch = shape
    model = Classifier(cell, hidden)
    compiled = torch.compile(model, fullgraph=True)
    tokens, labels = torch.randint(0, 60, (steps, batch)), torch.randint(0, 18, (batch,))

    def train(m: Callable[..., Tensor]) -> Callable[[], None]:
        def run() -> None:
            for p in model.parameters():
                p.grad = None
            m(tokens, labels).backward()
        return run

    def infer(m: Callable[..., Tensor]) -> Callable[[], None]:
        def run() -> None:
            with torch.no_grad():
                m(tokens, labels)
        return run

    fns = {"train eager": train(model), "train compiled": train(compiled),
           "infer eager": infer(model), "infer compiled": infer(compiled)}
    if cell != "linear":
        twin = TorchClassifier(cell, hidden)
        twin.load_state_dict(model.state_dict())
        twin_compiled = torch.compile(twin)  # dynamo leaves torch.nn's recurrent layers out: a graph break

        def train_twin() -> None:
            for p in twin.parameters():
                p.grad = None
            twin_compiled(tokens, labels).backward()
        fns["train torch.nn compiled"] = train_twin
    for fn in fns.values():  # the first calls compile
        for _ in range(3):
            fn()
    return {name: 1e6 * t for name, t in paired_medians(fns, rounds=20, budget_s=budget_s).items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=float, default=8.0, help="Seconds per row.")
    parser.add_argument("--hidden", type=int, default=64)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; hidden {args.hidden}; "
          "median us; ratio = eager / compiled (above 1: compiled is faster); torch.nn compiled: the "
          "training step of the model with torch.nn's layer, compiled, and its time / rnnkit's compiled")
    print(f"{'layer':7} {'T':>3} {'B':>3}  {'train eager':>11} {'compiled':>9} {'ratio':>6}  "
          f"{'infer eager':>11} {'compiled':>9} {'ratio':>6}  {'torch.nn compiled':>17} {'vs torch.nn':>11}")
    for cell in ("LSTM", "GRU", "LSTM2x2", "linear"):
        for shape in SHAPES:
            t = timings(cell, shape, args.hidden, args.budget)
            print(f"{cell:7} {shape[0]:>3} {shape[1]:>3}  {t['train eager']:11.1f} {t['train compiled']:9.1f} "
                  f"{t['train eager'] / t['train compiled']:5.2f}x  {t['infer eager']:11.1f} "
                  f"{t['infer compiled']:9.1f} {t['infer eager'] / t['infer compiled']:5.2f}x"
                  + (f"  {t['train torch.nn compiled']:17.1f} {t['train torch.nn compiled'] / t['train compiled']:10.2f}x"
                     if "train torch.nn compiled" in t else ""), flush=True)


if __name__ == "__main__":
    main()
