"""Seq2seq and caption: the decoder agrees with itself (teacher forcing vs greedy, beam 1 vs
greedy, padding), the generators are right, runs end to end, bad input."""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import replace

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from rnnkit.cli import main
from rnnkit.data import pad_batch
from rnnkit.data._pairs import DATE_STYLES, MONTHS, _format, addition, dates, read_pairs
from rnnkit.models._seq2seq import BOS, EOS, Seq2Seq, Seq2SeqConfig
from rnnkit.pipelines import seq2seq
from rnnkit.training import TrainConfig

CONFIGS = [
    dict(cell="gru", attention="bahdanau", bidirectional=True, num_layers=1),
    dict(cell="lstm", attention="luong", bidirectional=False, num_layers=2),
    dict(cell="rnn", attention="none", bidirectional=True, num_layers=2),
    dict(cell="gru", attention="luong", input_feeding=False, bidirectional=True, num_layers=1),
]


def model(**kwargs) -> Seq2Seq:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    return Seq2Seq(Seq2SeqConfig(target_vocab=9, source_vocab=11, embed_dim=5, hidden_size=6, **kwargs)).eval()


@pytest.mark.parametrize("kwargs", CONFIGS)
def test_teacher_forcing_on_the_greedy_output_reproduces_it(kwargs) -> None:  # type: ignore[no-untyped-def]
    m = model(**kwargs)
    source, lengths = pad_batch([[2, 3, 4, 5], [6, 7], [8, 9, 10]])
    outputs = m.greedy(source, lengths, max_length=6)
    for row, out in enumerate(outputs):
        target_in = torch.tensor([[BOS, *out]])
        logits = m(source[row : row + 1, : int(lengths[row])], lengths[row : row + 1], target_in)
        best = logits.argmax(-1)[0].tolist()
        assert best[: len(out)] == out
        if len(out) < 6:
            assert best[len(out)] == EOS


def stepwise(m: Seq2Seq, source: torch.Tensor, lengths: torch.Tensor, target_in: torch.Tensor) -> torch.Tensor:
    """Teacher forcing one Seq2Seq.step at a time, as greedy and beam search decode."""
    state, feed, memory, keys, mask = m.start(source, lengths)
    logits = []
    for t in range(target_in.shape[1]):
        out, state, feed = m.step(target_in[:, t], state, feed, memory, keys, mask)
        logits.append(out)
    return torch.stack(logits, dim=1)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("attention", ["none", "bahdanau", "luong", "luong without input feeding"])
@pytest.mark.parametrize("num_layers", [1, 2])
def test_teacher_forced_forward_equals_the_step_loop(cell: str, attention: str, num_layers: int) -> None:
    """forward under teacher forcing takes the embedding, the head and (without attention, or
    Luong's without input feeding) the whole recurrence and attention out of the Python step
    loop: same logits and gradients as stepping."""
    torch.manual_seed(0)
    m = Seq2Seq(Seq2SeqConfig(target_vocab=9, source_vocab=11, embed_dim=5, hidden_size=6, cell=cell,
                              attention=attention.split()[0], input_feeding="without" not in attention,
                              num_layers=num_layers)).double().train()
    source, lengths = pad_batch([[2, 3, 4, 5], [6, 7], [8, 9, 10]])
    target_in = torch.tensor([[BOS, 4, 5, 6, 0], [BOS, 7, 0, 0, 0], [BOS, 8, 8, 4, 5]])
    results = []
    for run in (m, lambda *a: stepwise(m, *a)):
        m.zero_grad()
        logits = run(source, lengths, target_in)
        (logits * torch.linspace(-1, 1, logits.numel(), dtype=logits.dtype).view_as(logits)).sum().backward()
        results.append((logits.detach(), {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}))
    (fast, fast_grads), (slow, slow_grads) = results
    torch.testing.assert_close(fast, slow, rtol=1e-12, atol=1e-12)
    assert fast_grads.keys() == slow_grads.keys()
    for name in slow_grads:
        torch.testing.assert_close(fast_grads[name], slow_grads[name], rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize("kwargs", CONFIGS)
def test_padding_and_beam_of_one(kwargs) -> None:  # type: ignore[no-untyped-def]
    m = model(**kwargs)
    sources = [[2, 3, 4, 5, 6, 7], [8], [9, 10, 2]]
    source, lengths = pad_batch(sources)
    source[1, 1:] = 10  # garbage in the padding
    target_in = torch.tensor([[BOS, 4, 5, 6]] * 3)
    batched = m(source, lengths, target_in)
    for row, s in enumerate(sources):
        alone = m(torch.tensor([s]), torch.tensor([len(s)]), target_in[:1])
        torch.testing.assert_close(batched[row], alone[0], rtol=1e-5, atol=1e-6)
        assert m.beam(torch.tensor([s]), torch.tensor([len(s)]), 6, 1) == m.greedy(torch.tensor([s]), None, 6)[0]


def test_beam_finds_a_likelier_output_than_greedy() -> None:
    """Over random models and sources, beam search never ends with a lower log-probability than
    greedy decoding when the beam keeps greedy's path among its hypotheses (width >= vocabulary)."""
    @torch.no_grad()
    def logprob(m: Seq2Seq, s: list[int], out: list[int]) -> float:
        logits = m(torch.tensor([s]), None, torch.tensor([[BOS, *out]]))
        return float(torch.log_softmax(logits, -1)[0].gather(-1, torch.tensor([*out, EOS])[:, None]).sum())

    compared = 0
    for seed in range(30):
        torch.manual_seed(seed)
        m = Seq2Seq(Seq2SeqConfig(target_vocab=6, source_vocab=11, embed_dim=5, hidden_size=6)).eval()
        rng = random.Random(seed)
        s = [rng.randint(2, 10) for _ in range(5)]
        greedy, beam = m.greedy(torch.tensor([s]), None, 8)[0], m.beam(torch.tensor([s]), None, 8, 6)
        if len(greedy) < 8 and len(beam) < 8:  # both ended with <eos>
            assert logprob(m, s, beam) >= logprob(m, s, greedy) - 1e-5
            compared += 1
    assert compared >= 8


def test_generators() -> None:
    pairs = addition(2000, seed=1)
    assert len({s for s, _ in pairs}) == 2000
    assert all(int(t) == sum(map(int, s.split("+"))) for s, t in pairs)
    lengths = {len(part) for s, _ in pairs for part in s.split("+")}
    assert lengths == {1, 2, 3}
    assert addition(50, seed=1) == addition(50, seed=1) != addition(50, seed=2)
    formats = ["%d %B %Y", "%d %B %Y", "%B %d, %Y", "%b %d %Y", "%d %b %Y", "%A, %B %d, %Y", "%m/%d/%Y",
               "%d.%m.%Y", "%Y/%m/%d", "%d %b %Y", "%B %d %Y"]
    for day in (dt.date(1900, 1, 1), dt.date(2021, 3, 7), dt.date(2099, 12, 31)):
        for style in range(DATE_STYLES):
            text = _format(day, style)
            assert dt.datetime.strptime(text.title(), formats[style]).date() == day, text
    pairs = dates(3000, seed=0)
    assert all(dt.date.fromisoformat(t) for _, t in pairs)
    assert len({s for s, _ in pairs}) == 3000
    assert any(MONTHS[2] in s for s, _ in pairs) and any("/" in s for s, _ in pairs)


def test_read_pairs_errors(tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "p.tsv").write_text("a\tb\nno tab here\n")
    with pytest.raises(ValueError, match="line 2: no tab between source and target: 'no tab here'"):
        read_pairs(tmp_path / "p.tsv")
    (tmp_path / "q.tsv").write_text("a\tb\n\tc\n")
    with pytest.raises(ValueError, match="line 2: empty source"):
        read_pairs(tmp_path / "q.tsv")


def test_seq2seq_run_on_user_pairs(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Reversing short words: learnable, and far from both baselines."""
    rng = random.Random(0)
    words = {"".join(rng.choice("abcdef") for _ in range(rng.randint(2, 4))) for _ in range(600)}
    (tmp_path / "rev.tsv").write_text("".join(f"{w}\t{w[::-1]}\n" for w in sorted(words)), encoding="utf-8")
    runner = CliRunner()
    out = tmp_path / "run"
    result = runner.invoke(main, ["train", "seq2seq", "--data", str(tmp_path / "rev.tsv"), "--hidden", "32", "--attention", "bahdanau",
                                  "--epochs", "25", "--lr", "0.01", "--out", str(out)])
    assert result.exit_code == 0, result.output
    import json

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["exact_match"] > 0.8 > metrics["baseline"]["exact_match"] + 0.3
    assert (out / "plots" / "attention.png").read_bytes().startswith(b"\x89PNG")
    result = runner.invoke(main, ["translate", str(out), "abc", "fed", "--beam", "3"])
    assert result.exit_code == 0 and result.output.split() == ["cba", "def"]
    result = runner.invoke(main, ["translate", str(out), "abz"])
    assert result.exit_code == 0 and "not in the vocabulary, read as <unk>: z" in result.output
    result = runner.invoke(main, ["translate", str(out), "abc", "--beam", "0"])
    assert result.exit_code == 1 and "--beam must be >= 1, got 0" in result.output


def test_caption_digits(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from sklearn.datasets import load_digits

    cfg = seq2seq.Seq2SeqTaskConfig(task="caption", dataset="digits", hidden_size=64,
                                    train=TrainConfig(epochs=4, lr=1e-2, seed=0))
    metrics = seq2seq.train(cfg, tmp_path / "run")
    assert metrics["baseline"]["exact_match"] == pytest.approx(0.1, abs=0.02)
    assert metrics["test"]["exact_match"] > 0.7
    assert (tmp_path / "run" / "plots" / "examples.png").read_bytes().startswith(b"\x89PNG")
    digits = load_digits()
    np.savetxt(tmp_path / "x.csv", digits.data[:20], delimiter=",", fmt="%d")
    result = CliRunner().invoke(main, ["caption", str(tmp_path / "run"), "--input", str(tmp_path / "x.csv")])
    assert result.exit_code == 0, result.output
    names = result.output.split()
    assert len(names) == 20
    assert np.mean([n == seq2seq.DIGIT_NAMES[d] for n, d in zip(names, digits.target[:20])]) > 0.7


@pytest.mark.parametrize("content, message", [
    ("12+3\t15\n1+1 2\n", "line 2: no tab between source and target: '1+1 2'"),
    ("", "has 0 pair(s): too few to split"),
])
def test_cli_bad_pairs_one_line_nothing_written(tmp_path, content: str, message: str) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "p.tsv").write_text(content, encoding="utf-8")
    result = CliRunner().invoke(main, ["train", "seq2seq", "--data", str(tmp_path / "p.tsv"), "--out",
                                       str(tmp_path / "run")])
    assert result.exit_code == 1 and message in result.output and result.output.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.tsv"]


def test_a_very_long_pair_is_left_out_with_a_warning(tmp_path, caplog) -> None:  # type: ignore[no-untyped-def]
    """One 100,000-character source among short pairs would make every batch it falls in that long:
    it is left out of training and testing, with a warning that names it and --max-tokens."""
    rng = random.Random(0)
    words = sorted({"".join(rng.choice("abcdef") for _ in range(rng.randint(2, 4))) for _ in range(200)})
    lines = [f"{w}\t{w[::-1]}\n" for w in words]
    lines.insert(7, "ab" * 50_000 + "\tx\n")
    (tmp_path / "p.tsv").write_text("".join(lines), encoding="utf-8")
    cfg = seq2seq.Seq2SeqTaskConfig(data=str(tmp_path / "p.tsv"), hidden_size=8, train=TrainConfig(epochs=1, seed=0))
    with caplog.at_level("WARNING", logger="rnnkit"):
        sources, targets, _ = seq2seq.load_split(cfg)
    assert len(sources) == len(words) and max(map(len, sources)) <= 4
    assert (f"1 of {len(words) + 1} pairs of p.tsv have more than --max-tokens 400 tokens in the source or the target "
            "and are left out (the longest, pair 8, has 100000)") in caplog.text
    sources, _, _ = seq2seq.load_split(replace(cfg, max_tokens=None))
    assert len(sources) == len(words) + 1
    with pytest.raises(ValueError, match="only 0 pair"):
        seq2seq.load_split(replace(cfg, max_tokens=1))


def test_a_run_saved_before_input_feeding_was_a_setting_resumes_as_it_ran(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Luong attention fed its output into the next step before input_feeding existed (its
    default is now off): a saved config without the setting resumes with it on."""
    import json
    from dataclasses import asdict

    from rnnkit.pipelines._runs import pipeline_config

    old = asdict(seq2seq.Seq2SeqTaskConfig(attention="luong"))
    del old["input_feeding"]
    (tmp_path / "config.json").write_text(json.dumps({"task": "seq2seq", "pipeline": old}))
    assert pipeline_config(tmp_path, "seq2seq", seq2seq.Seq2SeqTaskConfig).input_feeding is True
    new = asdict(seq2seq.Seq2SeqTaskConfig(attention="luong"))
    (tmp_path / "config.json").write_text(json.dumps({"task": "seq2seq", "pipeline": new}))
    assert pipeline_config(tmp_path, "seq2seq", seq2seq.Seq2SeqTaskConfig).input_feeding is False


@pytest.mark.parametrize("kwargs", [c for c in CONFIGS if c["attention"] != "none"])
def test_attention_map_holds_the_weights_of_each_greedy_step(kwargs) -> None:  # type: ignore[no-untyped-def]
    """One row per decoder step of the greedy output, each a distribution over the source that
    the step's context was made with: recomputed here from the step's query."""
    net = model(**kwargs)
    source = torch.tensor([[3, 5, 7, 2, 9]])
    output, weights = net.attention_map(source, torch.tensor([5]), 6)
    assert output == net.greedy(source, torch.tensor([5]), 6)[0]
    assert weights.shape[1] == 5 and len(output) <= weights.shape[0] <= len(output) + 1
    assert torch.allclose(weights.sum(-1), torch.ones(weights.shape[0]))
    state, feed, memory, keys, mask = net.start(source, torch.tensor([5]))
    token, first = torch.tensor([BOS]), None
    if net.config.attention == "bahdanau":  # the first step attends from the initial state
        first = net._weights_for(state[-1][0] if isinstance(state[-1], tuple) else state[-1], keys)
    else:
        _, new_state, _ = net.step(token, state, feed, memory, keys, mask)
        top = new_state[-1][0] if isinstance(new_state[-1], tuple) else new_state[-1]
        first = net._weights_for(top, keys)
    assert torch.allclose(weights[0], first[0])
    with pytest.raises(ValueError, match="one example"):
        net.attention_map(torch.tensor([[3, 5], [4, 6]]), None, 6)
    with pytest.raises(ValueError, match="no attention"):
        model(**CONFIGS[2]).attention_map(source, None, 6)
