"""N -> 1 classification: texts (characters or words) or sequences of feature vectors.

Data: a bundled set (``dataset``: digits read row by row, surnames by language), or the user's
own ``data``: a CSV/TSV of texts (text_col, label_col), a folder with one sub-folder of .txt
files per label, or a CSV of feature sequences (label_col and T*F numeric columns, steps=T).

``train(cfg, out)`` splits the data (stratified train/validation/test), builds the vocabulary
from the training split only, trains an NToOne model with the Trainer, scores the test split
beside the majority-class baseline, and writes the run folder. ``predict`` and
``predict_texts`` load a run folder and give class probabilities.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, TensorDataset

from rnnkit import _checks
from rnnkit._extras import needs_extras
from rnnkit.data import (DATASETS, SequenceData, TextData, Vocabulary, load_dataset, pad_batch, read_feature_table,
                         read_texts)
from rnnkit.data._files import check_delimiter, check_encoding
from rnnkit.data._text import TOKENS
from rnnkit.models import NToOne, NToOneConfig
from rnnkit.pipelines._runs import (bf16_model, check_diverged, check_int8, check_new, int8_model, open_run,
                                    pipeline_config)
from rnnkit.runs import NotARunError, finish_run, load_weights, read_run, reading, value
from rnnkit.tasks import BATCH, TIME, TaskBatch
from rnnkit.training import EpochRecord, Trainer, TrainConfig


@dataclass
class ClassifyConfig:
    dataset: str = "digits"  # a bundled set; ignored when data is set
    data: str | None = None  # the user's CSV/TSV file or folder
    text_col: str | None = None
    label_col: str | None = None
    encoding: str | None = None  # the user's files: None reads UTF-8 (rnnkit.data._files)
    delimiter: str | None = None  # the user's tables: None sniffs it
    steps: int = 1  # feature CSV: the numeric columns form this many steps
    tokens: str | None = None  # texts: char or word; None: the data set's own (word for intents), else char
    max_vocab: int = 20000  # texts: the most frequent tokens of the training split, at most
    max_length: int = 400  # texts: tokens kept from the start of each text
    embed_dim: int = 64
    cell: str = "gru"
    hidden_size: int = 128
    num_layers: int = 1
    bidirectional: bool = True
    pooling: str = "mean"
    dropout: float = 0.0
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    train: TrainConfig = field(default_factory=TrainConfig)

    def check(self) -> ClassifyConfig:
        check_encoding(self.encoding)
        self.delimiter = check_delimiter(self.delimiter)
        if self.tokens is not None:
            _checks.check_choice("classify", "tokens", self.tokens, TOKENS)
        for name in ("steps", "max_vocab", "max_length", "embed_dim"):
            _checks.check_int("classify", name, getattr(self, name), minimum=1)
        for name in ("val_fraction", "test_fraction"):
            value = getattr(self, name)
            if not 0 < value < 0.5:
                raise ValueError(f"classify: {name} must be in (0, 0.5), got {value!r}")
        return self

    @property
    def source(self) -> str:
        return Path(self.data).name if self.data else self.dataset

    @property
    def token_kind(self) -> str:
        """How texts are read: tokens, or the bundled data set's own way, or characters."""
        if self.tokens is not None:
            return self.tokens
        info = DATASETS.get(self.dataset) if self.data is None else None
        return (info.tokens if info is not None else None) or "char"


def training(dataset: str | None, **given: Any) -> TrainConfig:
    """How to train on a bundled data set (None: the user's data): TrainConfig's defaults, then the
    data set's own (DatasetInfo.training), then the given fields that are not None."""
    info = DATASETS.get(dataset) if dataset is not None else None
    own = dict(info.training) if info is not None else {}
    return TrainConfig(**{**own, **{k: v for k, v in given.items() if v is not None}})


def accuracy(logits: torch.Tensor, target: torch.Tensor) -> float:
    return float((logits.argmax(-1) == target).double().mean())


def scores(predicted: np.ndarray, target: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import f1_score

    return {"accuracy": float((predicted == target).mean()),
            "macro_f1": float(f1_score(target, predicted, average="macro", zero_division=0))}


def split(y: np.ndarray, val_fraction: float, test_fraction: float, seed: int) -> tuple[np.ndarray, ...]:
    """Stratified indices (train, validation, test)."""
    from sklearn.model_selection import train_test_split

    counts = np.bincount(y)
    if counts.min() < 3:
        raise ValueError(f"class {int(counts.argmin())} has {counts.min()} example(s): a stratified "
                         "train/validation/test split needs at least 3 of each class")
    index = np.arange(len(y))
    rest, test = train_test_split(index, test_size=test_fraction, stratify=y, random_state=seed)
    train, val = train_test_split(rest, test_size=val_fraction / (1 - test_fraction), stratify=y[rest], random_state=seed)
    return train, val, test


@needs_extras
def load_data(cfg: ClassifyConfig) -> SequenceData | TextData:
    """The labelled data cfg names (see the module docstring)."""
    if cfg.data is None:
        return load_dataset(cfg.dataset)
    if Path(cfg.data).is_dir() or cfg.text_col:
        return read_texts(cfg.data, text_col=cfg.text_col, label_col=cfg.label_col, encoding=cfg.encoding,
                          delimiter=cfg.delimiter)
    if cfg.label_col:
        return read_feature_table(cfg.data, cfg.label_col, cfg.steps, encoding=cfg.encoding, delimiter=cfg.delimiter)
    raise ValueError(f"{cfg.data}: name its columns: --text-col and --label-col for texts, or --label-col "
                     "(with --steps) for rows of numbers")


class TokenDataset(Dataset[tuple[list[int], int]]):
    """Encoded texts and labels; batches are padded by collate()."""

    def __init__(self, ids: list[list[int]], y: np.ndarray) -> None:
        self.ids, self.y = ids, y

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> tuple[list[int], int]:
        return self.ids[i], int(self.y[i])

    @staticmethod
    def collate(items: list[tuple[list[int], int]]) -> list[torch.Tensor]:
        tokens, lengths = pad_batch([ids for ids, _ in items])  # (B, T), (B,)
        return [tokens, lengths, torch.tensor([label for _, label in items])]


@needs_extras
def train(cfg: ClassifyConfig, out: str | Path, *, on_epoch: Callable[[EpochRecord], None] | None = None,
          resume: bool = False, progress: bool = False, tensorboard: bool = False,
          diagnose_every: int | None = None, on_diagnosis: Callable[[dict[str, Any]], None] | None = None,
          int8: bool = False, bf16: bool = False) -> dict[str, Any]:
    """Train and write the run folder at out; returns metrics.json's content.
    resume: continue the run at out (stopped, or finished and given more epochs).
    int8: also evaluate the model's int8 form (rnnkit.quantize) on the test split: metrics
    "test_int8", beside "test" (what int8 inference costs this model; on the CPU).
    bf16: likewise its bfloat16 form (bf16_model): metrics "test_bf16"."""
    cfg.check()
    if int8:
        check_int8(cfg.cell, cfg.train)  # before anything is written
    if not resume:
        check_new(out)
    data = load_data(cfg)
    tr, va, te = split(data.y, cfg.val_fraction, cfg.test_fraction, cfg.train.seed)
    model_args = dict(cell=cfg.cell, hidden_size=cfg.hidden_size, num_layers=cfg.num_layers,
                      bidirectional=cfg.bidirectional, pooling=cfg.pooling, dropout=cfg.dropout)
    extras: dict[str, Any] = {"label_names": data.label_names}
    collate = None
    if isinstance(data, TextData):
        vocab = Vocabulary.build([data.texts[i] for i in tr], cfg.token_kind, max_size=cfg.max_vocab)
        ids = [vocab.encode(t)[: cfg.max_length] for t in data.texts]
        subsets: list[Dataset[Any]] = [TokenDataset([ids[i] for i in part], data.y[part]) for part in (tr, va, te)]
        model_cfg = NToOneConfig(input_size=cfg.embed_dim, outputs=len(data.label_names), vocab_size=len(vocab),
                                 embed_dim=cfg.embed_dim, **model_args)  # type: ignore[arg-type]
        collate = TokenDataset.collate
        forward = lambda m, b: (m(b[0], b[1]), b[2])  # noqa: E731
        extras["vocabulary"] = vocab.to_json()
        extras["max_length"] = cfg.max_length
        input_info: dict[str, Any] = {"kind": "text", "tokens": cfg.token_kind}
    else:
        x, y = torch.from_numpy(data.x), torch.from_numpy(data.y)
        subsets = [TensorDataset(x[part], y[part]) for part in (tr, va, te)]
        model_cfg = NToOneConfig(input_size=data.x.shape[2], outputs=len(data.label_names), **model_args)  # type: ignore[arg-type]
        forward = lambda m, b: (m(b[0]), b[1])  # noqa: E731
        extras["input_divisor"] = data.input_divisor
        input_info = {"kind": "features", "steps": int(data.x.shape[1]), "features": int(data.x.shape[2])}
    checkpoint = open_run(out, "classify", cfg, resume=resume, tensorboard=tensorboard)
    torch.manual_seed(cfg.train.seed)
    model = NToOne(model_cfg)
    trainer = Trainer(model, forward=forward, loss_fn=F.cross_entropy, metric_fn=accuracy, config=cfg.train,
                      on_epoch=on_epoch, collate_fn=collate, checkpoint=checkpoint, progress=progress,
                      tensorboard=checkpoint.parent / "tensorboard" if tensorboard else None,
                      diagnose_every=diagnose_every, on_diagnosis=on_diagnosis)
    history = trainer.fit(subsets[0], subsets[1], resume=resume)
    check_diverged(trainer, out)
    _, _, logits, target = trainer.evaluate(subsets[2])
    predicted = logits.argmax(-1).numpy()
    majority = int(np.bincount(data.y[tr]).argmax())
    metrics = {
        "task": "classify",
        "data": cfg.source,
        "test": scores(predicted, target.numpy()),
        "baseline": {"name": "majority class", **scores(np.full(len(te), majority), target.numpy())},
        "sizes": {"train": len(tr), "validation": len(va), "test": len(te), "classes": len(data.label_names)},
        **trainer.summary(),
    }
    if int8:
        _, _, logits8, _ = trainer.evaluate(subsets[2], int8_model(model))
        metrics["test_int8"] = scores(logits8.argmax(-1).numpy(), target.numpy())
    if bf16:
        _, _, logits16, _ = trainer.evaluate(subsets[2], bf16_model(model))
        metrics["test_bf16"] = scores(logits16.argmax(-1).numpy(), target.numpy())
    if not trainer.is_main:
        return metrics
    config = {"task": "classify", "pipeline": asdict(cfg), "model": asdict(model_cfg), "input": input_info}
    from sklearn.metrics import confusion_matrix

    from rnnkit import plots

    rows = [r.as_dict() for r in history]
    counts = confusion_matrix(target.numpy(), predicted, labels=range(len(data.label_names)))
    figures = {"confusion_matrix.png": plots.confusion_matrix(counts, data.label_names),
               "history.png": plots.history(rows, "accuracy", baseline=(
                   "majority class", metrics["baseline"]["accuracy"]))}
    finish_run(out, config=config, weights=model.state_dict(), extras=extras, metrics=metrics, history=rows,
               plots=figures)
    return metrics


def load(run_path: str | Path) -> tuple[NToOne, dict[str, Any], dict[str, Any]]:
    """The model of a classify run, its config and its extras (label names; vocabulary or input
    divisor), every value that predictions read checked (NotARunError: the run folder is damaged)."""
    run = read_run(run_path)
    if run.config.get("task") != "classify":
        raise NotARunError(f"{run.path} is a {run.config.get('task')!r} run, not a classify run")
    with reading(run.path / "config.json"):
        model = NToOne(NToOneConfig(**value(run.config, "model", dict)))
        shape, text = run.config.get("input"), model.config.vocab_size is not None
        value(shape, "kind", str, choices=("text",) if text else ("features",), within="input")
        if not text:
            value(shape, "steps", int, minimum=1, within="input")
            features = value(shape, "features", int, minimum=1, within="input")
            if features != model.config.input_size:
                raise ValueError(f"input.features is {features}, the model's input_size {model.config.input_size}")
    with reading(run.path / "extras.json"):
        labels = value(run.extras, "label_names", list)
        if len(labels) != model.config.outputs or not all(isinstance(n, str) for n in labels):
            raise ValueError(f"label_names must be the model's {model.config.outputs} label names")
        if text:
            vocab = Vocabulary.from_json(value(run.extras, "vocabulary", dict))
            if len(vocab) != model.config.vocab_size:
                raise ValueError(f"the vocabulary has {len(vocab)} tokens, the model {model.config.vocab_size}")
            value(run.extras, "max_length", int, minimum=1)
        elif "input_divisor" in run.extras and not value(run.extras, "input_divisor", float) > 0:
            raise ValueError("input_divisor must be > 0")
    load_weights(model, run)
    return model.eval(), run.config, run.extras


@needs_extras
def predict(run_path: str | Path, x: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """A run trained on feature sequences: x (N, T, F) or (N, T*F) -> class probabilities (N, C)
    and the label names."""
    model, config, extras = load(run_path)
    if config["input"]["kind"] != "features":
        raise ValueError(f"{run_path} classifies texts: give it texts, not numbers")
    steps, features = config["input"]["steps"], config["input"]["features"]
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 2 and x.shape[1] == steps * features:
        x = x.reshape(len(x), steps, features)
    if x.ndim != 3 or x.shape[1:] != (steps, features):
        raise ValueError(f"expected rows of {steps * features} numbers ({steps} steps of {features} "
                         f"features), got an array of shape {tuple(x.shape)}")
    x = x / np.float32(extras.get("input_divisor", 1.0))  # scaled as the training data were
    with torch.no_grad():
        probs = torch.softmax(model(torch.from_numpy(x)), dim=-1).numpy()
    return probs, list(extras["label_names"])


@needs_extras
def predict_texts(run_path: str | Path, texts: list[str]) -> tuple[np.ndarray, list[str], list[list[str]]]:
    """A run trained on texts: N texts -> class probabilities (N, C), the label names, and for
    each text the tokens its vocabulary lacks (read as <unk>, as in training)."""
    model, config, extras = load(run_path)
    if config["input"]["kind"] != "text":
        raise ValueError(f"{run_path} classifies rows of numbers, not texts: use --input FILE.csv")
    if not texts:
        raise ValueError("no text to classify")
    vocab = Vocabulary.from_json(extras["vocabulary"])
    tokens, lengths = pad_batch([vocab.encode(t) for t in texts], max_length=extras["max_length"])
    with torch.no_grad():
        probs = torch.softmax(model(tokens, lengths), dim=-1).numpy()
    return probs, list(extras["label_names"]), [vocab.unknown(t) for t in texts]


@needs_extras
def task_batch(run_path: str | Path, size: int) -> TaskBatch:
    """The run's model and up to size validation examples (rnnkit.tasks)."""
    model, config, extras = load(run_path)
    cfg = pipeline_config(run_path, "classify", ClassifyConfig)
    labelled = load_data(cfg)
    _, val, _ = split(labelled.y, cfg.val_fraction, cfg.test_fraction, cfg.train.seed)
    val = val[:size]
    target = torch.from_numpy(labelled.y[val])
    if config["input"]["kind"] == "text":
        vocab = Vocabulary.from_json(extras["vocabulary"])
        tokens, lengths = pad_batch([vocab.encode(labelled.texts[i]) for i in val],  # type: ignore[union-attr]
                                    max_length=extras["max_length"])
        first = tuple(vocab.itos[int(i)] for i in tokens[0, : int(lengths[0])])
        return TaskBatch("classify", model.eval(), (tokens, lengths),
                         lambda m, b: F.cross_entropy(m(*b), target), ({0: BATCH, 1: TIME}, {0: BATCH}),
                         step_labels=first)
    x = torch.from_numpy(labelled.x[val])  # type: ignore[union-attr]  # (B, T, F)
    return TaskBatch("classify", model.eval(), (x,), lambda m, b: F.cross_entropy(m(*b), target),
                     ({0: BATCH, 1: TIME},))
