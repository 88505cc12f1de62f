"""rnnkit's recurrent layers through torchao's quantize_ (rnnkit.quantized.torchao): the default
int8 dynamic config swaps in rnnkit's int8 layers, with the numbers of rnnkit.quantize; the
default weight-only config rnnkit.quantized.WeightOnly; settings with no rnnkit form are refused,
naming them."""

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
    from torchao.quantization.granularity import PerGroup, PerTensor

    with pytest.raises(ValueError, match="default Int8WeightOnlyConfig only .*granularity=PerGroup"):
        quantization.quantize_(_Tagger().eval(), quantization.Int8WeightOnlyConfig(granularity=PerGroup(32)),
                               filter_fn=_recurrent_only)
    with pytest.raises(ValueError, match="default Int8DynamicActivationInt8WeightConfig only .*granularity="):
        quantization.quantize_(_Tagger().eval(),
                               quantization.Int8DynamicActivationInt8WeightConfig(granularity=PerTensor()),
                               filter_fn=_recurrent_only)


def test_quantize_with_torchao_int8_weight_only_config() -> None:
    """Int8WeightOnlyConfig: each recurrent layer (rnnkit's, torch.nn's, and one with layer_norm,
    which has no int8 kernel) becomes WeightOnly, int8 weights dequantized per call: its output is
    the float layer's with each weight rounded to its row's int8 grid (the same numbers, computed
    here by hand), far from the float model's only by that rounding; its state_dict holds int8."""
    import rnnkit.quantized.torchao  # noqa: F401  (registers)

    torch.manual_seed(0)
    model = _Tagger().eval()
    model.rnn = rnnkit.GRU(6, 16, 2, bidirectional=True, layer_norm=True).eval()
    x = torch.randn(9, 4, 6)
    rounded = _Tagger().eval()
    rounded.rnn = rnnkit.GRU(6, 16, 2, bidirectional=True, layer_norm=True).eval()
    rounded.load_state_dict(model.state_dict())
    with torch.no_grad():
        float_out = model(x)
        for name, p in rounded.named_parameters():
            if "weight_" in name and p.dim() == 2 and "head" not in name:
                scale = p.abs().amax(1, keepdim=True).clamp_min(1e-12) / 127  # (rnnkit.quantized._ops.quantize_rows)
                p.copy_((p / scale).round().clamp(-127, 127) * scale)
        want = rounded(x)
    quantization.quantize_(model, quantization.Int8WeightOnlyConfig(), filter_fn=_recurrent_only)
    assert isinstance(model.rnn, rnnkit.quantized.WeightOnly) and isinstance(model.torch_rnn, rnnkit.quantized.WeightOnly)
    with torch.no_grad():
        got = model(x)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert 0 < (got - float_out).abs().max() < 0.02
    state = model.state_dict()
    assert state["rnn.weight_hh_l0"].dtype == torch.int8 and "rnn.layer.weight_hh_l0" not in state
    again = _Tagger().eval()
    quantization.quantize_(again, quantization.Int8WeightOnlyConfig(), filter_fn=_recurrent_only)
    with pytest.raises(RuntimeError, match="not int8: this is a state_dict of a float model"):
        again.load_state_dict(rounded.state_dict(), strict=False)
