"""A first end-to-end look at rnnkit: parity with torch.nn, and the "hello world" character model.

The library computes and returns; the CLI (``rnnkit demo``) prints.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

import rnnkit


@dataclass(frozen=True)
class ParityReport:
    """Largest absolute differences between rnnkit.LSTM and torch.nn.LSTM on the same weights."""

    config: str
    output: float
    final_state: float
    gradients: float


@dataclass(frozen=True)
class HelloReport:
    """A character LSTM trained on one string, and what it generates from a prompt."""

    text: str
    prompt: str
    generated: str
    steps: int
    final_loss: float
    seconds: float


def parity(*, seed: int = 0) -> ParityReport:
    """Copy a torch.nn.LSTM's weights into rnnkit.LSTM and compare outputs and all gradients
    on a padded batch of variable-length sequences, float64."""
    torch.manual_seed(seed)
    theirs = nn.LSTM(8, 16, num_layers=2, bidirectional=True, dtype=torch.float64)
    ours = rnnkit.from_torch(theirs)
    x = torch.randn(12, 4, 8, dtype=torch.float64)  # (T, B, I)
    lengths = [12, 9, 5, 1]
    packed = nn.utils.rnn.pack_padded_sequence(x, lengths)
    out_t, (h_t, c_t) = theirs(packed)
    out_t, _ = nn.utils.rnn.pad_packed_sequence(out_t)
    out_o, (h_o, c_o) = ours(x, lengths=lengths)
    (out_t.sum() + h_t.sum() + c_t.sum()).backward()
    (out_o.sum() + h_o.sum() + c_o.sum()).backward()
    grads = max(
        (a.grad - b.grad).abs().max().item()  # type: ignore[operator]
        for a, b in zip(ours.parameters(), theirs.parameters())
    )
    return ParityReport(
        config="LSTM(8, 16, num_layers=2, bidirectional=True), lengths 12/9/5/1, float64",
        output=(out_o - out_t).abs().max().item(),
        final_state=max((h_o - h_t).abs().max().item(), (c_o - c_t).abs().max().item()),
        gradients=grads,
    )


class CharLSTM(nn.Module):
    """Embedding (V -> E), rnnkit.LSTM (E -> H), Linear (H -> V): next-character logits."""

    def __init__(self, vocab: int, embed: int = 8, hidden: int = 32) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, embed)
        self.rnn = rnnkit.LSTM(embed, hidden)
        self.head = nn.Linear(hidden, vocab)

    def forward(
        self, tokens: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """tokens (T,) -> logits (T, V) and the LSTM state, each (1, H)."""
        out, state = self.rnn(self.embed(tokens), state)  # unbatched: (T, E) -> (T, H)
        return self.head(out), state


def hello_world(*, text: str = "hello world", prompt: str = "he", steps: int = 150, seed: int = 0) -> HelloReport:
    """Train a character LSTM to predict each next character of text, then continue prompt
    greedily (always the most likely next character) to the length of text."""
    start = time.perf_counter()
    torch.manual_seed(seed)
    chars = sorted(set(text))
    index = {c: i for i, c in enumerate(chars)}
    tokens = torch.tensor([index[c] for c in text])
    model = CharLSTM(len(chars))
    optimiser = torch.optim.Adam(model.parameters(), lr=0.03)
    loss = torch.zeros(())
    for _ in range(steps):
        optimiser.zero_grad()
        logits, _ = model(tokens[:-1])
        loss = nn.functional.cross_entropy(logits, tokens[1:])
        loss.backward()
        optimiser.step()
    model.eval()
    generated = prompt
    with torch.no_grad():
        logits, state = model(torch.tensor([index[c] for c in prompt]))
        while len(generated) < len(text):
            nxt = int(logits[-1].argmax())
            generated += chars[nxt]
            logits, state = model(torch.tensor([nxt]), state)
    return HelloReport(text, prompt, generated, steps, loss.item(), time.perf_counter() - start)
