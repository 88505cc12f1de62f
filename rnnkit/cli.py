"""The rnnkit command line. It parses and dispatches; the work is done by library functions."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

import rnnkit
from rnnkit.data._files import check_delimiter, check_encoding, check_writable, read_lines, read_numbers

if TYPE_CHECKING:
    from rnnkit.training import EpochRecord


KNOWN_FAILURES = (ValueError, OSError, ImportError)
"""What a command may fail with for a reason outside rnnkit (bad input, a damaged run folder, a
file that cannot be written, an optional package missing): one line "Error: ..." and exit status 1.
Any other exception is a bug, and its traceback is shown."""


def _one_line(error: BaseException) -> str:
    from rnnkit._extras import missing_extra

    if isinstance(error, OSError) and error.strerror and error.filename:
        return f"{error.filename}: {error.strerror}"
    return missing_extra(error) or str(error)


class _Commands(click.Group):
    """The rnnkit command group: every command's known failures end here, as one line."""

    def invoke(self, ctx: click.Context) -> Any:
        from rnnkit.pipelines._runs import DIVERGED, Diverged

        try:
            return super().invoke(ctx)
        except Diverged as error:
            click.echo(f"Error: {error}", err=True)
            raise click.exceptions.Exit(DIVERGED) from None
        except KNOWN_FAILURES as error:
            raise click.ClickException(_one_line(error)) from None


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(rnnkit.__version__, prog_name="rnnkit")
def main() -> None:
    """rnnkit: recurrent neural networks on PyTorch."""


@main.command()
@click.option("--seed", default=0, show_default=True, help="Random seed.")
def demo(seed: int) -> None:
    """Check rnnkit against torch.nn, then train the "hello world" character model."""
    from rnnkit import demo as demos

    p = demos.parity(seed=seed)
    click.echo(f"rnnkit vs torch.nn on {p.config}")
    click.echo(f"  largest difference  output {p.output:.1e}  final state {p.final_state:.1e}  "
               f"gradients {p.gradients:.1e}")
    h = demos.hello_world(seed=seed)
    click.echo(f'character LSTM on "{h.text}": {h.steps} steps, loss {h.final_loss:.4f}, {h.seconds:.1f} s')
    click.echo(f'  prompt "{h.prompt}" -> "{h.generated}"')


@main.group()
def train() -> None:
    """Train a model; each run writes one folder (see `rnnkit predict`)."""


CELL_CHOICES = ["rnn", "lstm", "gru", "mingru", "minlstm"]
CELL_HELP = ("The recurrent cell: rnn (a tanh RNN), lstm or gru; mingru or minlstm, their minimal forms whose gates "
             "read the input alone, trained for all steps at once (Feng et al. 2024).")


def _training_options(f: Callable[..., None]) -> Callable[..., None]:
    """Options every `rnnkit train` command shares."""
    options = [
        click.option("--seed", default=0, show_default=True, help="Fixes the split, the initialisation and the batches."),
        click.option("--out", type=click.Path(file_okay=False), default=None,
                     help="Run folder to create (default runs/TASK-DATA-TIME)."),
        click.option("--resume", type=click.Path(file_okay=False), default=None,
                     help="Continue this run (stopped, or finished: give a larger --epochs) with its own settings."),
        click.option("--tensorboard", is_flag=True, help="Also write TensorBoard event files to RUN/tensorboard."),
        click.option("--diagnose-every", type=click.IntRange(min=1), default=None, metavar="N",
                     help="Every N steps, measure the gradient flow through time (metrics.json keeps it); "
                          "warns once if gradients vanish or explode."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


_int8_test_option = click.option(
    "--int8-test", is_flag=True,
    help="Also evaluate the trained model in int8 (rnnkit.quantize) on the test split, beside float32 (CPU; "
         "rnn, lstm and gru cells).")


def _checked(check: Callable[[str | None], str | None]) -> Callable[[click.Context, click.Parameter, str | None],
                                                                  str | None]:
    """A click callback that runs check on the value: its ValueError is a usage error naming the option."""
    def callback(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
        try:
            return check(value)
        except ValueError as error:
            raise click.BadParameter(str(error)) from None

    return callback


def _encoding_option(f: Callable[..., None]) -> Callable[..., None]:
    return click.option("--encoding", default=None, callback=_checked(check_encoding), metavar="NAME",
                        help="The encoding of your files (default: UTF-8, with or without a byte-order mark; "
                             "gb18030 reads GBK and GB2312, as Excel saves Chinese text).")(f)


def _delimiter_option(f: Callable[..., None]) -> Callable[..., None]:
    return click.option("--delimiter", default=None, callback=_checked(check_delimiter), metavar="CHAR",
                        help="The delimiter of your table's columns: a character, or tab (default: sniffed among "
                             "comma, semicolon, tab and |).")(f)


def _check_resume(ctx: click.Context, resume: str | None) -> None:
    """With --resume, the run's own settings hold: any other explicit option but --epochs is an error."""
    if resume is None:
        return
    given = [name for name in ctx.params if name not in ("resume", "epochs", "tensorboard", "diagnose_every")
             and ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE]
    if given:
        flags = ", ".join("--" + n.replace("_", "-") for n in given)
        raise click.UsageError(f"--resume continues a run with its own settings: drop {flags} (only --epochs may change)")


def _epoch_printer(metric: str, every: int = 1) -> tuple[Callable[[EpochRecord], None], bool]:
    """(on_epoch, progress): a progress bar per epoch on a terminal, else one plain line per epoch
    (every `every` epochs)."""
    import sys

    progress = sys.stderr.isatty()

    def show(r: EpochRecord) -> None:
        if progress or (r.epoch - 1) % every:
            return
        click.echo(f"epoch {r.epoch:>3}  train loss {r.train_loss:.4f}  val loss {r.val_loss:.4f}  "
                   f"val {metric} {r.val_metric:.4f}  lr {r.lr:.2g}  grad norm {r.grad_norm:.2f} "
                   f"(clipped {r.clipped:.0%})  {r.seconds:.1f} s")

    return show, progress


def _show_diagnosis(summary: dict[str, Any]) -> None:
    """A warning line when gradients first vanish, explode or become NaN."""
    if "warning" in summary:
        click.echo(f"warning: {summary['warning']}", err=True)


def _run_folder(out: str | None, resume: str | None, task: str, name: str) -> str:
    import time as _time

    return resume or out or f"runs/{task}-{name}-{_time.strftime('%Y%m%d-%H%M%S')}"


def _worker() -> bool:
    """True in a data-parallel process other than the main one, which alone reports."""
    from rnnkit.training import world

    return world()[0] != 0


def _run_folder_line(folder: str, metrics: dict[str, Any]) -> None:
    """The last lines of `rnnkit train`: the run folder; and for a run that diverged after some
    epochs (the best epoch's weights saved), a line that says so, and the exit status DIVERGED."""
    from rnnkit.pipelines._runs import DIVERGED

    click.echo(f"run folder: {folder}")
    if str(metrics.get("stopped", "")).startswith("diverged"):
        click.echo(f"stopped: {metrics['stopped']}")
        raise click.exceptions.Exit(DIVERGED)


def _run_training(ctx: click.Context, task: str, config_cls: type, build: Callable[[], Any],
                  train_fn: Callable[..., dict[str, Any]], name_of: Callable[[Any], str], metric: str,
                  every: int = 1) -> tuple[dict[str, Any], str] | None:
    """What every `rnnkit train` command does: the config (built, or the resumed run's own), the
    run folder, the per-epoch output, the pipeline's train. None in a data-parallel worker."""
    from rnnkit.pipelines._runs import pipeline_config
    from rnnkit.runs import CHECKPOINT, DiskFullError, partial_path, run_name
    from rnnkit.training import Interrupted, stop_on_signals

    p = ctx.params
    resume = None if p["resume"] is None else str(run_name(p["resume"]))  # RUN.partial: the run RUN
    _check_resume(ctx, resume)
    given = ctx.get_parameter_source("epochs") == click.core.ParameterSource.COMMANDLINE
    epochs = p["epochs"] if given else None  # resumed without --epochs: the run's own number
    cfg = pipeline_config(resume, task, config_cls, epochs=epochs) if resume else build()
    folder = _run_folder(p["out"], resume, task, name_of(cfg))
    show, progress = _epoch_printer(metric, every)
    again = f"rnnkit train {task} --resume {folder}"

    def stopping(number: int) -> None:
        below_a_bar = "\n" if progress else ""  # a progress bar holds the line
        click.echo(f"{below_a_bar}{signal.Signals(number).name}: stopping after this step (once more to stop at once)",
                   err=True)

    try:
        with stop_on_signals(stopping):
            extra = {"int8": True} if p.get("int8_test") else {}
            metrics = train_fn(cfg, folder, on_epoch=show, resume=resume is not None, progress=progress,
                               tensorboard=p["tensorboard"], diagnose_every=p["diagnose_every"],
                               on_diagnosis=_show_diagnosis, **extra)
    except Interrupted as stop:
        if stop.checkpoint is None or not Path(stop.checkpoint).is_file():
            click.echo(f"{stop}: nothing to continue from was saved", err=True)
        else:
            click.echo(f"{stop}\ncontinue with: {again}", err=True)
        raise click.exceptions.Exit(stop.exit_status) from None
    except DiskFullError as error:
        kept = (partial_path(folder) / CHECKPOINT).is_file()
        raise click.ClickException(f"{error}" + (f"; free some space, then continue with: {again}" if kept else "")) from None
    return None if _worker() else (metrics, folder)


@train.command("classify")
@click.option("--dataset", default="digits", show_default=True, help="A bundled data set (`rnnkit datasets`).")
@click.option("--data", type=click.Path(exists=True), default=None,
              help="Your own data: a CSV/TSV file, or a folder with one sub-folder of .txt files per label.")
@click.option("--text-col", default=None, help="With --data FILE: the column of texts.")
@click.option("--label-col", default=None, help="With --data FILE: the column of labels.")
@_encoding_option
@_delimiter_option
@click.option("--steps", default=1, show_default=True,
              help="With --data FILE and no --text-col: the numeric columns form this many steps.")
@click.option("--tokens", type=click.Choice(["char", "word"]), default=None,
              help="Texts: read them character by character or word by word (default: a bundled set's own, word for "
                   "intents; else char).")
@click.option("--max-vocab", default=20000, show_default=True, help="Texts: vocabulary size at most (training split only).")
@click.option("--max-length", default=400, show_default=True, help="Texts: tokens kept from the start of each.")
@click.option("--embed", default=64, show_default=True, help="Texts: embedding width.")
@click.option("--cell", type=click.Choice(CELL_CHOICES), default="gru", show_default=True, help=CELL_HELP)
@click.option("--hidden", default=128, show_default=True, help="Hidden units per direction.")
@click.option("--layers", default=1, show_default=True, help="Stacked layers.")
@click.option("--bidirectional/--unidirectional", default=True, show_default=True,
              help="Read each sequence both ways (two RNNs per layer, their outputs joined).")
@click.option("--pooling", type=click.Choice(["last", "mean", "max", "attention"]), default="mean", show_default=True,
              help="How the outputs of all steps become one vector: the last step's, their mean or maximum, or "
                   "a weighted sum with learned attention.")
@click.option("--dropout", default=0.0, show_default=True, help="Dropout in training: between stacked layers and before the output layer.")
@click.option("--epochs", type=int, default=None,
              help="At most this many (early stopping). Default: 40, or the data set's own (digits: 60, with the "
                   "learning rate decayed along a cosine and no early stopping).")
@click.option("--batch-size", type=int, default=None,
              help="Examples per training batch. Default: 64, or the data set's own (digits: 32).")
@click.option("--lr", default=3e-3, show_default=True, help="Adam's learning rate (at most 10).")
@_int8_test_option
@_training_options
@click.pass_context
def train_classify(ctx: click.Context, dataset: str, data: str | None, text_col: str | None, label_col: str | None,
                   encoding: str | None, delimiter: str | None, steps: int, tokens: str | None, max_vocab: int, max_length: int, embed: int, cell: str, hidden: int,
                   layers: int, bidirectional: bool, pooling: str, dropout: float, epochs: int | None, batch_size: int | None,
                   lr: float, seed: int, out: str | None, resume: str | None, tensorboard: bool,
                   diagnose_every: int | None, int8_test: bool) -> None:
    """N -> 1: classify texts or sequences (digits: 8x8 images read row by row; surnames: by language)."""
    from rnnkit.pipelines import classify

    done = _run_training(ctx, "classify", classify.ClassifyConfig, lambda: classify.ClassifyConfig(
        dataset=dataset, data=data, text_col=text_col, label_col=label_col, encoding=encoding, delimiter=delimiter,
        steps=steps, tokens=tokens,
        max_vocab=max_vocab, max_length=max_length, embed_dim=embed, cell=cell, hidden_size=hidden, num_layers=layers,
        bidirectional=bidirectional, pooling=pooling, dropout=dropout,
        train=classify.training(dataset if data is None else None, epochs=epochs, batch_size=batch_size, lr=lr,
                                seed=seed)),
        classify.train, lambda c: Path(c.source).stem, "accuracy")
    if done is None:
        return
    metrics, folder = done
    t, b = metrics["test"], metrics["baseline"]
    click.echo(f"test accuracy {t['accuracy']:.4f}, macro-F1 {t['macro_f1']:.4f}  "
               f"(majority baseline: accuracy {b['accuracy']:.4f}, macro-F1 {b['macro_f1']:.4f}); "
               f"best epoch {metrics['best_epoch']}, {metrics['train_seconds']:.1f} s")
    if "test_int8" in metrics:
        q = metrics["test_int8"]
        click.echo(f"int8 (rnnkit.quantize): test accuracy {q['accuracy']:.4f}, macro-F1 {q['macro_f1']:.4f}")
    _run_folder_line(folder, metrics)


@train.command("forecast")
@click.option("--dataset", default="sunspots", show_default=True, help="A bundled series (`rnnkit datasets`).")
@click.option("--data", type=click.Path(dir_okay=False), default=None, help="Your own CSV instead of --dataset.")
@click.option("--target", default=None, help="With --data: the column to forecast.")
@click.option("--time-col", default=None,
              help="With --data: the column of times (numbers or dates): the rows are sorted by it, and repeated "
                   "times are an error.")
@_encoding_option
@_delimiter_option
@click.option("--features", default=None,
              help="More input columns beside the target, comma-separated; 'none': the target alone. Default: none "
                   "for --data, a bundled series' own (weather: temp_min, precipitation, wind).")
@click.option("--window", default=20, show_default=True, help="Steps of history in each input.")
@click.option("--horizon", default=1, show_default=True, help="Steps predicted at once.")
@click.option("--season", type=int, default=None, help="Season length for the seasonal naive baseline (default: the series').")
@click.option("--predict", type=click.Choice(["change", "level"]), default="change", show_default=True,
              help="Learn each value as a change from the last input value (robust to trends), or as is.")
@click.option("--cell", type=click.Choice(CELL_CHOICES), default="lstm", show_default=True, help=CELL_HELP)
@click.option("--hidden", default=32, show_default=True, help="Hidden units.")
@click.option("--layers", default=1, show_default=True, help="Stacked layers.")
@click.option("--epochs", default=150, show_default=True, help="At most this many (early stopping).")
@click.option("--lr", default=3e-3, show_default=True, help="Adam's learning rate (at most 10).")
@_int8_test_option
@_training_options
@click.pass_context
def train_forecast(ctx: click.Context, dataset: str, data: str | None, target: str | None, time_col: str | None,
                   encoding: str | None, delimiter: str | None, features: str | None, window: int, horizon: int, season: int | None, predict: str, cell: str, hidden: int,
                   layers: int, epochs: int, lr: float, seed: int, out: str | None, resume: str | None,
                   tensorboard: bool, diagnose_every: int | None, int8_test: bool) -> None:
    """N -> 1 or N -> horizon: forecast a series (bundled: sunspots, co2, tbilrate)."""
    from rnnkit.pipelines import forecast as fc
    from rnnkit.training import TrainConfig

    columns = None if features is None else tuple(f for f in features.split(",") if f and f != "none")
    done = _run_training(ctx, "forecast", fc.ForecastConfig, lambda: fc.ForecastConfig(
        dataset=None if data else dataset, data=data, target=target, time_col=time_col, encoding=encoding,
        delimiter=delimiter,
        features=columns, window=window, horizon=horizon, season=season,
        predict=predict, cell=cell, hidden_size=hidden, num_layers=layers,
        train=TrainConfig(epochs=epochs, batch_size=32, lr=lr, patience=30, lr_patience=8, seed=seed)),
        fc.train, lambda c: Path(c.data).stem if c.data else str(c.dataset), "RMSE (scaled)", every=10)
    if done is None:
        return
    metrics, folder = done
    t = metrics["test"]
    click.echo(f"test RMSE {t['rmse']:.3f}, MAE {t['mae']:.3f} on {metrics['sizes']['test']} windows; best epoch "
               f"{metrics['best_epoch']}, {metrics['train_seconds']:.1f} s")
    for name_, b in metrics["baseline"].items():
        click.echo(f"  baseline {name_}: RMSE {b['rmse']:.3f}, MAE {b['mae']:.3f}")
    from rnnkit.data import SERIES

    note = SERIES[str(metrics["series"])].note if metrics.get("series") in SERIES else ""
    if note:
        click.echo(f"  note: {note}")
    if "test_int8" in metrics:
        q = metrics["test_int8"]
        click.echo(f"int8 (rnnkit.quantize): test RMSE {q['rmse']:.3f}, MAE {q['mae']:.3f}")
    _run_folder_line(folder, metrics)


@train.command("lm")
@click.option("--text", type=click.Path(dir_okay=False), default=None, help="A text file (default: the bundled corpus).")
@_encoding_option
@click.option("--corpus", type=click.Choice(["pydoc"]), default="pydoc", show_default=True,
              help="The bundled corpus: the reference topics of CPython's pydoc.")
@click.option("--context", type=int, default=None,
              help="Train on windows of K characters (generation then reads the last K); default: truncated BPTT.")
@click.option("--bptt", default=100, show_default=True, help="Truncated BPTT: steps per chunk; the state is carried across chunks.")
@click.option("--cell", type=click.Choice(CELL_CHOICES), default="lstm", show_default=True, help=CELL_HELP)
@click.option("--embed", default=64, show_default=True, help="Embedding width of the characters.")
@click.option("--hidden", default=256, show_default=True, help="Hidden units per layer.")
@click.option("--layers", default=2, show_default=True, help="Stacked layers.")
@click.option("--dropout", default=0.1, show_default=True,
              help="Dropout in training: on the embeddings, between layers and before the output layer.")
@click.option("--epochs", default=200, show_default=True, help="At most this many (early stopping, time budget).")
@click.option("--minutes", default=10.0, show_default=True, help="Time budget: no epoch starts that would end past it.")
@click.option("--batch-size", default=32, show_default=True, help="Windows per batch, or parallel streams in truncated BPTT.")
@click.option("--lr", default=3e-3, show_default=True, help="Adam's learning rate (at most 10).")
@_int8_test_option
@_training_options
@click.pass_context
def train_lm(ctx: click.Context, text: str | None, encoding: str | None, corpus: str, context: int | None, bptt: int, cell: str, embed: int,
             hidden: int, layers: int, dropout: float, epochs: int, minutes: float, batch_size: int, lr: float,
             seed: int, out: str | None, resume: str | None, tensorboard: bool, diagnose_every: int | None,
             int8_test: bool) -> None:
    """N -> N: a character language model; bits per character on a held-out tail."""
    from rnnkit.pipelines import lm
    from rnnkit.training import TrainConfig

    done = _run_training(ctx, "lm", lm.LMConfig, lambda: lm.LMConfig(
        text=text, encoding=encoding, corpus=corpus, context=context, bptt=bptt, cell=cell, embed_dim=embed, hidden_size=hidden,
        num_layers=layers, dropout=dropout,
        train=TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, patience=5, lr_patience=1, seed=seed,
                          max_minutes=minutes)),
        lm.train, lambda c: Path(c.source).stem, "bits/char")
    if done is None:
        return
    metrics, folder = done
    t, b = metrics["test"], metrics["baseline"]
    click.echo(f"test {t['bpc']:.3f} bits per character on {t['characters']} characters of {metrics['test_on']} "
               f"(unigram baseline {b['bpc']:.3f}); best epoch {metrics['best_epoch']}, stopped "
               f"{metrics['stopped']}, {metrics['train_seconds']:.1f} s")
    if "test_int8" in metrics:
        click.echo(f"int8 (rnnkit.quantize): test {metrics['test_int8']['bpc']:.3f} bits per character")
    _run_folder_line(folder, metrics)


@main.command("generate")
@click.argument("run", type=click.Path())
@click.option("--prompt", required=True, help="Text to continue.")
@click.option("--length", type=int, default=200, show_default=True, help="Characters to generate.")
@click.option("--greedy", is_flag=True, help="Always take the most likely character.")
@click.option("--temperature", type=float, default=1.0, show_default=True, help="Below 1: safer, above 1: wilder.")
@click.option("--top-k", type=int, default=None, help="Sample from the K most likely characters only.")
@click.option("--seed", type=int, default=None, help="Fix the sampling.")
@click.option("--quantize", type=click.Choice(["int8"]), default=None,
              help="Generate with the model's recurrent and linear layers in int8 (rnnkit.quantize).")
def generate_command(run: str, prompt: str, length: int, greedy: bool, temperature: float, top_k: int | None,
                     seed: int | None, quantize: str | None) -> None:
    """Continue a prompt with a trained lm run."""
    from rnnkit.pipelines import lm

    click.echo(lm.generate(run, prompt, length, greedy=greedy, temperature=temperature, top_k=top_k, seed=seed,
                           quantize=quantize))


def _seq2seq_options(*, epochs: int, schedule: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Model and training options of `rnnkit train seq2seq` and `rnnkit train caption`."""
    return lambda f: _add_seq2seq_options(f, epochs, schedule)


def _add_seq2seq_options(f: Callable[..., None], epochs: int, schedule: str) -> Callable[..., None]:
    options = [
        click.option("--cell", type=click.Choice(CELL_CHOICES), default="gru", show_default=True, help=CELL_HELP),
        click.option("--embed", default=64, show_default=True, help="Embedding width of the tokens."),
        click.option("--hidden", default=128, show_default=True, help="Hidden units of the decoder and the encoder."),
        click.option("--layers", default=1, show_default=True, help="Stacked layers of the encoder and the decoder."),
        click.option("--dropout", default=0.0, show_default=True,
                     help="Dropout in training: on the embeddings, between layers and before the output layer."),
        click.option("--teacher-forcing", default=1.0, show_default=True,
                     help="Chance of feeding the true previous token (else the model's own guess) in training."),
        click.option("--max-length", type=int, default=None, help="Longest output (default: longest training target + 5)."),
        click.option("--epochs", default=epochs, show_default=True,
                     help="At most this many (a perfect validation exact match, or 6 epochs without a better one "
                          "under --schedule plateau, ends the run sooner)."),
        click.option("--batch-size", default=64, show_default=True, help="Examples per training batch."),
        click.option("--lr", default=3e-3, show_default=True, help="Adam's learning rate (at most 10)."),
        click.option("--schedule", type=click.Choice(["plateau", "cosine", "anneal"]), default=schedule,
                     show_default=True,
                     help="The learning rate: plateau: halved after 2 epochs without a better validation exact match, "
                          "and 6 such epochs stop the run; cosine: down to 0 along a cosine over the epochs; anneal: "
                          "constant for the first 80% of the epochs, then down along a cosine."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _train_generator(ctx: click.Context, task: str, build: Callable[[Any], Any]) -> None:
    from rnnkit.pipelines import seq2seq
    from rnnkit.training import TrainConfig

    p = ctx.params
    done = _run_training(ctx, task, seq2seq.Seq2SeqTaskConfig, lambda: build(TrainConfig(
        epochs=p["epochs"], batch_size=p["batch_size"], lr=p["lr"], schedule=p["schedule"],
        patience=6 if p["schedule"] == "plateau" else None, lr_patience=2, seed=p["seed"])),
        seq2seq.train, lambda c: Path(c.source).stem, "exact match")
    if done is None:
        return
    metrics, folder = done
    t, b = metrics["test"], metrics["baseline"]
    extra = f", BLEU {t['bleu']:.2f}" if "bleu" in t else ""
    click.echo(f"test exact match {t['exact_match']:.4f}, token accuracy {t['token_accuracy']:.4f}{extra} "
               f"({metrics['sizes']['test']} examples, greedy)  (baseline {b['name']}: exact match "
               f"{b['exact_match']:.4f}, token accuracy {b['token_accuracy']:.4f}); best epoch {metrics['best_epoch']}, "
               f"{metrics['train_seconds']:.1f} s")
    for example in metrics["examples"][:3]:
        click.echo(f"  {example['source']!r} -> {example['output']!r} (target {example['target']!r})")
    _run_folder_line(folder, metrics)


@train.command("seq2seq")
@click.option("--dataset", type=click.Choice(["addition", "dates"]), default="addition", show_default=True,
              help="A bundled generated task (`rnnkit datasets`).")
@click.option("--data", type=click.Path(dir_okay=False), default=None,
              help="Your own pairs: a file of source TAB target lines (or another --delimiter).")
@_encoding_option
@_delimiter_option
@click.option("--tokens", type=click.Choice(["char", "word"]), default="char", show_default=True,
              help="Read sources and targets character by character, or word by word (then BLEU is reported too).")
@click.option("--bidirectional/--unidirectional", default=True, show_default=True, help="The encoder.")
@click.option("--attention", type=click.Choice(["none", "bahdanau", "luong"]), default="luong", show_default=True,
              help="How the decoder looks at the encoder's outputs: not at all (the final state only), additive "
                   "(Bahdanau: from the previous state, into the next step's input) or multiplicative (Luong: from "
                   "the new state, into the output).")
@click.option("--input-feeding/--no-input-feeding", default=False, show_default=True,
              help="Luong attention: feed each step's attentional output into the next step's input. Without it "
                   "(the default), training runs the decoder over all steps at once instead of a step loop.")
@click.option("--max-tokens", type=click.IntRange(min=1), default=400, show_default=True,
              help="Pairs whose source or target has more tokens are left out, with a warning (one very long pair "
                   "makes every batch it falls in as long).")
@_seq2seq_options(epochs=15, schedule="anneal")
@_training_options
@click.pass_context
def train_seq2seq(ctx: click.Context, dataset: str, data: str | None, encoding: str | None, delimiter: str | None,
                  tokens: str, bidirectional: bool, attention: str,
                  input_feeding: bool, max_tokens: int, cell: str, embed: int, hidden: int, layers: int, dropout: float,
                  teacher_forcing: float, max_length: int | None, epochs: int, batch_size: int, lr: float, schedule: str, seed: int,
                  out: str | None, resume: str | None, tensorboard: bool, diagnose_every: int | None) -> None:
    """N -> M: encoder-decoder with attention (bundled: addition, dates; or --data PAIRS.tsv)."""
    from rnnkit.pipelines import seq2seq

    _train_generator(ctx, "seq2seq", lambda train_cfg: seq2seq.Seq2SeqTaskConfig(
        task="seq2seq", dataset=dataset, data=data, encoding=encoding, delimiter=delimiter, tokens=tokens, cell=cell, embed_dim=embed, hidden_size=hidden,
        num_layers=layers, bidirectional=bidirectional, attention=attention, input_feeding=input_feeding,
        dropout=dropout, teacher_forcing=teacher_forcing, max_length=max_length, max_tokens=max_tokens,
        train=train_cfg))


@train.command("caption")
@click.option("--dataset", type=click.Choice(["digits"]), default="digits", show_default=True,
              help="digits: an 8x8 image -> the English name of its digit, spelled.")
@_seq2seq_options(epochs=60, schedule="plateau")
@_training_options
@click.pass_context
def train_caption(ctx: click.Context, dataset: str, cell: str, embed: int, hidden: int, layers: int, dropout: float,
                  teacher_forcing: float, max_length: int | None, epochs: int, batch_size: int, lr: float,
                  schedule: str, seed: int, out: str | None, resume: str | None, tensorboard: bool,
                  diagnose_every: int | None) -> None:
    """1 -> N: one feature vector sets the decoder's initial state, which spells a sequence."""
    from rnnkit.pipelines import seq2seq

    _train_generator(ctx, "caption", lambda train_cfg: seq2seq.Seq2SeqTaskConfig(
        task="caption", dataset=dataset, tokens="char", cell=cell, embed_dim=embed, hidden_size=hidden,
        num_layers=layers, bidirectional=False, attention="none", dropout=dropout, teacher_forcing=teacher_forcing,
        max_length=max_length, train=train_cfg))


@main.command("translate")
@click.argument("run", type=click.Path())
@click.argument("texts", nargs=-1)
@click.option("--input", "input_path", type=click.Path(dir_okay=False), default=None, help="A file, one source per line.")
@_encoding_option
@click.option("--beam", type=int, default=None, help="Beam search with this many hypotheses (default: greedy).")
def translate_command(run: str, texts: tuple[str, ...], input_path: str | None, encoding: str | None,
                      beam: int | None) -> None:
    """Map sources to outputs with a trained seq2seq run: `rnnkit translate RUN "123+45"`."""
    from rnnkit.pipelines import seq2seq

    if bool(texts) == bool(input_path):
        raise click.UsageError("give the sources as arguments, or --input FILE (not both)")
    outputs, unknown = seq2seq.translate(run, read_lines(input_path, encoding=encoding) if input_path else list(texts),
                                        beam=beam)
    for output, missing in zip(outputs, unknown):
        note = f"  [not in the vocabulary, read as <unk>: {' '.join(missing)}]" if missing else ""
        click.echo(output + note)


@main.command("caption")
@click.argument("run", type=click.Path())
@click.option("--input", "input_path", type=click.Path(dir_okay=False), required=True,
              help="CSV, one row of features per line (digits: 64 pixel values 0-16).")
@_encoding_option
@_delimiter_option
@click.option("--beam", type=int, default=None, help="Beam search with this many hypotheses (default: greedy).")
def caption_command(run: str, input_path: str, encoding: str | None, delimiter: str | None, beam: int | None) -> None:
    """Spell a sequence for each row of features with a trained caption run."""
    from rnnkit.pipelines import seq2seq

    for output in seq2seq.caption(run, read_numbers(input_path, encoding=encoding, delimiter=delimiter), beam=beam):
        click.echo(output)


def _memory_command(task: str) -> Callable[..., None]:
    """`rnnkit train adding` and `rnnkit train copy`."""

    @click.option("--steps", default=100, show_default=True, help="T: how far apart what must be remembered lies.")
    @click.option("--cell", type=click.Choice([*CELL_CHOICES, "irnn"]), default="lstm", show_default=True,
                  help=CELL_HELP + " irnn: a relu RNN with W_hh = I (Le et al. 2015).")
    @click.option("--hidden", default=128, show_default=True, help="Hidden units.")
    @click.option("--layers", default=1, show_default=True, help="Stacked layers.")
    @click.option("--init", type=click.Choice(["auto", "default", "orthogonal", "identity", "chrono"]), default="auto",
                  show_default=True, help="The initialisation: chrono (lstm, gru, mingru, minlstm) sets the gates' "
                                          "biases for dependencies as long as the sequences (Tallec & Ollivier 2018); "
                                          "default, orthogonal, identity: W_hh's; auto: chrono for the gated cells, "
                                          "else default.")
    @click.option("--train-size", default=10000 if task == "adding" else 60000, show_default=True,
                  help="Generated training sequences.")
    @click.option("--epochs", type=int, default=30 if task == "adding" else None, show_default=task == "adding",
                  help="Passes over the generated training set." + ("" if task == "adding" else
                       " [default: 20; with --curriculum auto above T = 200: " +
                       ("30]" if task == "copy" else "25]")))
    @click.option("--batch-size", default=50, show_default=True, help="Examples per training batch.")
    @click.option("--lr", default=1e-3 if task == "adding" else 3e-3, show_default=True,
                  help="Adam's learning rate (at most 10).")
    @click.option("--schedule", type=click.Choice(["constant", "cosine", "anneal"]),
                  default="constant" if task == "adding" else "anneal", show_default=True,
                  help="The learning rate: constant; cosine: down to 0 along a cosine over the epochs; anneal: "
                       "constant for the first 80% of the epochs, then down along a cosine.")
    @click.option("--clip", type=float, default=1.0, show_default=True, help="Gradient clipping by norm; 0: off.")
    @click.option("--curriculum", default="auto", show_default=True, metavar="auto|off|T:EPOCHS,...",
                  help="Train shorter sequences first: stages T:EPOCHS (e.g. 100:14), then --steps for the epochs "
                       "left; a stage at T holds train-size x (first T) / T sequences, and --schedule runs over all "
                       "the epochs. " + ("auto: copy and selective copy above T = 200 train 70% of their epochs at "
                                         "T = 100 first (from T = 1000 on: 60% at T = 100, then 20% at T = 300); "
                                         "off: --steps throughout." if task != "adding" else
                                         "auto and off: --steps throughout."))
    @_training_options
    @click.pass_context
    def command(ctx: click.Context, steps: int, cell: str, hidden: int, layers: int, init: str, train_size: int, epochs: int | None,
                batch_size: int, lr: float, schedule: str, clip: float, curriculum: str, seed: int, out: str | None,
                resume: str | None, tensorboard: bool, diagnose_every: int | None) -> None:
        from rnnkit.pipelines import memory
        from rnnkit.training import TrainConfig

        if epochs is None:  # (resumed without --epochs, the run keeps its own)
            epochs = memory.command_epochs(task, steps, curriculum)
        done = _run_training(ctx, task, memory.MemoryConfig, lambda: memory.MemoryConfig(
            task=task, steps=steps, cell=cell, hidden_size=hidden, num_layers=layers, init=init, train_size=train_size,
            curriculum=curriculum, train=TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, patience=None, lr_patience=1000,
                              schedule="plateau" if schedule == "constant" else schedule, clip_norm=clip or None,
                              seed=seed)),
            memory.train, lambda c: f"{c.cell}-{c.steps}", "MSE" if task == "adding" else "cross-entropy")
        if done is None:
            return
        metrics, folder = done
        t, b, stages = metrics["test"], metrics["baseline"], metrics["curriculum"]
        trained = f"{metrics['training_steps']} steps" + ("" if len(stages) == 1 else " (" + ", then ".join(
            f"T = {length} for {count} epoch{'' if count == 1 else 's'}" for length, count in stages[:-1])
            + f", then T = {stages[-1][0]})")
        if task == "adding":
            click.echo(f"test MSE {t['mse']:.4f} (baseline {b['name']}: {b['mse']:.4f}); {trained}, "
                       f"{metrics['train_seconds']:.1f} s")
        else:
            click.echo(f"test cross-entropy {t['cross_entropy']:.4f}, recall accuracy {t['recall_accuracy']:.4f} "
                       f"(baseline {b['name']}: {b['cross_entropy']:.4f}, {b['recall_accuracy']:.4f}); "
                       f"{trained}, {metrics['train_seconds']:.1f} s")
        _run_folder_line(folder, metrics)

    command.__doc__ = {"adding": "The adding problem (N -> 1): sum the two marked numbers of T steps.",
                       "copy": "Copy memory (N -> N): recall 10 symbols after T blank steps.",
                       "selective-copy": "Selective copying (N -> N): recall 10 symbols scattered among T + 9 blank "
                                         "steps, in order."}[task]
    return command


train.command("adding")(_memory_command("adding"))
train.command("copy")(_memory_command("copy"))
train.command("selective-copy")(_memory_command("selective-copy"))


@main.command("diagnose", short_help="See gradients vanish or explode through time, in fresh cells or a trained RUN.")
@click.argument("run", required=False, type=click.Path())
@click.option("--cells", default="rnn,lstm,gru", show_default=True,
              help="Fresh cells to compare: rnn, lstm, gru, irnn, mingru, minlstm.")
@click.option("--steps", default=100, show_default=True, help="T, steps of the random sequences.")
@click.option("--hidden", default=64, show_default=True, help="Hidden units of the fresh cells.")
@click.option("--layers", default=1, show_default=True, help="Stacked layers of the fresh cells.")
@click.option("--init", type=click.Choice(["default", "orthogonal", "identity", "chrono"]), default="default",
              show_default=True, help="W_hh's initialisation (identity with --nonlinearity relu: the IRNN); chrono "
                                      "(lstm, gru, mingru, minlstm): the gates set for dependencies of --steps "
                                      "steps.")
@click.option("--nonlinearity", type=click.Choice(["tanh", "relu"]), default="tanh", show_default=True,
              help="The vanilla RNN's.")
@click.option("--seed", default=0, show_default=True, help="Fixes the fresh cells' weights and the random sequences.")
@click.option("--out", type=click.Path(file_okay=False), default="diagnostics", show_default=True,
              help="Folder for gradient_flow.png, hidden_stats.png, diagnostics.json and, for a RUN, hidden_state.png "
                   "(one example's hidden state over time).")
def diagnose_command(run: str | None, cells: str, steps: int, hidden: int, layers: int, init: str, nonlinearity: str,
                     seed: int, out: str) -> None:
    """See gradients vanish or explode through time: fresh cells on random sequences, or a trained
    RUN (classify, forecast, lm, seq2seq, adding, copy, selective-copy) on its validation data."""
    from rnnkit import diagnostics, pipelines

    if run:
        report = diagnostics.diagnose_run(pipelines.open_task(run))
        report["setup"]["run"] = run
        title = f"{run}: validation batch"
    else:
        cell_list = [c.strip() for c in cells.split(",") if c.strip()]
        report = diagnostics.diagnose_cells(cell_list, steps=steps, hidden=hidden, layers=layers, init=init,
                                            nonlinearity=nonlinearity, seed=seed)
        title = f"fresh cells, T={steps}, H={hidden}, init {init}"
    files = diagnostics.write_report(report, out, title=title)
    for cell, r in report["cells"].items():
        v = r["verdict"]
        click.echo(f"{cell:<6} {v['verdict']:<10} first/last step gradient {v['ratio']:.2e}  ({v['reason']})")
    click.echo("wrote " + ", ".join(str(f) for f in files))


@main.command("export", short_help="Export a trained RUN's model as one graph (ONNX, .pt2 or AOTInductor), checked first.")
@click.argument("run", type=click.Path())
@click.option("--format", "fmt", type=click.Choice(["onnx", "pt2", "aoti"]), default="onnx", show_default=True,
              help="onnx: for onnxruntime (needs rnnkit[onnx]); pt2: a torch.export program (torch.export.load); "
                   "aoti: an AOTInductor package (.pt2) that runs with torch and rnnkit's operator library alone.")
@click.option("--out", "out_path", type=click.Path(dir_okay=False), required=True, help="The file to write.")
@click.option("--quantize", type=click.Choice(["int8"]), default=None,
              help="Export the model with its recurrent and linear layers in int8 (rnnkit.quantize), for serving "
                   "on a CPU; pt2 and aoti only.")
def export_command(run: str, fmt: str, out_path: str, quantize: str | None) -> None:
    """Export a trained RUN's model as one graph with dynamic batch and length, checked against the
    model on the run's validation data before it is written."""
    from rnnkit import pipelines
    from rnnkit.export import export

    done = export(pipelines.open_task(run), fmt, out_path, quantize=quantize)
    inputs = ", ".join(f"{name} {dims}" for name, dims in done.inputs)
    click.echo(f"wrote {done.path} ({done.format}{', int8' if done.quantized else ''}): inputs {inputs}")
    if done.cost is not None:
        click.echo(f"int8: its outputs differ from the float model's by at most {done.cost:.1e} on the "
                   f"{done.checked} validation examples (whose largest output is {done.scale:.3g})")
    runner = {"onnx": "onnxruntime", "pt2": "torch.export.load", "aoti": "torch._inductor.aoti_load_package"}
    click.echo(f"checked in {runner[done.format]} on {done.checked} validation examples and on "
               f"{max(1, done.checked // 2)}: largest difference from the model {done.difference:.1e}")
    if done.format != "onnx":
        from rnnkit.engines._library import unavailable

        if unavailable() is None:
            from rnnkit import library_path

            click.echo(f"to serve it without rnnkit: torch.ops.load_library({library_path()!r}) first")


@main.command("forecast")
@click.argument("run", type=click.Path())
@click.option("--steps", type=int, required=True, help="How many steps past the end of the series.")
@click.option("--data", type=click.Path(dir_okay=False), default=None, help="Continue this CSV instead of the run's series.")
@_encoding_option
@_delimiter_option
@click.option("--out", "out_path", type=click.Path(dir_okay=False), default="forecast.csv", show_default=True,
              help="The CSV to write: one row (step, forecast) per step.")
def forecast_command(run: str, steps: int, data: str | None, encoding: str | None, delimiter: str | None,
                     out_path: str) -> None:
    """Continue a series with a trained forecast run; writes a CSV."""
    from rnnkit.pipelines import forecast as fc

    check_writable(out_path)  # before the work, not after it
    values = fc.forecast(run, steps, data=data, encoding=encoding, delimiter=delimiter)
    from rnnkit.runs import write_atomically

    write_atomically(out_path, ("step,forecast\n" + "".join(f"{i + 1},{v:.6g}\n" for i, v in enumerate(values))).encode())
    for i, v in enumerate(values):
        click.echo(f"{i + 1:>4}  {v:.4f}")
    click.echo(f"wrote {out_path}")


@main.command()
@click.argument("run", type=click.Path())
@click.argument("texts", nargs=-1)
@click.option("--input", "input_path", type=click.Path(dir_okay=False), default=None,
              help="A file: for text runs one text per line; for others a CSV, one sequence of T*F numbers per row "
                   "(digits: 64 pixel values 0-16).")
@_encoding_option
@_delimiter_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines for machines.")
def predict(run: str, texts: tuple[str, ...], input_path: str | None, encoding: str | None, delimiter: str | None,
            as_json: bool) -> None:
    """Label new data with a trained classify run: `rnnkit predict RUN "some text"` or --input FILE."""
    import json

    from rnnkit.pipelines import classify

    _, config, _ = classify.load(run)  # the run first: a folder that is not one is the first thing to say
    if bool(texts) == bool(input_path):
        raise click.UsageError("give the texts to classify as arguments, or --input FILE (not both)")
    unknown: list[list[str]] = []
    if config["input"]["kind"] == "text":
        probs, labels, unknown = classify.predict_texts(run, read_lines(input_path, encoding=encoding) if input_path
                                                         else list(texts))
    else:
        if texts:
            raise click.UsageError(f"{run} classifies rows of numbers, not texts: use --input FILE.csv")
        probs, labels = classify.predict(run, read_numbers(str(input_path), encoding=encoding, delimiter=delimiter))
    for i, row in enumerate(probs):
        best = int(row.argmax())
        if as_json:
            record: dict[str, Any] = {"label": labels[best], "probabilities": dict(zip(labels, map(float, row)))}
            if unknown:
                record["unknown_tokens"] = unknown[i]
            click.echo(json.dumps(record, ensure_ascii=False))
        else:
            top = sorted(range(len(labels)), key=lambda j: -row[j])[:3]
            note = f"  [not in the vocabulary, read as <unk>: {' '.join(unknown[i])}]" if unknown and unknown[i] else ""
            click.echo(f"{labels[best]}  (" + ", ".join(f"{labels[j]}: {row[j]:.3f}" for j in top) + ")" + note)


@main.command()
def datasets() -> None:
    """List the bundled data sets, with source and licence."""
    from rnnkit.data import DATASETS, SERIES

    for info in DATASETS.values():
        click.echo(f"{info.name:<10} {info.task:<9} {info.size}\n  {info.description}\n"
                   f"  source: {info.source}\n  licence: {info.licence}")
    for series in SERIES.values():
        loaded = series.load()
        columns = f"; features by default: {', '.join(series.features)}" if series.features else ""
        click.echo(f"{series.name:<10} forecast  {len(loaded.values)} values ({series.frequency}), season "
                   f"{series.season or 'none'}{columns}\n  {series.description}\n  source: {series.source}\n"
                   f"  licence: {series.licence}")
    from rnnkit.data._pairs import PAIR_SETS
    from rnnkit.pipelines.lm import CORPORA

    for name, description in CORPORA.items():
        click.echo(f"{name:<10} lm        {description}")
    click.echo("digits     caption   the digits above, each image -> the English name of its digit (\"seven\")")
    for name, (description, _) in PAIR_SETS.items():
        click.echo(f"{name:<10} seq2seq   {description}; made by rnnkit (rnnkit.data._pairs)")
    click.echo("adding     adding    the adding problem (Hochreiter & Schmidhuber 1997; Le et al. 2015), generated "
               "with a seed\ncopy       copy      copy memory (Arjovsky et al. 2016), generated with a seed")


def _parse_sizes(value: str | None) -> list[tuple[int, int, int, int]] | None:
    if not value:
        return None
    sizes = []
    for part in value.split(";"):
        numbers = [p for p in part.replace("x", ",").split(",") if p.strip()]
        if len(numbers) != 4 or not all(n.strip().isdigit() and int(n) > 0 for n in numbers):
            raise click.BadParameter(f"expected T,B,I,H with four positive integers, got {part!r}", param_hint="--sizes")
        t, b, i, h = (int(n) for n in numbers)
        sizes.append((t, b, i, h))
    return sizes


@main.command()
@click.option("--cells", default="lstm,gru,rnn,lstm_ln", show_default=True,
              help="Cells to time: lstm, gru, rnn, lstm_ln (layer-normalised LSTM vs torch.nn.LSTM).")
@click.option("--sizes", default=None, metavar="T,B,I,H;...",
              help="Sizes to time, e.g. '20,1,1,20;100,64,256,256'. Default: the grid of benchmarks/README.md.")
@click.option("--engines", default="fused,reference", show_default=True,
              help="rnnkit engines to time, and 'compiled': the layer under torch.compile(fullgraph=True).")
@click.option("--repeats", default=101, show_default=True, help="Rounds per row at most (each times every implementation once).")
@click.option("--budget", default=4.0, show_default=True, help="Seconds per row at most (3 rounds at least).")
@click.option("--load", type=click.IntRange(min=0), default=0, show_default=True,
              help="Run this many busy processes beside the timing: a synthetic background load.")
@click.option("--input-grad/--no-input-grad", default=True, show_default=True,
              help="Also time forward+backward with the input's gradient (forward+backward+dx), as when a "
                   "layer below is trained.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Also write the table as JSON to this file.")
def bench(cells: str, sizes: str | None, engines: str, repeats: int, budget: float, load: int, input_grad: bool,
          json_path: str | None) -> None:
    """Time rnnkit's engines against torch.nn (forward, and forward + backward)."""
    import json

    from rnnkit import bench as benchmark
    from rnnkit.engines import ENGINES

    cell_list = [c.strip() for c in cells.split(",") if c.strip()]
    unknown = [c for c in cell_list if c not in benchmark.CELLS]
    if unknown or not cell_list:
        raise click.BadParameter(f"unknown cell {unknown}: choose from {', '.join(benchmark.CELLS)}", param_hint="--cells")
    engine_list = [e.strip() for e in engines.split(",") if e.strip()]
    bad = [e for e in engine_list if e not in ENGINES and e != benchmark.COMPILED]
    if bad:
        raise click.BadParameter(f"unknown engine {bad}: choose from {', '.join([*ENGINES, benchmark.COMPILED])}",
                                 param_hint="--engines")
    size_list = _parse_sizes(sizes) or list(benchmark.DEFAULT_SIZES)
    beside = f", beside {load} busy processes" if load else ""
    click.echo(f"torch {__import__('torch').__version__}, {__import__('torch').get_num_threads()} threads{beside}; "
               "ratio = torch.nn ms / rnnkit ms (above 1: rnnkit is faster)")
    click.echo(benchmark.header(engine_list))
    report = benchmark.run(cells=cell_list, sizes=size_list, engines=engine_list, repeats=repeats, budget_s=budget,
                           progress=lambda row: click.echo(benchmark.format_row(row, engine_list)), load=load,
                           input_grad=input_grad)
    click.echo(f"sgemm peak on this machine: {report.sgemm_gflops:.0f} GFLOP/s (float32, 2048^3)")
    if json_path:
        with open(json_path, "w", encoding="utf-8") as f:
            json.dump(benchmark.to_json(report), f, indent=1)
        click.echo(f"wrote {json_path}")


if __name__ == "__main__":  # pragma: no cover
    main()
