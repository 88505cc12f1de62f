"""Whole training runs: the bundled pipelines' training throughput beside their torch.nn twins.

    python benchmarks/pipelines.py [--pipelines surnames,pydoc,addition] [--budget 60] [--steps 10]
                                   [--json benchmarks/pipelines.json]

For each pipeline, its own data, batches, model and default settings (those of `rnnkit train`):

- surnames: `rnnkit train classify --dataset surnames`, a bidirectional GRU (H = 128) over
  padded batches of 64 names with their lengths, mean pooling;
- pydoc: `rnnkit train lm`, a 2-layer LSTM (H = 256) in truncated BPTT, 32 streams x 100 steps;
- addition: `rnnkit train seq2seq --dataset addition`, a bidirectional GRU encoder over the
  padded sources and a GRU decoder with Luong attention, teacher-forced, batches of 64.

The twin is the same model with every rnnkit recurrent layer replaced by the torch.nn layer
with the same weights (rnnkit.to_torch), called as a torch.nn user would: padded batches with
lengths are packed (pack_padded_sequence, enforce_sorted=False) and unpacked; the seq2seq
decoder runs as torch.nn layers over the teacher-forced target. One training step is what the
Trainer does: forward, loss, backward, gradient clipping at norm 1, an Adam step.

The two alternate in rounds of --steps training steps each, in a shuffled order each round,
over the same batches, until --budget seconds per pipeline are spent; the table gives the median
examples per second (lm: characters) of each and the ratio rnnkit / torch.nn (above 1: rnnkit
is faster). Both run the same number of threads (torch.get_num_threads()).
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import rnnkit
from rnnkit.models._seq2seq import Seq2Seq


class TorchLayer(nn.Module):
    """A torch.nn recurrent layer called the way rnnkit's layers are: layer(x, hx, lengths=...).
    With lengths the batch is packed, run, and unpacked to x's length (zeros past each length)."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: Tensor, hx: Any = None, *, lengths: Tensor | None = None) -> tuple[Tensor, Any]:
        if lengths is None:
            return self.layer(x, hx)
        batch_first = self.layer.batch_first
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=batch_first, enforce_sorted=False)
        out, h = self.layer(packed, hx)
        out, _ = pad_packed_sequence(out, batch_first=batch_first, total_length=x.shape[1 if batch_first else 0])
        return out, h


class TorchSeq2Seq(Seq2Seq):
    """The seq2seq model with torch.nn layers: the encoder packed, and under teacher forcing the
    decoder as one torch.nn layer per decoder layer over the whole target (attention 'none' or
    Luong's without input feeding, the pipeline's default)."""

    def __init__(self, model: Seq2Seq) -> None:
        super().__init__(model.config)
        self.load_state_dict(model.state_dict())
        self.encoder = TorchLayer(rnnkit.to_torch(model.encoder))  # type: ignore[assignment]
        kinds = {rnnkit.GRUCell: nn.GRU, rnnkit.LSTMCell: nn.LSTM, rnnkit.RNNCell: nn.RNN}
        layers = []
        for cell in model.cells:
            layer = kinds[type(cell)](cell.input_size, cell.hidden_size, batch_first=True)
            with torch.no_grad():
                for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                    getattr(layer, f"{name}_l0").copy_(getattr(cell, name))
            layers.append(layer)
        self.decoder_layers = nn.ModuleList(layers)
        del self.cells  # the twin's decoder is decoder_layers

    def _forced(self, target_in: Tensor, state: Any, feed: Any, memory: Any, keys: Any, mask: Any) -> Tensor:
        c = self.config
        assert c.attention == "none" or not c.feeds, "the twin runs the pipeline's default decoder only"
        x = self.drop(self.target_embed(target_in))  # (B, L, E)
        for k, layer in enumerate(self.decoder_layers):
            s = state[k]
            hx = (s[0][None], s[1][None]) if isinstance(s, tuple) else s[None]
            x, _ = layer(x if k == 0 else self.drop(x), hx)  # (B, L, H)
        if c.attention == "luong":
            scores = torch.bmm(x, keys.transpose(1, 2))  # (B, L, S)
            weights = torch.softmax(scores.masked_fill(~mask[:, None], float("-inf")), dim=-1)
            x = torch.tanh(self.att_combine(torch.cat([torch.bmm(weights, memory), x], dim=-1)))
        return self.head(self.drop(x))


@dataclass
class Pipeline:
    name: str
    command: str
    model: nn.Module
    twin: nn.Module
    batches: list[Sequence[Tensor]]
    step: Callable[[nn.Module, Sequence[Tensor]], Tensor]  # -> loss
    examples: Callable[[Sequence[Tensor]], int]  # what one batch counts for
    unit: str


def surnames() -> Pipeline:
    from rnnkit.data import Vocabulary, load_dataset
    from rnnkit.models import NToOne, NToOneConfig
    from rnnkit.pipelines import classify

    cfg = classify.ClassifyConfig(dataset="surnames")
    data = load_dataset(cfg.dataset)
    tr, _, _ = classify.split(data.y, cfg.val_fraction, cfg.test_fraction, cfg.train.seed)
    vocab = Vocabulary.build([data.texts[i] for i in tr], cfg.token_kind, max_size=cfg.max_vocab)
    items = [(vocab.encode(data.texts[i])[: cfg.max_length], int(data.y[i])) for i in tr]
    random.Random(0).shuffle(items)
    b = cfg.train.batch_size
    batches = [classify.TokenDataset.collate(items[i : i + b]) for i in range(0, len(items) - b + 1, b)]
    torch.manual_seed(0)
    model = NToOne(NToOneConfig(input_size=cfg.embed_dim, outputs=len(data.label_names), vocab_size=len(vocab),
                                embed_dim=cfg.embed_dim, cell=cfg.cell, hidden_size=cfg.hidden_size,
                                num_layers=cfg.num_layers, bidirectional=cfg.bidirectional, pooling=cfg.pooling))
    twin = NToOne(model.config)
    twin.load_state_dict(model.state_dict())
    twin.rnn = TorchLayer(rnnkit.to_torch(model.rnn))  # type: ignore[assignment]
    return Pipeline("surnames", "rnnkit train classify --dataset surnames", model, twin, batches,
                    lambda m, batch: F.cross_entropy(m(batch[0], batch[1]), batch[2]), lambda batch: len(batch[2]),
                    "names/s")


def pydoc() -> Pipeline:
    from rnnkit.models._lm import LanguageModel, LanguageModelConfig
    from rnnkit.pipelines import lm

    cfg = lm.LMConfig()
    data = lm.prepare(cfg)
    streams = data.data["train"]
    batch = streams.rows
    chunks = [streams[i] for i in range(min(len(streams), 40 * batch))]
    batches = [[torch.stack([c[k] for c in chunks[i : i + batch]]) for k in (0, 1)]
               for i in range(0, len(chunks) - batch + 1, batch)]
    torch.manual_seed(0)
    model = LanguageModel(LanguageModelConfig(vocab_size=len(data.vocab), cell=cfg.cell, embed_dim=cfg.embed_dim,
                                              hidden_size=cfg.hidden_size, num_layers=cfg.num_layers,
                                              dropout=cfg.dropout))
    twin = LanguageModel(model.config)
    twin.load_state_dict(model.state_dict())
    twin.rnn = TorchLayer(rnnkit.to_torch(model.rnn))  # type: ignore[assignment]

    def step(m: nn.Module, b: Sequence[Tensor]) -> Tensor:
        logits, _ = m(b[0])  # each chunk from a zero state: the carried state changes nothing in the timing
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), b[1].reshape(-1))

    return Pipeline("pydoc", "rnnkit train lm", model, twin, batches, step, lambda b: b[1].numel(), "chars/s")


def addition() -> Pipeline:
    from rnnkit.data import Vocabulary
    from rnnkit.models._seq2seq import Seq2SeqConfig
    from rnnkit.pipelines import seq2seq

    cfg = seq2seq.Seq2SeqTaskConfig(dataset="addition")
    sources, targets, (tr, _, _) = seq2seq.load_split(cfg)
    target_vocab = seq2seq.TargetVocabulary.build_targets([targets[i] for i in tr], cfg.tokens)
    source_vocab = Vocabulary.build([sources[i] for i in tr], cfg.tokens)
    target_ids = [target_vocab.encode(t) for t in targets]
    items = [(source_vocab.encode(sources[i]), target_ids[i]) for i in tr]
    random.Random(0).shuffle(items)
    collate = seq2seq.make_collate(max(len(t) for t in target_ids) + 1, False)
    b = cfg.train.batch_size
    batches = [collate(items[i : i + b]) for i in range(0, min(len(items), 200 * b) - b + 1, b)]
    torch.manual_seed(0)
    model = Seq2Seq(Seq2SeqConfig(target_vocab=len(target_vocab), source_vocab=len(source_vocab), cell=cfg.cell,
                                  embed_dim=cfg.embed_dim, hidden_size=cfg.hidden_size, num_layers=cfg.num_layers,
                                  bidirectional=cfg.bidirectional, attention=cfg.attention,
                                  input_feeding=cfg.input_feeding, dropout=cfg.dropout))
    return Pipeline("addition", "rnnkit train seq2seq --dataset addition", model, TorchSeq2Seq(model), batches,
                    lambda m, batch: seq2seq.masked_loss(m(batch[0], batch[1], batch[2]), batch[3]),
                    lambda batch: len(batch[0]), "pairs/s")


PIPELINES = {"surnames": surnames, "pydoc": pydoc, "addition": addition}


def check_twin(p: Pipeline) -> float:
    """The twin computes the model's loss (eval mode: no dropout) and its gradients on the first
    batch; returns the largest difference, raising if it is above float32 noise."""
    diffs = []
    grads = []
    for m in (p.model, p.twin):
        m.eval().zero_grad()
        loss = p.step(m, p.batches[0])
        loss.backward()
        diffs.append(loss.detach())
        grads.append(torch.cat([q.grad.flatten() for q in m.parameters() if q.grad is not None]))
        m.zero_grad(set_to_none=True)
    worst = max(float((diffs[0] - diffs[1]).abs()), float((grads[0].sort().values - grads[1].sort().values).abs().max()))
    if worst > 1e-4:
        raise AssertionError(f"{p.name}: the torch.nn twin differs from the model by {worst:.2e}")
    return worst


def measure(p: Pipeline, *, budget_s: float, steps: int) -> dict[str, Any]:
    """Alternate rounds of `steps` training steps of the model and its twin; examples per second."""
    optimisers = {name: torch.optim.Adam(m.parameters(), lr=3e-3) for name, m in (("rnnkit", p.model),
                                                                                 ("torch", p.twin))}
    modules = {"rnnkit": p.model.train(), "torch": p.twin.train()}
    position = {name: 0 for name in modules}

    def train_steps(name: str) -> float:
        m, opt = modules[name], optimisers[name]
        count = 0
        start = time.perf_counter()
        for _ in range(steps):
            batch = p.batches[position[name] % len(p.batches)]
            position[name] += 1
            opt.zero_grad(set_to_none=True)
            p.step(m, batch).backward()
            nn.utils.clip_grad_norm_(m.parameters(), 1.0)
            opt.step()
            count += p.examples(batch)
        return count / (time.perf_counter() - start)

    for name in modules:  # warm up: kernels, caches, Adam's state
        train_steps(name)
    rates: dict[str, list[float]] = {name: [] for name in modules}
    order = list(modules)
    shuffle = random.Random(0).shuffle
    start = time.perf_counter()
    while len(rates["torch"]) < 3 or time.perf_counter() - start < budget_s:
        shuffle(order)
        for name in order:
            rates[name].append(train_steps(name))
    median = {name: statistics.median(r) for name, r in rates.items()}
    return {"pipeline": p.name, "command": p.command, "unit": p.unit, "rounds": len(rates["torch"]),
            "rnnkit": median["rnnkit"], "torch": median["torch"], "ratio": median["rnnkit"] / median["torch"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pipelines", default=",".join(PIPELINES))
    parser.add_argument("--budget", type=float, default=60.0, help="Seconds per pipeline (3 rounds at least).")
    parser.add_argument("--steps", type=int, default=10, help="Training steps per round and implementation.")
    parser.add_argument("--json", default=None, help="Also write the rows as JSON to this file.")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.machine()}; "
          "ratio = rnnkit / torch.nn examples per second (above 1: rnnkit is faster)")
    print("| pipeline | command | rnnkit | torch.nn | ratio | rounds |\n|---|---|---|---|---|---|")
    rows = []
    for name in args.pipelines.split(","):
        pipeline = PIPELINES[name]()
        check_twin(pipeline)
        row = measure(pipeline, budget_s=args.budget, steps=args.steps)
        rows.append(row)
        print(f"| {name} | `{row['command']}` | {row['rnnkit']:.0f} {row['unit']} | {row['torch']:.0f} {row['unit']} "
              f"| **{row['ratio']:.2f}x** | {row['rounds']} |", flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"torch_version": torch.__version__, "threads": torch.get_num_threads(),
                       "machine": platform.machine(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
