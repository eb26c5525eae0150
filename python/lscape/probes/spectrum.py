"""The Hessian spectrum of a Landscape at one point, from Hessian-vector products only.

    hvp(L, theta, vs)                      H(theta) v for a batch of vectors
    hessian_eigs(L, theta, k=5)            extreme eigenvalues by thick-restart Lanczos in a basis of at
                                           most m vectors, fully reorthogonalised
    hutchinson_trace(L, theta)             tr H by Hutch++ or Rademacher probes, with its standard error
    spectral_density(L, theta)             eigenvalue density by stochastic Lanczos quadrature
    classify_stationary(eigs)              convex / concave / saddle / flat, as Bosman et al. classify

On an MLP under cross-entropy (an nn.Sequential of Linear layers and elementwise activations), the
products are the R-operator written out (probes.mlp_hvp: autograd's GEMMs without its elementwise
bookkeeping, 15% faster).  Otherwise they differentiate `landscape.point_loss` (the unbatched loss where
the landscape has one: a plain graph, 1.6x faster to backpropagate through than a vmapped one on a digits
MLP) twice: the gradient's graph is built once per point (create_graph) and every product is one backward
pass through it (double backward), vectors batched with `is_grads_batched` when several are asked at once.
A module landscape builds that graph NCHW when it has a convolution of >= 128 channels (its double
backward ran 8% faster so on a ResNet-20 at width x4, channels-last 11% faster at x1; `hvp_point_loss`).
On a BatchNorm ResNet-20 (width 1, 32 images, one thread, bench/hessian_hvp_methods.py) double backward
took 0.50 s a vector, four batched 0.63 s a vector, torch.func.jvp of grad (forward-over-reverse) 0.94 s
and its vmap over four vectors 0.92 s: double backward is the product used.  A module's graph is built
with its convolutions' and ReLUs' double backward written out (lscape._hvpops.hvp_mode: torch's computes
a convolution's weight term as a transposed convolution at half oneDNN's rate, and a ReLU's as zeros):
at width x4 (32 images, one thread) 1.63 s a vector against torch's own 2.33 s.  A module landscape over
several batches streams instead: per product, each batch's gradient graph is built, differentiated and
dropped.  The products run in the landscape's dtype; everything else (Lanczos coefficients,
reorthogonalisation, tridiagonal eigenproblems, sums of probes) is float64.

Memory, beyond the model and its gradient graph (which PyHessian holds too), for D parameters:
hessian_eigs m * D * b bytes (the basis: m = 2k + 10 by default, more, up to 60, while it fits in
32 MiB, fewer, down to k + 2, where it would pass 2 GiB; b = 4 on a float32 landscape once the float64 basis
would pass 256 MiB, else 8)
plus about three float64 vectors (24 D bytes); spectral_density 8 * steps * D bytes per run when it
reorthogonalises, 32 D bytes per run when not; hutchinson_trace one pass of vectors plus Hutch++'s sketch
(at most 1 GiB).
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Callable

import numpy as np
import torch

from .. import _checks
from .._hvpops import hvp_mode
from ..landscape import Landscape
from . import _krylov
from .hessian import hessian
from .lines import _landscape_arg
from .mlp_hvp import MLPHessian

__all__ = ["classify_stationary", "hessian_eigs", "hutchinson_trace", "hvp", "spectral_density"]

WHICH = ("LA", "SA", "LM")
METHODS = ("lanczos", "dense")
STARTS = ("auto", "gradient", "random")  # hessian_eigs' first Lanczos vector (see _start_vector)
STOPS = ("residual", "change")  # hessian_eigs' stopping rules: the exact error bound; PyHessian's reading
CHANGE_TOL = 1e-3  # stop="change"'s default tol: PyHessian's default
BASIS_DTYPES = (torch.float64, torch.float32)
FLOAT64_BASIS_BYTES = 1 << 28  # a larger float64 Lanczos basis is stored in float32 on float32 landscapes
FLOAT32_BASIS_TOL = 1e-5  # the least eigenvector residual (relative to |H|) asked of a float32 Lanczos basis
_PASS_ELEMS = 1 << 24  # float64 entries of the vectors one Hessian-vector pass takes at most (128 MiB)
DENSE_MAX_DIM = 8192  # a float64 D x D Hessian of 512 MiB; beyond it use Lanczos
SKETCH_BYTES = 1 << 30  # Hutch++'s float64 sketch at most
SLQ_BASIS_BYTES = 1 << 30  # spectral_density's float64 Lanczos vectors held at once (at least one run's)
_F64 = torch.float64


# ---- Hessian-vector products ----------------------------------------------------------------------------
class _HVP:
    """H(theta) as an operator: (K, D) float64 or float32 -> (K, D) float64, the products in the
    landscape's dtype.

    Three constructions, by landscape: an MLP under cross-entropy (the R-operator written out,
    probes.mlp_hvp); a module landscape with BatchNorm in eval mode over several batches (streamed: per
    product, each batch's gradient graph is built, differentiated once per vector and dropped, so at most
    one batch's graph is held); otherwise the gradient graph of landscape.point_loss, built once and
    differentiated once per product (double backward: the fastest exact product measured, see the module
    docstring)."""

    def __init__(self, landscape: Landscape, theta: torch.Tensor, batch: int) -> None:
        # vectors per backward pass: `batch`, fewer when their float64 copies would pass _PASS_ELEMS
        self.batch = max(1, min(batch, _PASS_ELEMS // landscape.dim))
        self.dtype, self.device = landscape.dtype, landscape.device
        self._batched = True  # until is_grads_batched meets an op it cannot batch
        theta = theta.detach().to(dtype=self.dtype, device=self.device)
        self.theta, self._stream, self.g, self._landscape = theta, None, None, landscape
        self._mlp = MLPHessian.of(landscape, theta)  # an MLP under cross-entropy: the R-operator written out
        if self._mlp is not None:
            return
        self._stream = _batch_loss_terms(landscape)
        if self._stream is not None:
            return
        # a module landscape's loss in the layout its double backward runs fastest in (Landscape.from_module)
        self.x, self.g = self._graph(getattr(landscape, "hvp_point_loss", None) or landscape.point_loss)

    def _graph(self, loss_fn: Callable[[torch.Tensor], torch.Tensor]):
        """_gradient_graph at theta, its convolutions and ReLUs (and a transformer's attention, norms,
        activations, embeddings and cross-entropy) with their double backward written out (lscape._hvpops)."""
        with hvp_mode(getattr(self._landscape, "module", None)):
            return _gradient_graph(loss_fn, self.theta)

    def __call__(self, V: torch.Tensor) -> torch.Tensor:
        if self._mlp is not None:
            return torch.stack([self._mlp(v.to(dtype=self.dtype, device=self.device)) for v in V]).to(_F64)
        if self._stream is not None:
            out = torch.zeros(V.shape, dtype=_F64, device=self.device)
            for loss in self._stream():  # one batch's graph at a time
                x, g = self._graph(loss)
                if g is not None:
                    for i in range(0, V.shape[0], self.batch):
                        out[i:i + self.batch] += self._apply(
                            x, g, V[i:i + self.batch].to(dtype=self.dtype, device=self.device))
            return out
        if self.g is None:
            return torch.zeros(V.shape, dtype=_F64, device=self.device)
        # the float64 result is allocated once the first pass is done, not beside its temporaries: on GPT-2
        # small (D = 124 M) that is 1 GB off the peak of every product
        out = None
        for i in range(0, V.shape[0], self.batch):
            hv = self._apply(self.x, self.g, V[i:i + self.batch].to(dtype=self.dtype, device=self.device))
            if out is None:
                out = torch.empty(V.shape, dtype=_F64, device=self.device)
            out[i:i + self.batch] = hv
            del hv
        return out

    @property
    def holds_gradient(self) -> bool:
        """Whether the gradient at theta is at hand (the gradient graph is held), so costs nothing."""
        return self._mlp is None and self._stream is None

    def gradient(self, widen: bool = True) -> torch.Tensor:
        """The loss's gradient at theta, (D,) float64 (widen=False: in the landscape's dtype, a view where
        the graph holds it): free where the gradient graph is held, else one loss_and_grad of the landscape
        (one more pass over its data)."""
        if self.holds_gradient:
            g = torch.zeros(self.theta.shape[0], dtype=self.dtype, device=self.device) if self.g is None \
                else self.g.detach()
        else:
            g = self._landscape.loss_and_grad(self.theta[None])[1][0]
        return g.to(_F64) if widen else g

    def _apply(self, x: torch.Tensor, g: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
        if V.shape[0] > 1 and self._batched:
            try:
                return _second_derivative(x, g, V, batched=True)
            except (RuntimeError, NotImplementedError):  # an op without a batching rule: one pass per vector
                self._batched = False
        return torch.stack([_second_derivative(x, g, v, batched=False) for v in V])


def _gradient_graph(loss_fn: Callable[[torch.Tensor], torch.Tensor], theta: torch.Tensor):
    """(x, g): x a leaf copy of theta, g = d loss_fn(x) / dx with its graph (create_graph), or g = None when
    the Hessian is zero (a constant loss, or one linear in theta)."""
    with torch.enable_grad():
        x = theta.clone().requires_grad_(True)
        loss = loss_fn(x)
        if loss.shape != ():
            raise ValueError(f"landscape: the loss of one point is {_checks.describe(loss)}, expected a scalar")
        if not loss.requires_grad:
            return x, None
        (g,) = torch.autograd.grad(loss, x, create_graph=True)
    return x, (g if g.requires_grad else None)


def _second_derivative(x: torch.Tensor, g: torch.Tensor, v: torch.Tensor, batched: bool) -> torch.Tensor:
    """H v = d(g . v)/dx through g's graph (kept for the next product); v (D,) or, batched, (K, D)."""
    (hv,) = torch.autograd.grad(g, x, v, retain_graph=True, allow_unused=True, is_grads_batched=batched)
    return torch.zeros_like(v) if hv is None else hv


def _batch_loss_terms(landscape: Landscape):
    """For a Landscape.from_module over more than one batch (BatchNorm in eval mode): a callable that
    streams, per batch, theta -> (its mean loss) * (its share of the counted targets), whose sum over
    batches is the landscape's loss.  None for any other landscape (its point_loss is one graph)."""
    ml = getattr(landscape, "module_loss", None)
    if ml is None or ml.bn != "eval":
        return None
    data = ml.batches
    n = data.known_length()
    if n is not None and n <= 1:
        return None
    from .._fastops import narrow_linears

    total = sum(ml.objective.count(b) for b in data)

    def terms():
        for b in data:
            def loss(theta, b=b):
                with narrow_linears(ml.model):
                    out = torch.func.functional_call(ml.model, (ml.layout.split(theta), ml.buffers), *b.args())
                return ml.objective.loss(out, b) * (ml.objective.count(b) / total)
            yield loss
    return terms


def hessian_operator(landscape: Landscape, theta, batch: int = 32) -> Callable[[torch.Tensor], torch.Tensor]:
    """The Hessian-vector products every estimator here uses: an operator V (K, D) float64 -> H(theta) V
    (K, D) float64, products in the landscape's dtype, `batch` vectors per backward pass.  The one place
    that decides how H v is computed (see _HVP)."""
    return _HVP(landscape, theta, batch)


def _theta_arg(L: Landscape, theta) -> torch.Tensor:
    return _checks.vector_arg("theta", theta, L.dim, L.device)


def _batch_arg(batch) -> int:
    return _checks.int_arg("batch", batch, low=1)


def hvp(landscape: Landscape, theta, vs, *, batch: int = 32) -> torch.Tensor:
    """Hessian-vector products H(theta) v for every row v of vs.

    theta: (D,); vs: (K, D), D = landscape.dim.  Returns (K, D) in the landscape's dtype and device.
    The gradient graph at theta is built once; the K products are backward passes through it, `batch`
    vectors at a time (vectorised with is_grads_batched)."""
    L = _landscape_arg(landscape)
    t = _theta_arg(L, theta)
    V = _checks.as_tensor("vs", vs)
    if V.ndim != 2 or V.shape[1] != L.dim or not V.is_floating_point():
        raise ValueError(f"vs: got {_checks.describe(V)}, expected a floating tensor of shape (K, {L.dim})")
    _checks.finite("vs", V, f"finite vectors of shape (K, {L.dim})")
    op = hessian_operator(L, t, _batch_arg(batch))
    return op(V).to(L.dtype)


# ---- Lanczos ------------------------------------------------------------------------------------------
def _breakdown_tol(dtype: torch.dtype) -> float:
    """|w| below this fraction of |H| ends a Krylov space (the products' own rounding is ~eps |H|)."""
    return 50.0 * torch.finfo(dtype).eps


def _default_tol(dtype: torch.dtype, vectors: bool) -> float:
    """Convergence tolerance relative to |H|, about the accuracy the products allow: 100 eps on the
    residual when eigenvectors are wanted, eps on the eigenvalues' error bound otherwise."""
    eps = torch.finfo(dtype).eps
    return max(1e-12, 100.0 * eps) if vectors else eps


SMALL_BASIS_BYTES = 32 << 20
SMALL_BASIS_MAX = 60
# the default basis of a very large model stays within this many bytes (at least k + 2 vectors): GPT-2 small
# (D = 124 M) held 12 float32 vectors, 6 GB, twice its gradient's whole footprint, for its top eigenvalue
LARGE_BASIS_BYTES = 2 << 30


def _basis_size(k: int, D: int, m, itemsize: int = 4) -> int:
    """The Lanczos basis size: m in [k + 2, D]; D itself when D < k + 2.  The default is 2k + 10, or more
    (up to SMALL_BASIS_MAX) while the basis fits in SMALL_BASIS_BYTES: restarts cost little memory on
    small models but many products (a digits MLP's two smallest took over 300 products at m = 14, 60 at m = 60);
    fewer (down to k + 2) where 2k + 10 vectors of `itemsize` bytes would pass LARGE_BASIS_BYTES."""
    if m is None:
        m = max(2 * k + 10, min(SMALL_BASIS_MAX, SMALL_BASIS_BYTES // (8 * D)))
        return min(D, max(k + 2, min(m, LARGE_BASIS_BYTES // (itemsize * D))))
    return _checks.int_arg("m", m, low=min(k + 2, D), high=D)


def _basis_dtype_arg(basis_dtype) -> torch.dtype:
    if basis_dtype not in BASIS_DTYPES:
        raise ValueError(f"basis_dtype: got {basis_dtype!r}, expected torch.float64 or torch.float32")
    return basis_dtype


def _start_vector(op: _HVP, D: int, gen: torch.Generator, device: torch.device, start: str) -> torch.Tensor:
    """Lanczos' first vector, (D,) float64: a random one (seeded), plus, for start="gradient" (and "auto"
    where the gradient costs nothing: its graph is held for the products), the unit gradient.  The
    gradient of a network's loss lies mostly in its Hessian's top eigen-directions (Gur-Ari, Roberts &
    Dyer 2018), so the top eigenvalues converge in fewer products; the random half keeps every
    direction's share of the start about what a random start gives it (a Gaussian component shifted by
    the gradient's is no likelier to be small), so nothing a random start finds is missed."""
    r = torch.randn(D, generator=gen, dtype=_F64).to(device)
    r /= r.norm()
    if start == "random" or (start == "auto" and not op.holds_gradient):
        return r
    g = op.gradient(widen=False)  # added in place below: no float64 copy of it (1 GB on GPT-2 small)
    size = float(g.norm(dtype=_F64))
    return r if not math.isfinite(size) or size == 0.0 else r.add_(g, alpha=1.0 / size)


def hessian_eigs(landscape: Landscape, theta, k: int = 5, method: str = "lanczos", iters: int | None = None,
                 seed: int = 0, which: str = "LA", *, tol: float | None = None, return_vectors: bool = False,
                 batch: int = 32, m: int | None = None, basis_dtype: torch.dtype | None = None,
                 stop: str = "residual", start: str = "auto") -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The k extreme eigenvalues of the Hessian H(theta) of the landscape's loss.

    theta: (D,).  which: "LA" the largest (descending), "SA" the smallest (ascending), "LM" the largest in
    magnitude (descending |lambda|).
    method="lanczos": thick-restart Lanczos (Wu & Simon 2000), fully reorthogonalised, one
    Hessian-vector product per step, in a basis of at most m vectors (default
    2k + 10, or up to 60 while the basis fits in 32 MiB, fewer where it would pass 2 GiB, at most D; m >= k + 2):
    when it is full, the k
    wanted Ritz vectors and half the rest, those nearest the wanted end, replace it.  The coefficients and
    the small eigenproblems are float64.
    start="gradient" begins from the unit gradient plus a unit random vector (seeded): a network's
    gradient lies mostly in its Hessian's top eigen-directions, so the largest eigenvalues converge in
    fewer products (on a ResNet-20 at initialisation, the top one to 1e-3 in 5 products instead of 10, the
    top 2 in 10 instead of 12), while the random half keeps every direction's share about what a random
    start gives it; start="random": the random vector alone.  start="auto" (the default): "gradient"
    where the gradient is free (the products differentiate its graph: module and function landscapes on
    one batch), "random" where it would cost a pass over the data (an MLP's written-out products,
    streamed batches; at a trained digits MLP's minimum it saved nothing there).
    stop="residual" (the default) stops once the k Ritz pairs have converged: their eigenvalues' error
    bounds min(r, r^2 / gap) (r: the Ritz residual; gap: to the eigenvalues the other Ritz values stand
    for, each within its own residual; r alone where that gap is not resolved yet) below tol * |H|
    (default tol: the landscape dtype's eps, i.e. exact to the products' precision), or with return_vectors
    their residuals r below tol * |H| (default: 100 eps, at least 1e-12); or after iters products (default
    max(300, 50 k)) with a RuntimeWarning. tol=1e-3 asks for about PyHessian's accuracy (its default stops
    when an eigenvalue changes by less than 1e-3 relative between power iterations) in fewer products (on
    BatchNorm ResNet-20s, bench/hessian_resnet.py: 12 for the top 2 at width x4, 23 and 39 for the top 2
    and 5 at x1, where PyHessian took 27, 38 and 157).
    stop="change" reads tol as PyHessian does: it stops once every wanted Ritz value changed by less than
    tol relative (|theta - theta'| / |theta|) between consecutive Lanczos steps (default tol 1e-3, its
    default); a heuristic, like PyHessian's, with no bound on the error (a slowly moving value can stop it
    early), and the Ritz vectors' residuals are not checked.  Measured on a BatchNorm ResNet-20 (width 1,
    16 images, bench/hessian_resnet.py, from a random start): top-2 in 19 products, within 8.5e-4 of the
    exact values, and top-5 in 26, its 5th value 2.9% low (stalled for a few steps), where tol=1e-3 took 24 and 45 and
    PyHessian 38 and 157; stop="change" with tol=1e-4 took 24 and 44, within 6e-5.
    A closed Krylov space restarts from a random vector, so exact multiplicities are found; close clusters
    need more products.  No error bound sees an eigenvalue whose direction is not yet in the Krylov space:
    at a loose tol, Lanczos can stop with a converged k-th value that is the (k+1)-th eigenvalue (a
    start with almost no component along the k-th eigenvector; on a D = 33 MLP, tests: at tol 1e-3, 2
    and 1 runs in 20 for the 3 largest and smallest, none at tol 1e-6).  Where the k-th value matters
    at a loose tol, ask for k + 2 and keep k (none in 20 there).
    basis_dtype: how the basis is stored.  torch.float32 halves its memory: vectors are stored rounded to
    float32 (the products of a float32 landscape see them rounded anyway) while every coefficient and
    reorthogonalisation is float64.  Measured on float64 products (tests): eigenvalues within 2e-9 |H|
    and eigenvector residuals below 1e-6 |H|, so return_vectors with tol < FLOAT32_BASIS_TOL (1e-5) is
    refused with a float32 basis.  Default (None): float32 on a float32 landscape whose float64 basis
    would pass FLOAT64_BASIS_BYTES (256 MiB; smaller, float64's widening-free products are faster)
    unless return_vectors asks tol below 1e-5; float64 otherwise.
    Memory: m * D * (4 or 8) bytes for the basis, whatever the number of products; at D = 4.33 M
    (a ResNet-20 at width 4), k = 5 and a float32 basis, 346 MB; at D = 25 M, 2.0 GB.
    method="dense": the full Hessian (probes.hessian) and torch.linalg.eigh in float64 (D <= 8192).
    Returns eigenvalues (k,) float64, or (eigenvalues (k,), eigenvectors (k, D)) float64 with
    return_vectors=True (unit vectors, row i for eigenvalue i), on the landscape's device."""
    L = _landscape_arg(landscape)
    t = _theta_arg(L, theta)
    D = L.dim
    k = _checks.int_arg("k", k, low=1, high=D)
    _checks.choice_arg("method", method, METHODS)
    _checks.choice_arg("which", which, WHICH)
    seed = _checks.int_arg("seed", seed, low=0, high=2**63 - 1)
    batch = _batch_arg(batch)
    m = _basis_size(k, D, m, 4 if L.dtype == torch.float32 and basis_dtype != _F64 else 8)
    max_products = max(300, 50 * k) if iters is None else _checks.int_arg("iters", iters, low=k)
    _checks.choice_arg("stop", stop, STOPS)
    _checks.choice_arg("start", start, STARTS)
    if tol is None and stop == "change":
        tol = CHANGE_TOL
    elif tol is None:
        tol = _default_tol(L.dtype, return_vectors)
        if return_vectors and basis_dtype == torch.float32:
            tol = max(tol, FLOAT32_BASIS_TOL)
    else:
        tol = _checks.float_arg("tol", tol, low=0.0, high=1.0, low_open=True)
    if basis_dtype is None:  # float32 products see their vectors rounded to float32 anyway
        f32 = (L.dtype == torch.float32 and m * D * 8 > FLOAT64_BASIS_BYTES
               and not (return_vectors and tol < FLOAT32_BASIS_TOL and stop == "residual"))
        basis_dtype = torch.float32 if f32 else _F64
    else:
        basis_dtype = _basis_dtype_arg(basis_dtype)
        if return_vectors and basis_dtype == torch.float32 and tol < FLOAT32_BASIS_TOL and stop == "residual":
            raise ValueError(f"tol: got {tol} with basis_dtype=torch.float32 and return_vectors=True, expected "
                             f"tol >= {FLOAT32_BASIS_TOL} (a float32 basis bounds the eigenvectors' residuals; "
                             "use basis_dtype=torch.float64 for more)")
    if method == "dense":
        if D > DENSE_MAX_DIM:
            raise ValueError(f"method: got 'dense' for landscape.dim = {D}, expected D <= {DENSE_MAX_DIM} "
                             "(use method='lanczos')")
        H = hessian(L, t[None].to(L.dtype))[0].to(_F64)
        vals, vecs = torch.linalg.eigh(H)
        idx = torch.from_numpy(_krylov.select(vals, k, which))
        return (vals[idx], vecs[:, idx].T.contiguous()) if return_vectors else vals[idx]
    op = hessian_operator(L, t, batch)
    gen = torch.Generator().manual_seed(seed)
    # the start vector is handed over, not kept here: lanczos stores it in the basis and drops it
    vals, vecs, _ = _krylov.lanczos(op, D, k, m, which, tol, _breakdown_tol(L.dtype), gen, L.device,
                                    return_vectors, max_products, basis_dtype, stop,
                                    _start_vector(op, D, gen, L.device, start))
    return (vals, vecs) if return_vectors else vals


# ---- trace --------------------------------------------------------------------------------------------
def _rademacher(n: int, D: int, gen: torch.Generator) -> torch.Tensor:
    # one row per draw, so the probes do not depend on how they are batched; drawn into the (n, D) result
    # and mapped to +-1 in place: no second float64 copy (1 GB a row on GPT-2 small)
    Z = torch.empty(n, D, dtype=_F64)
    for row in Z:
        torch.randint(0, 2, (D,), generator=gen, out=row)
    return Z.mul_(2.0).sub_(1.0)


def _quadratic_forms(op, Z: torch.Tensor) -> torch.Tensor:
    """z_i^T H z_i for the rows of Z (n, D) float64, (n,): row by row, with no (n, D) product of the two."""
    return torch.stack([z @ hz for z, hz in zip(Z, op(Z), strict=True)])


TRACE_METHODS = ("hutch++", "hutchinson")


def hutchinson_trace(landscape: Landscape, theta, n_samples: int = 100, seed: int = 0, *,
                     batch: int = 32, method: str = "hutch++") -> tuple[float, float]:
    """A stochastic estimate of tr H(theta) from n_samples Hessian-vector products with Rademacher probes
    (entries +-1, seeded), products `batch` at a time.

    method="hutch++" (Meyer, Musco, Musco & Woodruff 2021, the default): a third of the products sketch
    H S, whose orthonormal basis Q carries the dominant eigen-directions; tr(Q^T H Q) is computed exactly
    from another third; Hutchinson estimates only the trace of the deflated rest (I - QQ^T) H (I - QQ^T)
    with the last third.  Hessians of trained networks have a few outlying eigenvalues, so the deflated
    rest has far less variance: the same standard error for several times fewer products (n_samples >= 4).
    method="hutchinson": the mean of z^T H z over all n_samples probes (n_samples >= 2).

    Returns (estimate, standard error).  The standard error is that of the Hutchinson part (sample std of
    its quadratic forms / sqrt(their count)), given the sketch: the exact part adds no variance.  Exact,
    with standard error 0, when H is diagonal (plain Hutchinson: z_i^2 = 1) or when the sketch spans H's
    range (Hutch++).
    Memory: one pass of vectors (at most `batch`, and at most 2**24 float64 entries) plus, for Hutch++,
    its sketch of k = min(n_samples // 3, SKETCH_BYTES / (8 D)) float64 rows (1 GiB at most; a smaller
    sketch leaves more products to the Hutchinson part, still unbiased)."""
    L = _landscape_arg(landscape)
    t = _theta_arg(L, theta)
    _checks.choice_arg("method", method, TRACE_METHODS)
    n = _checks.int_arg("n_samples", n_samples, low=4 if method == "hutch++" else 2)
    seed = _checks.int_arg("seed", seed, low=0, high=2**63 - 1)
    batch = _batch_arg(batch)
    op = hessian_operator(L, t, batch)
    gen = torch.Generator().manual_seed(seed)
    if method == "hutchinson":
        return _hutchinson(op, L.dim, n, gen, L.device, None)
    # the sketch: a third of the products, at most SKETCH_BYTES of float64 rows (the rest go to Hutchinson)
    k = min(max(1, n // 3), L.dim, max(1, SKETCH_BYTES // (8 * L.dim)))
    Q = _sketch(op, L.dim, k, gen, L.device)
    # tr(Q^T H Q), exactly
    exact = sum(float(_quadratic_forms(op, Q[i:i + op.batch]).sum()) for i in range(0, k, op.batch))
    rest, se = _hutchinson(op, L.dim, n - 2 * k, gen, L.device, Q)
    return exact + rest, se


def _sketch(op, D: int, k: int, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    """(k, D) orthonormal rows spanning H S for k Rademacher probes S, built pass by pass and
    orthonormalised in place (Gram-Schmidt, twice where needed): only the k x D float64 sketch is held,
    never H S beside it.  A product in the span of the rows before it (H of rank < k) is replaced by a
    fresh probe orthogonalised the same way, so the rows stay orthonormal, as a QR's would."""
    B = _krylov.Basis(k, D, _F64, device)
    r = 0
    while r < k:
        for w in op(_rademacher(min(op.batch, k - r), D, gen).to(device)):
            size = float(w.norm())
            w, _ = B.orthogonalise(r, w)
            if float(w.norm()) <= 1e-10 * size:  # dependent on the rows so far
                w, _ = B.orthogonalise(r, _rademacher(1, D, gen)[0].to(device))
            B.store(r, w / w.norm())
            r += 1
    return B.Q


def _hutchinson(op, D: int, n: int, gen: torch.Generator, device: torch.device,
                Q: torch.Tensor | None) -> tuple[float, float]:
    """Hutchinson's mean of z^T A z over n Rademacher probes, A = H, or with Q (k, D) the deflated
    (I - QQ^T) H (I - QQ^T); returns (mean, sample std / sqrt(n)).  Probes are drawn op.batch at a time,
    so memory is a pass's vectors, whatever n."""
    quad = []
    for i in range(0, n, op.batch):
        Z = _rademacher(min(op.batch, n - i), D, gen).to(device)
        if Q is not None:  # Z - (Z Q^T) Q, in place
            Z.addmm_(Z @ Q.T, Q, alpha=-1.0)
        quad.append(_quadratic_forms(op, Z))
        del Z
    s = torch.cat(quad).cpu()
    return float(s.mean()), float(s.std(correction=1) / math.sqrt(n))


# ---- spectral density ---------------------------------------------------------------------------------
def spectral_density(landscape: Landscape, theta, n_vectors: int = 8, steps: int | None = None,
                     grid: int | object = 1000, sigma: float | None = None, seed: int = 0, *,
                     batch: int = 32, reorthogonalise: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The eigenvalue density of H(theta) by stochastic Lanczos quadrature (Ghorbani, Krishnan & Xiao
    2019; PyHessian's `density`): `steps` Lanczos steps (default min(D, 90)) from each of n_vectors
    normalised Rademacher vectors give Gauss-quadrature nodes t_j and weights w_j (sum 1); the density is
    the mean over runs of sum_j w_j N(x; t_j, sigma^2).

    grid: an int G (G points from the smallest node - 5 sigma to the largest + 5 sigma) or a 1-D array of
    x values.  sigma: the Gaussian width (default 1% of the nodes' span, or of max(|node|, 1) when they
    coincide).  The density is not renormalised: it integrates to 1 over the real line (the weights of
    each run sum to 1), so its integral over a grid that covers the nodes and resolves sigma is ~1.
    reorthogonalise: True keeps each run's Lanczos basis (steps x D float64) and orthogonalises every
    vector against it, as PyHessian does; False runs the plain three-term recurrence (4 x D float64 per
    run, whatever the steps), as Ghorbani et al. and Papyan do.  Lost orthogonality only duplicates
    converged Ritz values, and the duplicates share their eigenvalue's weight, so the broadened density
    agrees with the reorthogonalised one to within the quadrature's own error (tested against a dense
    eigendecomposition); what it cannot give is individual eigenvalues (use hessian_eigs).  Default
    (None): True when one run's basis fits in SLQ_BASIS_BYTES (1 GiB: steps * D <= 2**27), else False.
    Memory: as many runs at once as fit in SLQ_BASIS_BYTES (at least one), each steps * D * 8 bytes
    (reorthogonalised) or 4 * D * 8 bytes, plus the products' own graph.
    Returns (grid (G,), density (G,)), float64 on the CPU.  The runs go in lockstep, their products
    batched."""
    L = _landscape_arg(landscape)
    t = _theta_arg(L, theta)
    D = L.dim
    nv = _checks.int_arg("n_vectors", n_vectors, low=1)
    m = min(D, 90) if steps is None else _checks.int_arg("steps", steps, low=1, high=D)
    if sigma is not None:
        sigma = _checks.float_arg("sigma", sigma, low=0.0, high=math.inf, low_open=True)
        if math.isinf(sigma):
            raise ValueError(f"sigma: got {sigma}, expected a finite positive number")
    if isinstance(grid, numbers.Integral) and not isinstance(grid, bool):
        G, xs = _checks.int_arg("grid", grid, low=2), None
    else:
        xs = _checks.as_tensor("grid", grid)
        if xs.ndim != 1 or xs.shape[0] == 0 or xs.dtype == torch.bool or xs.dtype.is_complex:
            raise ValueError(f"grid: got {_checks.describe(xs)}, expected an int >= 2 or a non-empty 1-D array")
        xs = xs.to(dtype=_F64, device="cpu")
        _checks.finite("grid", xs, "finite x values")
    seed = _checks.int_arg("seed", seed, low=0, high=2**63 - 1)
    batch = _batch_arg(batch)

    if reorthogonalise is None:
        reorth = m * D * 8 <= SLQ_BASIS_BYTES
    elif isinstance(reorthogonalise, bool):
        reorth = reorthogonalise
    else:
        raise TypeError(f"reorthogonalise: got {_checks.describe(reorthogonalise)}, expected True, False or None")

    op = hessian_operator(L, t, batch)
    gen = torch.Generator().manual_seed(seed)
    # runs held at once: their float64 vectors within SLQ_BASIS_BYTES (at least one run)
    group = max(1, SLQ_BASIS_BYTES // ((m if reorth else 4) * D * 8))
    nodes, weights = [], []
    for i in range(0, nv, group):
        starts = _rademacher(min(group, nv - i), D, gen) / math.sqrt(D)
        n_, w_ = _krylov.slq_nodes(op, starts.to(L.device), m, _breakdown_tol(L.dtype), reorth)
        nodes += n_
        weights += w_
    allnodes = torch.cat(nodes)
    lo, hi = float(allnodes.min()), float(allnodes.max())
    if sigma is None:
        sigma = 0.01 * (hi - lo) if hi > lo else 0.01 * max(abs(hi), 1.0)
    if xs is None:
        xs = torch.linspace(lo - 5 * sigma, hi + 5 * sigma, G, dtype=_F64)
    density = torch.zeros_like(xs)
    norm = 1.0 / (sigma * math.sqrt(2 * math.pi))
    for nd, w in zip(nodes, weights, strict=False):
        density += (w[None, :] * torch.exp(-0.5 * ((xs[:, None] - nd[None, :]) / sigma) ** 2)).sum(1) * norm
    return xs, density / len(nodes)


# ---- classification -----------------------------------------------------------------------------------
def _classify_one(lam: np.ndarray, tol: float) -> str:
    if (np.abs(lam) <= tol).any():
        return "flat"  # singular Hessian: some curvature is zero
    if lam.min() < 0 < lam.max():
        return "saddle"
    return "convex" if lam.min() > 0 else "concave"


def classify_stationary(eigs, tol: float = 0.0):
    """Classify points by the eigenvalues of their Hessians, as Bosman, Engelbrecht & Helbig (2020) do:

      "flat"     the Hessian is singular: some eigenvalue is zero (|lambda| <= tol) -- this takes
                 precedence, as in the authors' code (annabosman/fla-in-tf, get_curvature: 'singular')
      "saddle"   no zero eigenvalue, some positive and some negative (indefinite)
      "convex"   all eigenvalues positive (positive definite: a minimum at a stationary point)
      "concave"  all eigenvalues negative (negative definite: a maximum)

    eigs: the full spectrum, (n,) for one point or (B, n) for B points (a partial spectrum, such as
    hessian_eigs' top k, cannot show the other signs).  tol: eigenvalues with |lambda| <= tol count as
    zero; the paper's code uses exact zeros (tol = 0); floating-point Hessians want a tol such as
    1e-6 * max |lambda| or D * eps * max |lambda|.
    Returns a str for (n,), or a numpy array of B str for (B, n)."""
    t = _checks.as_tensor("eigs", eigs)
    if t.ndim not in (1, 2) or t.shape[-1] == 0 or t.dtype == torch.bool or t.dtype.is_complex:
        raise ValueError(f"eigs: got {_checks.describe(t)}, expected real eigenvalues of shape (n,) or (B, n), "
                         "n >= 1")
    lam = t.detach().to(dtype=_F64, device="cpu")
    _checks.finite("eigs", lam, "finite eigenvalues")
    tol = _checks.float_arg("tol", tol, low=0.0, high=math.inf)
    if math.isinf(tol):
        raise ValueError(f"tol: got {tol}, expected a finite number >= 0")
    lam = lam.numpy()
    if lam.ndim == 1:
        return _classify_one(lam, tol)
    return np.array([_classify_one(row, tol) for row in lam])
