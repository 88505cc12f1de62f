"""1 -> N and N -> M: a decoder that emits a token sequence from one feature vector (caption) or
from an encoded source sequence (seq2seq, with or without attention); greedy and beam search.

Target ids: 0 padding, 1 unknown, 2 <bos> (the decoder's first input), 3 <eos> (the end).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import rnnkit
from rnnkit import _checks
from rnnkit.cells._module import RecurrentCell
from rnnkit.engines import LayerConfig, Noise, select_engine
from rnnkit.models._n_to_one import CELLS

BOS, EOS = 2, 3
ATTENTIONS = ("none", "bahdanau", "luong")
STEP_CELLS = {"rnn": rnnkit.RNNCell, "lstm": rnnkit.LSTMCell, "gru": rnnkit.GRUCell, "mingru": rnnkit.MinGRUCell,
              "minlstm": rnnkit.MinLSTMCell}


@dataclass
class Seq2SeqConfig:
    target_vocab: int
    source_vocab: int | None = None  # N -> M: source token ids; None with source_features: 1 -> N
    source_features: int | None = None  # 1 -> N: the width of the one input vector
    cell: str = "gru"
    embed_dim: int = 64
    hidden_size: int = 128
    num_layers: int = 1
    bidirectional: bool = True  # the encoder's
    attention: str = "bahdanau"
    dropout: float = 0.0
    input_feeding: bool = True  # luong: a_{t-1} joins the next step's input (runs saved before it had it)

    def check(self) -> Seq2SeqConfig:
        _checks.check_choice("seq2seq", "cell", self.cell, tuple(CELLS))
        _checks.check_choice("seq2seq", "attention", self.attention, ATTENTIONS)
        _checks.check_int("seq2seq", "target_vocab", self.target_vocab, minimum=5)
        for name in ("embed_dim", "hidden_size", "num_layers"):
            _checks.check_int("seq2seq", name, getattr(self, name), minimum=1)
        if (self.source_vocab is None) == (self.source_features is None):
            raise ValueError("seq2seq: give exactly one of source_vocab (a token sequence in) and source_features "
                             f"(one vector in), got {self.source_vocab!r} and {self.source_features!r}")
        if self.source_features is not None and self.attention != "none":
            raise ValueError(f"seq2seq: one input vector leaves nothing to attend over: attention must be 'none', "
                             f"got {self.attention!r}")
        _checks.check_probability("seq2seq", "dropout", self.dropout, allow_one=False)
        _checks.check_bool("seq2seq", "input_feeding", self.input_feeding)
        return self

    @property
    def feeds(self) -> bool:
        """Whether each decoder step takes the previous step's attentional output (luong with
        input feeding)."""
        return self.attention == "luong" and self.input_feeding


State = list[Any]  # per decoder layer: h (B, H), or (h, c) for an LSTM


class Seq2Seq(nn.Module):
    """source -> scores of each target token.

    source: token ids (B, S) int64 with lengths (B,), or one feature vector per example (B, F).
    forward(source, lengths, target_in) -> logits (B, L, V), with teacher forcing: target_in
    (B, L) is <bos> followed by the target, and logits[:, t] scores target token t.

    Encoder (token sources): an rnnkit layer (bidirectional by default) over the embedded source.
    Vector sources: an encoder of one hidden layer, tanh(Linear(x)) (B, H).
    Bridge: the decoder's initial state, tanh(Linear(.)) of the encoder's final states (both
    directions of each layer), or of the encoded vector. Decoder: one rnnkit cell per layer, one
    step at a time. Attention over the encoder outputs, masked past each length:
      bahdanau: score_j = v . tanh(W s_{t-1} + U h_j); the context c_t joins the input:
                s_t = cell([emb(y_{t-1}); c_t], s_{t-1}); logits = Linear([s_t; c_t]);
      luong:    s_t = cell([emb(y_{t-1}); a_{t-1}], s_{t-1}) (input feeding); score_j = s_t . W h_j;
                a_t = tanh(W_c [c_t; s_t]); logits = Linear(a_t). With input_feeding=False,
                s_t = cell(emb(y_{t-1}), s_{t-1}): the attention reads the decoder's states and
                feeds nothing back, so under teacher forcing the decoder runs over all steps at
                once (one rnnkit layer call per decoder layer) and attends to all steps at once.
    """

    def __init__(self, config: Seq2SeqConfig) -> None:
        super().__init__()
        self.config = c = config.check()
        d = 2 if c.bidirectional else 1
        h = c.hidden_size
        if c.source_vocab is not None:
            self.source_embed = nn.Embedding(c.source_vocab, c.embed_dim, padding_idx=0)
            self.encoder = CELLS[c.cell](c.embed_dim, h, c.num_layers, batch_first=True, bidirectional=c.bidirectional,
                                         dropout=c.dropout if c.num_layers > 1 else 0.0)
            bridge_in = d * h
            memory = d * h
        else:  # an encoder for the vector: one hidden layer (B, F) -> (B, H)
            self.vector_encoder = nn.Sequential(nn.Linear(int(c.source_features or 0), h), nn.Tanh())
            bridge_in, memory = h, 0
        states = 2 if c.cell == "lstm" else 1  # LSTM: bridge h and c
        self.bridge = nn.ModuleList(nn.Linear(bridge_in, h) for _ in range(states * c.num_layers))
        self.target_embed = nn.Embedding(c.target_vocab, c.embed_dim, padding_idx=0)
        feed = {"none": 0, "bahdanau": memory, "luong": h if c.input_feeding else 0}[c.attention]
        self.cells = nn.ModuleList(STEP_CELLS[c.cell](c.embed_dim + feed if k == 0 else h, h) for k in range(c.num_layers))
        if c.attention == "bahdanau":
            self.att_query = nn.Linear(h, h, bias=False)
            self.att_keys = nn.Linear(memory, h)
            self.att_v = nn.Linear(h, 1, bias=False)
            self.head = nn.Linear(h + memory, c.target_vocab)
        elif c.attention == "luong":
            self.att_keys = nn.Linear(memory, h, bias=False)  # the "general" score s . W h
            self.att_combine = nn.Linear(memory + h, h)
            self.head = nn.Linear(h, c.target_vocab)
        else:
            self.head = nn.Linear(h, c.target_vocab)
        self.drop = nn.Dropout(c.dropout)
        self._watched: list[Tensor] | None = None  # attention weights, kept while attention_map runs

    # --- encoding -----------------------------------------------------------------------------
    def encode(self, source: Tensor, lengths: Tensor | None) -> tuple[State, Tensor | None, Tensor | None]:
        """-> (initial decoder state, memory (B, S, D*H) or None, mask (B, S) of valid steps or None)."""
        c = self.config
        if c.source_vocab is None:  # 1 -> N: the vector alone sets the initial state
            summary = [self.drop(self.vector_encoder(source))] * len(self.bridge)  # each (B, H)
            memory = mask = None
        else:
            out, final = self.encoder(self.drop(self.source_embed(source)), lengths=lengths)  # (B, S, D*H)
            finals = list(final) if isinstance(final, tuple) else [final]  # each (K*D, B, H)
            d = 2 if c.bidirectional else 1
            summary = []
            for f in finals:
                per_layer = f.view(c.num_layers, d, f.shape[1], c.hidden_size)  # (K, D, B, H)
                summary += [torch.cat(list(per_layer[k]), dim=-1) for k in range(c.num_layers)]  # (B, D*H)
            memory = out
            steps = torch.arange(out.shape[1], device=out.device)[None, :]
            mask = steps < lengths.view(-1, 1).to(out.device) if lengths is not None else torch.ones_like(steps, dtype=torch.bool).expand(out.shape[0], -1)
        init = [torch.tanh(bridge(s)) for bridge, s in zip(self.bridge, summary)]  # each (B, H)
        if c.cell == "lstm":  # first the K h's, then the K c's
            return [(init[k], init[c.num_layers + k]) for k in range(c.num_layers)], memory, mask
        return init, memory, mask

    # --- one decoder step ---------------------------------------------------------------------
    def _weights_for(self, query: Tensor, keys: Tensor, mask: Tensor | None = None) -> Tensor:
        """query (B, H), keys (B, S, H) -> the attention weights (B, S), zero past each length."""
        if self.config.attention == "bahdanau":
            scores = self.att_v(torch.tanh(self.att_query(query)[:, None] + keys)).squeeze(-1)  # (B, S)
        else:
            scores = torch.einsum("bh,bsh->bs", query, keys)  # (B, S)
        return torch.softmax(scores if mask is None else scores.masked_fill(~mask, float("-inf")), dim=-1)

    def _attend(self, query: Tensor, memory: Tensor, keys: Tensor, mask: Tensor) -> Tensor:
        """query (B, H), memory (B, S, M), keys (B, S, H) -> context (B, M)."""
        weights = self._weights_for(query, keys, mask)
        if self._watched is not None:
            self._watched.append(weights)
        return torch.einsum("bs,bsm->bm", weights, memory)

    def step(self, token: Tensor, state: State, feed: Tensor | None, memory: Tensor | None, keys: Tensor | None,
             mask: Tensor | None) -> tuple[Tensor, State, Tensor | None]:
        """token (B,) -> logits (B, V), the new state, and what the next step's input takes along
        (bahdanau: nothing, its context is recomputed; luong: a_t with input feeding, else nothing)."""
        attention = self.config.attention
        x = self.drop(self.target_embed(token))  # (B, E)
        if attention == "bahdanau":
            top = state[-1][0] if isinstance(state[-1], tuple) else state[-1]
            context = self._attend(top, memory, keys, mask)  # type: ignore[arg-type]  # from s_{t-1}
            x = torch.cat([x, context], dim=-1)
        elif self.config.feeds:
            x = torch.cat([x, feed], dim=-1)  # type: ignore[list-item]  # input feeding: a_{t-1}
        new_state = []
        for k, cell in enumerate(self.cells):
            s = cell(x if k == 0 else self.drop(x), state[k])
            new_state.append(s)
            x = s[0] if isinstance(s, tuple) else s  # (B, H)
        if attention == "bahdanau":
            out = torch.cat([x, context], dim=-1)
            next_feed = None
        elif attention == "luong":
            context = self._attend(x, memory, keys, mask)  # type: ignore[arg-type]  # from s_t
            out = torch.tanh(self.att_combine(torch.cat([context, x], dim=-1)))  # a_t
            next_feed = out if self.config.feeds else None
        else:
            out, next_feed = x, None
        return self.head(self.drop(out)), new_state, next_feed

    def start(self, source: Tensor, lengths: Tensor | None) -> tuple[State, Tensor | None, Tensor | None, Tensor | None, Tensor | None]:
        """-> (state, feed, memory, keys, mask) for the first step."""
        state, memory, mask = self.encode(source, lengths)
        keys = self.att_keys(memory) if self.config.attention != "none" else None  # type: ignore[arg-type]
        batch = source.shape[0]
        feed = self.head.weight.new_zeros(batch, self.config.hidden_size) if self.config.feeds else None
        return state, feed, memory, keys, mask

    def forward(self, source: Tensor, lengths: Tensor | None, target_in: Tensor, *,
                teacher_forcing: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
        """-> logits (B, L, V). With teacher_forcing < 1, each step's input is, with that
        probability per example, the true previous token, else the model's own best guess."""
        state, feed, memory, keys, mask = self.start(source, lengths)
        if teacher_forcing >= 1.0 and isinstance(self.cells[0], RecurrentCell):  # (_forced reads their weights)
            return self._forced(target_in, state, feed, memory, keys, mask)
        token = target_in[:, 0]
        logits = []
        for t in range(target_in.shape[1]):
            out, state, feed = self.step(token, state, feed, memory, keys, mask)
            logits.append(out)
            if t + 1 < target_in.shape[1]:
                token = target_in[:, t + 1]
                if teacher_forcing < 1.0:
                    own = torch.rand(token.shape, generator=generator, device=token.device) >= teacher_forcing
                    token = torch.where(own, out.argmax(-1), token)
        return torch.stack(logits, dim=1)

    def _forced(self, target_in: Tensor, state: State, feed: Tensor | None, memory: Tensor | None,
                keys: Tensor | None, mask: Tensor | None) -> Tensor:
        """forward under full teacher forcing: the same equations as step, with what reads no
        state taken out of the time loop. target_in (B, L) -> logits (B, L, V).

        The embedding, the input side of the first cell's gates from it (W_ih[:, :E] e_t + b_ih)
        and the head run once over all L steps; only the recurrence and the attention step in
        Python. Without attention the decoder is one stack of rnnkit layers over the whole target
        (the fused engine on CPU). The cells' own checks are left out: their inputs are made here."""
        c = self.config
        cells: list[RecurrentCell] = list(self.cells)  # type: ignore[arg-type]
        weights = [cell.weights() for cell in cells]
        spec = cells[0].spec
        emb = self.drop(self.target_embed(target_in))  # (B, L, E)
        states = [s if isinstance(s, tuple) else (s,) for s in state]
        if c.attention != "bahdanau" and not c.feeds:  # nothing of the attention enters a step
            x = emb.transpose(0, 1)  # (L, B, E)
            layer = LayerConfig(spec, c.hidden_size, False, 0.0, 0.0)
            for k, w in enumerate(weights):
                layer_in = x if k == 0 else self.drop(x)
                engine = select_engine("auto", layer, layer_in, owner="Seq2Seq", grad=torch.is_grad_enabled())
                x, _ = engine.run(spec, layer_in, states[k], w, lengths=None, noise=Noise())  # (L, B, H)
            top = x.transpose(0, 1)  # (B, L, H): s_t of every step
            if c.attention == "luong":  # every step's attention at once: scores (B, L, S)
                scores = torch.bmm(top, keys.transpose(1, 2))  # type: ignore[union-attr]
                weights_ = torch.softmax(scores.masked_fill(~mask[:, None], float("-inf")), dim=-1)  # type: ignore[index]
                context = torch.bmm(weights_, memory)  # type: ignore[arg-type]  # (B, L, M)
                top = torch.tanh(self.att_combine(torch.cat([context, top], dim=-1)))  # a_t (B, L, H)
            return self.head(self.drop(top))
        w0 = weights[0]
        embed = c.embed_dim
        gi_emb = F.linear(emb, w0.weight_ih[:, :embed], w0.bias_ih)  # (B, L, G*H): no state in it
        w_feed = w0.weight_ih[:, embed:]  # the context's (bahdanau) or a_{t-1}'s (luong) columns
        outs = []
        for t in range(target_in.shape[1]):
            if c.attention == "bahdanau":
                context = self._attend(states[-1][0], memory, keys, mask)  # type: ignore[arg-type]  # from s_{t-1}
                gi = gi_emb[:, t] + F.linear(context, w_feed)
            else:
                gi = gi_emb[:, t] + F.linear(feed, w_feed)  # type: ignore[arg-type]  # input feeding: a_{t-1}
            new_states = [spec.from_gates(gi, states[0], w0, None)]
            for k in range(1, len(cells)):
                new_states.append(spec.step(self.drop(new_states[-1][0]), states[k], weights[k], None))
            states = new_states
            x = states[-1][0]  # (B, H)
            if c.attention == "bahdanau":
                outs.append(torch.cat([x, context], dim=-1))
            else:
                context = self._attend(x, memory, keys, mask)  # type: ignore[arg-type]  # from s_t
                feed = torch.tanh(self.att_combine(torch.cat([context, x], dim=-1)))  # a_t
                outs.append(feed)
        return self.head(self.drop(torch.stack(outs, dim=1)))  # (B, L, V)

    # --- search -------------------------------------------------------------------------------
    @torch.no_grad()
    def greedy(self, source: Tensor, lengths: Tensor | None, max_length: int) -> list[list[int]]:
        """The most likely token at each step, for a batch; each output stops at <eos>."""
        state, feed, memory, keys, mask = self.start(source, lengths)
        token = torch.full((source.shape[0],), BOS, dtype=torch.int64, device=source.device)
        outputs: list[list[int]] = [[] for _ in range(source.shape[0])]
        done = torch.zeros(source.shape[0], dtype=torch.bool, device=source.device)
        for _ in range(max_length):
            out, state, feed = self.step(token, state, feed, memory, keys, mask)
            token = out.argmax(-1)
            for i in torch.nonzero(~done).flatten().tolist():
                if int(token[i]) != EOS:
                    outputs[i].append(int(token[i]))
            done |= token == EOS
            if bool(done.all()):
                break
        return outputs

    @torch.no_grad()
    def attention_map(self, source: Tensor, lengths: Tensor | None, max_length: int) -> tuple[list[int], Tensor]:
        """The greedy output of one example, source (1, S), and the attention weights (L, S) of each
        decoder step that wrote it: row t weighs the source tokens for output token t (the last
        row writes <eos> when the output ends by it, so L is len(output) or len(output) + 1)."""
        if self.config.attention == "none":
            raise ValueError("attention_map: this model has no attention (attention='none')")
        if source.shape[0] != 1:
            raise ValueError(f"attention_map: expected one example, source of shape (1, S), got {tuple(source.shape)}")
        self._watched = []
        try:
            output = self.greedy(source, lengths, max_length)[0]
            weights = torch.cat(self._watched)  # (steps, S): one row per decoder step
        finally:
            self._watched = None
        return output, weights[: len(output) + 1]

    @torch.no_grad()
    def beam(self, source: Tensor, lengths: Tensor | None, max_length: int, width: int) -> list[int]:
        """Beam search for one example (source of batch 1): keeps the `width` most likely partial
        outputs (sum of log-probabilities); returns the most likely finished one (ended by <eos>,
        or cut at max_length)."""
        state, feed, memory, keys, mask = self.start(source, lengths)
        expand = lambda t: None if t is None else t.expand(width, *t.shape[1:]).contiguous()  # noqa: E731
        memory, keys, mask, feed = expand(memory), expand(keys), expand(mask), expand(feed)
        state = [tuple(expand(x) for x in s) if isinstance(s, tuple) else expand(s) for s in state]
        scores = torch.full((width,), float("-inf"), device=source.device)
        scores[0] = 0.0  # one live hypothesis at first: the others are copies of it
        tokens = torch.full((width,), BOS, dtype=torch.int64, device=source.device)
        paths: list[list[int]] = [[] for _ in range(width)]
        finished: list[tuple[float, list[int]]] = []
        for _ in range(max_length):
            out, state, feed = self.step(tokens, state, feed, memory, keys, mask)
            total = scores[:, None] + torch.log_softmax(out, dim=-1)  # (W, V): score of each extension
            best, flat = total.view(-1).topk(width)
            rows, tokens = flat // total.shape[1], flat % total.shape[1]
            keep = []
            for score, row, token in zip(best.tolist(), rows.tolist(), tokens.tolist()):
                if token == EOS:
                    finished.append((score, paths[row]))
                else:
                    keep.append((score, row, token))
            if finished and (not keep or max(f[0] for f in finished) >= keep[0][0]):
                break  # scores only fall: nothing alive can beat the best finished output
            keep += [(float("-inf"), keep[0][1], keep[0][2])] * (width - len(keep))  # stand-ins for the ended
            rows_t = torch.tensor([r for _, r, _ in keep], device=source.device)
            tokens = torch.tensor([t for _, _, t in keep], device=source.device)
            scores = torch.tensor([s for s, _, _ in keep], device=source.device)
            paths = [paths[r] + [t] for _, r, t in keep]
            state = [tuple(x[rows_t] for x in s) if isinstance(s, tuple) else s[rows_t] for s in state]
            feed = feed[rows_t] if feed is not None else None
        if not finished:
            finished = [(float(scores[0]), paths[0])]
        return max(finished, key=lambda f: f[0])[1]
