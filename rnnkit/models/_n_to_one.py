"""N -> 1: a sequence of feature vectors in, one vector out (class logits, or a forecast horizon)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

import rnnkit
from rnnkit import _checks

CELLS = {"rnn": rnnkit.RNN, "lstm": rnnkit.LSTM, "gru": rnnkit.GRU, "mingru": rnnkit.MinGRU, "minlstm": rnnkit.MinLSTM}
"""The pipelines' cells: torch.nn's three, and the minimal GRU and LSTM (rnnkit.MinGRU, MinLSTM),
whose state is one tensor h like the GRU's."""
POOLINGS = ("last", "mean", "max", "attention")


@dataclass
class NToOneConfig:
    input_size: int
    outputs: int  # classes (logits) or forecast horizon (values)
    cell: str = "gru"
    hidden_size: int = 128
    num_layers: int = 1
    bidirectional: bool = True
    pooling: str = "mean"  # last: the final states; mean or max over the valid steps; attention
    dropout: float = 0.0  # between stacked layers and before the output layer
    vocab_size: int | None = None  # token ids in (an embedding) instead of feature vectors
    embed_dim: int = 64  # with vocab_size: the embedding's width, which then is the RNN's input size

    def check(self) -> NToOneConfig:
        _checks.check_choice("model", "cell", self.cell, tuple(CELLS))
        _checks.check_choice("model", "pooling", self.pooling, POOLINGS)
        _checks.check_int("model", "hidden_size", self.hidden_size, minimum=1)
        _checks.check_int("model", "num_layers", self.num_layers, minimum=1)
        _checks.check_int("model", "outputs", self.outputs, minimum=1)
        _checks.check_probability("model", "dropout", self.dropout, allow_one=False)
        if self.vocab_size is not None:
            _checks.check_int("model", "vocab_size", self.vocab_size, minimum=3)
            _checks.check_int("model", "embed_dim", self.embed_dim, minimum=1)
        return self


class AttentionPooling(nn.Module):
    """Additive attention over the valid steps (Bahdanau et al. 2015; Yang et al. 2016):
    score_t = v . tanh(W out_t + b), weights = softmax over t < length, pooled = sum_t weights_t out_t.
    out (B, T, D*H), lengths (B,) or None -> pooled (B, D*H), weights (B, T)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.proj = nn.Linear(size, size)
        self.score = nn.Linear(size, 1, bias=False)

    def forward(self, out: Tensor, lengths: Tensor | None) -> tuple[Tensor, Tensor]:
        scores = self.score(torch.tanh(self.proj(out))).squeeze(-1)  # (B, T)
        if lengths is not None:
            valid = torch.arange(out.shape[1], device=out.device)[None, :] < lengths.view(-1, 1).to(out.device)
            scores = scores.masked_fill(~valid, float("-inf"))
        weights = torch.softmax(scores, dim=1)  # (B, T), zero past each length
        return torch.einsum("bt,btd->bd", weights, out), weights


class NToOne(nn.Module):
    """x (B, T, F) float, or token ids (B, T) int64 when config.vocab_size is set; lengths (B,) or
    None -> (B, outputs): class logits or a forecast horizon.

    embed (token models only): ids -> (B, T, embed_dim), id 0 (padding) to zeros; rnn: an rnnkit
    layer (batch_first) reading each step; pooling turns its outputs (B, T, D*H) into one vector
    (B, D*H), using only the steps before each length; a linear layer gives the outputs.
    """

    def __init__(self, config: NToOneConfig) -> None:
        super().__init__()
        self.config = config.check()
        self.embed = nn.Embedding(config.vocab_size, config.embed_dim, padding_idx=0) if config.vocab_size else None
        input_size = config.embed_dim if config.vocab_size else config.input_size
        self.rnn = CELLS[config.cell](
            input_size, config.hidden_size, config.num_layers, batch_first=True,
            bidirectional=config.bidirectional, dropout=config.dropout if config.num_layers > 1 else 0.0,
        )
        directions = 2 if config.bidirectional else 1
        self.drop = nn.Dropout(config.dropout)
        self.attention = AttentionPooling(directions * config.hidden_size) if config.pooling == "attention" else None
        self.head = nn.Linear(directions * config.hidden_size, config.outputs)

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        if self.embed is not None:
            x = self.drop(self.embed(x))  # (B, T) ids -> (B, T, E)
        out, hidden = self.rnn(x, lengths=lengths)  # out (B, T, D*H), zero past each length
        h_n = hidden[0] if isinstance(hidden, tuple) else hidden  # (K*D, B, H)
        pooling = self.config.pooling
        if pooling == "last":  # the last layer's final state in each direction: (B, D*H)
            directions = 2 if self.config.bidirectional else 1
            pooled = torch.cat(list(h_n[-directions:]), dim=-1)
        elif pooling == "mean":
            steps = torch.full((x.shape[0], 1), x.shape[1], device=x.device) if lengths is None else lengths.view(-1, 1).to(x.device)
            pooled = out.sum(1) / steps.to(out.dtype)
        elif self.attention is not None:
            pooled, _ = self.attention(out, lengths)
        else:  # max over the valid steps only
            if lengths is not None:
                valid = torch.arange(x.shape[1], device=x.device)[None, :] < lengths.view(-1, 1).to(x.device)
                out = out.masked_fill(~valid[..., None], float("-inf"))
            pooled = out.max(1).values
        return self.head(self.drop(pooled))
