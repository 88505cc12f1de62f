"""The character language model: the seed's "hello world" example exactly, truncated BPTT that
carries the state, the bits-per-character metric and its baseline, sampling, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from rnnkit.cli import main
from rnnkit.models import LanguageModel, LanguageModelConfig, generate, sample_next
from rnnkit.pipelines import lm
from rnnkit.training import TrainConfig


@pytest.fixture(scope="module")
def hello(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    folder = tmp_path_factory.mktemp("hello")
    (folder / "hello.txt").write_text("hello world", encoding="utf-8")
    result = CliRunner().invoke(main, ["train", "lm", "--text", str(folder / "hello.txt"), "--context", "2",
                                       "--out", str(folder / "run")])
    assert result.exit_code == 0, result.output
    return folder / "run"


def test_hello_world_as_in_the_seed(hello) -> None:  # type: ignore[no-untyped-def]
    result = CliRunner().invoke(main, ["generate", str(hello), "--prompt", "he", "--length", "5", "--greedy"])
    assert result.exit_code == 0, result.output
    assert result.output == "hello w\n"


@pytest.mark.parametrize("args, message", [
    (["--prompt", "hZ", "--length", "5"], "the prompt has characters the model never saw in training: 'Z'"),
    (["--prompt", "he", "--length", "0"], "--length must be >= 1, got 0"),
    (["--prompt", "he", "--temperature", "0"], "--temperature must be > 0, got 0.0"),
    (["--prompt", "he", "--top-k", "0"], "--top-k must be >= 1, got 0"),
])
def test_generate_errors(hello, args: list[str], message: str) -> None:  # type: ignore[no-untyped-def]
    result = CliRunner().invoke(main, ["generate", str(hello), *args])
    assert result.exit_code == 1 and message in result.output and result.output.count("\n") == 1


@pytest.mark.parametrize("text", ["", "a", "aaaa"])
def test_a_text_too_small_to_learn_from(tmp_path, text: str) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    result = CliRunner().invoke(main, ["train", "lm", "--text", str(tmp_path / "t.txt"), "--out", str(tmp_path / "run")])
    assert result.exit_code == 1 and "a language model needs a text of at least 2 different characters" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.txt"]


def test_streams_and_carried_state_equal_one_long_pass() -> None:
    """Chunks of streams, read in order with the state carried, give the logits of reading each
    stream whole."""
    torch.manual_seed(0)
    ids = torch.randint(2, 12, (203,))
    streams = lm.Streams(ids, 0, 203, rows=4, steps=10)
    assert streams.rows == 4 and streams.width == 50 and streams.chunks == 4 and len(streams) == 16
    x, y, c = streams[4 * 2 + 3]  # chunk 2 of stream 3
    assert c == 2 and torch.equal(x, ids[150 + 20 : 150 + 30]) and torch.equal(y, ids[151 + 20 : 151 + 30])
    model = LanguageModel(LanguageModelConfig(vocab_size=12, hidden_size=8, embed_dim=4, num_layers=2)).eval()
    carry = lm.CarriedState()
    pieces = []
    for chunk in range(streams.chunks):
        items = [streams[chunk * 4 + b] for b in range(4)]
        batch = [torch.stack([i[0] for i in items]), torch.stack([i[1] for i in items]), torch.tensor([chunk] * 4)]
        logits, _ = carry(model, batch)
        pieces.append(logits.view(4, 10, 12))
    whole, _ = model(torch.stack([ids[b * 50 : b * 50 + 40] for b in range(4)]))
    torch.testing.assert_close(torch.cat(pieces, dim=1), whole, rtol=1e-5, atol=1e-6)


def test_windows() -> None:
    ids = torch.arange(20)
    w = lm.Windows(ids, 3, 10, 15)  # windows whose last target is in [10, 15)
    assert len(w) == 5
    x, y = w[0]
    assert x.tolist() == [7, 8, 9] and y.tolist() == [8, 9, 10]
    assert w[4][1].tolist() == [12, 13, 14]


def test_bits_per_char_and_unigram_baseline() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.25], [0.5, 0.25, 0.25]]))
    assert lm.bits_per_char(logits, torch.tensor([0, 1])) == pytest.approx(1.5)  # (1 + 2) / 2
    train = np.array([2, 2, 2, 3])  # counts + 1 over 4 ids: [1, 1, 4, 2] / 8
    assert lm.unigram_bpc(train, np.array([2, 3]), 4) == pytest.approx(-(math.log2(4 / 8) + math.log2(2 / 8)) / 2)


def test_sampling() -> None:
    logits = torch.tensor([[0.0, 3.0, 2.9, -1.0, 1.0]])
    g = torch.Generator().manual_seed(0)
    assert int(sample_next(logits, greedy=True, temperature=1.0, top_k=None, generator=None)) == 1
    assert int(sample_next(logits, greedy=True, temperature=1.0, top_k=None, generator=None, exclude=[1])) == 2
    draws = {int(sample_next(logits, greedy=False, temperature=1.0, top_k=2, generator=g)) for _ in range(300)}
    assert draws == {1, 2}  # only the two best
    flat = [int(sample_next(logits, greedy=False, temperature=100.0, top_k=None, generator=g)) for _ in range(500)]
    assert set(flat) == {0, 1, 2, 3, 4}  # a high temperature makes every token likely
    model = LanguageModel(LanguageModelConfig(vocab_size=9, hidden_size=8, embed_dim=4, num_layers=1))
    a = generate(model, [2, 3], 20, generator=torch.Generator().manual_seed(1), exclude=(0, 1))
    b = generate(model, [2, 3], 20, generator=torch.Generator().manual_seed(1), exclude=(0, 1))
    assert a == b and not {0, 1} & set(a)
    assert generate(model, [2, 3], 8, greedy=True) == generate(model, [2, 3], 8, top_k=1)


def test_bptt_run_on_a_text(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A repetitive text long enough to hold out a tail: the model beats the unigram baseline."""
    text = "".join(f"the {w} sat on the mat. " for w in ("cat", "dog", "rat", "bat") * 40)
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    cfg = lm.LMConfig(text=str(tmp_path / "t.txt"), bptt=20, hidden_size=32, num_layers=1,
                      train=TrainConfig(epochs=25, batch_size=8, lr=1e-2, patience=None, seed=0))
    metrics = lm.train(cfg, tmp_path / "run")
    assert metrics["test_on"] == "the held-out tail"
    assert metrics["test"]["characters"] > 100
    assert metrics["test"]["bpc"] < 0.5 * metrics["baseline"]["bpc"]
    out = lm.generate(tmp_path / "run", "the ", 40, greedy=True)
    assert out.startswith("the ") and " sat on the mat" in out
    assert (tmp_path / "run" / "plots" / "next_characters.png").read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize("context", [None, 3])
def test_next_character_guesses_read_the_text_before_each_position(context: int | None) -> None:
    torch.manual_seed(0)
    model = LanguageModel(LanguageModelConfig(vocab_size=9, hidden_size=8, embed_dim=4, num_layers=2)).eval()
    ids = torch.randint(2, 9, (40,))
    guesses, bits = lm.next_character_guesses(model, ids, 12, 6, context, warm_up=12)
    for k, p in enumerate(range(12, 18)):
        before = ids[p - context:p] if context else ids[:p]
        log_p = torch.log_softmax(model(before[None])[0][0, -1].detach(), -1)
        assert guesses[k] == int(log_p[2:].argmax()) + 2
        assert bits[k] == pytest.approx(float(-log_p[ids[p]] / math.log(2)), rel=1e-5)


def test_prose_start_skips_to_the_first_line_of_words() -> None:
    text = "   |   |   \n1 2 3 4\nThe return statement leaves the call.\nmore"
    assert lm.prose_start(text, 20, 100) == 100 + text.index("The")
    assert lm.prose_start("x" * 5, 20, 0) == 1  # none: the first character with one before it
