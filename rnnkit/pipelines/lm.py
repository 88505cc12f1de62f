"""N -> N: a character language model on any UTF-8 text (bundled: the reference topics that
CPython's pydoc carries in pydoc_data).

Split: the text's last test_fraction is the test tail, the validation part comes before it, the
vocabulary is built from the training part only. A text under SHORT_TEXT characters is too short
to hold out a tail: the model trains on all of it and metrics.json says that the "test" numbers
are on the training text.

Training, two ways:
- ``context=K``: on every window of K characters, each predicting the character after each of
  its positions (the "hello world" example of the seeds uses K = 2); the metric is on the last
  position of each window, the next character given K characters of context.
- otherwise truncated backpropagation through time: the training text is cut into
  ``train.batch_size`` parallel streams read in chunks of ``bptt`` characters, in order; the
  hidden state is carried from one chunk to the next and detached, so gradients flow through at
  most ``bptt`` steps.

Metric: bits per character, -mean log2 p(next character); baseline: the unigram distribution of
the training part (add-one smoothed), on the same characters.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from rnnkit import _checks
from rnnkit._extras import needs_extras
from rnnkit.data import Vocabulary
from rnnkit.data._files import check_encoding
from rnnkit.data._files import read_text as read_text_file
from rnnkit.models import LanguageModel, LanguageModelConfig, generate as generate_ids
from rnnkit.pipelines._runs import (bf16_model, check_diverged, check_int8, check_new, int8_model, open_run,
                                    pipeline_config)
from rnnkit.runs import NotARunError, finish_run, load_weights, read_run, reading, value
from rnnkit.tasks import BATCH, TIME, TaskBatch
from rnnkit.training import EpochRecord, Trainer, TrainConfig, world

SHORT_TEXT = 2000
CORPORA = {
    "pydoc": "the reference topics of CPython's pydoc (pydoc_data.topics), about 465,000 characters of "
             "English prose and Python code; PSF licence",
}


def _lm_training() -> TrainConfig:
    return TrainConfig(epochs=200, batch_size=32, lr=3e-3, patience=5, lr_patience=1, max_minutes=10.0)


@dataclass
class LMConfig:
    text: str | None = None  # a text file; None: the bundled corpus
    corpus: str = "pydoc"
    encoding: str | None = None  # of text: None reads UTF-8 (rnnkit.data._files)
    context: int | None = None  # K: train on windows of K characters; None: truncated BPTT
    bptt: int = 100  # steps per chunk in truncated BPTT (train.batch_size is the number of streams)
    cell: str = "lstm"
    embed_dim: int = 64
    hidden_size: int = 256
    num_layers: int = 2
    dropout: float = 0.1
    val_fraction: float = 0.05
    test_fraction: float = 0.05
    train: TrainConfig = field(default_factory=_lm_training)

    def check(self) -> LMConfig:
        check_encoding(self.encoding)
        if self.context is not None:
            _checks.check_int("lm", "context", self.context, minimum=1)
        _checks.check_int("lm", "bptt", self.bptt, minimum=1)
        if self.text is None and self.corpus not in CORPORA:
            raise ValueError(f"unknown corpus {self.corpus!r}: choose from {', '.join(CORPORA)}, or give --text FILE")
        return self

    @property
    def source(self) -> str:
        return Path(self.text).name if self.text else self.corpus


def bundled_text(name: str) -> str:
    if name != "pydoc":
        raise ValueError(f"unknown corpus {name!r}: choose from {', '.join(CORPORA)}")
    from pydoc_data.topics import topics

    return "\n\n".join(topics[key] for key in sorted(topics))


def read_text(cfg: LMConfig) -> str:
    if cfg.text is None:
        return bundled_text(cfg.corpus)
    path = Path(cfg.text)
    text = read_text_file(path, encoding=cfg.encoding)
    if len(text) < 2 or len(set(text)) < 2:
        raise ValueError(f"{path} has {len(text)} character(s) of {len(set(text))} kind(s): a language model "
                         "needs a text of at least 2 different characters")
    return text


def bits_per_char(logits: Tensor, target: Tensor) -> float:
    return float(F.cross_entropy(logits, target)) / math.log(2)


def unigram_bpc(train_ids: np.ndarray, target_ids: np.ndarray, vocab_size: int) -> float:
    counts = np.bincount(train_ids, minlength=vocab_size) + 1.0  # add-one: every character possible
    return float(-np.log2(counts[target_ids] / counts.sum()).mean())


class Windows(Dataset[tuple[Tensor, Tensor]]):
    """Every window of K ids whose last target lies in [lo, hi): x = ids[i:i+K], y = ids[i+1:i+K+1]."""

    def __init__(self, ids: Tensor, context: int, lo: int, hi: int) -> None:
        self.ids, self.k = ids, context
        self.starts = range(max(lo - context, 0), max(hi - context, 0))

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        s = self.starts[i]
        return self.ids[s : s + self.k], self.ids[s + 1 : s + self.k + 1]


class Streams(Dataset[tuple[Tensor, Tensor, int]]):
    """ids[lo:hi] cut into `rows` parallel streams read in chunks of `steps`; item c*rows + b is
    chunk c of stream b, so unshuffled batches of `rows` items are whole chunks, in order."""

    def __init__(self, ids: Tensor, lo: int, hi: int, rows: int, steps: int) -> None:
        n = hi - lo
        self.rows = max(1, min(rows, (n - 1) // max(steps, 1)))
        self.steps = min(steps, (n - 1) // self.rows)
        width = (n - 1) // self.rows  # characters per stream, one more for the last target
        self.data = ids[lo : lo + self.rows * width + 1]
        self.width = width
        self.chunks = (width - 1) // self.steps if width > self.steps else 1

    def __len__(self) -> int:
        return self.chunks * self.rows

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor, int]:
        c, b = divmod(i, self.rows)
        s = b * self.width + c * self.steps
        return self.data[s : s + self.steps], self.data[s + 1 : s + self.steps + 1], c


class CarriedState:
    """forward(model, batch) for truncated BPTT: the state left by chunk c feeds chunk c+1,
    detached so that gradients stop at the chunk's start; chunk 0 starts from zeros."""

    def __init__(self) -> None:
        self.state: Any = None

    def __call__(self, model: torch.nn.Module, batch: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        x, y, chunk = batch
        if int(chunk[0]) == 0:
            self.state = None
        logits, state = model(x, self.state)  # (B, T, V)
        self.state = tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()
        return logits.reshape(-1, logits.shape[-1]), y.reshape(-1)

    def state_dict(self) -> dict[str, Any]:
        """The carried state, for a checkpoint in the middle of an epoch (the Trainer keeps it)."""
        return {"state": self.state}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        self.state = saved["state"]


def windows_forward(model: torch.nn.Module, batch: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """Training: every position of each window; evaluation: the last, with K characters of context."""
    x, y = batch
    logits, _ = model(x)  # (B, K, V)
    if model.training:
        return logits.reshape(-1, logits.shape[-1]), y.reshape(-1)
    return logits[:, -1], y[:, -1]


@dataclass
class Prepared:
    """An lm run's data: the vocabulary (from the training part), the text's ids (N,), each split's
    (start, end) in the text, its Windows or Streams, the characters the test split scores, and
    whether a tail was held out."""

    vocab: Vocabulary
    ids: Tensor
    parts: dict[str, tuple[int, int]]
    data: dict[str, Any]
    test_targets: Tensor
    held_out: bool


@needs_extras
def prepare(cfg: LMConfig) -> Prepared:
    """Read the text, split it, build the vocabulary and the windows or streams."""
    text = read_text(cfg)
    n = len(text)
    held_out = n >= SHORT_TEXT
    train_end = int(n * (1 - cfg.val_fraction - cfg.test_fraction)) if held_out else n
    val_end = int(n * (1 - cfg.test_fraction)) if held_out else n
    vocab = Vocabulary.build([text[:train_end]], "char")
    ids = torch.tensor(vocab.encode(text), dtype=torch.int64)
    parts = {"train": (0, train_end), "validation": (train_end, val_end), "test": (val_end, n)}
    if not held_out:  # too short to hold anything out: every split is the whole text
        parts = {"train": (0, n), "validation": (0, n), "test": (0, n)}
    data: dict[str, Any]
    if cfg.context is not None:
        k = cfg.context
        data = {name: Windows(ids, k, max(lo, k), hi) for name, (lo, hi) in parts.items()}
        empty = [name for name, d in data.items() if len(d) == 0]
        if empty:
            raise ValueError(f"the text ({n} characters) is too short for --context {k}: "
                             f"no window in the {' or '.join(empty)} part")
        lo, hi = parts["test"]
        test_targets = ids[max(lo, k):hi]
    else:  # every split in as many streams as the narrowest allows, so that batches of whole chunks line up
        rows = min(Streams(ids, lo, hi, cfg.train.batch_size, cfg.bptt).rows for lo, hi in parts.values())
        data = {name: Streams(ids, lo, hi, rows, cfg.bptt) for name, (lo, hi) in parts.items()}
        test = data["test"]
        test_targets = torch.cat([test[i][1] for i in range(len(test))])
    return Prepared(vocab, ids, parts, data, test_targets, held_out)


def prose_start(text: str, count: int, offset: int, search: int = 4000) -> int:
    """offset plus where the first line of text that is prose (count characters without a newline,
    three quarters of them letters) starts, within its first search characters; else the first
    character with one before it. What the figure of a run's next-character guesses shows."""
    for k in [0, *(i + 1 for i, c in enumerate(text[:search]) if c == "\n")]:
        line = text[k:k + count]
        if len(line) == count and "\n" not in line and sum(c.isalpha() for c in line) >= 0.75 * count:
            return max(offset + k, 1)
    return max(offset, 1)


@torch.no_grad()
def next_character_guesses(model: LanguageModel, ids: Tensor, start: int, count: int, context: int | None,
                           warm_up: int = 200) -> tuple[list[int], np.ndarray]:
    """The model's likeliest next character at each position p of ids[start:start + count], read
    from the text before p (context K: the K characters before p, as the model was trained;
    else the state carried over up to warm_up characters before start), and the bits it gave the
    character that is there: -log2 p(ids[p] | before)."""
    model.eval()
    targets = ids[start:start + count]
    if context is not None:
        logits = torch.stack([model(ids[max(0, p - context):p][None])[0][0, -1] for p in range(start, start + count)])
    else:
        first = max(0, start - warm_up)
        logits = model(ids[first:start + count - 1][None])[0][0, start - 1 - first:]  # (count, V): step p-1 predicts p
    log_p = torch.log_softmax(logits.float(), dim=-1)
    bits = (-log_p.gather(1, targets[:, None])[:, 0] / math.log(2)).numpy()
    return log_p[:, 2:].argmax(-1).add(2).tolist(), bits  # <pad> and <unk> never guessed


@needs_extras
def train(cfg: LMConfig, out: str | Path, *, on_epoch: Callable[[EpochRecord], None] | None = None,
          resume: bool = False, progress: bool = False, tensorboard: bool = False,
          diagnose_every: int | None = None, on_diagnosis: Callable[[dict[str, Any]], None] | None = None,
          int8: bool = False, bf16: bool = False) -> dict[str, Any]:
    """Train and write the run folder at out; returns metrics.json's content.
    int8: also evaluate the model's int8 form (rnnkit.quantize) on the test split: metrics
    "test_int8", beside "test" (what int8 inference costs this model; on the CPU).
    bf16: likewise its bfloat16 form (bf16_model): metrics "test_bf16"."""
    cfg.check()
    if int8:
        check_int8(cfg.cell, cfg.train)  # before anything is written
    if not resume:
        check_new(out)
    if cfg.context is None and world()[1] > 1:
        raise ValueError("truncated BPTT reads its streams in order and does not run data-parallel: "
                         "use --context K under torchrun")
    d = prepare(cfg)
    vocab, ids, parts, data, held_out = d.vocab, d.ids, d.parts, d.data, d.held_out
    forward = windows_forward if cfg.context is not None else CarriedState()
    train_cfg = cfg.train if cfg.context is not None else TrainConfig(**{**asdict(cfg.train),
                                                                         "batch_size": data["train"].rows})
    model_cfg = LanguageModelConfig(vocab_size=len(vocab), cell=cfg.cell, embed_dim=cfg.embed_dim,
                                    hidden_size=cfg.hidden_size, num_layers=cfg.num_layers, dropout=cfg.dropout)
    checkpoint = open_run(out, "lm", cfg, resume=resume, tensorboard=tensorboard)
    torch.manual_seed(cfg.train.seed)
    model = LanguageModel(model_cfg)
    trainer = Trainer(model, forward=forward, loss_fn=F.cross_entropy, metric_fn=bits_per_char, config=train_cfg,
                      higher_is_better=False, on_epoch=on_epoch, checkpoint=checkpoint, progress=progress,
                      tensorboard=checkpoint.parent / "tensorboard" if tensorboard else None,
                      diagnose_every=diagnose_every, on_diagnosis=on_diagnosis,
                      shuffle=cfg.context is not None)
    history = trainer.fit(data["train"], data["validation"], resume=resume)
    check_diverged(trainer, out)
    _, test_bpc, _, _ = trainer.evaluate(data["test"])
    lo, hi = parts["train"]
    metrics = {
        "task": "lm",
        "data": cfg.source,
        "test": {"bpc": test_bpc, "characters": len(d.test_targets)},
        "baseline": {"name": "unigram of the training part",
                     "bpc": unigram_bpc(ids[lo:hi].numpy(), d.test_targets.numpy(), len(vocab))},
        "test_on": "the held-out tail" if held_out else f"the training text (under {SHORT_TEXT} characters: "
                                                         "too short to hold out a tail)",
        "sizes": {name: hi - lo for name, (lo, hi) in parts.items()} | {"vocabulary": len(vocab)},
        **trainer.summary(),
    }
    if int8:
        metrics["test_int8"] = {"bpc": trainer.evaluate(data["test"], int8_model(model))[1],
                                "characters": len(d.test_targets)}
    if bf16:
        metrics["test_bf16"] = {"bpc": trainer.evaluate(data["test"], bf16_model(model))[1],
                                "characters": len(d.test_targets)}
    if not trainer.is_main:
        return metrics
    from rnnkit import plots

    rows = [r.as_dict() for r in history]
    config = {"task": "lm", "pipeline": asdict(cfg), "model": asdict(model_cfg), "context": cfg.context}
    lo, hi = parts["test"]
    count = min(64, hi - max(lo, 1))
    start = prose_start("".join(t if len(t) == 1 else "\0" for t in (vocab.itos[i] for i in ids[lo:hi].tolist())),
                        count, lo)
    figures = {"history.png": plots.history(rows, "bits per character")}
    if count > 0:
        model.to("cpu")
        guesses, bits = next_character_guesses(model, ids, start, count, cfg.context)
        figures["next_characters.png"] = plots.next_characters(
            [vocab.itos[int(i)] for i in ids[start:start + count]], [vocab.itos[i] for i in guesses], bits,
            f"the first characters of the {'held-out tail' if held_out else 'text'}: the model's guess of each "
            "from the text before it")
    finish_run(out, config=config, weights=model.state_dict(), extras={"vocabulary": vocab.to_json()},
               metrics=metrics, history=rows, plots=figures)
    return metrics


def load(run_path: str | Path) -> tuple[LanguageModel, dict[str, Any], Vocabulary]:
    run = read_run(run_path)
    if run.config.get("task") != "lm":
        raise NotARunError(f"{run.path} is a {run.config.get('task')!r} run, not an lm run")
    with reading(run.path / "config.json"):
        model = LanguageModel(LanguageModelConfig(**value(run.config, "model", dict)))
        if run.config.get("context") is not None:
            value(run.config, "context", int, minimum=1)
    with reading(run.path / "extras.json"):
        vocab = Vocabulary.from_json(value(run.extras, "vocabulary", dict))
        if len(vocab) != model.config.vocab_size:
            raise ValueError(f"the vocabulary has {len(vocab)} tokens, the model {model.config.vocab_size}")
    load_weights(model, run)
    return model.eval(), run.config, vocab


@needs_extras
def generate(run_path: str | Path, prompt: str, length: int, *, greedy: bool = False, temperature: float = 1.0,
             top_k: int | None = None, seed: int | None = None, quantize: str | None = None) -> str:
    """The prompt followed by `length` generated characters. A prompt character the model never
    saw in training is an error that names it (the model has no way to read it).
    quantize='int8': generate with the model's int8 form (rnnkit.quantize), on the CPU."""
    if quantize not in (None, "int8"):
        raise ValueError(f"unknown quantization {quantize!r}: choose int8")
    if length < 1:
        raise ValueError(f"--length must be >= 1, got {length}")
    if not temperature > 0:
        raise ValueError(f"--temperature must be > 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"--top-k must be >= 1, got {top_k}")
    if not prompt:
        raise ValueError("the prompt is empty: give at least one character")
    model, config, vocab = load(run_path)
    unknown = vocab.unknown(prompt)
    if unknown:
        raise ValueError(f"the prompt has characters the model never saw in training: {', '.join(map(repr, unknown))}; "
                         "use characters of the training text")
    if quantize is not None:
        model = cast(LanguageModel, int8_model(model))  # the same model, its layers int8
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    ids = generate_ids(model, vocab.encode(prompt), length, context=config.get("context"), greedy=greedy,
                       temperature=temperature, top_k=top_k, generator=generator, exclude=(0, 1))
    return prompt + "".join(vocab.itos[i] for i in ids)


@needs_extras
def task_batch(run_path: str | Path, size: int) -> TaskBatch:
    """The run's model and up to size validation windows of token ids (rnnkit.tasks): the model
    takes tokens (B, K) and returns logits (B, K, V) and its final state."""
    model, _, vocab = load(run_path)
    part = prepare(pipeline_config(run_path, "lm", LMConfig)).data["validation"]
    items = [part[i] for i in range(min(size, getattr(part, "rows", size), len(part)))]  # streams: chunk 0
    tokens, target = torch.stack([i[0] for i in items]), torch.stack([i[1] for i in items])  # (B, K) each
    return TaskBatch("lm", model.eval(), (tokens,), lambda m, b: F.cross_entropy(m(*b)[0].transpose(1, 2), target),
                     ({0: BATCH, 1: TIME},), step_labels=tuple(vocab.itos[int(i)] for i in tokens[0]))
