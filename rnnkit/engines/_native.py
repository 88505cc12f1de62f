"""The native engine: torch's own recurrent kernels (oneDNN on CPU, cuDNN on CUDA), one call per
layer and direction. It runs what torch.nn runs: no layer normalisation, recurrent dropout or
zoneout."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from rnnkit.cells import CellSpec, CellWeights, State
from rnnkit.engines._base import LayerConfig, Noise, zero_state

KERNELS: dict[str, Callable[..., Any]] = {"RNN_TANH": torch.rnn_tanh, "RNN_RELU": torch.rnn_relu, "LSTM": torch.lstm, "GRU": torch.gru}


class NativeEngine:
    name = "native"

    def unsupported(self, config: LayerConfig, x: Tensor) -> str | None:
        for option, on in (("layer_norm=True", config.layer_norm),
                           (f"recurrent_dropout={config.recurrent_dropout}", config.recurrent_dropout > 0),
                           (f"zoneout={config.zoneout}", config.zoneout > 0)):
            if on:
                return f"torch's kernels have no {option}"
        if x.dtype == torch.float16 and x.device.type == "cpu" and config.spec.mode == "LSTM":
            return "oneDNN, torch's LSTM kernel on CPU, runs no float16"
        return None

    def run(
        self,
        spec: CellSpec,
        x: Tensor,
        state: State | None,
        weights: CellWeights,
        *,
        lengths: Tensor | None,
        noise: Noise,
    ) -> tuple[Tensor, State]:
        assert noise.h_mask is None and noise.keep is None, "the native engine takes no noise"
        # torch's flat weight order: w_ih, w_hh, b_ih, b_hh, w_hr
        params = [w for w in (weights.weight_ih, weights.weight_hh, weights.bias_ih, weights.bias_hh,
                              weights.weight_hr) if w is not None]
        has_bias = weights.bias_ih is not None
        # (training mode: cuDNN keeps what its backward needs; a trace holds one value, the one backward needs)
        train = torch.is_grad_enabled() or torch.jit.is_tracing()
        kernel = KERNELS[spec.mode]
        if state is None:
            state = zero_state(spec, x, weights)
        hx = [s.unsqueeze(0) for s in state]  # (1, B, S): one layer, one direction
        with warnings.catch_warnings():
            if x.is_cuda:  # cuDNN copies per-layer weights into one chunk, and says so each call
                warnings.filterwarnings("ignore", message=".*not part of single contiguous chunk")
            if (weights.weight_hr is not None and x.dtype in (torch.bfloat16, torch.float16) and not x.is_cuda
                    and not torch.compiler.is_compiling()):  # (dynamo cannot trace a filter)
                # torch's LSTM takes its portable kernel for proj_size in a lower precision, and says so each call
                warnings.filterwarnings("ignore", message="LSTM with projections is not supported with oneDNN")
            if lengths is None:
                # (input, hx, params, has_biases, num_layers, dropout, train, bidirectional, batch_first)
                result = kernel(x, hx if spec.mode == "LSTM" else hx[0], params, has_bias, 1, 0.0, train, False, False)
                out = result[0]  # (T, B, R)
                final = tuple(r[0] for r in result[1:])
            else:
                packed = pack_padded_sequence(x, lengths.cpu(), enforce_sorted=False)
                order, undo = packed.sorted_indices, packed.unsorted_indices
                assert order is not None and undo is not None
                hx_sorted = [h.index_select(1, order) for h in hx]
                # (data, batch_sizes, hx, params, has_biases, num_layers, dropout, train, bidirectional)
                result = kernel(packed.data, packed.batch_sizes, hx_sorted if spec.mode == "LSTM" else hx_sorted[0],
                                params, has_bias, 1, 0.0, train, False)
                out, _ = pad_packed_sequence(
                    PackedSequence(result[0], packed.batch_sizes, order, undo), total_length=x.shape[0]
                )
                final = tuple(r[0].index_select(0, undo) for r in result[1:])
        return out, final
