"""Tiny K x N networks (one input, K hidden ReLU layers of N units, one linear output) as flat vectors.

Flat layout of one model (D = 2N + (K-1)(N^2+N) + N + 1; 136 for 5 x 5), the order of
`to_module(...).parameters()` flattened, and the layout every kernel in csrc/include/lscape/mlp.h uses:

    layer 0:          W0 (N, 1), b0 (N)
    layers 1..K-1:    Wl (N, N) row-major [out, in], bl (N)
    output layer K:   WK (1, N), bK (1)
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from . import _checks
from .reference import rng

MAX_DEPTH = 8  # csrc/include/lscape/mlp.h kMaxDepth
MAX_WIDTH = 16  # kMaxWidth
INIT_SCHEMES = ("he", "xavier", "torch")
_INIT_CHUNK = 1 << 14  # models generated at once by init (bounds its temporary memory)
_DESYM_CHUNK = 1 << 13  # models de-symmetrised at once


@dataclass(frozen=True)
class Layer:
    """Where one linear layer sits in the flat vector: W at [w, w + out*inp) as (out, inp), b after."""

    inp: int
    out: int
    w: int  # offset of W

    @property
    def b(self) -> int:
        return self.w + self.out * self.inp

    @property
    def end(self) -> int:
        return self.b + self.out


class TinyMLP:
    """The K x N architecture: `TinyMLP(depth=K, width=N)`, 1 <= K <= 8, 1 <= N <= 16."""

    def __init__(self, depth: int = 5, width: int = 5) -> None:
        self.depth = _checks.int_arg("depth", depth, low=1, high=MAX_DEPTH)
        self.width = _checks.int_arg("width", width, low=1, high=MAX_WIDTH)
        K, N = self.depth, self.width
        sizes = [1] + [N] * K + [1]
        layers, off = [], 0
        for inp, out in zip(sizes[:-1], sizes[1:], strict=False):
            layers.append(Layer(inp, out, off))
            off = layers[-1].end
        self.layers: tuple[Layer, ...] = tuple(layers)
        self.dim: int = off

    def __repr__(self) -> str:
        return f"TinyMLP(depth={self.depth}, width={self.width})  # dim {self.dim}"

    def __eq__(self, other) -> bool:
        return isinstance(other, TinyMLP) and (self.depth, self.width) == (other.depth, other.width)

    def __hash__(self) -> int:
        return hash((self.depth, self.width))

    @property
    def spec(self) -> tuple[int, int]:
        """(K, N), as the kernels take it."""
        return self.depth, self.width

    # ---- layout ---------------------------------------------------------------------------------------
    def unflatten(self, params: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """params (..., D) -> [(W (..., out, in), b (..., out)) per layer], views into params."""
        self.check_params(params, "params", batched=None)
        lead = params.shape[:-1]
        return [(params[..., L.w:L.b].reshape(*lead, L.out, L.inp), params[..., L.b:L.end]) for L in self.layers]

    def flatten(self, weights: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """[(W (..., out, in), b (..., out)) per layer] -> params (..., D); the inverse of unflatten."""
        if len(weights) != len(self.layers):
            raise ValueError(f"weights: got {len(weights)} layers, expected {len(self.layers)} for {self!r}")
        parts = []
        for i, ((W, b), L) in enumerate(zip(weights, self.layers, strict=False)):
            if tuple(W.shape[-2:]) != (L.out, L.inp) or tuple(b.shape[-1:]) != (L.out,):
                raise ValueError(f"weights[{i}]: got W {tuple(W.shape)}, b {tuple(b.shape)}, expected "
                                 f"W (..., {L.out}, {L.inp}) and b (..., {L.out})")
            parts += [W.reshape(*W.shape[:-2], -1), b]
        return torch.cat(parts, dim=-1)

    def to_module(self, params: torch.Tensor) -> nn.Sequential:
        """One parameter vector (D,) -> torch.nn.Sequential(Linear, ReLU, ..., Linear) holding a copy."""
        self.check_params(params, "params", batched=False)
        mods: list[nn.Module] = []
        for i, (L, (W, b)) in enumerate(zip(self.layers, self.unflatten(params), strict=False)):
            lin = nn.Linear(L.inp, L.out, dtype=params.dtype, device=params.device)
            with torch.no_grad():
                lin.weight.copy_(W)
                lin.bias.copy_(b)
            mods.append(lin)
            if i < self.depth:
                mods.append(nn.ReLU())
        return nn.Sequential(*mods)

    def from_module(self, module: nn.Module) -> torch.Tensor:
        """The flat vector (D,) of a module with this architecture (as to_module builds it)."""
        ps = list(module.parameters())
        shapes = [s for L in self.layers for s in ((L.out, L.inp), (L.out,))]
        got = [tuple(p.shape) for p in ps]
        if got != shapes:
            raise ValueError(f"module: got parameter shapes {got}, expected {shapes} for {self!r}")
        return torch.cat([p.detach().reshape(-1) for p in ps])

    def check_params(self, params, name: str = "params", *, batched: bool | None = True) -> None:
        """params is a floating tensor whose last dimension is D ((M, D) when batched, (D,) when not)."""
        ok = isinstance(params, torch.Tensor) and params.is_floating_point() and params.ndim >= 1 \
            and params.shape[-1] == self.dim
        if ok and batched is not None:
            ok = params.ndim == (2 if batched else 1)
        if not ok:
            want = {True: f"(M, {self.dim})", False: f"({self.dim},)", None: f"(..., {self.dim})"}[batched]
            raise ValueError(f"{name}: got {_checks.describe(params)}, expected a floating tensor of shape "
                             f"{want} for {self!r}")

    # ---- initialisation -------------------------------------------------------------------------------
    def init(self, M: int, seed: int = 0, scheme: str = "he", *, dtype: torch.dtype = torch.float32,
             device: torch.device | str | None = None) -> torch.Tensor:
        """M parameter vectors (M, D), identical on every backend and device for the same seed.

        Model m draws from its own counter-based stream (seed, m), so init(M)[:k] == init(k).
        scheme "he": W ~ N(0, 2/fan_in), b = 0 (kaiming_normal_, ReLU gain); "xavier": W ~ N(0,
        2/(fan_in + fan_out)), b = 0 (xavier_normal_); "torch": W and b ~ U(-1/sqrt(fan_in),
        1/sqrt(fan_in)) (nn.Linear's default).
        """
        M = _checks.int_arg("M", M, low=0)
        seed = _checks.int_arg("seed", seed, low=0, high=2**64 - 1)
        _checks.choice_arg("scheme", scheme, INIT_SCHEMES)
        out = np.empty((M, self.dim), dtype=np.float32)
        for m0 in range(0, M, _INIT_CHUNK):
            m1 = min(M, m0 + _INIT_CHUNK)
            keys = rng.stream_key(seed, np.arange(m0, m1, dtype=np.uint64))
            if scheme == "torch":
                z = 2.0 * rng.uniform53(keys[:, None], np.arange(self.dim, dtype=np.uint32)) - 1.0
            else:
                z = rng.normal(keys, self.dim)
            out[m0:m1] = z * self._init_scale(scheme)[None, :]
        return torch.from_numpy(out).to(dtype=dtype, device=device)

    def _init_scale(self, scheme: str) -> np.ndarray:
        """Per-entry multiplier of the unit draws (std for normal schemes, bound for uniform)."""
        s = np.zeros(self.dim)
        for L in self.layers:
            if scheme == "he":
                s[L.w:L.b] = math.sqrt(2.0 / L.inp)
            elif scheme == "xavier":
                s[L.w:L.b] = math.sqrt(2.0 / (L.inp + L.out))
            else:
                s[L.w:L.end] = 1.0 / math.sqrt(L.inp)
        return s



# ---- W_f: the hand-built 5 x 5 network of Gamst & Walker (2017), Fig 1 ----------------------------------
WF_DEPTH = WF_WIDTH = 5
WF_SAW_AMPLITUDE = 0.25  # alpha: height of each sawtooth tooth
# The low-frequency linear spline: its values at its knots (0, 5 interior knots, 1).  The interior knots
# sit on the sawtooth's 1/32 grid, so f has 33 knots and the training set 33 + 32 * 9 = 321 points.
WF_SPLINE_X = (0.0, 4 / 32, 10 / 32, 16 / 32, 22 / 32, 28 / 32, 1.0)
WF_SPLINE_Y = (0.0, 0.8, 1.0, 0.1, -0.6, -0.4, 0.2)


def _zero_hidden_layers(K: int, N: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """K hidden layers of a K x N net as zero float64 (W, b) pairs (layer 0 reads the 1-D input), for the
    W_f builders to fill in place."""
    return [(torch.zeros(N, 1 if l == 0 else N, dtype=torch.float64), torch.zeros(N, dtype=torch.float64))
            for l in range(K)]


def _wf_spline_coefs() -> tuple[float, float, list[float], list[float], float]:
    """s(x) = s0 + k0 x + sum_l k_l relu(x - a_l): (s0, k0, a (5,), k (5,), c0) from WF_SPLINE_X/Y, with
    c0 the constant the accumulator unit carries: the smallest integer >= 1 with every partial sum
    c0 + sum_{j<l} k_j relu(x - a_j) >= 1 on [0, 1], so the ReLUs it passes through act as the identity."""
    xs, ys = np.asarray(WF_SPLINE_X), np.asarray(WF_SPLINE_Y)
    slopes = np.diff(ys) / np.diff(xs)
    a, k = xs[1:-1], np.diff(slopes)
    partial = np.cumsum(k[None, :] * np.maximum(xs[:, None] - a[None, :], 0.0), axis=1)  # min at a knot
    c0 = float(max(1.0, np.ceil(1.0 - partial.min())))
    return float(ys[0]), float(slopes[0]), list(a), list(k), c0


WF_CONSTRUCTIONS = ("v1", "v2")
# v2's spline: its carrier unit holds the smallest knot (index 0; every other knot is then relu of the
# carrier minus a constant), and the other four (indices into WF_SPLINE_X[1:-1]) enter its accumulator in
# this order: of the 24 orders (all needing the same offset), the one that put de-symmetrised W_f nearest
# to 163 trained minima (median distance; the spread over the orders was 10.88-11.00 with the tents of v2
# but the first; see bench/gw_wf_constructions.py).
WF_V2_KNOT_ORDER = (3, 1, 4, 2)


def wf_network(construction: str = "v1") -> tuple[TinyMLP, torch.Tensor]:
    """The hand-built network W_f: (TinyMLP(5, 5), params (136,) float64).  Its output f = saw + s on
    [0, 1]: a 16-tooth sawtooth of height alpha = WF_SAW_AMPLITUDE plus a low-frequency linear spline s.
    Both constructions compute the same f exactly (the paper gives no weights):

    "v1": every tent map as 2 relu(t) - 4 relu(t - 1/2), the spline's accumulator carrying an offset of 10
       (large and steep: de-symmetrised norm 14.7).
    "v2": the first tent map as in v1, the other four as 1 - relu(2t - 1) - relu(1 - 2t) (no unit with a
       kink at the end of its range), the spline's accumulator starting at c + k0 x with the smallest
       offset c that keeps it nonnegative (0.6), its knots read off a carrier of relu(x - 1/8) (de-symmetrised
       norm 8.5).  Units 2 and 3 of the last hidden layer are unused (all zero).
    """
    _checks.choice_arg("construction", construction, WF_CONSTRUCTIONS)
    spec = TinyMLP(WF_DEPTH, WF_WIDTH)
    return spec, (_wf_v1() if construction == "v1" else _wf_v2())


def _wf_v1() -> torch.Tensor:
    """W_f as first built (construction "v1").

    Units 0, 1 of each hidden layer (the left 5 x 2) iterate the tent map T(t) = 2 relu(t) - 4 relu(t - 1/2),
    which maps [0, 1] onto itself with one tooth:  layer 1 holds relu(x), relu(x - 1/2); layer l >= 2
    reads t = 2 u0 - 4 u1 = T^(l-1)(x) from layer l-1 and holds relu(t), relu(t - 1/2).  The output unit
    takes alpha (2 u0 - 4 u1) of layer 5 = alpha T^5(x): 16 teeth, knots at j/32.

    Units 2, 3, 4 (the right 5 x 3) build s(x) = s0 + k0 x + sum_{l=1..5} k_l relu(x - a_l):
      unit 2 carries x (relu(x) = x on [0, 1]), unit 3 of layer l is relu(x - a_l) (read from unit 2 of
      layer l-1, or from the input), and unit 4 accumulates C_l = c0 + sum_{j<l} k_j relu(x - a_j)
      (C_1 = c0 from its bias; C_l = C_{l-1} + k_{l-1} unit3_{l-1}), with c0 large enough that C_l > 0 on
      [0, 1], so every ReLU on the right acts as the identity.
    The output is alpha (2 u0 - 4 u1) + k0 u2 + k5 u3 + u4 + (s0 - c0) of layer 5.  Every weight not
    named here is zero; every hidden unit has nonzero incoming and outgoing weights.
    """
    K, N = WF_DEPTH, WF_WIDTH
    spec = TinyMLP(K, N)
    s0, k0, a, k, c0 = _wf_spline_coefs()
    alpha = WF_SAW_AMPLITUDE
    weights = _zero_hidden_layers(K, N)
    for l, (W, b) in enumerate(weights):
        if l == 0:
            W[0, 0] = W[1, 0] = W[2, 0] = W[3, 0] = 1.0
            b[4] = c0
        else:
            W[0, 0] = W[1, 0] = 2.0
            W[0, 1] = W[1, 1] = -4.0
            W[2, 2] = W[3, 2] = 1.0
            W[4, 4], W[4, 3] = 1.0, k[l - 1]
        b[1] = -0.5
        b[3] = -a[l]
    W = torch.tensor([[2 * alpha, -4 * alpha, k0, k[K - 1], 1.0]], dtype=torch.float64)
    weights.append((W, torch.tensor([s0 - c0], dtype=torch.float64)))
    return spec.flatten(weights)


def _v2_spline_units(W: torch.Tensor, b: torch.Tensor, l: int, K: int, a, k, k0: float, c: float,
                     order) -> None:
    """Units 2, 3, 4 of hidden layer l of construction v2 (see _wf_v2), written into W, b in place: the
    carrier relu(x - a_0), the next knot of `order`, and the accumulator starting at c + k0 x."""
    if l == 0:
        W[2, 0], b[2] = 1.0, -a[0]
        W[3, 0], b[3] = 1.0, -a[order[0]]
        W[4, 0], b[4] = k0, c
        return
    W[4, 4], W[4, 3] = 1.0, k[order[l - 1]]
    if l < K - 1:
        W[2, 2] = 1.0
        W[3, 2], b[3] = 1.0, -(a[order[l]] - a[0])
    else:
        W[4, 2] = k[0]


def _wf_v2() -> torch.Tensor:
    """W_f, construction "v2".

    Units 0, 1 (the left 5 x 2) iterate the tent map T, t_l = T^l(x) being read off layer l:
      layer 1 holds relu(x), relu(x - 1/2) (t_1 = 2 u0 - 4 u1); layers l = 2..5 hold relu(2 t - 1),
      relu(1 - 2 t) of t = t_{l-1} (t_l = 1 - u0 - u1 = 1 - |2 t - 1|).  The output takes alpha t_5.
    Units 2, 3, 4 (the right 5 x 3) build s(x) = s0 + k0 x + sum_j k_j relu(x - a_j), a_0 = 1/8 being the
    smallest knot:
      unit 2 of layers 1-4 carries r = relu(x - a_0); unit 3 of layer l = 1..4 is relu(x - a_j) for the
      l-th knot j of WF_V2_KNOT_ORDER (from x in layer 1, as relu(r - (a_j - a_0)) after); unit 4
      accumulates C_1 = c + k0 x, C_l = C_{l-1} + k unit3_{l-1}, and in layer 5 C_5 = C_4 + k unit3_4 +
      k_0 r = c + s(x) - s0, with c >= 0 the smallest offset keeping every C_l >= 0 on [0, 1], so every
      ReLU on the right acts as the identity.  The output is alpha (1 - u0 - u1) + u4 + (s0 - c).
    """
    K, N = WF_DEPTH, WF_WIDTH
    spec = TinyMLP(K, N)
    s0, k0, a, k, _ = _wf_spline_coefs()
    order = WF_V2_KNOT_ORDER
    xs = np.asarray(WF_SPLINE_X)  # the partial sums are linear between these: their minima lie on them
    part = k0 * xs
    low = part.min()
    for j in order[:-1]:  # C_2, C_3, C_4
        part = part + k[j] * np.maximum(xs - a[j], 0.0)
        low = min(low, part.min())
    part = part + sum(k[j] * np.maximum(xs - a[j], 0.0) for j in (order[-1], 0))  # C_5
    c = max(0.0, -min(low, part.min()))
    alpha = WF_SAW_AMPLITUDE
    weights = _zero_hidden_layers(K, N)
    for l, (W, b) in enumerate(weights):
        if l == 0:
            W[0, 0] = W[1, 0] = 1.0
            b[1] = -0.5
        else:
            # t = 2 u0 - 4 u1 (layer 1) or 1 - u0 - u1 (after): relu(2 t - 1), relu(1 - 2 t)
            tw, tb = ((2.0, -4.0), 0.0) if l == 1 else ((-1.0, -1.0), 1.0)
            for unit, sgn in ((0, 1.0), (1, -1.0)):
                W[unit, 0], W[unit, 1] = 2.0 * sgn * tw[0], 2.0 * sgn * tw[1]
                b[unit] = sgn * (2.0 * tb - 1.0)
        _v2_spline_units(W, b, l, K, a, k, k0, c, order)
    W = torch.tensor([[-alpha, -alpha, 0.0, 0.0, 1.0]], dtype=torch.float64)
    weights.append((W, torch.tensor([alpha + s0 - c], dtype=torch.float64)))
    return spec.flatten(weights)


def _check_unit_interval(x: np.ndarray) -> None:
    if x.size and (not np.all(np.isfinite(x)) or x.min() < 0.0 or x.max() > 1.0):
        raise ValueError(f"x: got values in [{x.min()}, {x.max()}], expected values in [0, 1] (the domain "
                         f"on which W_f computes f)")


def wf_sawtooth(x) -> np.ndarray:
    """alpha T^5(x) = alpha (1 - |2 frac(16 x) - 1|) on [0, 1] (float64, same shape as x)."""
    x = np.asarray(x, dtype=np.float64)
    _check_unit_interval(x)
    return WF_SAW_AMPLITUDE * (1.0 - np.abs(2.0 * np.mod(16.0 * x, 1.0) - 1.0))


def wf_spline(x) -> np.ndarray:
    """The low-frequency spline s(x): linear interpolation of WF_SPLINE_Y at WF_SPLINE_X (float64)."""
    x = np.asarray(x, dtype=np.float64)
    _check_unit_interval(x)
    return np.interp(x, WF_SPLINE_X, WF_SPLINE_Y)


def wf_function(x) -> np.ndarray:
    """f(x) = sawtooth + spline on [0, 1], evaluated by formula (independent of the network); float64."""
    return wf_sawtooth(x) + wf_spline(x)


def wf_knots() -> np.ndarray:
    """The sorted knots of f in [0, 1] (both ends included): the sawtooth's j/32 and the spline's."""
    return np.unique(np.concatenate([np.arange(33) / 32.0, np.asarray(WF_SPLINE_X)]))


def wf_training_set(between: int = 9) -> tuple[torch.Tensor, torch.Tensor]:
    """(x (P,), y (P,)) float32: f at every knot plus `between` equally spaced points between each pair of
    adjacent knots (paper §3.1; P = 321 for 9).  y is f at the float32 x, so W_f fits the data exactly."""
    between = _checks.int_arg("between", between, low=0)
    t = wf_knots()
    frac = np.arange(between + 1) / (between + 1)
    x = np.concatenate([(t[:-1, None] + frac[None, :] * np.diff(t)[:, None]).ravel(), t[-1:]])
    x32 = x.astype(np.float32)
    y32 = wf_function(x32.astype(np.float64)).astype(np.float32)
    return torch.from_numpy(x32), torch.from_numpy(y32)


# ---- de-symmetrisation ----------------------------------------------------------------------------------
def _unit_norms(spec: TinyMLP, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Squared norms of each hidden unit's incoming weights + bias (A) and outgoing weights (B): (M, K, N)."""
    layers = spec.unflatten(p)
    A = torch.stack([(W * W).sum(-1) + b * b for W, b in layers[:-1]], dim=1)
    B = torch.stack([(W * W).sum(-2) for W, _ in layers[1:]], dim=1)
    return A, B


def _rescale(spec: TinyMLP, p: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """p (M, D) with hidden unit (l, j) scaled by c = exp(u[:, l, j]) (in and bias x c, out x 1/c)."""
    M, K = p.shape[0], spec.depth
    ones = u.new_zeros(M, 1)
    logs = [ones] + [u[:, l] for l in range(K)] + [ones]  # input and output units are not scaled
    parts = []
    for l, (W, b) in enumerate(spec.unflatten(p)):
        parts.append(W * torch.exp(logs[l + 1][:, :, None] - logs[l][:, None, :]))
        parts.append(b * torch.exp(logs[l + 1]))
    return torch.cat([t.reshape(M, -1) for t in parts], dim=1)


def _prune_dead(spec: TinyMLP, p: torch.Tensor) -> torch.Tensor:
    """Zero the outgoing weights of units whose incoming weights and bias are all zero (they output
    relu(0) = 0) and the incoming weights and bias of units whose outgoing weights are all zero (nobody
    reads them), until nothing changes: the function is unchanged and the norm can only shrink.  This is
    the limit c -> inf (resp. 0) of the rescaling, where the minimum norm is approached, not attained."""
    K = spec.depth
    while True:
        A, B = _unit_norms(spec, p)
        dead_in, dead_out = (A == 0) & (B > 0), (B == 0) & (A > 0)
        if not bool((dead_in | dead_out).any()):
            return p
        layers = [(W.clone(), b.clone()) for W, b in spec.unflatten(p)]
        for l in range(K):
            W, b = layers[l]
            keep = (~dead_out[:, l]).to(p.dtype)
            layers[l] = (W * keep[:, :, None], b * keep)
            Wn, bn = layers[l + 1]
            layers[l + 1] = (Wn * (~dead_in[:, l]).to(p.dtype)[:, None, :], bn)
        p = spec.flatten(layers)


def _balance(spec: TinyMLP, p: torch.Tensor, tol: float, max_iter: int) -> torch.Tensor:
    """The norm-minimising rescaling of p (M, D) float64, by damped Newton in u = log c.

    F(u) = sum_k p_k^2 exp(2 (E u)_k) is convex; its gradient is 2 (A - B) per unit and its Hessian
    4 (diag(A + B) - C - C^T), C holding the squared weights between adjacent layers: a grounded weighted
    graph Laplacian, positive definite on the units with A > 0 and B > 0 once dead units are pruned (then
    the minimum is attained and unique).  Units with A = B = 0 are all-zero and stay put."""
    M, K, N = p.shape[0], spec.depth, spec.width
    KN = K * N
    u = p.new_zeros(M, K, N)
    out = p.clone()
    idx = torch.arange(M, device=p.device)  # models not yet balanced: later iterations touch only these
    for _ in range(max_iter):
        pi, ui = p[idx], u[idx]
        q = _rescale(spec, pi, ui)
        A, B = _unit_norms(spec, q)
        active = (A > 0) & (B > 0)
        imbalance = torch.where(active, (A - B).abs() / (A + B).clamp_min(1e-300), torch.zeros_like(A))
        todo = imbalance.flatten(1).amax(1) > tol
        out[idx[~todo]] = q[~todo]
        if not bool(todo.any()):
            return out
        idx, pi, ui, q, A, B, active = idx[todo], pi[todo], ui[todo], q[todo], A[todo], B[todo], active[todo]
        m = idx.shape[0]
        g = (2.0 * (A - B) * active).reshape(m, KN)
        H = torch.zeros(m, KN, KN, dtype=p.dtype, device=p.device)
        layers = spec.unflatten(q)
        for l in range(1, K):  # weights from layer l-1 (in) to layer l (out): H[l j, l-1 i] = -4 W^2
            blk = -4.0 * layers[l][0] ** 2
            H[:, l * N:(l + 1) * N, (l - 1) * N:l * N] = blk
            H[:, (l - 1) * N:l * N, l * N:(l + 1) * N] = blk.transpose(1, 2)
        d = torch.where(active, 4.0 * (A + B), torch.ones_like(A)).reshape(m, KN)
        H = H * active.reshape(m, 1, KN) * active.reshape(m, KN, 1) + torch.diag_embed(d)
        L, info = torch.linalg.cholesky_ex(H)
        if bool((info != 0).any()):  # numerically singular (tiny weights): a whisker of damping
            eye = torch.eye(KN, dtype=p.dtype, device=p.device)
            L = torch.linalg.cholesky(H + 1e-12 * d.amax(1)[:, None, None] * eye)
        step = -torch.cholesky_solve(g[..., None], L)[..., 0].reshape(m, K, N)
        # backtracking (Armijo) per model; F is convex, so a full Newton step is taken near the optimum
        F0 = (q * q).sum(1)
        slope = (g * step.reshape(m, KN)).sum(1)
        t = torch.ones(m, dtype=p.dtype, device=p.device)
        for _ in range(60):
            Ft = (_rescale(spec, pi, ui + t[:, None, None] * step) ** 2).sum(1)
            # a decrease below F's rounding cannot be verified: there the full Newton step is taken
            bad = (Ft > F0 + 1e-4 * t * slope) & (-slope > 1e-11 * F0)
            if not bool(bad.any()):
                break
            t = torch.where(bad, 0.5 * t, t)
        u[idx] = ui + t[:, None, None] * step
    warnings.warn(f"desymmetrize: the rescaling did not balance {idx.shape[0]} of {M} models to {tol:g} in "
                  f"{max_iter} Newton iterations; returning the best found", RuntimeWarning, stacklevel=3)
    out[idx] = _rescale(spec, p[idx], u[idx])
    return out


def _sort_units(spec: TinyMLP, p: torch.Tensor) -> torch.Tensor:
    """Permute each hidden layer's units into increasing norm (incoming weights, bias and outgoing
    weights together) order; a stable sort, so units of equal norm keep their order."""
    A, B = _unit_norms(spec, p)
    order = torch.argsort(A + B, dim=2, stable=True)  # (M, K, N)
    layers = list(spec.unflatten(p))
    for l in range(spec.depth):
        perm = order[:, l]
        W, b = layers[l]
        layers[l] = (torch.gather(W, 1, perm[:, :, None].expand_as(W)), torch.gather(b, 1, perm))
        Wn, bn = layers[l + 1]
        layers[l + 1] = (torch.gather(Wn, 2, perm[:, None, :].expand_as(Wn)), bn)
    return spec.flatten(layers)


def desymmetrize(spec: TinyMLP, params: torch.Tensor, *, tol: float = 1e-12,
                 max_iter: int = 200) -> torch.Tensor:
    """One representative of params' symmetry class: params (M, D) or (D,) -> the same shape and dtype.

    1. Per hidden unit, the positive rescaling (incoming weights and bias x c, outgoing x 1/c; the
       function is unchanged since relu(c z) = c relu(z)) that minimises the L2 norm of the whole vector.
       In u = log c the squared norm is a convex sum of exponentials; it is solved jointly for all units
       (and batched over models) by damped Newton until every unit is balanced, |in|^2 = |out|^2 (the
       closed form c^4 = |out|^2 / |in|^2 of one unit, for all at once) to relative `tol` (computed in
       float64).  Units whose incoming weights and bias are all zero get zero outgoing weights, and units
       whose outgoing weights are all zero get zero incoming weights and bias (repeated until stable):
       the limit c -> inf / 0 of the rescaling, where the infimum is approached but not attained; such a
       unit ends all-zero.
    2. Each hidden layer's units are permuted into increasing norm order (stable for ties).
    The result is unique for generic params (no two units of a layer with equal norm).
    """
    spec.check_params(params, "params", batched=None)
    if params.ndim > 2:
        raise ValueError(f"params: got {_checks.describe(params)}, expected (M, {spec.dim}) or ({spec.dim},)")
    if not bool(torch.isfinite(params).all()):
        raise ValueError("params: contains NaN or inf; desymmetrize needs finite parameters")
    single = params.ndim == 1
    p = params.detach().to(torch.float64).reshape(-1, spec.dim)
    parts = []
    for m0 in range(0, p.shape[0], _DESYM_CHUNK):  # chunks bound the (m, KN, KN) Newton systems
        c = _prune_dead(spec, p[m0:m0 + _DESYM_CHUNK])
        parts.append(_sort_units(spec, _balance(spec, c, tol, max_iter)))
    p = (torch.cat(parts) if parts else p).to(params.dtype)
    return p[0] if single else p
