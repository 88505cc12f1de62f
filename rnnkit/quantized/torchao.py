"""rnnkit's recurrent layers through torchao's ``quantize_`` (optional: ``pip install torchao``,
or ``rnnkit[torchao]``). Importing this module registers them with torchao's int8 configs:

    from torchao.quantization import quantize_, Int8DynamicActivationInt8WeightConfig
    import rnnkit.quantized.torchao as rq

    quantize_(model, Int8DynamicActivationInt8WeightConfig(), filter_fn=rq.filter_fn)

``filter_fn`` selects torch.nn.Linear (which torchao quantizes its own way) and the recurrent
layers rnnkit.quantize takes (rnnkit's and torch.nn's RNN, LSTM, GRU), which become
rnnkit.quantized's int8 modules: torchao's default int8 dynamic scheme (activations per row,
symmetric; weights per output row) is rnnkit's. With ``Int8WeightOnlyConfig()`` (weights per
output row, float activations) a recurrent layer becomes rnnkit.quantized.WeightOnly: int8
weights in memory, dequantized at each call, the float layer's speed. torchao's default filter
selects linear layers only, so a model's recurrent layers stay in float without ``filter_fn``.
Other settings of the configs (per-tensor scales, asymmetric activations, groups of weights)
have no rnnkit form: a recurrent layer given them is refused, naming the setting.
"""

from __future__ import annotations

from typing import Any

from torch import nn
from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig
from torchao.quantization.granularity import PerRow
from torchao.quantization.quant_primitives import MappingType
from torchao.quantization.transform_module import _QUANTIZE_CONFIG_HANDLER

from rnnkit.quantized._modules import WeightOnly
from rnnkit.quantized._quantize import _int8_form

__all__ = ["filter_fn"]


def filter_fn(module: nn.Module, fqn: str) -> bool:
    """torchao's filter for rnnkit's int8: linear layers, and the recurrent layers with an int8 form."""
    return type(module) is nn.Linear or _int8_form(module) is not None


def _check_dynamic(config: Int8DynamicActivationInt8WeightConfig, module: nn.Module) -> None:
    granularity = config.granularity
    rows = all(isinstance(g, PerRow) for g in (granularity if isinstance(granularity, (list, tuple)) else [granularity]))
    if not rows or config.act_mapping_type != MappingType.SYMMETRIC or config.weight_only_decode or config.reduce_range:
        raise ValueError(f"rnnkit.quantized: {type(module).__name__} has an int8 kernel for torchao's default "
                         "Int8DynamicActivationInt8WeightConfig only (per-row granularity, symmetric activations), "
                         f"got granularity={granularity}, act_mapping_type={config.act_mapping_type}, "
                         f"weight_only_decode={config.weight_only_decode}, reduce_range={config.reduce_range}")


def _check_weight_only(config: Int8WeightOnlyConfig, module: nn.Module) -> None:
    if config.group_size is not None or not isinstance(config.granularity, PerRow):
        raise ValueError(f"rnnkit.quantized: {type(module).__name__} has an int8 weight-only form for torchao's "
                         "default Int8WeightOnlyConfig only (a scale per output row), got "
                         f"group_size={config.group_size}, granularity={config.granularity}")


def _register() -> None:
    for config_type in (Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig):
        torchao_handler = _QUANTIZE_CONFIG_HANDLER[config_type]
        if getattr(torchao_handler, "rnnkit", False):
            continue  # registered already

        def handler(module: nn.Module, config: Any, *args: Any, _torchao: Any = torchao_handler,
                    **kwargs: Any) -> nn.Module:
            int8 = _int8_form(module)
            if int8 is None:
                return _torchao(module, config, *args, **kwargs)  # a linear layer: torchao's own
            if isinstance(config, Int8WeightOnlyConfig):
                _check_weight_only(config, module)
                return WeightOnly.from_float(module)
            _check_dynamic(config, module)
            return int8.from_float(module)  # type: ignore[attr-defined, no-any-return]

        handler.rnnkit = True  # type: ignore[attr-defined]
        _QUANTIZE_CONFIG_HANDLER[config_type] = handler


_register()
