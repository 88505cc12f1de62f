"""The minimal GRU and LSTM of Feng et al. (2024, "Were RNNs All We Needed?"): gates that read
the input alone, so that the recurrence is linear in the state and a scan computes every step
at once.

From the GRU to the minGRU. The GRU's update gate and candidate read h_{t-1}::

    z_t = sigmoid(W_iz x_t + W_hz h_{t-1} + b_z)
    n_t = tanh(W_in x_t + r_t * (W_hn h_{t-1} + b_hn))
    h_t = (1 - z_t) * n_t + z_t * h_{t-1}

Drop h_{t-1} from the gate and the candidate (and with it the reset gate, which only gated
h_{t-1} into the candidate), and drop the tanh, which bounded a candidate that no longer feeds
back into itself::

    z_t  = sigmoid(W_z x_t + b_z)                      # update gate, from x_t alone
    h~_t = W_h x_t + b_h                               # candidate, from x_t alone
    h_t  = (1 - z_t) * h_{t-1} + z_t * h~_t

(the paper writes z for the share of the candidate, the opposite of torch.nn's GRU). With
a_t = 1 - z_t and b_t = z_t * h~_t, both known for all t before the loop,

    h_t = a_t * h_{t-1} + b_t
        = (a_t ... a_1) h_0 + sum_{s <= t} (a_t ... a_{s+1}) b_s

a first-order linear recurrence: its products and sums are cumulative products and sums over
time (a parallel scan), so training needs no step-by-step backpropagation through time. The
minLSTM does the same with the LSTM's forget and input gates, normalised so that they sum to 1
(its cell state then needs no output gate nor tanh, and is h itself)::

    f_t, i_t = sigmoid(W_f x_t + b_f), sigmoid(W_i x_t + b_i)
    h_t = f_t / (f_t + i_t) * h_{t-1} + i_t / (f_t + i_t) * h~_t

What is lost: the gates no longer see the state, so one layer cannot decide from what it holds
whether to keep it; stacked layers and the input's own history make up part of that.

The scan in log space. (a_t ... a_{s+1}) underflows for long sequences; the paper computes it as
exp(sum of log a) and the sum over s with logcumsumexp, which needs b_t > 0: it makes the
candidate positive with g(x) = x + 0.5 for x >= 0, sigmoid(x) for x < 0 (``candidate="g"``,
this module's default, with a state that stays positive from a positive h_0). ``scan_log``
below also takes values of any sign (``candidate="linear"``, the paper's plain form, or a
negative h_0), with one logcumsumexp for the positive parts and one for the negative.

Parameters, one layer and direction: ``weight_ih`` (G*H, I) and ``bias_ih`` (G*H,), the rows of
the gates in the order written (minGRU: z, h~, G = 2; minLSTM: f, i, h~, G = 3); there is no
weight_hh. Shapes: T steps, B batch, I input features, H hidden units.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

MIN_KINDS = {"mingru": 2, "minlstm": 3}
"""The minimal cells and their gate counts G."""
CANDIDATES = ("g", "linear")


def g(x: Tensor) -> Tensor:
    """The paper's positive activation of the candidate: x + 0.5 for x >= 0, sigmoid(x) below
    (continuous at 0, with slope 1 above and sigmoid's below; always > 0)."""
    return torch.where(x >= 0, x + 0.5, torch.sigmoid(x))


def candidate_of(pre: Tensor, candidate: str) -> Tensor:
    """h~ from its pre-activation W_h x + b_h."""
    return g(pre) if candidate == "g" else pre


def coefficients(pre: Tensor, kind: str, candidate: str) -> tuple[Tensor, Tensor]:
    """log a_t and b_t of h_t = a_t * h_{t-1} + b_t from the gates' pre-activations pre
    (*, G*H) = W_ih x + b_ih; each (*, H). log a_t rather than a_t: the scan sums them."""
    if kind == "mingru":
        k, h_pre = pre.chunk(2, -1)
        log_a = -F.softplus(k)  # log(1 - sigmoid(k))
        return log_a, torch.sigmoid(k) * candidate_of(h_pre, candidate)
    k_f, k_i, h_pre = pre.chunk(3, -1)
    diff = F.softplus(-k_f) - F.softplus(-k_i)  # log(i/f), from log sigmoid
    log_a = -F.softplus(diff)  # log(f / (f + i))
    return log_a, torch.exp(-F.softplus(-diff)) * candidate_of(h_pre, candidate)  # i / (f + i) * h~


def min_step(pre: Tensor, h: Tensor, kind: str, candidate: str) -> Tensor:
    """One step of a minimal cell from its pre-activations pre (B, G*H) = W_ih x_t + b_ih and
    h_{t-1} (B, H): h_t (B, H), written as the paper writes it."""
    if kind == "mingru":
        k, h_pre = pre.chunk(2, -1)
        z = torch.sigmoid(k)
        return (1 - z) * h + z * candidate_of(h_pre, candidate)
    k_f, k_i, h_pre = pre.chunk(3, -1)
    f, i = torch.sigmoid(k_f), torch.sigmoid(k_i)
    return f / (f + i) * h + i / (f + i) * candidate_of(h_pre, candidate)


def mingru_step(x: Tensor, h: Tensor, weight_ih: Tensor, bias_ih: Tensor | None = None, candidate: str = "g") -> Tensor:
    """One minGRU step: x (B, I), h (B, H) -> h' (B, H).

    z  = sigmoid(W_z x + b_z)          # weight_ih rows 0..H-1
    h~ = g(W_h x + b_h)                # rows H..2H-1 (candidate="linear": no g)
    h' = (1 - z) * h + z * h~
    """
    return min_step(F.linear(x, weight_ih, bias_ih), h, "mingru", candidate)


def minlstm_step(x: Tensor, h: Tensor, weight_ih: Tensor, bias_ih: Tensor | None = None,
                 candidate: str = "g") -> Tensor:
    """One minLSTM step: x (B, I), h (B, H) -> h' (B, H).

    f, i = sigmoid(W_f x + b_f), sigmoid(W_i x + b_i)    # rows 0..H-1, H..2H-1
    h~   = g(W_h x + b_h)                                # rows 2H..3H-1
    h'   = f / (f + i) * h + i / (f + i) * h~
    """
    return min_step(F.linear(x, weight_ih, bias_ih), h, "minlstm", candidate)


TINY = {torch.float16: 2.0**-24, torch.bfloat16: 1e-38, torch.float32: 1e-38, torch.float64: 1e-300}
"""Below the smallest normal number of each dtype: the log of a value never meets exactly 0."""


def _signed_logs(v: Tensor) -> tuple[Tensor, Tensor]:
    """log of v's positive part and of its negative part's magnitude, a large negative number
    where the part is 0 (finite, so that logcumsumexp's gradient stays finite)."""
    tiny = TINY.get(v.dtype, 1e-38)
    floor = math.log(tiny) * 2
    magnitude = v.abs().clamp_min(tiny).log()
    empty = torch.full_like(magnitude, floor)
    return torch.where(v > 0, magnitude, empty), torch.where(v < 0, magnitude, empty)


def scan_log(log_a: Tensor, b: Tensor, h0: Tensor | None) -> Tensor:
    """h_t = a_t * h_{t-1} + b_t for all t at once, in log space: log_a, b (T, B, H); h0 (B, H)
    or None (zeros) -> h (T, B, H).

    With A_t = log a_1 + ... + log a_t (A_0 = 0), h_t = exp(A_t) * (h_0 + sum_{s<=t} exp(-A_s) b_s),
    and log of the sum is logcumsumexp(log b_s - A_s), for the positive and the negative parts
    of b and h_0 apart; every exponent stays finite however long the sequence."""
    acc = torch.cumsum(log_a, dim=0)  # (T, B, H): A_1 .. A_T
    values = b if h0 is None else torch.cat([h0.unsqueeze(0), b])
    shift = acc if h0 is None else torch.cat([torch.zeros_like(acc[:1]), acc])
    pos, neg = _signed_logs(values)
    h = torch.exp(shift + torch.logcumsumexp(pos - shift, dim=0)) - torch.exp(shift + torch.logcumsumexp(neg - shift, dim=0))
    return h if h0 is None else h[1:]


def scan_sequential(log_a: Tensor, b: Tensor, h0: Tensor | None) -> Tensor:
    """The same recurrence one step at a time (the oracle of scan_log): (T, B, H) -> (T, B, H)."""
    a = log_a.exp()
    h = torch.zeros_like(b[0]) if h0 is None else h0
    out = []
    for t in range(b.shape[0]):
        h = a[t] * h + b[t]
        out.append(h)
    return torch.stack(out) if out else b.new_zeros(b.shape)
