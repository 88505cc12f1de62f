"""The reference engine: the cell's step function in a Python loop, autograd for BPTT.

It is the readable twin and the oracle of every other engine: always available, on every
device and dtype and for every option.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rnnkit.cells import CellSpec, CellWeights, State
from rnnkit.engines._base import LayerConfig, Noise, Probe, zero_state


class ReferenceEngine:
    name = "reference"

    def unsupported(self, config: LayerConfig, x: Tensor) -> str | None:
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
        probe: Probe | None = None,
    ) -> tuple[Tensor, State]:
        steps = x.shape[0]
        if state is None:
            state = zero_state(spec, x, weights)
        valid = None
        if lengths is not None:
            valid = (torch.arange(steps, device=x.device).unsqueeze(1) < lengths).unsqueeze(2)  # (T, B, 1)
        outputs = []
        for t in range(steps):
            new = spec.step(x[t], state, weights, noise.h_mask)
            if probe is not None:  # + 0, for rnnkit.diagnostics: dL/dh_t lands on probe.delta[t]
                new = (new[0] + probe.delta[t], *new[1:])
            if noise.keep is not None:  # zoneout: some units keep their previous value
                new = tuple(torch.where(keep[t], old, n) for keep, old, n in zip(noise.keep, state, new))
            if valid is not None:  # past its length a sequence keeps its state and outputs 0
                new = tuple(torch.where(valid[t], n, old) for n, old in zip(new, state))
                outputs.append(torch.where(valid[t], new[0], 0.0))
            else:
                outputs.append(new[0])
            state = new
            if probe is not None:
                probe.states.append(new)
        out = torch.stack(outputs)  # (T, B, R)
        return out, state
