"""probes.spectrum against independent answers: a quadratic 0.5 x^T A x + b^T x with known A (eigenvalues
from numpy.linalg.eigvalsh, trace, density), the dense probes.hessian on small MLP landscapes, Bosman et
al.'s classes on hand-made spectra, and a named error for every bad input."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from lscape import Landscape, TinyMLP
from lscape.probes import hessian, spectrum
from lscape.probes.spectrum import classify_stationary, hessian_eigs, hutchinson_trace, hvp, spectral_density
from torch import nn

pytestmark = pytest.mark.usefixtures("one_torch_thread")
F64 = torch.float64


def _trapezoid(y, x) -> float:
    """The trapezoid rule (np.trapezoid is numpy >= 2 only; lscape supports numpy >= 1.24)."""
    return float(np.sum((y[1:] + y[:-1]) * np.diff(x)) / 2)


def quadratic(A: np.ndarray, b: np.ndarray | None = None) -> Landscape:
    At = torch.tensor(A)
    bt = torch.zeros(A.shape[0], dtype=F64) if b is None else torch.tensor(b)
    return Landscape.from_function(lambda x: 0.5 * x @ At @ x + bt @ x, dim=A.shape[0])


def with_spectrum(eigs, seed: int = 0) -> np.ndarray:
    """A symmetric matrix Q diag(eigs) Q^T with a random orthogonal Q."""
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((len(eigs), len(eigs))))
    return (Q * np.asarray(eigs)) @ Q.T


def random_sym(D: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    M = rng.standard_normal((D, D))
    return (M + M.T) / 2


# ---- Hessian-vector products --------------------------------------------------------------------------
def test_hvp_on_quadratic_is_A_times_v_for_any_batch():
    A = random_sym(12, 0)
    rng = np.random.default_rng(1)
    L = quadratic(A, rng.standard_normal(12))
    theta, V = rng.standard_normal(12), rng.standard_normal((9, 12))
    want = V @ A
    for batch in (1, 4, 32):
        got = hvp(L, theta, torch.tensor(V), batch=batch)
        assert got.shape == (9, 12) and got.dtype == F64
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=1e-12)


def test_hvp_of_a_linear_loss_is_zero():
    L = Landscape.from_function(lambda x: x.sum(), dim=5)
    assert torch.equal(hvp(L, torch.ones(5, dtype=F64), torch.ones(3, 5, dtype=F64)), torch.zeros(3, 5, dtype=F64))


def mlp_landscape():
    spec = TinyMLP(2, 4)
    x = torch.linspace(-1, 1, 9, dtype=F64)
    L = Landscape.from_mlp(spec, x, torch.sin(3 * x), dtype=F64)
    return L, spec.init(1, seed=3, scheme="torch", dtype=F64)[0]


def test_hvp_on_mlp_matches_dense_hessian():
    L, theta = mlp_landscape()
    V = torch.randn(5, L.dim, dtype=F64, generator=torch.Generator().manual_seed(0))
    H = hessian(L, theta[None])[0]
    torch.testing.assert_close(hvp(L, theta, V), V @ H, rtol=1e-10, atol=1e-12)


# ---- eigenvalues --------------------------------------------------------------------------------------
def test_lanczos_top_k_matches_eigvalsh_on_indefinite_quadratic():
    A = random_sym(40, 2)
    L = quadratic(A, np.ones(40))
    ev = np.linalg.eigvalsh(A)
    theta = torch.zeros(40, dtype=F64)
    np.testing.assert_allclose(hessian_eigs(L, theta, 5).numpy(), ev[::-1][:5], rtol=1e-9)
    np.testing.assert_allclose(hessian_eigs(L, theta, 4, which="SA").numpy(), ev[:4], rtol=1e-9)
    lm = ev[np.argsort(-np.abs(ev))][:3]
    np.testing.assert_allclose(hessian_eigs(L, theta, 3, which="LM").numpy(), lm, rtol=1e-9)
    np.testing.assert_allclose(hessian_eigs(L, theta, 5, method="dense").numpy(), ev[::-1][:5], rtol=1e-12)


def test_lanczos_eigenvectors_are_unit_eigenvectors():
    A = with_spectrum(np.linspace(-2.0, 7.0, 30), seed=4)
    L = quadratic(A)
    vals, vecs = hessian_eigs(L, torch.zeros(30, dtype=F64), 3, return_vectors=True)
    assert vecs.shape == (3, 30)
    np.testing.assert_allclose(vecs.norm(dim=1).numpy(), 1.0, atol=1e-12)
    resid = vecs.numpy() @ A - vals.numpy()[:, None] * vecs.numpy()
    assert np.abs(resid).max() < 1e-6
    dvals, dvecs = hessian_eigs(L, torch.zeros(30, dtype=F64), 3, method="dense", return_vectors=True)
    np.testing.assert_allclose(np.abs((vecs * dvecs).sum(1).numpy()), 1.0, atol=1e-10)


def test_lanczos_finds_repeated_eigenvalues():
    # a closed Krylov space (3 distinct values) must restart to find the copies
    eigs = np.array([5.0] * 3 + [3.0] * 2 + [1.0] * 20)
    L = quadratic(with_spectrum(eigs, seed=5))
    got = hessian_eigs(L, torch.zeros(25, dtype=F64), 6)
    np.testing.assert_allclose(got.numpy(), [5, 5, 5, 3, 3, 1], rtol=1e-10)


def test_lanczos_stops_early_when_converged_and_iters_bounds_the_work(monkeypatch):
    A = with_spectrum(np.concatenate([[100.0, 90.0, 80.0], np.linspace(0, 1, 197)]), seed=6)
    L = quadratic(A)
    products = []
    call = spectrum._HVP.__call__

    def counting(self, V):
        products.append(V.shape[0])
        return call(self, V)

    monkeypatch.setattr(spectrum._HVP, "__call__", counting)
    got = hessian_eigs(L, torch.zeros(200, dtype=F64), 3)
    np.testing.assert_allclose(got.numpy(), [100, 90, 80], rtol=1e-10)
    # the residual test ends it well before the basis (2k + 10 = 16 vectors) is full
    assert sum(products) < 30
    products.clear()
    with pytest.warns(RuntimeWarning, match="not converged after 4 Hessian-vector products"):
        capped = hessian_eigs(L, torch.zeros(200, dtype=F64), 3, iters=4)
    assert sum(products) == 4
    assert np.abs(capped.numpy() - [100, 90, 80]).max() > 1e-8  # 4 steps cannot resolve it


def test_eigenvalues_alone_converge_on_their_error_bound_before_the_residuals(monkeypatch):
    # a float32 module landscape: eigenvalues-only stops when min(r, r^2 / gap) <= eps |H|, sooner than the
    # residual test the eigenvectors need, and still agrees with the dense float64 Hessian to float32 accuracy
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 24), nn.ReLU(), nn.Linear(24, 24), nn.ReLU(), nn.Linear(24, 10))
    gen = torch.Generator().manual_seed(2)
    X, Y = torch.randn(200, 6, generator=gen), torch.randint(0, 10, (200,), generator=gen)
    L = Landscape.from_module(model, nn.functional.cross_entropy, (X, Y))
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    L64 = Landscape.from_module(copy.deepcopy(model).double(), nn.functional.cross_entropy, (X.double(), Y))
    want = np.linalg.eigvalsh(hessian(L64, theta.double()[None])[0].numpy())[::-1][:5]
    products = []
    call = spectrum._HVP.__call__
    monkeypatch.setattr(spectrum._HVP, "__call__", lambda self, V: products.append(V.shape[0]) or call(self, V))
    vals = hessian_eigs(L, theta, 5).numpy()
    n_vals = sum(products)
    products.clear()
    vals_v, _ = hessian_eigs(L, theta, 5, return_vectors=True)
    assert n_vals < sum(products)
    np.testing.assert_allclose(vals, want, rtol=2e-5, atol=1e-6 * want[0])
    np.testing.assert_allclose(vals_v.numpy(), want, rtol=2e-5, atol=1e-6 * want[0])


@pytest.mark.parametrize("which", ["LA", "SA"])
def test_lanczos_matches_dense_on_tiny_mlp(which):
    L, theta = mlp_landscape()
    want = np.linalg.eigvalsh(hessian(L, theta[None])[0].numpy())
    want = want[::-1][:5] if which == "LA" else want[:5]
    got = hessian_eigs(L, theta, 5, which=which)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-8, atol=1e-10)


def test_lanczos_matches_dense_on_module_landscape():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 2)).double()
    gen = torch.Generator().manual_seed(1)
    X, Y = torch.randn(20, 3, generator=gen, dtype=F64), torch.randint(0, 2, (20,), generator=gen)
    L = Landscape.from_module(model, nn.functional.cross_entropy, (X, Y))
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    want = np.linalg.eigvalsh(hessian(L, theta[None])[0].numpy())[::-1][:5]
    np.testing.assert_allclose(hessian_eigs(L, theta, 5).numpy(), want, rtol=1e-8, atol=1e-10)


# ---- trace --------------------------------------------------------------------------------------------
def test_hutchinson_is_exact_for_a_diagonal_hessian():
    d = np.linspace(-3.0, 5.0, 17)
    est, se = hutchinson_trace(quadratic(np.diag(d)), torch.zeros(17, dtype=F64), n_samples=10,
                               method="hutchinson")
    assert est == pytest.approx(d.sum(), abs=1e-12) and se == pytest.approx(0.0, abs=1e-12)


def test_hutchpp_is_exact_when_the_sketch_spans_the_range():
    A = with_spectrum([9.0, -4.0, 2.5] + [0.0] * 27, seed=2)  # rank 3: a sketch of 4 vectors spans it
    est, se = hutchinson_trace(quadratic(A), torch.zeros(30, dtype=F64), n_samples=12)
    assert est == pytest.approx(7.5, abs=1e-9) and se == pytest.approx(0.0, abs=1e-9)


def test_hutchpp_needs_fewer_products_for_the_same_error_on_an_outlier_spectrum():
    """A Hessian-like spectrum (a few outliers over a bulk near zero, as Ghorbani et al. and Papyan find):
    at the same product budget the squared ratio of standard errors is how many times fewer products
    Hutch++ needs for the same error; both estimates agree with the exact trace."""
    eigs = [40.0, 25.0, 12.0, 6.0, 3.0] + list(np.random.default_rng(1).normal(0.0, 0.3, 95))
    A = with_spectrum(eigs, seed=5)
    L, theta = quadratic(A), torch.zeros(100, dtype=F64)
    (pp, se_pp), (hu, se_hu) = (hutchinson_trace(L, theta, n_samples=60, seed=s, method=m)
                                for s, m in ((1, "hutch++"), (1, "hutchinson")))
    assert abs(pp - np.trace(A)) < 4 * se_pp and abs(hu - np.trace(A)) < 4 * se_hu
    assert (se_hu / se_pp) ** 2 >= 2.5
    assert (pp, se_pp) == pytest.approx(hutchinson_trace(L, theta, n_samples=60, seed=1, batch=7), rel=1e-10)


def test_hutchpp_matches_the_exact_trace_of_a_small_net():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 12), nn.Tanh(), nn.Linear(12, 3)).double()
    X, Y = torch.randn(40, 4, dtype=F64), torch.randint(0, 3, (40,))
    L = Landscape.from_module(model, nn.functional.cross_entropy, (X, Y))
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    exact = float(torch.trace(hessian(L, theta[None])[0]))
    est, se = hutchinson_trace(L, theta, n_samples=45, seed=2)
    assert se > 0 and abs(est - exact) < 4 * se


def test_hutchinson_within_standard_errors_and_independent_of_batching():
    A = random_sym(30, 7) + 2 * np.eye(30)
    L = quadratic(A)
    theta = torch.zeros(30, dtype=F64)
    est, se = hutchinson_trace(L, theta, n_samples=200, seed=3, batch=64, method="hutchinson")
    assert se > 0.1  # off-diagonal entries make the estimate random
    assert abs(est - np.trace(A)) < 4 * se
    again = hutchinson_trace(L, theta, n_samples=200, seed=3, batch=7, method="hutchinson")
    assert (est, se) == pytest.approx(again, rel=1e-12)
    assert hutchinson_trace(L, theta, n_samples=200, seed=4, method="hutchinson")[0] != est


# ---- density ------------------------------------------------------------------------------------------
def test_density_puts_the_mass_at_the_eigenvalues_and_integrates_to_one():
    rng = np.random.default_rng(8)
    clusters = [(1.0, 100), (5.0, 60), (10.0, 40)]
    eigs = np.concatenate([c + 0.05 * rng.standard_normal(n) for c, n in clusters])
    L = quadratic(with_spectrum(eigs, seed=9))
    x, dens = spectral_density(L, torch.zeros(200, dtype=F64), n_vectors=10, steps=40, seed=1)
    assert x.shape == dens.shape and x.dtype == dens.dtype == F64
    assert float(torch.trapezoid(dens, x)) == pytest.approx(1.0, abs=1e-3)
    for c, n in clusters:
        near = (x > c - 1) & (x < c + 1)
        mass = float(torch.trapezoid(dens[near], x[near]))
        assert mass == pytest.approx(n / 200, abs=0.04), c
    assert float(dens[(x > 2) & (x < 4)].max()) < 1e-3  # no mass between the clusters


def test_density_on_a_given_grid_with_a_given_sigma():
    L = quadratic(np.diag([2.0] * 10))
    grid = torch.linspace(0, 4, 401, dtype=F64)
    x, dens = spectral_density(L, torch.zeros(10, dtype=F64), n_vectors=2, grid=grid, sigma=0.1)
    assert torch.equal(x, grid)
    want = np.exp(-0.5 * ((grid.numpy() - 2) / 0.1) ** 2) / (0.1 * np.sqrt(2 * np.pi))
    np.testing.assert_allclose(dens.numpy(), want, rtol=1e-9, atol=1e-12)


# ---- classification -----------------------------------------------------------------------------------
def test_classify_stationary_follows_bosman():
    assert classify_stationary([1.0, 2.0, 0.5]) == "convex"
    assert classify_stationary(np.array([-1.0, -2.0])) == "concave"
    assert classify_stationary(torch.tensor([-1.0, 3.0])) == "saddle"
    assert classify_stationary([0.0, 1.0]) == "flat"
    assert classify_stationary([-1.0, 0.0, 1.0]) == "flat"  # singular takes precedence over saddle
    assert classify_stationary([1e-9, 1.0]) == "convex"  # tol = 0: only exact zeros are flat
    assert classify_stationary([1e-9, 1.0], tol=1e-8) == "flat"
    assert classify_stationary([-1e-9, 1.0], tol=1e-8) == "flat"
    batch = classify_stationary(np.array([[1.0, 2.0], [-1.0, -2.0], [-1.0, 2.0], [0.0, 0.0]]))
    assert isinstance(batch, np.ndarray) and list(batch) == ["convex", "concave", "saddle", "flat"]


def test_classify_from_lanczos_spectrum_of_a_saddle():
    A = with_spectrum([3.0, 1.0, -2.0, 0.5], seed=10)
    eigs = hessian_eigs(quadratic(A), torch.zeros(4, dtype=F64), 4)
    assert classify_stationary(eigs, tol=1e-8) == "saddle"


# ---- errors -------------------------------------------------------------------------------------------
def test_bad_inputs_get_named_errors():
    L = quadratic(np.eye(6))
    t = torch.zeros(6, dtype=F64)
    with pytest.raises(TypeError, match="landscape: got"):
        hessian_eigs(np.eye(6), t)
    with pytest.raises(ValueError, match=r"theta: got tensor of shape \(5,\).*\(6,\)"):
        hessian_eigs(L, torch.zeros(5))
    with pytest.raises(ValueError, match=r"theta: got tensor of shape \(1, 6\)"):
        hutchinson_trace(L, torch.zeros(1, 6))
    with pytest.raises(ValueError, match="theta: .*non-finite"):
        spectral_density(L, torch.full((6,), float("nan")))
    with pytest.raises(ValueError, match=r"k: got 7, expected an integer in \[1, 6\]"):
        hessian_eigs(L, t, 7)
    with pytest.raises(ValueError, match=r"k: got 0"):
        hessian_eigs(L, t, 0)
    with pytest.raises(ValueError, match=r"iters: got 2, expected an integer in \[3, inf\]"):
        hessian_eigs(L, t, 3, iters=2)
    with pytest.raises(ValueError, match="which: got 'LR'"):
        hessian_eigs(L, t, which="LR")
    with pytest.raises(ValueError, match="method: got 'arpack'"):
        hessian_eigs(L, t, method="arpack")
    with pytest.raises(ValueError, match="tol: got -1.0"):
        hessian_eigs(L, t, tol=-1.0)
    big = Landscape.from_function(lambda x: (x ** 2).sum(), dim=9000)
    with pytest.raises(ValueError, match="method: got 'dense' for landscape.dim = 9000"):
        hessian_eigs(big, torch.zeros(9000, dtype=F64), method="dense")
    with pytest.raises(ValueError, match=r"vs: got tensor of shape \(2, 5\).*\(K, 6\)"):
        hvp(L, t, torch.zeros(2, 5))
    with pytest.raises(ValueError, match="vs: .*non-finite"):
        hvp(L, t, torch.full((1, 6), float("inf")))
    with pytest.raises(ValueError, match=r"batch: got 0"):
        hvp(L, t, torch.zeros(1, 6), batch=0)
    with pytest.raises(ValueError, match=r"n_samples: got 1, expected an integer in \[2, inf\]"):
        hutchinson_trace(L, t, n_samples=1, method="hutchinson")
    with pytest.raises(ValueError, match=r"n_samples: got 3, expected an integer in \[4, inf\]"):
        hutchinson_trace(L, t, n_samples=3)
    with pytest.raises(ValueError, match=r"method: got 'exact', expected one of 'hutch\+\+', 'hutchinson'"):
        hutchinson_trace(L, t, method="exact")
    with pytest.raises(ValueError, match="sigma: got 0.0"):
        spectral_density(L, t, sigma=0.0)
    with pytest.raises(ValueError, match=r"steps: got 7, expected an integer in \[1, 6\]"):
        spectral_density(L, t, steps=7)
    with pytest.raises(ValueError, match=r"grid: got .*shape \(2, 2\)"):
        spectral_density(L, t, grid=np.zeros((2, 2)))
    with pytest.raises(ValueError, match="grid: .*non-finite"):
        spectral_density(L, t, grid=[0.0, float("nan")])
    with pytest.raises(ValueError, match="eigs: .*non-finite"):
        classify_stationary([1.0, float("nan")])
    with pytest.raises(ValueError, match=r"eigs: got .*shape \(1, 1, 2\)"):
        classify_stationary(np.zeros((1, 1, 2)))
    with pytest.raises(ValueError, match=r"eigs: got .*shape \(0,\)"):
        classify_stationary([])
    with pytest.raises(ValueError, match="tol: got -0.1"):
        classify_stationary([1.0], tol=-0.1)


def test_a_point_loss_that_is_not_scalar_is_refused():
    L = Landscape(3, lambda T: (T ** 2).sum(1), point_loss=lambda t: t ** 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="loss of one point"):
        hessian_eigs(L, torch.zeros(3), k=1)


# ---- bounded memory (issue 30) ------------------------------------------------------------------------
class _ResBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.bn(self.conv(x)))


def conv_bn_landscape(batches: int = 1):
    """A float64 conv-BN-residual net in eval mode (D = 283) on 24 random 1x6x6 images, as `batches` batches;
    non-trivial BatchNorm statistics, as a trained net's."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), _ResBlock(3),
                          nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(12, 4)).double()
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.2, 0.2)
                mod.running_var.uniform_(0.5, 1.5)
    model.eval()
    gen = torch.Generator().manual_seed(1)
    X, Y = torch.randn(24, 1, 6, 6, generator=gen, dtype=F64), torch.randint(0, 4, (24,), generator=gen)
    data = (X, Y) if batches == 1 else list(zip(X.chunk(batches), Y.chunk(batches), strict=True))
    L = Landscape.from_module(model, nn.functional.cross_entropy, data)
    return L, torch.cat([p.detach().reshape(-1) for p in model.parameters()])


@pytest.fixture(scope="module")
def conv_bn():
    L, theta = conv_bn_landscape()
    ev, vecs = np.linalg.eigh(hessian(L, theta[None])[0].numpy())
    return L, theta, ev, vecs


def basis_shapes(monkeypatch) -> list:
    shapes = []
    init = spectrum._krylov.Basis.__init__

    def recording(self, m, D, dtype, device):
        shapes.append((m, D, dtype))
        init(self, m, D, dtype, device)

    monkeypatch.setattr(spectrum._krylov.Basis, "__init__", recording)
    return shapes


@pytest.mark.parametrize("which", ["LA", "SA", "LM"])
def test_restarted_lanczos_matches_the_full_basis_and_dense_on_a_conv_bn_net(conv_bn, which, monkeypatch):
    L, theta, ev, vecs = conv_bn
    k = 4
    want = {"LA": ev[::-1], "SA": ev, "LM": ev[np.argsort(-np.abs(ev), kind="stable")]}[which][:k]
    shapes = basis_shapes(monkeypatch)
    full = hessian_eigs(L, theta, k, which=which, m=L.dim)
    small, small_vecs = hessian_eigs(L, theta, k, which=which, m=k + 2, return_vectors=True)
    assert [s[0] for s in shapes] == [L.dim, k + 2]  # the basis is what m says, restarts or not
    scale = np.abs(ev).max()
    np.testing.assert_allclose(full.numpy(), want, atol=1e-10 * scale)
    np.testing.assert_allclose(small.numpy(), want, atol=1e-10 * scale)
    # exact eigenvectors from a basis of k + 2 vectors: residuals within the default tol (1e-12 |H|)
    H = hessian(L, theta[None])[0].numpy()
    resid = small_vecs.numpy() @ H - small.numpy()[:, None] * small_vecs.numpy()
    assert np.abs(resid).max() < 1e-10 * scale


def test_restarted_lanczos_finds_repeated_and_clustered_eigenvalues(monkeypatch):
    rng = np.random.default_rng(3)
    cases = {"repeated": np.concatenate([[7.0] * 3, [6.0] * 3, rng.uniform(0, 5, 114)]),
             "clustered": np.concatenate([[10.0, 10 - 1e-4, 10 - 2e-4, 9.9, 9.8], rng.uniform(0, 9, 115)])}
    for name, eigs in cases.items():
        A = with_spectrum(eigs, seed=4)
        L, theta = quadratic(A), torch.zeros(120, dtype=F64)
        want = np.sort(eigs)[::-1][:5]
        for m in (7, 120):
            vals, vecs = hessian_eigs(L, theta, 5, m=m, return_vectors=True)
            np.testing.assert_allclose(vals.numpy(), want, atol=1e-10, err_msg=f"{name}, m={m}")
            resid = vecs.numpy() @ A - vals.numpy()[:, None] * vecs.numpy()
            assert np.abs(resid).max() < 1e-10, (name, m)
            np.testing.assert_allclose(vecs.numpy() @ vecs.numpy().T, np.eye(5), atol=1e-10)


def test_float32_basis_accuracy_on_float64_products():
    """A float32 basis (rounded vectors, float64 coefficients) on float64 products: eigenvalues to ~1e-8 |H|
    and eigenvector residuals below FLOAT32_BASIS_TOL |H|, measured here on an outlier spectrum."""
    rng = np.random.default_rng(5)
    eigs = np.concatenate([[50.0, 30, 20, 15, 10], rng.normal(0, 0.3, 195)])
    A = with_spectrum(eigs, seed=6)
    L, theta = quadratic(A), torch.zeros(200, dtype=F64)
    want = np.sort(eigs)[::-1][:5]
    vals = hessian_eigs(L, theta, 5, m=8, basis_dtype=torch.float32, tol=1e-9)
    assert np.abs(vals.numpy() - want).max() < 1e-7 * 50
    vals, vecs = hessian_eigs(L, theta, 5, m=8, basis_dtype=torch.float32, return_vectors=True)
    resid = vecs.numpy() @ A - vals.numpy()[:, None] * vecs.numpy()
    assert np.abs(resid).max() < spectrum.FLOAT32_BASIS_TOL * 50


def test_large_float32_landscape_gets_a_float32_basis_unless_vectors_need_more(monkeypatch):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 3))
    X, Y = torch.randn(30, 5), torch.randint(0, 3, (30,))
    L = Landscape.from_module(model, nn.functional.mse_loss, (X, nn.functional.one_hot(Y, 3).float()))
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    L64 = Landscape.from_module(copy.deepcopy(model).double(), nn.functional.mse_loss,
                                (X.double(), nn.functional.one_hot(Y, 3).double()))
    want = np.linalg.eigvalsh(hessian(L64, theta.double()[None])[0].numpy())[::-1][:3]
    shapes = basis_shapes(monkeypatch)
    small = hessian_eigs(L, theta, 3)  # a float64 basis below FLOAT64_BASIS_BYTES
    monkeypatch.setattr(spectrum, "FLOAT64_BASIS_BYTES", 0)  # as if the model were large
    got = hessian_eigs(L, theta, 3)
    hessian_eigs(L, theta, 3, return_vectors=True)  # default tol 100 eps = 1.2e-5: float32 still does
    hessian_eigs(L, theta, 3, return_vectors=True, tol=1e-7)  # below FLOAT32_BASIS_TOL: float64
    assert [s[2] for s in shapes] == [F64, torch.float32, torch.float32, F64]
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5)
    np.testing.assert_allclose(small.numpy(), want, rtol=1e-5)


def test_streamed_products_over_batches_match_one_batch_and_dense(monkeypatch):
    L1, theta = conv_bn_landscape(1)
    L3, _ = conv_bn_landscape(3)
    # the product builds one batch's gradient graph at a time
    graphs = []
    make = spectrum._gradient_graph
    monkeypatch.setattr(spectrum, "_gradient_graph", lambda f, t: graphs.append(1) or make(f, t))
    V = torch.randn(2, L1.dim, dtype=F64, generator=torch.Generator().manual_seed(2))
    H = hessian(L1, theta[None])[0]
    torch.testing.assert_close(hvp(L3, theta, V), V @ H, rtol=1e-9, atol=1e-12)
    assert len(graphs) == 3
    torch.testing.assert_close(hvp(L1, theta, V), V @ H, rtol=1e-9, atol=1e-12)
    want = np.linalg.eigvalsh(H.numpy())[::-1][:3]
    np.testing.assert_allclose(hessian_eigs(L3, theta, 3, m=5).numpy(), want, rtol=1e-9)


@pytest.mark.parametrize("reorth", [True, False])
def test_density_matches_the_dense_eigendecomposition_of_a_conv_bn_net(conv_bn, reorth):
    """SLQ against the dense eigendecomposition H = U diag(ev) U^T: for the same Rademacher starts z_r, the
    exact quadrature is mean_r sum_i (z_r . u_i)^2 N(x; ev_i, sigma^2), and 60 steps (past the point where
    the plain recurrence has lost orthogonality and repeats its extreme Ritz values) must reproduce it to
    rounding, with full reorthogonalisation or without.  Then, over 16 starts, the density is near the
    exact spectral density (equal weights 1/D): its L1 distance 0.018 for 40 starts, 0.06 for one."""
    L, theta, ev, U = conv_bn
    sigma = 0.05 * (ev.max() - ev.min())
    grid = torch.linspace(ev.min() - 4 * sigma, ev.max() + 4 * sigma, 400, dtype=F64)
    g = grid.numpy()
    K = np.exp(-0.5 * ((g[:, None] - ev[None, :]) / sigma) ** 2) / (sigma * np.sqrt(2 * np.pi))
    nv = 16
    Z = spectrum._rademacher(nv, L.dim, torch.Generator().manual_seed(3)).numpy() / np.sqrt(L.dim)
    quadrature = (K @ ((Z @ U) ** 2).T).mean(1)
    x, dens = spectral_density(L, theta, n_vectors=nv, steps=60, grid=grid, sigma=sigma, seed=3,
                               reorthogonalise=reorth)
    np.testing.assert_allclose(dens.numpy(), quadrature, atol=1e-10 * quadrature.max())
    err = float(_trapezoid(np.abs(dens.numpy() - K.mean(1)), g))  # L1 distance of two densities
    assert err < 0.04, err
    assert float(_trapezoid(dens.numpy(), g)) == pytest.approx(1.0, abs=1e-3)


def test_density_without_reorthogonalisation_by_default_past_the_memory_bound(monkeypatch):
    L, theta = quadratic(with_spectrum(np.linspace(1, 2, 50), seed=1)), torch.zeros(50, dtype=F64)
    calls = []
    nodes = spectrum._krylov.slq_nodes
    monkeypatch.setattr(spectrum._krylov, "slq_nodes",
                        lambda op, s, m, b, reorth: calls.append((s.shape[0], reorth)) or nodes(op, s, m, b, reorth))
    spectral_density(L, theta, n_vectors=3, steps=20)
    monkeypatch.setattr(spectrum, "SLQ_BASIS_BYTES", 20 * 50 * 8 - 1)  # one run's basis no longer fits
    spectral_density(L, theta, n_vectors=3, steps=20)
    assert calls == [(3, True), (3, False)]


def test_hutchpp_with_a_bounded_sketch_stays_unbiased(monkeypatch):
    eigs = [40.0, 25.0, 12.0] + list(np.random.default_rng(1).normal(0.0, 0.3, 97))
    A = with_spectrum(eigs, seed=5)
    L, theta = quadratic(A), torch.zeros(100, dtype=F64)
    shapes = basis_shapes(monkeypatch)
    full = hutchinson_trace(L, theta, n_samples=30, seed=1)
    monkeypatch.setattr(spectrum, "SKETCH_BYTES", 3 * 100 * 8)  # a 3-row sketch instead of 10
    small = hutchinson_trace(L, theta, n_samples=30, seed=1)
    assert [s[0] for s in shapes] == [10, 3]
    for est, se in (full, small):
        assert abs(est - np.trace(A)) < 4 * se + 1e-9
    assert small[1] < 1.0  # three rows still take the three outliers


def test_bounded_memory_bad_inputs_get_named_errors():
    L = quadratic(np.eye(8))
    t = torch.zeros(8, dtype=F64)
    with pytest.raises(ValueError, match=r"m: got 4, expected an integer in \[5, 8\]"):
        hessian_eigs(L, t, 3, m=4)
    with pytest.raises(ValueError, match=r"tol: got 0.0, expected a number in \(0.0, 1.0\]"):
        hessian_eigs(L, t, 3, tol=0.0)
    with pytest.raises(ValueError, match=r"tol: got 1e-08 with basis_dtype=torch.float32 and return_vectors"):
        hessian_eigs(L, t, 3, tol=1e-8, basis_dtype=torch.float32, return_vectors=True)
    with pytest.raises(ValueError, match=r"basis_dtype: got torch.float16"):
        hessian_eigs(L, t, 3, basis_dtype=torch.float16)
    with pytest.raises(TypeError, match=r"reorthogonalise: got"):
        spectral_density(L, t, reorthogonalise="yes")


def test_change_rule_stops_before_the_exact_rule_within_its_tol_of_dense(conv_bn, monkeypatch):
    """stop="change" (PyHessian's reading of tol: every wanted Ritz value moved by < tol relative in the last
    step) on the conv-BN net, whose top 3 are 2.41, 0.785, 0.460 (clear gaps): fewer products than the
    default (exact) rule, eigenvalues within tol of the dense ones, and a smaller tol takes more steps."""
    L, theta, ev, _ = conv_bn
    want = ev[::-1][:3]
    products = []
    call = spectrum._HVP.__call__
    monkeypatch.setattr(spectrum._HVP, "__call__", lambda self, V: products.append(V.shape[0]) or call(self, V))
    runs = {}
    for stop, tol in (("residual", None), ("change", None), ("change", 1e-6)):
        products.clear()
        vals = hessian_eigs(L, theta, 3, stop=stop, tol=tol).numpy()
        runs[stop, tol] = sum(products), np.abs(vals - want).max() / np.abs(want).min()
    assert runs["change", None][0] < runs["residual", None][0]
    assert runs["change", None][1] < 1e-3  # the default tol, 1e-3
    assert runs["change", None][0] < runs["change", 1e-6][0]
    assert runs["change", 1e-6][1] < 1e-6
    with pytest.warns(RuntimeWarning, match="not converged after 4 .* largest change of a Ritz value is"):
        hessian_eigs(L, theta, 3, stop="change", iters=4)


def test_stop_rule_bad_value_gets_a_named_error():
    L = quadratic(np.eye(8))
    with pytest.raises(ValueError, match=r"stop: got 'changes', expected one of 'residual', 'change'"):
        hessian_eigs(L, torch.zeros(8, dtype=F64), 3, stop="changes")


def test_gradient_start_saves_products_and_misses_nothing(monkeypatch):
    """start="gradient" (unit gradient + unit random vector) against start="random" on quadratics
    0.5 x^T A x + b^T x at x = 0 (gradient b): when b leans on the top eigenvector, the top eigenvalue
    converges in fewer products; when b is a bottom eigenvector (nothing of the top ones in it), the top 3
    are still the dense ones, as from a random start."""
    rng = np.random.default_rng(7)
    eigs = np.concatenate([[10.0, 9.0, 8.5], rng.uniform(-1, 8, 197)])
    Q, _ = np.linalg.qr(rng.standard_normal((200, 200)))
    A = (Q * eigs) @ Q.T
    products = []
    call = spectrum._HVP.__call__
    monkeypatch.setattr(spectrum._HVP, "__call__", lambda self, V: products.append(V.shape[0]) or call(self, V))
    theta = torch.zeros(200, dtype=F64)
    leaning = quadratic(A, Q[:, 0] + 0.3 * Q[:, 1] + 0.05 * rng.standard_normal(200))
    used = {}
    for start in ("random", "gradient", "auto"):  # auto: the gradient, free on a quadratic's graph
        products.clear()
        np.testing.assert_allclose(hessian_eigs(leaning, theta, 1, start=start, tol=1e-3).numpy(), [10.0],
                                   rtol=1e-3)
        used[start] = sum(products)
    assert used["gradient"] == used["auto"] < used["random"]
    bottom = quadratic(A, Q[:, np.argmin(eigs)])
    for start in ("random", "gradient"):
        np.testing.assert_allclose(hessian_eigs(bottom, theta, 3, start=start).numpy(), [10.0, 9.0, 8.5],
                                   rtol=1e-10)
    with pytest.raises(ValueError, match=r"start: got 'ones', expected one of 'auto', 'gradient', 'random'"):
        hessian_eigs(leaning, theta, 1, start="ones")


@pytest.mark.parametrize("which", ["LA", "SA"])
def test_loose_tol_bounds_each_value_and_tight_tol_finds_the_top_k(which):
    """The error bound at a loose tol and what it cannot see, on the D = 33 MLP (dense eigh as the answer;
    its spectrum has close pairs: 1.457, 1.262 and -1.301, -1.246), over 20 seeds: at tol 1e-3 every
    returned value is within 1e-3 |H| of an eigenvalue of H (what the bound guarantees), and nearly every
    run returns the wanted k (a run whose start barely holds the k-th direction can return the (k+1)-th
    instead: 2 and 1 of the 20 here), and asking for k + 2 and keeping k returns the wanted k in every run;
    at tol 1e-6 every run returns the wanted k."""
    L, theta = mlp_landscape()
    ev = np.linalg.eigvalsh(hessian(L, theta[None])[0].numpy())
    scale = np.abs(ev).max()
    want = ev[::-1][:3] if which == "LA" else ev[:3]
    wrong = 0
    for seed in range(20):
        loose = hessian_eigs(L, theta, 3, which=which, tol=1e-3, seed=seed).numpy()
        assert np.abs(loose[:, None] - ev[None, :]).min(1).max() <= 1e-3 * scale
        wrong += np.abs(loose - want).max() > 1e-3 * scale
        guarded = hessian_eigs(L, theta, 5, which=which, tol=1e-3, seed=seed).numpy()[:3]
        np.testing.assert_allclose(guarded, want, atol=1e-3 * scale, err_msg=f"seed {seed}")
        tight = hessian_eigs(L, theta, 3, which=which, tol=1e-6, seed=seed).numpy()
        np.testing.assert_allclose(tight, want, atol=1e-6 * scale, err_msg=f"seed {seed}")
    assert wrong <= 3


@pytest.mark.parametrize("channels", [8, 128])
def test_module_hvp_in_either_layout_matches_plain_autograd(channels):
    """Landscape.from_module builds the products' gradient graph NCHW on convolutions of >= 128 channels
    (channels-last below): either way the products are double backward through the plain module's loss."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 3)).double()
    with torch.no_grad():
        model[1].running_mean.uniform_(-0.2, 0.2)
        model[1].running_var.uniform_(0.5, 1.5)
    model.eval()
    gen = torch.Generator().manual_seed(1)
    X, Y = torch.randn(6, 2, 4, 4, generator=gen, dtype=F64), torch.randint(0, 3, (6,), generator=gen)
    L = Landscape.from_module(model, nn.functional.cross_entropy, (X, Y))
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    V = torch.randn(3, L.dim, generator=gen, dtype=F64)
    params = [p.detach().clone().requires_grad_(True) for p in model.parameters()]
    names = [n for n, _ in model.named_parameters()]
    out = torch.func.functional_call(model, dict(zip(names, params, strict=True)), (X,))
    loss = nn.functional.cross_entropy(out, Y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    g = torch.cat([x.reshape(-1) for x in grads])
    want = torch.stack([torch.cat([h.reshape(-1) for h in torch.autograd.grad(g, params, v, retain_graph=True)])
                        for v in V])
    torch.testing.assert_close(hvp(L, theta, V), want, rtol=1e-9, atol=1e-11)


def test_a_very_large_model_basis_stays_within_its_memory_cap():
    """The default basis: 2k + 10 vectors, more for small models, fewer (down to k + 2) where 2k + 10 would pass
    LARGE_BASIS_BYTES (GPT-2 small's top eigenvalue held 6 GB of basis)."""
    from lscape.probes import spectrum

    assert spectrum._basis_size(2, 4_327_754, None) == 14  # a x4 ResNet-20: unchanged
    assert spectrum._basis_size(1, 124_439_808, None) == 4  # GPT-2 small: 2 GiB of float32 vectors
    assert spectrum._basis_size(1, 124_439_808, None, itemsize=8) == 3  # at least k + 2
    assert spectrum._basis_size(5, 100, None) == 60  # small: up to 60
    assert spectrum._basis_size(3, 10**9, None) == 5
