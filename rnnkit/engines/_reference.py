"""The reference engine: the cell's step function in a Python loop, autograd for BPTT.

It is the readable twin and the oracle of every other engine: always available, on every
device and dtype and for every option. Under torch.export (and so torch.onnx.export) the same
loop runs as one ``scan`` over time, which the exporters keep as a loop (ONNX Scan) whatever the
number of steps, instead of unrolling the Python loop at the traced length.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from rnnkit.cells import CellSpec, CellWeights, State, input_side
from rnnkit.engines._base import LayerConfig, Noise, Probe, zero_state

Step = Callable[[Tensor, State], State]
"""One step of a loop: (x_t (B, *), state) -> next state."""


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
        if state is None:
            state = zero_state(spec, x, weights)
        if probe is None and torch.compiler.is_exporting():  # a loop the exporters keep
            gi = input_side(x, weights)  # (T, B, G*H): the input side of all steps at once
            return scan_loop(lambda g, s: spec.from_gates(g, s, weights, noise.h_mask), gi, state,
                             lengths=lengths, keep=noise.keep)
        return time_loop(lambda x_t, s: spec.step(x_t, s, weights, noise.h_mask), x, state,
                         lengths=lengths, keep=noise.keep, probe=probe)


def time_loop(
    step: Step,
    xs: Tensor,
    state: State,
    *,
    lengths: Tensor | None,
    keep: Sequence[Tensor] | None,
    probe: Probe | None = None,
) -> tuple[Tensor, State]:
    """Run step over xs (T, B, *) from state; returns out (T, B, R), h at every step (zero past
    each sequence's length), and the state at each sequence's last valid step.

    lengths: (B,) or None; keep: zoneout's masks, one bool (T, B, S) per state part, True keeps
    the unit's previous value; probe: rnnkit.diagnostics' view (see Probe)."""
    steps = xs.shape[0]
    valid = None
    if lengths is not None:
        valid = (torch.arange(steps, device=xs.device).unsqueeze(1) < lengths).unsqueeze(2)  # (T, B, 1)
    outputs = []
    for t in range(steps):
        new = step(xs[t], state)
        if probe is not None:  # + 0, for rnnkit.diagnostics: dL/dh_t lands on probe.delta[t]
            new = (new[0] + probe.delta[t], *new[1:])
        if keep is not None:  # zoneout: some units keep their previous value
            new = tuple(torch.where(k[t], old, n) for k, old, n in zip(keep, state, new))
        if valid is not None:  # past its length a sequence keeps its state and outputs 0
            new = tuple(torch.where(valid[t], n, old) for n, old in zip(new, state))
            outputs.append(torch.where(valid[t], new[0], 0.0))
        else:
            outputs.append(new[0])
        state = new
        if probe is not None:
            probe.states.append(new)
    return torch.stack(outputs), state  # (T, B, R)


def scan_loop(
    step: Step, xs: Tensor, state: State, *, lengths: Tensor | None, keep: Sequence[Tensor] | None
) -> tuple[Tensor, State]:
    """time_loop as one torch scan over time (for export): the same arguments and results, with
    no probe. The loop's body is traced once, so T may vary after export."""
    from torch._higher_order_ops.scan import scan

    steps = xs.shape[0]
    per_step: list[Tensor] = [xs]
    if lengths is not None:
        per_step.append((torch.arange(steps, device=xs.device).unsqueeze(1) < lengths).unsqueeze(2))  # (T, B, 1)
    if keep is not None:
        per_step.extend(keep)  # (T, B, S) each

    def body(carry: list[Tensor], inputs: list[Tensor]) -> tuple[list[Tensor], Tensor]:
        old = tuple(carry)
        new = step(inputs[0], old)
        rest = inputs[1:]
        valid = rest.pop(0) if lengths is not None else None
        if keep is not None:
            new = tuple(torch.where(k, o, n) for k, o, n in zip(rest, old, new))
        if valid is None:
            return list(new), new[0].clone()  # a scan's outputs may not alias its carry
        new = tuple(torch.where(valid, n, o) for n, o in zip(new, old))
        return list(new), torch.where(valid, new[0], 0.0)

    # the carry keeps one layout from step to step: a state given as a broadcast view (a learned
    # initial state expanded over the batch) starts as its own contiguous copy
    final, out = scan(body, [part.contiguous() for part in state], per_step)
    return out, tuple(final)
