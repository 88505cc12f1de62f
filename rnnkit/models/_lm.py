"""N -> N: a character (or token) language model, and its generate loop."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from rnnkit import _checks
from rnnkit.models._n_to_one import CELLS


@dataclass
class LanguageModelConfig:
    vocab_size: int
    cell: str = "lstm"
    embed_dim: int = 64
    hidden_size: int = 256
    num_layers: int = 2
    dropout: float = 0.1  # on the embeddings, between layers and before the output layer

    def check(self) -> LanguageModelConfig:
        _checks.check_choice("lm", "cell", self.cell, tuple(CELLS))
        _checks.check_int("lm", "vocab_size", self.vocab_size, minimum=2)
        for name in ("embed_dim", "hidden_size", "num_layers"):
            _checks.check_int("lm", name, getattr(self, name), minimum=1)
        _checks.check_probability("lm", "dropout", self.dropout, allow_one=False)
        return self


class LanguageModel(nn.Module):
    """tokens (B, T) int64, state (an initial state or None) -> logits (B, T, V), final state.

    logits[:, t] scores the token that follows tokens[:, t]. The state is the rnnkit layer's
    (h_n, or (h_n, c_n) for an LSTM, each (K, B, H)), so a caller can carry it across chunks.
    """

    def __init__(self, config: LanguageModelConfig) -> None:
        super().__init__()
        self.config = config.check()
        self.embed = nn.Embedding(config.vocab_size, config.embed_dim)
        self.rnn = CELLS[config.cell](config.embed_dim, config.hidden_size, config.num_layers, batch_first=True,
                                      dropout=config.dropout if config.num_layers > 1 else 0.0)
        self.drop = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.hidden_size, config.vocab_size)

    def forward(self, tokens: Tensor, state: Any = None) -> tuple[Tensor, Any]:
        out, state = self.rnn(self.drop(self.embed(tokens)), state)  # (B, T, H)
        return self.head(self.drop(out)), state


def sample_next(logits: Tensor, *, greedy: bool, temperature: float, top_k: int | None,
                generator: torch.Generator | None, exclude: Sequence[int] = ()) -> Tensor:
    """logits (B, V) -> the next token (B,): the most likely one (greedy), or a draw from
    softmax(logits / temperature) restricted to the top_k most likely tokens. Tokens in exclude
    (padding, unknown) are never chosen."""
    if exclude:
        logits = logits.index_fill(-1, torch.tensor(list(exclude), device=logits.device), float("-inf"))
    if greedy:
        return logits.argmax(-1)
    logits = logits / temperature  # below 1: sharper, above 1: flatter
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1): the k-th largest score
        logits = logits.masked_fill(logits < kth, float("-inf"))  # only the top k stay possible
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(model: LanguageModel, prompt: list[int], length: int, *, context: int | None = None,
             greedy: bool = False, temperature: float = 1.0, top_k: int | None = None,
             generator: torch.Generator | None = None, exclude: Sequence[int] = ()) -> list[int]:
    """The `length` tokens that follow prompt (a non-empty list of ids).

    context None: the model reads the prompt once, then each new token with the carried state
    (as in training by truncated backpropagation through time). context K: each step reads the
    last K tokens afresh from a zero state (as in training on windows of K tokens).
    """
    model.eval()
    out: list[int] = []
    if context is None:
        logits, state = model(torch.tensor([prompt]))  # (1, P, V): read the whole prompt
        for _ in range(length):
            token = sample_next(logits[:, -1], greedy=greedy, temperature=temperature, top_k=top_k, generator=generator,
                                exclude=exclude)
            out.append(int(token))
            logits, state = model(token.view(1, 1), state)  # one step on from the carried state
    else:
        text = list(prompt)
        for _ in range(length):
            logits, _ = model(torch.tensor([text[-context:]]))  # the last K tokens, zero state
            token = sample_next(logits[:, -1], greedy=greedy, temperature=temperature, top_k=top_k, generator=generator,
                                exclude=exclude)
            out.append(int(token))
            text.append(int(token))
    return out
