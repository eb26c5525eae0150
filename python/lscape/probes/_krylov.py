"""Thick-restart Lanczos in a basis of at most m vectors (Wu & Simon 2000), for probes.spectrum.

The operator H (symmetric, (1, D) float64 -> (1, D) float64) is only applied to vectors.  The basis Q
(m, D) is stored in float64 or float32; every coefficient, norm and Rayleigh-Ritz problem is float64
(a float32 row is widened column block by column block, never as a whole (m, D) float64 copy).  So the
memory is m * D * (8 or 4) bytes plus a few float64 vectors of length D, whatever the number of
products.

Each step applies H to the newest basis vector q_j and orthogonalises the result against the whole
basis (classical Gram-Schmidt, a second sweep only when the first removed most of it).  The sweep's
coefficients fill column j of T = Q^T H Q, so after a restart T is the kept Ritz values on its diagonal,
an arrow of couplings to the next vector, then tridiagonal, without special cases.  When the basis is
full, the l Ritz vectors nearest the wanted end of the spectrum replace it (computed in place, column
block by column block), T becomes diag(their Ritz values), and the last residual continues the basis.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import numpy as np
import torch

_F64 = torch.float64
_COLS = 1 << 16  # columns of a float32 basis widened to float64 at once (m x 65,536 x 8 bytes)
_SQRT_HALF = 1.0 / math.sqrt(2.0)


class Basis:
    """m rows of length D in `dtype`; products with the first n rows computed in float64."""

    def __init__(self, m: int, D: int, dtype: torch.dtype, device: torch.device) -> None:
        self.Q = torch.empty(m, D, dtype=dtype, device=device)
        self.D = D

    def _blocks(self):
        step = self.D if self.Q.dtype == _F64 else _COLS
        for c in range(0, self.D, step):
            yield slice(c, min(c + step, self.D))

    def store(self, j: int, q: torch.Tensor) -> torch.Tensor:
        """Row j := q (unit, float64); returns the row as stored (a view, in the basis dtype)."""
        self.Q[j] = q
        return self.Q[j]

    def coeffs(self, n: int, w: torch.Tensor) -> torch.Tensor:
        """Q[:n] @ w, float64 (n,)."""
        if self.Q.dtype == _F64:
            return self.Q[:n] @ w
        h = torch.zeros(n, dtype=_F64, device=w.device)
        for c in self._blocks():
            h += self.Q[:n, c].to(_F64) @ w[c]
        return h

    def combine(self, n: int, S: torch.Tensor) -> torch.Tensor:
        """S (r, n) @ Q[:n], float64 (r, D)."""
        if self.Q.dtype == _F64:
            return S @ self.Q[:n]
        out = torch.empty(S.shape[0], self.D, dtype=_F64, device=S.device)
        for c in self._blocks():
            out[:, c] = S @ self.Q[:n, c].to(_F64)
        return out

    def subtract(self, n: int, w: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """w - Q[:n]^T h."""
        if self.Q.dtype == _F64:
            return w - self.Q[:n].T @ h
        for c in self._blocks():
            w[c] -= self.Q[:n, c].to(_F64).T @ h
        return w

    def orthogonalise(self, n: int, w: torch.Tensor, local: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """(w minus its components along Q[:n], those components (n,)): a second sweep only when the first
        removed most of w (the Daniel-Gragg-Kaufman-Stewart test |w'| < |w| / sqrt 2; 'twice is enough'),
        w's norm taken without its components along the last `local` rows (H q_j's component along q_j,
        which the three-term recurrence removes exactly: counted, it would call for a second sweep at
        almost every step, a sixth of the time on a digits MLP)."""
        h = self.coeffs(n, w)
        before = math.sqrt(max(float(w @ w) - float(h[n - local:] @ h[n - local:]), 0.0))
        w = self.subtract(n, w, h)
        if float(w.norm()) < before * _SQRT_HALF:
            h2 = self.coeffs(n, w)
            w = self.subtract(n, w, h2)
            h = h + h2
        return w, h

    def rotate(self, n: int, S: torch.Tensor) -> None:
        """Q[:r] := S (r, n) @ Q[:n] in place (r <= n), one column block at a time."""
        step = _COLS
        for c in range(0, self.D, step):
            cs = slice(c, min(c + step, self.D))
            self.Q[:S.shape[0], cs] = (S @ self.Q[:n, cs].to(_F64)).to(self.Q.dtype)


def eigh(T: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """numpy.linalg.eigh of the small projected matrix, by torch's LAPACK: numpy's threaded OpenBLAS took
    0.16 -> 7 -> 71 ms at n = 14 -> 40 -> 82 on a loaded 2-core machine, torch (one thread) 0.1 -> 0.8 ->
    3.8 ms, and Lanczos solves one at every step."""
    vals, S = torch.linalg.eigh(torch.from_numpy(np.ascontiguousarray(T)))
    return vals.numpy(), S.numpy()


def select(vals, k: int, which: str) -> np.ndarray:
    """Indices of the k wanted values (a numpy array or a tensor), in the order they are returned."""
    v = vals.detach().cpu().numpy() if isinstance(vals, torch.Tensor) else np.asarray(vals)
    key = {"LA": -v, "SA": v}.get(which, -np.abs(v))
    return np.argsort(key, kind="stable")[:k]


def error_bound(vals: np.ndarray, idx: np.ndarray, resid: np.ndarray, vectors: bool) -> np.ndarray:
    """What convergence is judged on, per wanted Ritz pair: the residual r_i = |H y_i - theta_i y_i| (which
    bounds the eigenvector's error) when vectors are wanted; else the eigenvalue's error bound
    min(r_i, r_i^2 / gap_i) (Bauer-Fike; Kato-Temple), which reaches a given accuracy several steps
    before the residual does (15 -> 13 products for the top 5 of a digits MLP).

    resid: (n,) the residuals of all n Ritz pairs (wanted ones at idx).  gap_i is a lower bound on the
    distance from theta_i to the eigenvalues the other Ritz values stand for: each theta_j has one
    within r_j, so gap_i = min_j (|theta_i - theta_j| - r_j).  Where that is not larger than r_i (the
    gap is not resolved yet) the bound is r_i.  An eigenvalue with no Ritz value near it yet (its direction
    barely in the Krylov space) is not seen by any such bound: see lanczos' docstring."""
    r = resid[idx]
    if vectors or len(vals) < 2:
        return r
    d = np.abs(vals[idx][:, None] - vals[None, :]) - resid[None, :]
    d[np.arange(len(idx)), idx] = np.inf
    gap = d.min(1)
    return np.where(gap > r, r * r / np.where(gap > r, gap, 1.0), r)


def kept(k: int, m: int) -> int:
    """Ritz vectors kept at a restart: the k wanted and half the rest of the basis beyond them (so a cycle
    adds at least (m - k) / 2 new directions), at most m - 1."""
    return min(m - 1, k + (m - k) // 2)


def changed(vals: np.ndarray, idx: np.ndarray, prev: np.ndarray | None, floor: float) -> float:
    """The largest relative change of the wanted Ritz values since the previous step, |theta_i - theta_i'|
    / max(|theta_i|, floor) (PyHessian's rule for its power iteration, per value); inf on the first step
    with k of them."""
    if prev is None:
        return math.inf
    now = vals[idx]
    return float((np.abs(now - prev) / np.maximum(np.abs(now), floor)).max())


def lanczos(op: Callable[[torch.Tensor], torch.Tensor], D: int, k: int, m: int, which: str, tol: float,
            breakdown: float, gen: torch.Generator, device: torch.device, want_vectors: bool, max_products: int,
            basis_dtype: torch.dtype = _F64, stop: str = "residual", start: torch.Tensor | None = None):
    """The k wanted eigenpairs of op by thick-restart Lanczos with at most m basis vectors (m >= k + 2, or
    m = D), full reorthogonalisation.

    stop="residual": stops once every wanted pair's error_bound <= tol * |H| (|H|: the largest
    |coefficient| seen), checked from basis size min(m, 2k) on.  stop="change": once every wanted Ritz
    value changed by less than tol relative since the previous step (`changed`; the Ritz problem is solved
    at every step from k + 1 vectors on: an (n, n) eigh, n <= m, against a product of D).  Either way, or
    after max_products products (with a RuntimeWarning).  When the
    Krylov space closes (an invariant subspace: residual ~ 0) it continues from a fresh random vector
    orthogonal to the basis, so repeated eigenvalues are found.
    start: a (D,) vector (float64, nonzero) to begin from instead of a random one; it is taken over
    (normalised in place), so the caller should not keep it.
    Returns (eigenvalues (k,) float64, Ritz vectors (k, D) float64 or None, products used)."""
    B = Basis(m, D, basis_dtype, device)
    T = np.zeros((m, m))
    # start is taken over (normalised in place, stored, dropped): a copy would be D float64 more at the
    # first product
    q = torch.randn(D, generator=gen, dtype=_F64).to(device) if start is None else start.to(_F64)
    del start
    q /= q.norm()
    scale = 0.0
    by_change = stop == "change"
    prev = None  # the wanted Ritz values of the previous step (stop="change")
    j = products = 0  # the newest row of the basis; Hessian-vector products so far
    while True:
        # the product takes the row as stored (op rounds it to the products' dtype anyway); nothing else
        # of length D is alive meanwhile but the basis
        qj = B.store(j, q)
        del q
        w = op(qj[None])[0]
        products += 1
        w, h = B.orthogonalise(j + 1, w, local=1)
        T[:j + 1, j] = T[j, :j + 1] = h.cpu().numpy()
        b = float(w.norm())
        n = j + 1
        scale = max(scale, abs(T[j, j]), b, float(np.abs(T[:n, j]).max()))
        closed = b <= breakdown * scale
        done = n == D or products >= max_products
        if done or n >= (k + 1 if by_change else min(m, 2 * k)):
            vals, S = eigh(T[:n, :n])
            idx = select(vals, k, which)
            if by_change:  # relative to each value; the floor keeps a zero eigenvalue from never stopping
                worst, limit = changed(vals, idx, prev, 1e-6 * scale), tol
                prev = vals[idx].copy()
            else:
                worst = float(error_bound(vals, idx, b * np.abs(S[-1]), want_vectors).max())
                limit = tol * scale
            # PyHessian's strict "<" for the change; "<=" for the bound, which is 0 on a zero Hessian
            ok = worst < limit if by_change else worst <= limit
            if ok or done:
                if not ok and n < D:
                    what = "change of a Ritz value is" if by_change else "error bound is"
                    warnings.warn(f"hessian_eigs: not converged after {products} Hessian-vector products "
                                  f"(iters); the largest {what} {worst / (1.0 if by_change else scale):.3g}"
                                  f"{'' if by_change else ' |H|'}, tol {tol:.3g}", RuntimeWarning, stacklevel=3)
                break
        if closed:  # invariant subspace: continue in its orthogonal complement (a zero coupling)
            w, _ = B.orthogonalise(n, torch.randn(D, generator=gen, dtype=_F64).to(device))
            b = float(w.norm())
        q = w.div_(b)  # in place: w's memory becomes the next vector
        del w
        if n < m:
            j = n
            continue
        # thick restart: the l Ritz vectors nearest the wanted end replace the basis
        l_keep = kept(k, m)
        keep = select(vals, l_keep, which)
        B.rotate(n, torch.from_numpy(np.ascontiguousarray(S[:, keep].T)).to(device))
        T[:] = 0.0
        T[np.arange(l_keep), np.arange(l_keep)] = vals[keep]
        j = l_keep
    eigvals = torch.from_numpy(vals[idx].copy()).to(device)
    if not want_vectors:
        return eigvals, None, products
    vecs = B.combine(n, torch.from_numpy(np.ascontiguousarray(S[:, idx].T)).to(device))
    return eigvals, vecs / vecs.norm(dim=1, keepdim=True), products


def slq_nodes(op: Callable[[torch.Tensor], torch.Tensor], starts: torch.Tensor, steps: int, breakdown: float,
              reorth: bool) -> tuple[list, list]:
    """Lanczos from each row of starts (g, D) (unit vectors) in lockstep, `steps` products each, for
    stochastic Lanczos quadrature.  A run whose Krylov space closes stops there (its quadrature is exact).

    reorth=True: each run is fully reorthogonalised against its own float64 basis (g, steps, D).
    reorth=False: the plain three-term recurrence, holding four vectors per run (g x 4 x D: the last
    two, the product, the next).  Lost orthogonality then shows as repeated copies ('ghosts') of
    converged Ritz values whose Gauss weights share the true weight between them (Paige; Ubaru, Chen &
    Saad 2017), so the quadrature of a smooth function -- a Gaussian-broadened density -- stays
    accurate; only individual eigenvalues would not.
    Returns per run the Gauss-quadrature nodes (Ritz values) and weights (first components squared)."""
    g, D = starts.shape
    dev = starts.device
    Q = torch.empty(g, steps, D, dtype=_F64, device=dev) if reorth else None
    prev = None if reorth else torch.zeros(g, D, dtype=_F64, device=dev)
    alpha = torch.zeros(g, steps, dtype=_F64)
    beta = torch.zeros(g, steps, dtype=_F64)
    length = torch.full((g,), steps, dtype=torch.long)
    active = torch.ones(g, dtype=torch.bool)
    V = starts.clone()
    scale = torch.zeros(g, dtype=_F64)
    for j in range(steps):
        idx = active.nonzero().flatten()
        if idx.numel() == 0:
            break
        di = idx.to(dev)
        Va = V[di]
        W = op(Va)
        a = (W * Va).sum(1)
        W -= a[:, None] * Va
        if reorth:
            Q[di, j] = Va
            Qa = Q[di, :j + 1]
            for _ in range(2):
                W -= torch.einsum("rjd,rj->rd", Qa, torch.einsum("rjd,rd->rj", Qa, W))
        elif j > 0:
            W -= beta[idx, j - 1].to(dev)[:, None] * prev[di]
        b = W.norm(dim=1)
        alpha[idx, j] = a.cpu()
        scale[idx] = torch.maximum(scale[idx], torch.maximum(a.abs(), b).cpu())
        if j + 1 == steps:
            break
        closed = b.cpu() <= breakdown * scale[idx]
        length[idx[closed]] = j + 1
        active[idx[closed]] = False
        go = ~closed
        beta[idx[go], j] = b.cpu()[go]
        gd = go.to(dev)
        if prev is not None:
            prev[di[gd]] = Va[gd]
        V[di[gd]] = W[gd] / b[gd, None]
    nodes, weights = [], []
    for r in range(g):
        n = int(length[r])
        T = np.diag(alpha[r, :n].numpy()) + np.diag(beta[r, :n - 1].numpy(), 1) + np.diag(beta[r, :n - 1].numpy(), -1)
        vals, S = eigh(T)
        nodes.append(torch.from_numpy(vals))
        weights.append(torch.from_numpy(S[0] ** 2))
    return nodes, weights
