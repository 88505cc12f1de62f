"""The memory tasks' length curriculum: its stages (auto, given, refused), the Trainer drawing each
epoch from its stage's sequences, the steps it reports, and runs that save, resume and print it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file
from torch.utils.data import TensorDataset

from rnnkit.cli import main
from rnnkit.data._memory import copy_memory
from rnnkit.pipelines import memory
from rnnkit.pipelines._runs import pipeline_config
from rnnkit.training import Trainer, TrainConfig


def stages(task: str, steps: int, curriculum: str = "auto", epochs: int = 20) -> list[tuple[int, int]]:
    return memory.curriculum_stages(memory.MemoryConfig(task=task, steps=steps, curriculum=curriculum,
                                                        train=TrainConfig(epochs=epochs)))


def test_the_stages_auto_given_and_off() -> None:
    assert stages("selective-copy", 1000) == [(100, 12), (300, 4), (1000, 4)]  # from T = 1000: a stage at 300
    assert stages("copy", 2000, epochs=5) == [(100, 3), (300, 1), (2000, 1)]
    assert stages("copy", 1000, epochs=4) == [(100, 3), (1000, 1)]  # too few epochs for three stages
    assert stages("copy", 999) == [(100, 14), (999, 6)]
    assert stages("copy", 500, epochs=10) == [(100, 7), (500, 3)]
    assert stages("copy", 201, epochs=2) == [(100, 1), (201, 1)]
    assert stages("copy", 200) == [(200, 20)]  # short enough to train at T throughout
    assert stages("copy", 1000, epochs=1) == [(1000, 1)]  # no epoch to spare
    assert stages("adding", 1000) == [(1000, 20)]  # the adding problem trains at T: it is solved so
    assert stages("copy", 1000, "off") == [(1000, 20)]
    assert stages("adding", 1000, " 100:3, 500:2") == [(100, 3), (500, 2), (1000, 15)]
    assert memory.resolved_curriculum(memory.MemoryConfig(task="copy", steps=1000)) == "100:6,300:2"  # 10 epochs
    assert memory.resolved_curriculum(memory.MemoryConfig(task="copy", steps=500)) == "100:7"
    assert memory.resolved_curriculum(memory.MemoryConfig(task="copy", steps=100)) == "off"


@pytest.mark.parametrize("args, epochs", [
    (["copy", "--steps", "500"], 30), (["selective-copy", "--steps", "1000"], 25),  # the auto curriculum's
    (["copy", "--steps", "200"], 20), (["copy", "--steps", "500", "--curriculum", "off"], 20),
    (["selective-copy", "--steps", "500", "--curriculum", "100:5"], 20),
    (["selective-copy", "--steps", "1000", "--epochs", "7"], 7), (["adding", "--steps", "1000"], 30)])
def test_the_commands_train_more_epochs_with_the_auto_curriculum(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                                 args: list[str], epochs: int) -> None:
    """Where --curriculum auto trains stages before T, an epoch holds about as many time steps at
    every T, and the commands' default epochs fill their time budget (memory.CURRICULUM_EPOCHS)."""
    seen: list[memory.MemoryConfig] = []

    class Stop(Exception):
        pass

    def train(cfg: memory.MemoryConfig, folder: object, **options: object) -> None:
        seen.append(cfg)
        raise Stop

    monkeypatch.setattr(memory, "train", train)
    result = CliRunner().invoke(main, ["train", *args, "--out", str(tmp_path / "run")])
    assert isinstance(result.exception, Stop)
    assert seen[0].train.epochs == epochs


@pytest.mark.parametrize("task", ["copy", "selective-copy"])
def test_the_help_says_the_pipelines_numbers(task: str) -> None:
    """The command line does not import the pipeline to write its help: its numbers are the
    constants' own, written out."""
    said = " ".join(CliRunner().invoke(main, ["train", task, "--help"]).output.split())
    assert (f"[default: {memory.COMMAND_EPOCHS}; with --curriculum auto above T = {memory.CURRICULUM_FROM}: "
            f"{memory.CURRICULUM_EPOCHS[task]}]") in said
    first, middle = (round(100 * share) for share in memory.CURRICULUM_MIDDLE_SHARES)
    assert (f"above T = {memory.CURRICULUM_FROM} train {round(100 * memory.CURRICULUM_SHARE)}% of their epochs at "
            f"T = {memory.CURRICULUM_START} first (from T = {memory.CURRICULUM_MIDDLE_FROM} on: {first}% at "
            f"T = {memory.CURRICULUM_START}, then {middle}% at T = {memory.CURRICULUM_MIDDLE})") in said


@pytest.mark.parametrize("curriculum, words", [
    ("100", "stages T:EPOCHS separated by commas"), ("100:0", "each number at least 1"),
    ("x:3", "stages T:EPOCHS"), ("500:2,100:2", "must increase"), ("1000:2", "stay below the run's T = 1000"),
    ("100:20", "takes 20 epochs of the 20: leave at least one for T = 1000")])
def test_a_wrong_curriculum_is_refused_by_name(curriculum: str, words: str) -> None:
    with pytest.raises(ValueError, match=words.replace("(", r"\(")) as error:
        stages("copy", 1000, curriculum)
    assert repr(curriculum) in str(error.value)


def test_the_trainer_draws_each_epoch_from_its_stage() -> None:
    """Epochs 1-2 at T = 5 (40 sequences), epoch 3 at T = 12 (40 * 5 / 12 -> 17 sequences), the
    last stage from the run's own seed; the steps counted over epochs of different sizes."""
    data = memory.LengthCurriculum(copy_memory, [(5, 2), (12, 1)], train_size=40, seed=7)
    seen: list[tuple[int, ...]] = []

    def forward(model: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        seen.append(tuple(batch[0].shape)) if model.training else None
        return model(batch[0]), batch[1]

    model = memory.MemoryModel(memory.MemoryModelConfig(task="copy", cell="gru", hidden_size=4))
    trainer = Trainer(model, forward=forward, loss_fn=memory.copy_loss,
                      metric_fn=lambda o, t: float(memory.copy_loss(o, t)), higher_is_better=False,
                      config=TrainConfig(epochs=4, batch_size=10, patience=None), diagnose_every=5)
    trainer.fit(data, TensorDataset(*copy_memory(20, 12, seed=1)))
    assert [shape[1] for shape in seen] == [25] * 8 + [32] * 2 + [32] * 2  # the 4th epoch stays at the last T
    assert sorted(shape[0] for shape in seen[8:10]) == [7, 10]
    assert trainer.steps(data, 4) == len(seen) == 12
    assert [d["step"] for d in trainer.diagnoses] == [5, 10]  # counted over the whole run
    data.set_epoch(3)
    assert torch.equal(data[3][0], copy_memory(17, 12, seed=7)[0][3])  # made at the stage's start
    data.set_epoch(1)
    assert len(data) == 40 and torch.equal(data[0][0], copy_memory(40, 5, seed=7 + 1_000_003)[0][0])


def test_a_run_saves_its_stages_prints_them_and_resumes_through_them(tmp_path: Path) -> None:
    runner = CliRunner()
    args = ["train", "copy", "--steps", "300", "--cell", "gru", "--hidden", "4", "--train-size", "60",
            "--batch-size", "20", "--schedule", "constant"]
    result = runner.invoke(main, [*args, "--epochs", "3", "--out", str(tmp_path / "whole")])
    assert result.exit_code == 0, result.output
    # auto: 70% of 3 epochs at T = 100 (3 batches each), then T = 300 (20 sequences: 1 batch)
    assert "; 7 steps (T = 100 for 2 epochs, then T = 300), " in result.output
    config = json.loads((tmp_path / "whole" / "config.json").read_text())
    metrics = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    assert config["pipeline"]["curriculum"] == "100:2"  # resolved: more epochs later still train at T = 300
    assert config["model"]["chrono_max"] == 120  # the gates set for the first stage's sequences, T + 20
    assert metrics["curriculum"] == [[100, 2], [300, 1]] and metrics["training_steps"] == 7

    result = runner.invoke(main, [*args, "--epochs", "2", "--out", str(tmp_path / "part")])
    assert result.exit_code == 0, result.output
    assert "; 4 steps (T = 100 for 1 epoch, then T = 300), " in result.output  # auto, for 2 epochs
    result = runner.invoke(main, [*args, "--epochs", "3", "--curriculum", "100:2", "--out", str(tmp_path / "given")])
    assert result.exit_code == 0 and "; 7 steps (T = 100 for 2 epochs, then T = 300), " in result.output
    a, b = load_file(tmp_path / "whole" / "model.safetensors"), load_file(tmp_path / "given" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)  # auto is the stages it resolves to

    more = tmp_path / "more"  # a finished run given one more epoch: it trains at T = 300
    result = runner.invoke(main, [*args, "--epochs", "2", "--curriculum", "100:2", "--out", str(more)])
    assert result.exit_code != 0 and "takes 2 epochs of the 2" in result.output and not more.exists()
    result = runner.invoke(main, [*args, "--epochs", "3", "--curriculum", "100:2", "--out", str(more)])
    assert result.exit_code == 0
    result = runner.invoke(main, ["train", "copy", "--resume", str(more), "--epochs", "4"])
    assert result.exit_code == 0, result.output
    assert "; 8 steps (T = 100 for 2 epochs, then T = 300), " in result.output  # the 4th epoch: T = 300


def test_a_run_saved_before_the_curriculum_resumes_without_one(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["train", "copy", "--steps", "300", "--hidden", "4", "--train-size", "20",
                                       "--epochs", "1", "--out", str(tmp_path / "old")])
    assert result.exit_code == 0, result.output
    path = tmp_path / "old" / "config.json"
    saved = json.loads(path.read_text())
    del saved["pipeline"]["curriculum"]
    path.write_text(json.dumps(saved))
    assert pipeline_config(tmp_path / "old", "copy", memory.MemoryConfig).curriculum == "off"

