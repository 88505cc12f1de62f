"""Gradient flow through time, Jacobian norms, hidden-state statistics and a verdict.

How it looks inside any model built from rnnkit layers: while ``probing(model)`` is active, each
rnnkit layer runs the reference loop (the same numbers as every engine) and adds to each h_t a
zero tensor that requires grad. Then dL/d(that zero) is dL/dh_t, the total derivative: through
the step's output and through every later step (BPTT), which is what vanishes or explodes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnkit.cells._base import gate_preactivations
from rnnkit.cells._min import coefficients
from rnnkit.engines import reverse_padded
from rnnkit.layers._base import LayerProbe, RecurrentLayer
from rnnkit.layers._min import MinRecurrentLayer

Layer = RecurrentLayer | MinRecurrentLayer
"""The layers diagnostics look into: rnnkit.RNN, LSTM, GRU and the minimal MinGRU, MinLSTM."""

VANISHING = 1e-3  # verdict: earliest-step / latest-step gradient norm below this: vanishing
EXPLODING = 1e3  # above this: exploding
SATURATED = 0.99  # |tanh| above this, or a sigmoid gate below 1 - this or above this


@contextmanager
def probing(model: nn.Module) -> Iterator[dict[str, tuple[Layer, list[LayerProbe]]]]:
    """Within the block, every rnnkit layer in model records a LayerProbe per layer and direction
    of each forward call, under its module name (e.g. "rnn"; the class name for model itself)."""
    layers = {name: m for name, m in model.named_modules() if isinstance(m, Layer)}
    if not layers:
        raise ValueError(f"{type(model).__name__} has no rnnkit recurrent layer (rnnkit.RNN, LSTM, GRU, MinGRU or "
                         "MinLSTM) to look into")
    seen: dict[str, tuple[Layer, list[LayerProbe]]] = {}
    for name, layer in layers.items():
        layer._probes = []
        seen[name or type(layer).__name__] = (layer, layer._probes)
    try:
        yield seen
    finally:
        for layer in layers.values():
            layer._probes = None


def _key(name: str, p: LayerProbe) -> str:
    return f"{name}.l{p.layer}{'_reverse' if p.direction else ''}"  # torch.nn's parameter suffixes


def _in_time_order(values: Tensor, p: LayerProbe) -> Tensor:
    """(T, B, ...) in the direction's processing order -> in the sequence's own time order."""
    return reverse_padded(values, p.lengths) if p.direction else values


@dataclass
class GradientFlow:
    """norms[key]: (T,) the norm of dL/dh_t over the batch and units (Frobenius of a (B, R) matrix)
    at each step t, in time order, for each layer and direction (key "rnn.l0", "rnn.l0_reverse").
    loss: the loss's value."""

    norms: dict[str, np.ndarray]
    loss: float

    def to_json(self) -> dict[str, Any]:
        return {"loss": self.loss, "norms": {k: [float(x) for x in v] for k, v in self.norms.items()}}


def gradient_flow(model: nn.Module, batch: Any, loss_fn: Callable[[nn.Module, Any], Tensor]) -> GradientFlow:
    """The norm of dL/dh_t at every step of every rnnkit layer (and direction) of model.

    loss_fn(model, batch) -> a scalar loss: it runs the model on the batch. The parameters'
    .grad are left untouched. Any engine the layers are set to: the measurement runs the
    reference loop, which computes the same function.
    """
    with probing(model) as seen:
        loss = loss_fn(model, batch)
    probes = [(name, p) for name, (_, ps) in seen.items() for p in ps]
    if not probes:
        raise ValueError("loss_fn did not run any rnnkit layer of the model")
    grads = torch.autograd.grad(loss, [p.probe.delta for _, p in probes], allow_unused=True)
    norms = {}
    for (name, p), g in zip(probes, grads):
        g = torch.zeros_like(p.probe.delta) if g is None else g  # (T, B, R)
        norms[_key(name, p)] = _in_time_order(g, p).flatten(1).norm(dim=1).detach().cpu().double().numpy()
    return GradientFlow(norms, float(loss.detach()))


@dataclass
class Verdict:
    """healthy, vanishing, exploding or nan; ratio = norm at the earliest step / norm at the
    latest step (forward directions, the smallest ratio of them for vanishing and the largest for
    exploding); the thresholds it was held against."""

    verdict: str
    ratio: float
    earliest: float
    latest: float
    key: str
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "ratio": self.ratio, "earliest": self.earliest, "latest": self.latest,
                "layer": self.key, "reason": self.reason, "thresholds": {"vanishing": VANISHING, "exploding": EXPLODING}}


def verdict(flow: GradientFlow, *, vanishing: float = VANISHING, exploding: float = EXPLODING) -> Verdict:
    """Classify a gradient flow, for a loss that sits at the end of the sequences (the usual N -> 1
    case): per forward direction, ratio = ||dL/dh_0|| / ||dL/dh_{T-1}||.
    nan: a norm is NaN or infinite; vanishing: the smallest ratio < `vanishing` (1e-3: the
    earliest step gets a thousandth of the gradient of the latest); exploding: the largest ratio >
    `exploding` (1e3); healthy otherwise."""
    forward = {k: v for k, v in flow.norms.items() if not k.endswith("_reverse")}
    for key, norms in forward.items():
        if not np.all(np.isfinite(norms)):
            step = int(np.flatnonzero(~np.isfinite(norms))[0])
            return Verdict("nan", math.nan, math.nan, math.nan, key, f"{key}: the gradient is {norms[step]} at step {step}")
    ratios = {k: (float(v[0]) / float(v[-1]) if v[-1] > 0 else math.inf, float(v[0]), float(v[-1]))
              for k, v in forward.items()}
    low = min(ratios, key=lambda k: ratios[k][0])
    high = max(ratios, key=lambda k: ratios[k][0])
    if ratios[low][0] < vanishing:
        r, e, l = ratios[low]
        return Verdict("vanishing", r, e, l, low, f"{low}: the gradient at the first step is {r:.1e} of the last's "
                       f"(below {vanishing:g}): early inputs barely train the model")
    if ratios[high][0] > exploding:
        r, e, l = ratios[high]
        return Verdict("exploding", r, e, l, high, f"{high}: the gradient at the first step is {r:.1e} times the last's "
                       f"(above {exploding:g}): clip gradients or shrink W_hh")
    r, e, l = ratios[low]
    span = (f"{ratios[low][0]:.2g}" if f"{ratios[low][0]:.2g}" == f"{ratios[high][0]:.2g}"
            else f"between {ratios[low][0]:.2g} and {ratios[high][0]:.2g}")
    return Verdict("healthy", r, e, l, low, f"earliest/latest gradient norm {span}, within [{vanishing:g}, "
                   f"{exploding:g}]")


def jacobian_norms(layer: Layer, x: Tensor, hx: Any = None) -> np.ndarray:
    """norms[k] = ||dh_T / dh_k||_2, the spectral norm (largest singular value) of the Jacobian of
    the last hidden state with respect to the hidden state at step k, averaged over the batch, for
    k = 0 .. T-1 (k = T-1: the identity, norm 1). Exact: one backward pass per unit of h_T, so
    for small sizes. layer: one layer, one direction; x (T, B, I), or (B, T, I) with batch_first."""
    if layer.num_layers != 1 or layer.bidirectional:
        raise ValueError("jacobian_norms: give a layer with num_layers=1 and bidirectional=False, got "
                         f"num_layers={layer.num_layers}, bidirectional={layer.bidirectional}")
    with probing(layer) as seen:
        out, _ = layer(x, hx)
    (p,) = next(iter(seen.values()))[1]
    h_last = (out[:, -1] if layer.batch_first else out[-1])  # (B, R)
    units = h_last.shape[-1]
    rows = []
    for i in range(units):  # row i of every dh_T/dh_k at once; examples do not mix
        (g,) = torch.autograd.grad(h_last[:, i].sum(), [p.probe.delta], retain_graph=i < units - 1)
        rows.append(g)  # (T, B, R): d h_T[b, i] / d h_k[b, :]
    jac = torch.stack(rows, dim=2)  # (T, B, R_out, R_in)
    return torch.linalg.matrix_norm(jac.double(), ord=2).mean(dim=1).detach().cpu().numpy()


def spectral_radii(layer: Layer) -> dict[str, list[float]]:
    """The spectral radius (largest |eigenvalue|) of each gate's (H, H) block of each W_hh, in
    torch.nn's gate order (a vanilla RNN has one block): above 1, the linearised recurrence
    grows; well below 1, it forgets. Blocks that are not square (proj_size) are left out; the
    minimal cells have no W_hh (an empty dict)."""
    out: dict[str, list[float]] = {}
    if not isinstance(layer, RecurrentLayer):  # no W_hh
        return out
    for name, w in layer.named_parameters():
        if not name.startswith("weight_hh"):
            continue
        blocks = w.detach().double().chunk(layer.spec.gates, dim=0)  # each (H, R)
        out[name] = [float(torch.linalg.eigvals(b).abs().max()) for b in blocks if b.shape[0] == b.shape[1]]
    return out


@dataclass
class HiddenStats:
    """Per layer and direction, per step t (time order), averaged over the batch:
    h_norm: ||h_t||; saturated: the fraction of tanh units with |tanh| > 0.99 (RNN: h itself;
    LSTM: tanh(c_t); GRU: the candidate n_t; a relu RNN has no entry); gates_saturated: the fraction of
    sigmoid gate units below 0.01 or above 0.99 (LSTM i, f, o; GRU r, z; minGRU z; minLSTM f, i;
    RNN: none); c_norm: ||c_t|| (LSTM); kept (the minimal cells): the mean of a_t in
    h_t = a_t * h_{t-1} + b_t, the share of the state each step keeps (minGRU 1 - z,
    minLSTM f / (f + i))."""

    stats: dict[str, dict[str, list[float]]]

    def to_json(self) -> dict[str, Any]:
        return self.stats


def _probed(model: nn.Module, batch: Any, run: Callable[[nn.Module, Any], Any] | None,
            ) -> dict[str, tuple[Layer, list[LayerProbe]]]:
    """Run model on batch (run(model, batch); by default model(batch), or model(*batch) for a
    tuple or list) and return what probing saw."""
    if run is None:
        run = lambda m, b: m(*b) if isinstance(b, (tuple, list)) else m(b)  # noqa: E731
    with probing(model) as seen:
        run(model, batch)
    return seen


@torch.no_grad()
def hidden_stats(model: nn.Module, batch: Any, run: Callable[[nn.Module, Any], Any] | None = None) -> HiddenStats:
    """Run model on batch and describe every rnnkit layer's states, per step. run(model, batch)
    calls the model; by default model(batch), or model(*batch) for a tuple or list."""
    stats: dict[str, dict[str, list[float]]] = {}
    for name, (layer, probes) in _probed(model, batch, run).items():
        for p in probes:
            stats[_key(name, p)] = _describe(layer, p)
    return HiddenStats(stats)


@torch.no_grad()
def hidden_trace(model: nn.Module, batch: Any, run: Callable[[nn.Module, Any], Any] | None = None,
                 example: int = 0) -> dict[str, np.ndarray]:
    """The hidden state of one example of batch at every step, as the tutorials draw it: per
    layer and direction (keys as hidden_stats), h_t for t in time order, (T_b, R), up to the
    example's own length. run as in hidden_stats. A layer called more than once: its first call."""
    trace: dict[str, np.ndarray] = {}
    for name, (_, probes) in _probed(model, batch, run).items():
        for p in probes:
            h = _in_time_order(torch.stack([s[0] for s in p.probe.states]).detach(), p)  # (T, B, R)
            steps = int(p.lengths[example]) if p.lengths is not None else h.shape[0]
            trace.setdefault(_key(name, p), h[:steps, example].double().numpy())
    return trace


def _frac(mask: Tensor) -> Tensor:
    return mask.double().flatten(1).mean(dim=1)  # (T,)


def _describe(layer: Layer, p: LayerProbe) -> dict[str, list[float]]:
    states = p.probe.states
    h = torch.stack([s[0] for s in states]).detach()  # (T, B, R) in processing order
    if isinstance(layer, MinRecurrentLayer):
        return _in_order(_describe_min(layer, p, h), p)
    w = layer.cell_weights(p.layer, p.direction)
    mode = layer.spec.mode
    zero = [torch.zeros_like(s) for s in states[0]]
    previous = torch.stack([zero[0]] + [s[0] for s in states[:-1]]).detach()  # h_{t-1}, (T, B, R)
    gi, gh = gate_preactivations(p.inputs.detach(), previous, w)  # (T, B, G*H) each
    out: dict[str, Tensor] = {"h_norm": h.norm(dim=-1).mean(dim=1)}
    if mode == "LSTM":
        c = torch.stack([s[1] for s in states]).detach()
        i, f, g, o = (gi + gh).chunk(4, -1)
        gates = torch.sigmoid(torch.cat([i, f, o], dim=-1))
        out["saturated"] = _frac(torch.tanh(c).abs() > SATURATED)
        out["gates_saturated"] = _frac((gates < 1 - SATURATED) | (gates > SATURATED))
        out["c_norm"] = c.norm(dim=-1).mean(dim=1)
    elif mode == "GRU":
        ri, zi, ni = gi.chunk(3, -1)
        rh, zh, nh = gh.chunk(3, -1)
        r, z = torch.sigmoid(ri + rh), torch.sigmoid(zi + zh)
        n = torch.tanh(ni + r * nh)
        gates = torch.cat([r, z], dim=-1)
        out["saturated"] = _frac(n.abs() > SATURATED)
        out["gates_saturated"] = _frac((gates < 1 - SATURATED) | (gates > SATURATED))
    else:
        if mode == "RNN_TANH":  # a relu RNN has no tanh to saturate: no such entry
            out["saturated"] = _frac(h.abs() > SATURATED)
    return _in_order(out, p)


def _describe_min(layer: MinRecurrentLayer, p: LayerProbe, h: Tensor) -> dict[str, Tensor]:
    weight, bias = layer._names[p.layer * layer.num_directions + p.direction]
    pre = F.linear(p.inputs.detach(), getattr(layer, weight), None if bias is None else getattr(layer, bias)).detach()
    gates = torch.sigmoid(pre[..., :-layer.hidden_size])  # every block but the candidate's: z; or f, i
    log_a, _ = coefficients(pre, layer.kind, layer.candidate)
    return {"h_norm": h.norm(dim=-1).mean(dim=1),
            "gates_saturated": _frac((gates < 1 - SATURATED) | (gates > SATURATED)),
            "kept": log_a.exp().flatten(1).mean(dim=1)}


def _in_order(out: dict[str, Tensor], p: LayerProbe) -> dict[str, list[float]]:
    """Back to time order (a reverse direction's steps flipped as a whole, padding included)."""
    return {k: [float(x) for x in (v.flip(0) if p.direction else v)] for k, v in out.items()}
