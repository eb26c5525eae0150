"""Small numpy statistics the figures need: lowess smoothing and logistic regression by IRLS."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def _tricube(u: np.ndarray) -> np.ndarray:
    u = np.clip(np.abs(u), 0.0, 1.0)
    return (1.0 - u ** 3) ** 3


def _local_linear(x: np.ndarray, y: np.ndarray, w_extra: np.ndarray, x0: np.ndarray, k: int) -> np.ndarray:
    """The tricube-weighted local-linear fit at each x0 using its k nearest x; w_extra: per-point weights
    (robustness).  x (n,), x0 (m,) -> (m,)."""
    out = np.empty(x0.shape[0])
    step = max(1, (1 << 22) // max(1, x.shape[0]))  # rows of the (m, n) distance matrix held at once
    for i in range(0, x0.shape[0], step):
        d = np.abs(x[None, :] - x0[i:i + step, None])  # (m, n)
        h = np.partition(d, k - 1, axis=1)[:, k - 1]  # distance to the k-th nearest neighbour
        h = np.where(h > 0, h, 1.0)  # all k neighbours at x0 itself: any positive bandwidth will do
        w = _tricube(d / h[:, None]) * w_extra[None, :]
        sw = w.sum(1)
        sw_safe = np.where(sw > 0, sw, 1.0)
        xm = (w * x).sum(1) / sw_safe
        ym = (w * y).sum(1) / sw_safe
        sxx = (w * (x[None, :] - xm[:, None]) ** 2).sum(1)
        sxy = (w * (x[None, :] - xm[:, None]) * (y[None, :] - ym[:, None])).sum(1)
        # a window with no spread in x (or all weight on one point) falls back to the weighted mean
        slope = np.where(sxx > 1e-12 * np.maximum(1.0, (w * x * x).sum(1)), sxy / np.where(sxx > 0, sxx, 1.0),
                         0.0)
        fit = ym + slope * (x0[i:i + step] - xm)
        out[i:i + step] = np.where(sw > 0, fit, np.nan)
    return out


def lowess(x, y, *, frac: float = 2.0 / 3.0, iterations: int = 3, xeval=None) -> tuple[np.ndarray, np.ndarray]:
    """Cleveland's lowess: at each point a local-linear least-squares fit to the floor(frac * n) nearest
    points with tricube weights (1 - (d / h)^3)^3, h the distance to the farthest of them; then
    `iterations` robustness passes that down-weight points by the bisquare of their residual over six
    median absolute residuals (as R's lowess and statsmodels, iter=3 by default).

    x, y (n,) -> (xs (m,), fit (m,)): xs the sorted x (or the sorted xeval, when given: the final curve
    evaluated there, with the robustness weights from the data)."""
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"x, y: got shapes {x.shape} and {y.shape}, expected equal lengths")
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    n = x.shape[0]
    if n < 2:
        raise ValueError(f"x, y: got {n} finite points, expected at least 2")
    if not 0.0 < frac <= 1.0:
        raise ValueError(f"frac: got {frac}, expected a number in (0, 1]")
    order = np.argsort(x, kind="stable")
    x, y = x[order], y[order]
    k = min(n, max(2, int(frac * n + 1e-10)))  # floor, as R (lowess.c) and statsmodels take it
    robust = np.ones(n)
    for it in range(iterations + 1):
        fit = _local_linear(x, y, robust, x, k)
        if it == iterations:
            break
        r = y - fit
        s = np.median(np.abs(r))
        if s <= 1e-7 * np.abs(y).mean():  # most residuals vanish: stop, as R's lowess does
            break
        robust = (1.0 - np.clip(r / (6.0 * s), -1.0, 1.0) ** 2) ** 2
    if xeval is None:
        return x, fit
    xe = np.sort(np.asarray(xeval, dtype=np.float64).ravel())
    return xe, _local_linear(x, y, robust, xe, k)


@dataclass(frozen=True)
class LogisticFit:
    """P(y = 1 | x) = 1 / (1 + exp(-(intercept + slope x))), fitted by maximum likelihood.

    converged: the Newton (IRLS) iterations met their tolerance.  separated: the data are (quasi-)
    completely separated, or all of one class, so the unpenalised estimate runs off to infinity; the
    coefficients returned then describe the (near-)step the likelihood approaches.
    """

    intercept: float
    slope: float
    converged: bool
    separated: bool
    iterations: int

    def predict(self, x) -> np.ndarray:
        z = self.intercept + self.slope * np.asarray(x, dtype=np.float64)
        with np.errstate(over="ignore", invalid="ignore"):
            p = 0.5 * (1.0 + np.tanh(0.5 * z))  # the logistic function without overflow
        return np.where(np.isnan(z), np.nan, p)

    @property
    def x50(self) -> float:
        """Where P = 1/2 (nan when the slope is 0)."""
        return -self.intercept / self.slope if self.slope != 0 else math.nan


def logistic_fit(x, y, *, l2: float = 0.0, max_iter: int = 100, tol: float = 1e-10) -> LogisticFit:
    """Logistic regression of binary y (n,) on x (n,) by IRLS (Newton's method on the log-likelihood, with
    step halving).  l2: ridge penalty on the slope (0: plain maximum likelihood).  All-0 (all-1) y gives
    P = 0 (1) everywhere: intercept -inf (+inf), slope 0, separated=True."""
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if x.shape != y.shape or x.size == 0:
        raise ValueError(f"x, y: got shapes {x.shape} and {y.shape}, expected equal non-zero lengths")
    if not np.all((y == 0) | (y == 1)):
        raise ValueError("y: expected only 0 and 1")
    if y.min() == y.max():
        return LogisticFit(math.copysign(math.inf, y[0] - 0.5), 0.0, True, True, 0)
    X = np.stack([np.ones_like(x), x], axis=1)
    pen = np.array([0.0, l2])

    def objective(b):  # negative penalised log-likelihood
        z = X @ b
        return np.sum(np.logaddexp(0.0, z) - y * z) + 0.5 * np.sum(pen * b * b)

    b = np.array([math.log(y.mean() / (1 - y.mean())), 0.0])
    f = objective(b)
    converged = False
    it = 0
    for it in range(1, max_iter + 1):  # noqa: B007 (it is returned: the iterations used)
        p = 0.5 * (1.0 + np.tanh(0.5 * (X @ b)))
        g = X.T @ (p - y) + pen * b
        Wd = p * (1 - p)
        H = X.T @ (X * Wd[:, None]) + np.diag(pen) + 1e-300
        try:
            step = np.linalg.solve(H, g)
        except np.linalg.LinAlgError:
            step = np.linalg.lstsq(H, g, rcond=None)[0]
        t = 1.0
        while t > 1e-10:
            nb = b - t * step
            nf = objective(nb)
            if nf <= f + 1e-12 * abs(f):
                break
            t *= 0.5
        b, f_old, f = nb, f, nf
        if np.max(np.abs(t * step)) < tol * (1.0 + np.max(np.abs(b))) or (f_old - f) <= 1e-15 * max(1.0, abs(f)):
            converged = True
            break
    # separation: the fitted probabilities reproduce y exactly (the likelihood has no finite maximiser)
    p = 0.5 * (1.0 + np.tanh(0.5 * (X @ b)))
    separated = bool(l2 == 0.0 and np.max(np.abs(p - y)) < 1e-6)
    return LogisticFit(float(b[0]), float(b[1]), converged and not separated, separated, it)


def spearman(a, b) -> float:
    """Spearman's rank correlation of a and b (n,) by scipy.stats.spearmanr, which gives ties their mean
    rank (the ties are real here: accuracies, repeated cell dimensions); NaN when either side is constant
    or has fewer than 3 values."""
    try:
        from scipy.stats import spearmanr
    except ImportError:
        raise ImportError("the experiments' summaries need scipy: pip install 'lscape[experiments]' "
                          "(or pip install scipy)") from None
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan
    return float(spearmanr(a, b).statistic)
