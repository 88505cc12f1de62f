"""Generating sequences: 1 -> N (caption: one feature vector -> a token sequence) and N -> M
(seq2seq: a token sequence -> another, with attention).

Bundled: ``caption --dataset digits`` (scikit-learn's 8x8 digits -> the English name of the
digit, spelled character by character) and ``seq2seq --dataset addition|dates`` (generated,
seeded: see rnnkit.data._pairs); or the user's ``--data PAIRS.tsv`` (source TAB target).

Training: cross-entropy over the target tokens (padding masked out) with teacher forcing
(``teacher_forcing`` < 1 feeds the model its own guesses that often). The validation metric is
the exact match under teacher forcing, which equals the greedy decoder's exact match: if every
step's best token is right given the right prefix, greedy decoding writes the target.
A validation exact match of 1 ends the run (no later epoch can do better).

Defaults (`rnnkit train seq2seq`), measured on the addition task on 2 CPU cores: Luong attention
without input feeding, so that teacher-forced training runs the decoder as one fused layer call
over all target steps and attends for all steps in one product (Bahdanau attention and input
feeding feed each step's attention into the next step's input: a Python loop of steps, about 1.4
times the training time, 188.2 s with input feeding against 137.9 s on addition); 15 epochs, the
full rate (3e-3) for 12 and then down along a cosine: with the rate held, the validation exact
match rose to about 0.96 by epoch 9 and stayed there until the rate fell (0.985, 0.9956, 0.9976
in the last three epochs).
Test: greedy (or beam) decoding; exact match, token accuracy (the share of target tokens, <eos>
included, right at their position), corpus BLEU (sacrebleu) for word tokens. Baseline: copying
the source, or the most frequent training target, whichever scores higher.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from rnnkit import _checks
from rnnkit._extras import needs_extras
from rnnkit.data import Vocabulary, digit_rows, pad_batch, tokenize
from rnnkit.data._files import check_delimiter, check_encoding
from rnnkit.data._pairs import PAIR_SETS, read_pairs
from rnnkit.data._text import PAD, TOKENS, UNK
from rnnkit.models._seq2seq import ATTENTIONS, BOS, EOS, Seq2Seq, Seq2SeqConfig
from rnnkit.pipelines._runs import check_diverged, check_new, open_run, pipeline_config
from rnnkit.runs import NotARunError, finish_run, load_weights, read_run, reading, value
from rnnkit.tasks import BATCH, TIME, TaskBatch
from rnnkit.training import EpochRecord, Trainer, TrainConfig

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def _seq2seq_training() -> TrainConfig:
    """`rnnkit train seq2seq`'s: 15 epochs, the full rate for 12, then down along a cosine (on the
    addition task the exact match rose until the rate fell: see the module's docstring)."""
    return TrainConfig(epochs=15, batch_size=64, lr=3e-3, schedule="anneal", patience=None, lr_patience=2)


@dataclass
class Seq2SeqTaskConfig:
    task: str = "seq2seq"  # "seq2seq" (N -> M) or "caption" (1 -> N)
    dataset: str = "addition"  # addition, dates (seq2seq); digits (caption); ignored with data
    data: str | None = None  # seq2seq: a TSV of source TAB target
    encoding: str | None = None  # the user's files: None reads UTF-8 (rnnkit.data._files)
    delimiter: str | None = None  # the user's pairs: None sniffs it (read_pairs)
    tokens: str = "char"
    cell: str = "gru"
    embed_dim: int = 64
    hidden_size: int = 128
    num_layers: int = 1
    bidirectional: bool = True
    attention: str = "luong"
    input_feeding: bool = False  # luong: without it, training runs the decoder over all steps at once
    dropout: float = 0.0
    teacher_forcing: float = 1.0
    max_length: int | None = None  # of an output; None: the longest training target + 5
    max_tokens: int | None = 400  # pairs whose source or target has more tokens are left out; None: no limit
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    train: TrainConfig = field(default_factory=_seq2seq_training)

    BEFORE_FIELD: ClassVar[dict[str, Any]] = {"input_feeding": True}  # how runs saved before the setting ran

    def check(self) -> Seq2SeqTaskConfig:
        check_encoding(self.encoding)
        self.delimiter = check_delimiter(self.delimiter)
        _checks.check_choice("seq2seq", "task", self.task, ("seq2seq", "caption"))
        _checks.check_choice("seq2seq", "tokens", self.tokens, TOKENS)
        _checks.check_choice("seq2seq", "attention", self.attention, ATTENTIONS)
        if not 0 <= self.teacher_forcing <= 1:
            raise ValueError(f"--teacher-forcing must be in [0, 1], got {self.teacher_forcing}")
        if self.max_length is not None:
            _checks.check_int("seq2seq", "max_length", self.max_length, minimum=1)
        if self.max_tokens is not None:
            _checks.check_int("seq2seq", "max_tokens", self.max_tokens, minimum=1)
        if self.task == "caption" and self.dataset != "digits":
            raise ValueError(f"unknown caption dataset {self.dataset!r}: choose digits")
        if self.task == "seq2seq" and self.data is None and self.dataset not in PAIR_SETS:
            raise ValueError(f"unknown dataset {self.dataset!r}: choose from {', '.join(PAIR_SETS)}, or give --data FILE")
        return self

    @property
    def source(self) -> str:
        return Path(self.data).name if self.data else self.dataset


class TargetVocabulary(Vocabulary):
    """A vocabulary with <bos> (id 2) and <eos> (id 3) after <pad> and <unk>."""

    @classmethod
    def build_targets(cls, texts: Sequence[str], tokens: str) -> TargetVocabulary:
        counts = Counter(t for text in texts for t in tokenize(text, tokens))
        return cls([PAD, UNK, "<bos>", "<eos>", *(t for t, _ in counts.most_common())], tokens)

    def join(self, ids: Sequence[int]) -> str:
        return ("" if self.tokens == "char" else " ").join(self.itos[i] for i in ids)


class Pairs(Dataset[tuple[Any, list[int]]]):
    def __init__(self, sources: Sequence[Any], targets: Sequence[list[int]]) -> None:
        self.sources, self.targets = sources, targets

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[Any, list[int]]:
        return self.sources[i], self.targets[i]


def make_collate(width: int, vector_source: bool) -> Callable[[list[tuple[Any, list[int]]]], list[Tensor]]:
    """Batches of (source, target ids) -> [source (B, S) ids or (B, F), lengths (B,), target_in
    (B, width): <bos> + target, target_out (B, width): target + <eos>], padded with 0 to a fixed
    width so that every batch's outputs line up."""

    def collate(items: list[tuple[Any, list[int]]]) -> list[Tensor]:
        if vector_source:
            source = torch.stack([torch.as_tensor(s, dtype=torch.float32) for s, _ in items])
            lengths = torch.ones(len(items), dtype=torch.int64)
        else:
            source, lengths = pad_batch([s for s, _ in items])
        target_in = torch.zeros(len(items), width, dtype=torch.int64)
        target_out = torch.zeros(len(items), width, dtype=torch.int64)
        for row, (_, t) in enumerate(items):
            t = t[: width - 1]
            target_in[row, : len(t) + 1] = torch.tensor([BOS, *t])
            target_out[row, : len(t) + 1] = torch.tensor([*t, EOS])
        return [source, lengths, target_in, target_out]

    return collate


def exact_under_teacher_forcing(logits: Tensor, target: Tensor) -> float:
    """The share of rows whose every non-padding token is the best-scored one."""
    right = (logits.argmax(-1) == target) | (target == 0)
    return float(right.all(dim=1).double().mean())


def masked_loss(logits: Tensor, target: Tensor) -> Tensor:
    return F.cross_entropy(logits.transpose(1, 2), target, ignore_index=0)  # padding counts for nothing


def sequence_scores(predicted: list[list[str]], reference: list[list[str]], *, bleu: bool) -> dict[str, float]:
    """Exact match; token accuracy (reference tokens and the end, right at their position); BLEU."""
    exact = np.mean([p == r for p, r in zip(predicted, reference)])
    right = sum(sum(a == b for a, b in zip(p + ["<eos>"], r + ["<eos>"])) for p, r in zip(predicted, reference))
    total = sum(len(r) + 1 for r in reference)
    scores = {"exact_match": float(exact), "token_accuracy": right / total}
    if bleu:
        import sacrebleu

        scores["bleu"] = float(sacrebleu.corpus_bleu([" ".join(p) for p in predicted],
                                                     [[" ".join(r) for r in reference]]).score)
    return scores


def _load_task_data(cfg: Seq2SeqTaskConfig) -> tuple[list[Any], list[str], list[int] | None]:
    """(sources, targets, stratify labels or None)."""
    if cfg.task == "caption":  # the digits of `rnnkit train classify`, each image one vector of 64
        digits = digit_rows()
        return list(digits.x.reshape(len(digits.x), -1)), [DIGIT_NAMES[d] for d in digits.y], list(digits.y)
    pairs = read_pairs(cfg.data, encoding=cfg.encoding, delimiter=cfg.delimiter) if cfg.data else PAIR_SETS[cfg.dataset][1](seed=0)  # type: ignore[operator]
    if cfg.max_tokens is not None:  # one very long pair makes every batch it falls in as long (time and memory)
        sizes = [max(len(tokenize(s, cfg.tokens)), len(tokenize(t, cfg.tokens))) for s, t in pairs]
        long = [i for i, n in enumerate(sizes) if n > cfg.max_tokens]
        if long:
            kept = [p for p, n in zip(pairs, sizes) if n <= cfg.max_tokens]
            if len(kept) < 10:
                raise ValueError(f"{cfg.source}: only {len(kept)} pair(s) have at most --max-tokens {cfg.max_tokens} "
                                 "tokens in source and target: raise --max-tokens")
            logging.getLogger("rnnkit").warning(
                "warning: %d of %d pairs of %s have more than --max-tokens %d tokens in the source or the target and are "
                "left out (the longest, pair %d, has %d); raise --max-tokens to keep them", len(long), len(pairs),
                cfg.source, cfg.max_tokens, max(long, key=sizes.__getitem__) + 1, max(sizes))
            pairs = kept
    return [s for s, _ in pairs], [t for _, t in pairs], None


@needs_extras
def load_split(cfg: Seq2SeqTaskConfig) -> tuple[list[Any], list[str], tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(sources, targets, (train, validation, test) indices), the split seeded by cfg.train.seed."""
    from sklearn.model_selection import train_test_split

    sources, targets, strata = _load_task_data(cfg)
    index = np.arange(len(targets))
    seed = cfg.train.seed
    rest, te = train_test_split(index, test_size=cfg.test_fraction, random_state=seed, stratify=strata)
    tr, va = train_test_split(rest, test_size=cfg.val_fraction / (1 - cfg.test_fraction), random_state=seed,
                              stratify=None if strata is None else [strata[i] for i in rest])
    return sources, targets, (tr, va, te)


@needs_extras
def train(cfg: Seq2SeqTaskConfig, out: str | Path, *, on_epoch: Callable[[EpochRecord], None] | None = None,
          resume: bool = False, progress: bool = False, tensorboard: bool = False,
          diagnose_every: int | None = None, on_diagnosis: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Train and write the run folder at out; returns metrics.json's content."""
    cfg.check()
    if not resume:
        check_new(out)
    sources, targets, (tr, va, te) = load_split(cfg)
    seed = cfg.train.seed
    target_vocab = TargetVocabulary.build_targets([targets[i] for i in tr], cfg.tokens)
    target_ids = [target_vocab.encode(t) for t in targets]
    vector_source = cfg.task == "caption"
    if vector_source:
        source_vocab, source_items = None, sources
        model_cfg = Seq2SeqConfig(target_vocab=len(target_vocab), source_features=len(sources[0]), cell=cfg.cell,
                                  embed_dim=cfg.embed_dim, hidden_size=cfg.hidden_size, num_layers=cfg.num_layers,
                                  bidirectional=False, attention="none", dropout=cfg.dropout)
    else:
        source_vocab = Vocabulary.build([sources[i] for i in tr], cfg.tokens)
        source_items = [source_vocab.encode(s) for s in sources]
        model_cfg = Seq2SeqConfig(target_vocab=len(target_vocab), source_vocab=len(source_vocab), cell=cfg.cell,
                                  embed_dim=cfg.embed_dim, hidden_size=cfg.hidden_size, num_layers=cfg.num_layers,
                                  bidirectional=cfg.bidirectional, attention=cfg.attention, dropout=cfg.dropout,
                                  input_feeding=cfg.input_feeding)
    max_length = cfg.max_length or max(len(target_ids[i]) for i in tr) + 5
    width = max(len(t) for t in target_ids) + 1
    subsets = [Pairs([source_items[i] for i in part], [target_ids[i] for i in part]) for part in (tr, va, te)]
    checkpoint = open_run(out, cfg.task, cfg, resume=resume, tensorboard=tensorboard)
    torch.manual_seed(seed)
    model = Seq2Seq(model_cfg)
    def forward(m: torch.nn.Module, b: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        ratio = cfg.teacher_forcing if m.training else 1.0  # draws from torch's generator, which --resume restores
        return m(b[0], None if vector_source else b[1], b[2], teacher_forcing=ratio), b[3]

    trainer = Trainer(model, forward=forward, loss_fn=masked_loss, metric_fn=exact_under_teacher_forcing,
                      config=cfg.train, on_epoch=on_epoch, collate_fn=make_collate(width, vector_source),
                      checkpoint=checkpoint, progress=progress,
                      tensorboard=checkpoint.parent / "tensorboard" if tensorboard else None,
                      diagnose_every=diagnose_every, on_diagnosis=on_diagnosis,
                      best_possible=1.0)  # every validation target right: no later epoch can do better
    history = trainer.fit(subsets[0], subsets[1], resume=resume)
    check_diverged(trainer, out)
    model.to("cpu").eval()
    decoded = decode(model, [source_items[i] for i in te], vector_source, max_length)
    split_tokens = lambda s: tokenize(s, cfg.tokens)  # noqa: E731
    reference = [split_tokens(targets[i]) for i in te]
    predicted = [[target_vocab.itos[j] for j in ids] for ids in decoded]
    bleu = cfg.tokens == "word"
    test = sequence_scores(predicted, reference, bleu=bleu)
    frequent = Counter(targets[i] for i in tr).most_common(1)[0][0]
    candidates = {"most frequent training target": [split_tokens(frequent)] * len(te)}
    if not vector_source:
        candidates["copy the source"] = [split_tokens(sources[i]) for i in te]
    scored = {name: sequence_scores(p, reference, bleu=bleu) for name, p in candidates.items()}
    base_name = max(scored, key=lambda k: (scored[k]["exact_match"], scored[k]["token_accuracy"]))
    metrics = {
        "task": cfg.task,
        "data": cfg.source,
        "test": test,
        "decoding": "greedy",
        "baseline": {"name": base_name, **scored[base_name]},
        "sizes": {"train": len(tr), "validation": len(va), "test": len(te), "target_vocabulary": len(target_vocab)},
        "examples": [{"source": sources[i] if not vector_source else f"test image {n}", "target": targets[i],
                      "output": target_vocab.join(d)} for n, (i, d) in enumerate(zip(te[:5], decoded[:5]))],
        **trainer.summary(),
    }
    if not trainer.is_main:
        return metrics
    from rnnkit import plots

    rows = [r.as_dict() for r in history]
    extras: dict[str, Any] = {"target_vocabulary": target_vocab.to_json(), "max_length": max_length}
    if source_vocab is not None:
        extras["source_vocabulary"] = source_vocab.to_json()
    else:
        extras["input_divisor"] = digit_rows().input_divisor  # new images are scaled as these were
    config = {"task": cfg.task, "pipeline": asdict(cfg), "model": asdict(model_cfg)}
    figures = {"history.png": plots.history(rows, "exact match (teacher forcing)")}
    first = te[0]
    if vector_source:  # the first test images (8x8 digits), each with what the model wrote and the target
        shown = list(zip(te[:10], (target_vocab.join(d) for d in decoded)))
        figures["examples.png"] = plots.images(
            [np.asarray(sources[i]).reshape(8, 8) for i, _ in shown],
            [f"{o!r}" + ("" if o == targets[i] else f"\n(target {targets[i]!r})") for i, o in shown],
            "the first test images and the names the model wrote", marked=[o != targets[i] for i, o in shown])
    elif model_cfg.attention != "none":
        source = torch.as_tensor([source_items[first]])
        output, weights = model.attention_map(source, torch.tensor([source.shape[1]]), max_length)
        written = [target_vocab.itos[j] for j in output] + (["<eos>"] if len(weights) > len(output) else [])
        figures["attention.png"] = plots.attention(
            weights.numpy(), split_tokens(sources[first]), written,
            f"{sources[first]!r} -> {target_vocab.join(output)!r} ({model_cfg.attention} attention)")
    finish_run(out, config=config, weights=model.state_dict(), extras=extras, metrics=metrics, history=rows,
               plots=figures)
    return metrics


def decode(model: Seq2Seq, sources: Sequence[Any], vector_source: bool, max_length: int, *,
           beam: int | None = None, batch_size: int = 256) -> list[list[int]]:
    """Target ids for each source: greedy in batches, or beam search one by one."""
    outputs: list[list[int]] = []
    for start in range(0, len(sources), 1 if beam else batch_size):
        chunk = sources[start : start + (1 if beam else batch_size)]
        if vector_source:
            src, lengths = torch.stack([torch.as_tensor(s, dtype=torch.float32) for s in chunk]), None
        else:
            src, lengths = pad_batch(chunk)
        if beam:
            outputs.append(model.beam(src, lengths, max_length, beam))
        else:
            outputs += model.greedy(src, lengths, max_length)
    return outputs


def load(run_path: str | Path, task: str) -> tuple[Seq2Seq, dict[str, Any], dict[str, Any]]:
    run = read_run(run_path)
    if run.config.get("task") != task:
        raise NotARunError(f"{run.path} is a {run.config.get('task')!r} run, not a {task} run")
    with reading(run.path / "config.json"):
        model = Seq2Seq(Seq2SeqConfig(**value(run.config, "model", dict)))
        c = model.config
        if (c.source_vocab is None) != (task == "caption"):
            raise ValueError(f"model.source_vocab and model.source_features do not make a {task} model")
    with reading(run.path / "extras.json"):  # the values translate and caption read, checked once
        if len(TargetVocabulary.from_json(value(run.extras, "target_vocabulary", dict))) != c.target_vocab:
            raise ValueError(f"the target vocabulary is not the model's ({c.target_vocab} tokens)")
        if c.source_vocab is not None and len(Vocabulary.from_json(value(run.extras, "source_vocabulary", dict))) \
                != c.source_vocab:
            raise ValueError(f"the source vocabulary is not the model's ({c.source_vocab} tokens)")
        value(run.extras, "max_length", int, minimum=1)
        if task == "caption" and not value(run.extras, "input_divisor", float) > 0:
            raise ValueError("input_divisor must be > 0")
    load_weights(model, run)
    return model.eval(), run.config, run.extras


@needs_extras
def translate(run_path: str | Path, texts: list[str], *, beam: int | None = None) -> tuple[list[str], list[list[str]]]:
    """Outputs of a seq2seq run for texts, and for each text the tokens its source vocabulary
    lacks (read as <unk>, as in training)."""
    if beam is not None and beam < 1:
        raise ValueError(f"--beam must be >= 1, got {beam}")
    if not texts:
        raise ValueError("no text to translate")
    model, _, extras = load(run_path, "seq2seq")
    source_vocab = Vocabulary.from_json(extras["source_vocabulary"])
    target_vocab = TargetVocabulary.from_json(extras["target_vocabulary"])
    empty = [i + 1 for i, t in enumerate(texts) if not tokenize(t, source_vocab.tokens)]
    if empty:
        raise ValueError(f"text {empty[0]} is empty")
    ids = decode(model, [source_vocab.encode(t) for t in texts], False, extras["max_length"], beam=beam)
    return [target_vocab.join(i) for i in ids], [source_vocab.unknown(t) for t in texts]


@needs_extras
def caption(run_path: str | Path, features: np.ndarray, *, beam: int | None = None) -> list[str]:
    """Outputs of a caption run for rows of features (N, F), given as raw values (digits: 0-16)."""
    if beam is not None and beam < 1:
        raise ValueError(f"--beam must be >= 1, got {beam}")
    model, config, extras = load(run_path, "caption")
    width = config["model"]["source_features"]
    features = np.asarray(features, dtype=np.float32)
    if features.ndim != 2 or features.shape[1] != width:
        raise ValueError(f"expected rows of {width} numbers, got an array of shape {tuple(features.shape)}")
    target_vocab = TargetVocabulary.from_json(extras["target_vocabulary"])
    ids = decode(model, list(features / np.float32(extras["input_divisor"])), True, extras["max_length"], beam=beam)
    return [target_vocab.join(i) for i in ids]


@needs_extras
def task_batch(run_path: str | Path, size: int) -> TaskBatch:
    """The run's model and up to size validation pairs (rnnkit.tasks), teacher-forced: the model
    takes source (B, S), lengths (B,) and the target's first tokens (B, U)."""
    model, _, extras = load(run_path, "seq2seq")
    sources, targets, (_, val_index, _) = load_split(pipeline_config(run_path, "seq2seq", Seq2SeqTaskConfig))
    source_vocab = Vocabulary.from_json(extras["source_vocabulary"])
    target_vocab = TargetVocabulary.from_json(extras["target_vocabulary"])
    items = [(source_vocab.encode(sources[i]), target_vocab.encode(targets[i])) for i in val_index[:size]]
    width = max(len(t) for _, t in items) + 1
    source, lengths, target_in, target_out = make_collate(width, False)(items)
    return TaskBatch("seq2seq", model.eval(), (source, lengths, target_in),
                     lambda m, b: masked_loss(m(*b), target_out), ({0: BATCH, 1: TIME}, {0: BATCH}, {0: BATCH, 1: TIME}),
                     not_exportable="a seq2seq model translates in a Python loop (greedy or beam search) around its "
                                    "decoder, which exports as no single graph",
                     step_labels=tuple(source_vocab.itos[int(i)] for i in source[0, : int(lengths[0])]))
