"""The light install: `import rnnkit`, the layers on every engine, the Trainer and run folders work
without any of the extras' packages; what needs one says in one line which pip install brings it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from rnnkit._extras import EXTRAS

BLOCK = ("import sys\n"
         "for m in {modules!r}:\n"
         "    sys.modules[m] = None  # as if not installed: importing it raises ModuleNotFoundError\n")
ALL = [m for _, modules in EXTRAS.values() for m in modules]


def _python(code: str, blocked: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", BLOCK.format(modules=blocked) + code], capture_output=True,
                          text=True, timeout=600, cwd=cwd)


def test_the_layers_trainer_and_run_folders_need_no_extra(tmp_path: Path) -> None:
    code = """
import torch, rnnkit
from torch.utils.data import TensorDataset
import torch.nn.functional as F
from rnnkit.runs import finish_run, read_run, start_run
from rnnkit.training import Trainer, TrainConfig
for engine in ("fused", "reference", "native"):
    layer = rnnkit.LSTM(3, 4, num_layers=2, engine=engine)
    out, _ = layer(torch.randn(5, 2, 3, requires_grad=True), lengths=[5, 3])
    out.sum().backward()
class Model(torch.nn.Module):
    def __init__(self):
        super().__init__(); self.rnn, self.head = rnnkit.GRU(3, 4, batch_first=True), torch.nn.Linear(4, 2)
    def forward(self, x): return self.head(self.rnn(x)[0][:, -1])
x, y = torch.randn(32, 5, 3), torch.randint(0, 2, (32,))
start_run("run", config={"task": "mine"})
trainer = Trainer(Model(), forward=lambda m, b: (m(b[0]), b[1]), loss_fn=F.cross_entropy, metric_fn=lambda o, t: 0.0,
                  config=TrainConfig(epochs=2, batch_size=8), checkpoint="run.partial/checkpoint.pt", progress=True)
trainer.fit(TensorDataset(x, y), TensorDataset(x, y))
finish_run("run", config={"task": "mine"}, weights=trainer.model.state_dict(), extras={}, metrics={}, history=[])
print(sorted(read_run("run").weights) == sorted(trainer.model.state_dict()))
print(sorted(m for m in sys.modules if m.split(".")[0] in {ALL!r} and sys.modules[m] is not None))
""".replace("{ALL!r}", repr(ALL))
    done = _python(code, ALL, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["True", "[]"]


def test_the_command_without_click_is_one_line(tmp_path: Path) -> None:
    done = _python("from rnnkit.__main__ import main\nsys.argv = ['rnnkit', 'demo']\nmain()\n", ["click"], tmp_path)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr == ("Error: 'click' is not installed: rnnkit's light install leaves out the rnnkit command; "
                           "pip install \"rnnkit[cli]\" (or \"rnnkit[all]\" for everything)\n")


def test_a_command_without_its_data_packages_is_one_line(tmp_path: Path) -> None:
    code = "from rnnkit.cli import main\nmain(['train', 'forecast', '--epochs', '1', '--out', 'run'])\n"
    done = _python(code, ["statsmodels"], tmp_path)
    assert done.returncode == 1, done.stderr
    assert done.stderr == ("Error: 'statsmodels' is not installed: rnnkit's light install leaves out the bundled data "
                           "sets and the readers of your files; pip install \"rnnkit[cli]\" (or \"rnnkit[all]\" for "
                           "everything)\n")
    assert not (tmp_path / "run").exists() and not (tmp_path / "run.partial").exists()


def test_the_python_api_names_the_extra(tmp_path: Path) -> None:
    code = """
import rnnkit.data, rnnkit.plots
for call in (lambda: rnnkit.data.load_series("sunspots"), lambda: rnnkit.plots.history([], "accuracy")):
    try:
        call()
    except ImportError as error:
        print(type(error).__name__, error.name, str(error).split(";")[1])
"""
    done = _python(code, ["statsmodels", "matplotlib"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "ImportError statsmodels  pip install \"rnnkit[cli]\" (or \"rnnkit[all]\" for everything)",
        "ImportError matplotlib  pip install \"rnnkit[cli]\" (or \"rnnkit[all]\" for everything)"]
