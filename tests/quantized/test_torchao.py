"""rnnkit's recurrent layers through torchao's quantize_ (rnnkit.quantized.torchao): the default
int8 dynamic config swaps in rnnkit's int8 layers, with the numbers of rnnkit.quantize; settings
with no rnnkit kernel are refused, naming them."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import rnnkit
from rnnkit.engines import _library

pytestmark = pytest.mark.skipif(isinstance(_library.load(), str), reason="rnnkit's operator library is not built")
quantization = pytest.importorskip("torchao.quantization")


class _Tagger(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = rnnkit.GRU(6, 16, 2, bidirectional=True)
        self.torch_rnn = nn.LSTM(32, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.torch_rnn(self.rnn(x)[0])[0])


def _recurrent_only(module: nn.Module, fqn: str) -> bool:
    from rnnkit.quantized.torchao import filter_fn

    return filter_fn(module, fqn) and not isinstance(module, nn.Linear)


def test_quantize_with_torchao_int8_dynamic_config() -> None:
    import rnnkit.quantized.torchao as rq

    torch.manual_seed(0)
    model = _Tagger().eval()
    x = torch.randn(9, 4, 6)
    want = rnnkit.quantize(model, linear=False)
    quantization.quantize_(model, quantization.Int8DynamicActivationInt8WeightConfig(), filter_fn=_recurrent_only)
    assert isinstance(model.rnn, rnnkit.quantized.GRU) and isinstance(model.torch_rnn, rnnkit.quantized.LSTM)
    assert type(model.head) is nn.Linear  # not selected here
    with torch.no_grad():
        assert torch.equal(model(x), want(x))
    assert rq.filter_fn(nn.Linear(2, 2), "head") and not rq.filter_fn(rnnkit.MinGRU(2, 2), "rnn")


def test_settings_with_no_rnnkit_kernel_are_refused() -> None:
    import rnnkit.quantized.torchao  # noqa: F401  (registers)
    from torchao.quantization.granularity import PerTensor

    with pytest.raises(ValueError, match="no int8 weight-only kernel"):
        quantization.quantize_(_Tagger().eval(), quantization.Int8WeightOnlyConfig(), filter_fn=_recurrent_only)
    with pytest.raises(ValueError, match="default Int8DynamicActivationInt8WeightConfig only .*granularity="):
        quantization.quantize_(_Tagger().eval(),
                               quantization.Int8DynamicActivationInt8WeightConfig(granularity=PerTensor()),
                               filter_fn=_recurrent_only)
