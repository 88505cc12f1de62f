"""The PNG figures of a run folder, drawn off-screen (matplotlib's Agg backend) into bytes."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import numpy as np

from rnnkit._extras import needs_extras


def _figure(width: float = 6.4, height: float = 4.8):  # type: ignore[no-untyped-def]
    from matplotlib.figure import Figure  # no pyplot: no global state, no display needed

    return Figure(figsize=(width, height), dpi=100)


CJK_FONTS = ("Noto Sans CJK SC", "Noto Sans SC", "Source Han Sans SC", "WenQuanYi Zen Hei", "WenQuanYi Micro Hei",
             "Microsoft YaHei", "SimHei", "PingFang SC", "Hiragino Sans GB", "Heiti SC", "Noto Sans CJK JP",
             "Arial Unicode MS")
"""Fonts with Chinese characters (labels, tokens and texts of Chinese data), tried after matplotlib's
own font for each character it lacks."""

_said: set[str] = set()


def _png(fig) -> bytes:  # type: ignore[no-untyped-def]
    """The figure as PNG bytes. Characters the default font lacks (Chinese labels) are drawn from
    an installed CJK font; with none installed, one warning says so instead of one per glyph."""
    import logging
    import warnings

    from matplotlib import font_manager
    from matplotlib.text import Text

    installed = {f.name for f in font_manager.fontManager.ttflist}
    fallback = [name for name in CJK_FONTS if name in installed]
    if fallback:
        for text in fig.findobj(Text):  # matplotlib takes each glyph from the first font of the list that has it
            text.set_fontfamily([*text.get_fontfamily(), *fallback])
    buffer = io.BytesIO()
    with warnings.catch_warnings(record=True) as caught:
        warnings.filterwarnings("always", message="Glyph .* missing from font", category=UserWarning)
        fig.savefig(buffer, format="png", bbox_inches="tight")
    for warning in caught:
        if "missing from font" not in str(warning.message):
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
        elif "glyphs" not in _said:
            _said.add("glyphs")
            logging.getLogger("rnnkit").warning(
                "warning: the plots show some characters as boxes: no installed font has them (for Chinese, install "
                "one such as fonts-noto-cjk or fonts-wqy-microhei)")
    return buffer.getvalue()


@needs_extras
def history(rows: Sequence[Mapping[str, float]], metric_name: str, baseline: tuple[str, float] | None = None) -> bytes:
    """Training and validation loss, and the validation metric, per epoch; baseline: (its name, its
    score on the metric), drawn as a dashed line beside it."""
    fig = _figure(8, 3.5)
    loss, metric = fig.subplots(1, 2)
    epochs = [r["epoch"] for r in rows]
    marker = "o" if len(rows) < 15 else None  # one epoch is a point, not an empty line
    loss.plot(epochs, [r["train_loss"] for r in rows], label="train", marker=marker)
    loss.plot(epochs, [r["val_loss"] for r in rows], label="validation", marker=marker)
    loss.set(xlabel="epoch", ylabel="loss", title="loss")
    loss.legend()
    metric.plot(epochs, [r["val_metric"] for r in rows], color="tab:green", marker=marker)
    from matplotlib.ticker import MaxNLocator

    for ax in (loss, metric):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    if baseline is not None:
        metric.axhline(baseline[1], color="gray", linestyle="--", linewidth=1, label=f"baseline: {baseline[0]}")
        metric.legend(fontsize="small")
    metric.set(xlabel="epoch", ylabel=metric_name, title=f"validation {metric_name}")
    return _png(fig)


@needs_extras
def confusion_matrix(counts: np.ndarray, labels: Sequence[str]) -> bytes:
    """counts (C, C): rows the true class, columns the predicted one."""
    longest = max((len(str(label)) for label in labels), default=1)
    side = 1.2 + 0.45 * len(labels)
    fig = _figure(side + 0.07 * longest, side + 0.07 * longest)
    ax = fig.subplots()
    ax.imshow(counts, cmap="Blues")
    ax.set(xticks=range(len(labels)), yticks=range(len(labels)), xlabel="predicted", ylabel="true",
           title="test confusion matrix")
    ax.set_xticklabels(labels, rotation=45 if longest > 2 else 0, ha="right" if longest > 2 else "center")
    ax.set_yticklabels(labels)
    top = counts.max() if counts.size else 0
    for i in range(counts.shape[0]):
        for j in range(counts.shape[1]):
            ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=8,
                    color="white" if counts[i, j] > top / 2 else "black")
    return _png(fig)


@needs_extras
def forecast(times: Sequence[str], actual: np.ndarray, predicted: np.ndarray,
             baselines: Mapping[str, np.ndarray], title: str, target: str = "value") -> bytes:
    """The test split's actual values of target against the model's and the baselines' forecasts."""
    fig = _figure(9, 4)
    ax = fig.subplots()
    steps = np.arange(len(actual))
    ax.plot(steps, actual, color="black", label="actual")
    ax.plot(steps, predicted, color="tab:blue", label="rnnkit")
    colours = ["tab:orange", "tab:green", "tab:purple", "tab:brown"]  # never rnnkit's blue
    for (name, values), colour in zip(baselines.items(), colours):
        ax.plot(steps, values, linestyle="--", linewidth=1, color=colour, label=name)
    ticks = steps[:: max(1, len(steps) // 8)]
    ax.set_xticks(ticks, [times[i] for i in ticks], rotation=30)
    ax.set(title=title, ylabel=target)
    ax.legend()
    return _png(fig)


@needs_extras
def gradient_flow(lines: Mapping[str, Sequence[float]], title: str) -> bytes:
    """One line per name: ||dL/dh_t|| against the distance T-1-t from the loss, log scale."""
    fig = _figure(7, 4.2)
    ax = fig.subplots()
    for name, norms in lines.items():
        values = np.asarray(norms, dtype=float)[::-1]  # distance 0: the last step, where the loss sits
        ax.plot(np.arange(len(values)), np.where(values > 0, values, np.nan), label=name)
    ax.set_yscale("log")
    ax.set(xlabel="steps back from the loss (T-1-t)", ylabel="||dL/dh_t||", title=title)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend()
    return _png(fig)


@needs_extras
def hidden_state(h: np.ndarray, title: str, labels: Sequence[str] | None = None, lines: int = 6) -> bytes:
    """One example's hidden state h (T, R) over its steps, as the tutorials draw it: a heatmap of
    units x steps (the tokens read on the time axis, for text), and the lines of the units that
    move most."""
    steps, units = h.shape
    fig = _figure(max(6.4, min(16.0, 2.5 + 0.18 * steps)), 6.4)
    heat, line = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    bound = float(np.abs(h).max()) or 1.0
    image = heat.imshow(h.T, aspect="auto", cmap="coolwarm", vmin=-bound, vmax=bound, interpolation="nearest")
    fig.colorbar(image, ax=heat, label="h")
    heat.set(ylabel="unit", title=title)
    moving = np.argsort(-h.std(axis=0))[: min(lines, units)]
    for unit in sorted(moving):
        line.plot(np.arange(steps), h[:, unit], label=f"unit {unit}")
    line.set(xlabel="step t" if labels is None else "step t (the token read)", ylabel="h_t")
    line.legend(fontsize="small", ncol=min(3, len(moving)), loc="upper left")
    if labels is not None and len(labels) == steps:
        every = max(1, steps // 60)
        line.set_xticks(np.arange(0, steps, every))
        line.set_xticklabels([_token_label(labels[i]) for i in range(0, steps, every)], rotation=90, fontsize="small")
    return _png(fig)


@needs_extras
def hidden_stats(stats: Mapping[str, Mapping[str, Sequence[float]]], title: str) -> bytes:
    """Per name: the hidden-state norm and the saturated fractions per step; for the minimal cells
    (stats with "kept") a fourth panel, the mean share of the state each step keeps."""
    minimal = any("kept" in s for s in stats.values())
    fig = _figure(15.5 if minimal else 11, 3.6)
    norm, saturated, gates, *more = fig.subplots(1, 4 if minimal else 3)
    styles = ["-", "--", ":", "-."]  # lines that lie on each other (all zero) stay told apart
    for index, (name, s) in enumerate(stats.items()):
        colour, style = f"C{index % 10}", styles[index % len(styles)]
        norm.plot(s["h_norm"], label=name, color=colour)
        if "saturated" in s:  # only cells with a tanh (not a relu RNN, such as the IRNN)
            saturated.plot(s["saturated"], label=name, color=colour, linestyle=style, linewidth=1.5 + 0.5 * index)
        if "gates_saturated" in s:  # only cells with gates
            gates.plot(s["gates_saturated"], label=name, color=colour, linestyle=style, linewidth=1.5 + 0.5 * index)
        if "kept" in s:
            more[0].plot(s["kept"], label=name, color=colour, linestyle=style, linewidth=1.5 + 0.5 * index)
    norm.set(xlabel="step t", ylabel="mean ||h_t||", title="hidden-state norm")
    saturated.set(xlabel="step t", ylabel="fraction", title="|tanh| > 0.99", ylim=(-0.02, 1.02))
    gates.set(xlabel="step t", ylabel="fraction", title="sigmoid gates < 0.01 or > 0.99", ylim=(-0.02, 1.02))
    for ax in more:
        ax.set(xlabel="step t", ylabel="mean a_t", title="state kept a step", ylim=(-0.02, 1.02))
    for ax, what in ((norm, None), (saturated, "no cell with a tanh"), (gates, "no cell with gates"),
                     *((ax, None) for ax in more)):
        if ax.lines:
            ax.legend(fontsize="small")
        else:
            ax.text(0.5, 0.5, what, ha="center", va="center", transform=ax.transAxes, color="gray")
    fig.suptitle(title, y=1.04)
    return _png(fig)


def _token_label(token: str) -> str:
    """A token as an axis shows it: a space as an open box, a newline as its escape."""
    return "\u2423" if token == " " else repr(token)[1:-1] if len(token) == 1 else token


@needs_extras
def attention(weights: np.ndarray, source: Sequence[str], output: Sequence[str], title: str) -> bytes:
    """The attention weights of one translated example, weights (L, S): row t is how decoder step t
    (which wrote output[t]) weighed the source tokens; each row sums to 1."""
    rows, columns = weights.shape
    fig = _figure(1.6 + 0.32 * columns, 1.4 + 0.32 * rows)
    ax = fig.subplots()
    image = ax.imshow(weights, cmap="Greys", vmin=0.0, vmax=1.0, aspect="equal", interpolation="nearest")
    fig.colorbar(image, ax=ax, label="attention weight", shrink=0.8)
    ax.set_xticks(range(columns), [_token_label(t) for t in source])
    ax.set_yticks(range(rows), [_token_label(t) for t in output])
    ax.xaxis.tick_top()
    ax.set(xlabel="source (what the encoder read)", ylabel="output (one row per decoder step)")
    ax.set_title(title, pad=24)
    return _png(fig)


@needs_extras
def images(pictures: Sequence[np.ndarray], captions: Sequence[str], title: str, marked: Sequence[bool] = (),
           columns: int = 5) -> bytes:
    """Small grey images (each (height, width), larger is darker), each under its caption; the
    captions of the images marked True (a wrong answer) in red."""
    rows = -(-len(pictures) // columns)
    fig = _figure(1.6 * columns, 2.0 * rows + 0.4)
    axes = np.atleast_1d(fig.subplots(rows, columns)).ravel()
    for ax in axes:
        ax.set_axis_off()
    for k, (ax, picture, caption) in enumerate(zip(axes, pictures, captions)):
        ax.imshow(picture, cmap="Greys", interpolation="nearest")
        ax.set_title(caption, fontsize=9, color="tab:red" if k < len(marked) and marked[k] else "black")
    fig.suptitle(title)
    return _png(fig)


@needs_extras
def next_characters(text: Sequence[str], guesses: Sequence[str], bits: np.ndarray, title: str) -> bytes:
    """A language model read along a text: text[p] is the character there, guesses[p] the one the
    model found likeliest from the text before p (green where they agree, red where not), and
    bits[p] = -log2 p(text[p]) the surprise, drawn as a bar above each character."""
    n = len(text)
    fig = _figure(max(6.4, 1.4 + 0.19 * n), 3.2)
    ax = fig.subplots()
    ax.bar(np.arange(n), bits, color="tab:blue", width=0.8)
    ax.set(xlim=(-0.6, n - 0.4), ylabel="bits for the real character", title=title)
    ax.set_xticks(range(n), [_token_label(t) for t in text], fontfamily="monospace")
    ax.set_xlabel("the text (top row) and the model's guess for each character (bottom row)")
    ax.tick_params(axis="x", length=0)
    for p, guess in enumerate(guesses):
        ax.annotate(_token_label(guess), (p, 0), xytext=(0, -26), textcoords="offset points", ha="center",
                    va="top", fontfamily="monospace", color="tab:green" if guess == text[p] else "tab:red",
                    annotation_clip=False)
    ax.xaxis.labelpad = 28
    return _png(fig)
