"""N -> 1: a sequence of feature vectors in, one vector out (class logits, or a forecast horizon)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

import rnnkit
from rnnkit import _checks

CELLS = {"rnn": rnnkit.RNN, "lstm": rnnkit.LSTM, "gru": rnnkit.GRU}
POOLINGS = ("last", "mean", "max")


@dataclass
class NToOneConfig:
    input_size: int
    outputs: int  # classes (logits) or forecast horizon (values)
    cell: str = "gru"
    hidden_size: int = 128
    num_layers: int = 1
    bidirectional: bool = True
    pooling: str = "mean"  # last: the final states; mean or max over the valid steps
    dropout: float = 0.0  # between stacked layers and before the output layer

    def check(self) -> NToOneConfig:
        _checks.check_choice("model", "cell", self.cell, tuple(CELLS))
        _checks.check_choice("model", "pooling", self.pooling, POOLINGS)
        _checks.check_int("model", "hidden_size", self.hidden_size, minimum=1)
        _checks.check_int("model", "num_layers", self.num_layers, minimum=1)
        _checks.check_int("model", "outputs", self.outputs, minimum=1)
        _checks.check_probability("model", "dropout", self.dropout, allow_one=False)
        return self


class NToOne(nn.Module):
    """x (B, T, F), lengths (B,) or None -> (B, outputs): class logits or a forecast horizon.

    rnn: an rnnkit layer (batch_first) reading the F features of each step; pooling turns its
    outputs (B, T, D*H) into one vector (B, D*H); a linear layer gives the outputs.
    """

    def __init__(self, config: NToOneConfig) -> None:
        super().__init__()
        self.config = config.check()
        self.rnn = CELLS[config.cell](
            config.input_size, config.hidden_size, config.num_layers, batch_first=True,
            bidirectional=config.bidirectional, dropout=config.dropout if config.num_layers > 1 else 0.0,
        )
        directions = 2 if config.bidirectional else 1
        self.drop = nn.Dropout(config.dropout)
        self.head = nn.Linear(directions * config.hidden_size, config.outputs)

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        out, hidden = self.rnn(x, lengths=lengths)  # out (B, T, D*H), zero past each length
        h_n = hidden[0] if isinstance(hidden, tuple) else hidden  # (K*D, B, H)
        pooling = self.config.pooling
        if pooling == "last":  # the last layer's final state in each direction: (B, D*H)
            directions = 2 if self.config.bidirectional else 1
            pooled = torch.cat(list(h_n[-directions:]), dim=-1)
        elif pooling == "mean":
            steps = torch.full((x.shape[0], 1), x.shape[1], device=x.device) if lengths is None else lengths.view(-1, 1).to(x.device)
            pooled = out.sum(1) / steps.to(out.dtype)
        else:  # max over the valid steps only
            if lengths is not None:
                valid = torch.arange(x.shape[1], device=x.device)[None, :] < lengths.view(-1, 1).to(x.device)
                out = out.masked_fill(~valid[..., None], float("-inf"))
            pooled = out.max(1).values
        return self.head(self.drop(pooled))
