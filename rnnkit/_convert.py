"""Move modules between torch.nn and rnnkit with their weights: from_torch and to_torch."""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from rnnkit.cells import GRUCell, LSTMCell, RNNCell
from rnnkit.cells._module import RecurrentCell
from rnnkit.layers import GRU, LSTM, RNN, RecurrentLayer

_LAYERS: dict[type[nn.Module], type[RecurrentLayer]] = {nn.RNN: RNN, nn.LSTM: LSTM, nn.GRU: GRU}
_CELLS: dict[type[nn.Module], type[RecurrentCell]] = {
    nn.RNNCell: RNNCell,
    nn.LSTMCell: LSTMCell,
    nn.GRUCell: GRUCell,
}
_OWN_PARAMETERS = ("ln_", "initial_")  # rnnkit's parameters that torch.nn's modules lack


def _factory(module: nn.Module) -> dict[str, Any]:
    p = next(module.parameters())
    return {"device": p.device, "dtype": p.dtype}


def from_torch(module: nn.Module, **options: Any) -> RecurrentLayer | RecurrentCell:
    """The rnnkit twin of a torch.nn RNN, LSTM, GRU, RNNCell, LSTMCell or GRUCell.

    The result has the same configuration, device, dtype and weights, and computes the same
    numbers. ``options`` are rnnkit's own constructor options (engine='reference',
    recurrent_dropout=0.25, ...); parameters that torch.nn lacks (layer_norm's gains, a learned
    initial state) keep their initial values.
    """
    kind = type(module)
    if kind not in _LAYERS and kind not in _CELLS:
        raise TypeError(
            "from_torch: expected a torch.nn RNN, LSTM, GRU, RNNCell, LSTMCell or GRUCell, "
            f"got {kind.__name__}"
        )
    args: dict[str, Any] = {"input_size": module.input_size, "hidden_size": module.hidden_size}
    target: type[RecurrentLayer] | type[RecurrentCell]
    if kind in _LAYERS:
        target = _LAYERS[kind]
        args.update(
            num_layers=module.num_layers,
            bias=module.bias,
            batch_first=module.batch_first,
            dropout=float(getattr(module, "dropout")),
            bidirectional=module.bidirectional,
        )
        if kind is nn.LSTM:
            args["proj_size"] = module.proj_size
    else:
        target = _CELLS[kind]
        args["bias"] = module.bias
    if kind in (nn.RNN, nn.RNNCell):
        args["nonlinearity"] = module.nonlinearity
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.nn already warned about dropout with one layer
        twin = target(**args, **options, **_factory(module))
    missing, unexpected = twin.load_state_dict(module.state_dict(), strict=False)
    bad = [k for k in missing if not k.startswith(_OWN_PARAMETERS)] + list(unexpected)
    if bad:  # pragma: no cover - the key sets are the same by construction
        raise RuntimeError(f"from_torch: parameters do not match: {bad}")
    return twin


def to_torch(module: RecurrentLayer | RecurrentCell) -> nn.Module:
    """The torch.nn module that computes what module computes, with the same weights.

    Raises ValueError for options torch.nn has no equivalent of (layer_norm,
    learn_initial_state). recurrent_dropout and zoneout are training-time regularisers, the
    identity at eval: the torch.nn module then computes the same in eval mode but trains
    without them, which a UserWarning says.
    """
    owner = type(module).__name__
    blockers = [name for name in ("layer_norm", "learn_initial_state") if getattr(module, name, False)]
    if blockers:
        raise ValueError(
            f"{owner}.to_torch: torch.nn.{owner} has no equivalent of "
            + ", ".join(f"{name}=True" for name in blockers)
        )
    factory = _factory(module)
    args: dict[str, Any] = {"input_size": module.input_size, "hidden_size": module.hidden_size, "bias": module.bias}
    if isinstance(module, (RNN, RNNCell)):
        args["nonlinearity"] = module.nonlinearity
    if isinstance(module, RecurrentLayer):
        dropped = [f"{n}={getattr(module, n)}" for n in ("recurrent_dropout", "zoneout") if getattr(module, n) > 0]
        if dropped:
            warnings.warn(
                f"{owner}.to_torch: torch.nn.{owner} has no {', '.join(dropped)}; it computes the "
                "same in eval mode but trains without them",
                UserWarning,
                stacklevel=2,
            )
        args.update(
            num_layers=module.num_layers,
            batch_first=module.batch_first,
            dropout=module.dropout,
            bidirectional=module.bidirectional,
        )
        if isinstance(module, LSTM):
            args["proj_size"] = module.proj_size
        torch_type: type[nn.Module] = {RNN: nn.RNN, LSTM: nn.LSTM, GRU: nn.GRU}[type(module)]
    else:
        torch_type = {RNNCell: nn.RNNCell, LSTMCell: nn.LSTMCell, GRUCell: nn.GRUCell}[type(module)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rnnkit already warned about dropout with one layer
        twin = torch_type(**args, **factory)
    with torch.no_grad():
        twin.load_state_dict(module.state_dict(), strict=True)
    return twin
