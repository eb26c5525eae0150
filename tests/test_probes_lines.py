"""probes.lines against independent answers: closed-form losses along lines and planes of a quadratic,
the loss-landscapes package's linear interpolation, Li et al.'s per-filter norms, trajectories built
with known coordinates, and a named error for every bad input."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from lscape import Landscape
from lscape.probes.lines import interpolate, plane, project_trajectory, random_direction
from torch import nn

pytestmark = pytest.mark.usefixtures("one_torch_thread")
F64 = torch.float64


def quadratic_problem(D: int = 7, seed: int = 0):
    """f(x) = 0.5 x^T A x + b^T x as a Landscape, with numpy A, b for the closed forms."""
    rng = np.random.default_rng(seed)
    M = rng.standard_normal((D, D))
    A = M @ M.T - 2.0 * np.eye(D)  # indefinite on purpose
    b = rng.standard_normal(D)
    At, bt = torch.tensor(A), torch.tensor(b)
    L = Landscape.from_function(lambda x: 0.5 * x @ At @ x + bt @ x, dim=D)
    f = lambda x: 0.5 * x @ A @ x + b @ x  # noqa: E731
    return L, A, b, f, rng


# ---- interpolate --------------------------------------------------------------------------------------
def test_interpolate_quadratic_is_exact_inside_and_outside_the_segment():
    L, A, b, f, rng = quadratic_problem()
    t0, t1 = rng.standard_normal(7), rng.standard_normal(7)
    alphas = np.array([-1.5, -0.25, 0.0, 0.3, 0.5, 1.0, 1.75, 3.0])
    got = interpolate(L, torch.tensor(t0), torch.tensor(t1), alphas)
    # along theta0 + a d the quadratic is f(theta0) + a g.d + a^2 d^T A d / 2
    d = t1 - t0
    want = f(t0) + alphas * ((A @ t0 + b) @ d) + 0.5 * alphas ** 2 * (d @ A @ d)
    assert got.shape == (8,) and got.dtype == F64
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=1e-12)


def test_interpolate_ends_are_the_end_points_exactly():
    L, *_ , rng = quadratic_problem()
    t0, t1 = torch.tensor(rng.standard_normal(7)), torch.tensor(rng.standard_normal(7))
    got = interpolate(L, t0, t1, [0.0, 1.0])
    assert torch.equal(got, L.loss(torch.stack([t0, t1])))


def test_interpolate_evaluates_all_points_in_batched_calls():
    sizes = []

    def fn(T):
        sizes.append(T.shape[0])
        return (T ** 2).sum(1)

    L = Landscape.from_function(fn, dim=3, batched=True, chunk=64)
    alphas = torch.linspace(-1, 2, 150, dtype=F64)
    out = interpolate(L, torch.zeros(3, dtype=F64), torch.ones(3, dtype=F64), alphas)
    assert sizes == [64, 64, 22]  # the landscape's chunks, not one call per alpha
    torch.testing.assert_close(out, 3 * alphas ** 2)


def _tiny_classifier(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))


def test_interpolate_agrees_with_loss_landscapes_linear_interpolation():
    ll = pytest.importorskip("loss_landscapes", reason="loss-landscapes (test extra) is the independent oracle")
    from loss_landscapes.metrics import Loss

    gen = torch.Generator().manual_seed(3)
    X, Y = torch.randn(40, 5, generator=gen), torch.randint(0, 3, (40,), generator=gen)
    m0, m1 = _tiny_classifier(0), _tiny_classifier(1)
    steps = 25
    want = ll.linear_interpolation(m0, m1, Loss(nn.functional.cross_entropy, X, Y), steps=steps,
                                   deepcopy_model=True)
    # loss-landscapes steps from the start by (end - start) / steps and evaluates after each step:
    # alphas 1/steps, 2/steps, ..., 1
    alphas = np.arange(1, steps + 1) / steps
    flat = lambda m: torch.cat([p.detach().reshape(-1) for p in m.parameters()])  # noqa: E731
    L = Landscape.from_module(copy.deepcopy(m0), nn.functional.cross_entropy, (X, Y), chunk=8)
    got = interpolate(L, flat(m0), flat(m1), alphas)
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-5)


# ---- random_direction ---------------------------------------------------------------------------------
class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(16, 5)
        self.out = nn.Linear(5, 2, bias=False)

    def forward(self, x):
        h = torch.relu(self.bn(self.conv(x)))
        return self.out(torch.relu(self.fc(h.flatten(1))))


def _pieces(model: nn.Module, d: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{name: (weight, direction piece)} splitting d in named_parameters order."""
    out, off = {}, 0
    for name, p in model.named_parameters():
        out[name] = (p.detach(), d[off:off + p.numel()].reshape(p.shape))
        off += p.numel()
    assert off == d.numel()
    return out


def test_filter_normalisation_matches_filter_norms_and_zeroes_bias_and_batchnorm():
    torch.manual_seed(0)
    model = ConvNet()
    d = random_direction(model, norm="filter", seed=5)
    assert d.shape == (sum(p.numel() for p in model.parameters()),) and d.dtype == torch.float32
    pieces = _pieces(model, d)
    for name in ("conv.weight", "fc.weight", "out.weight"):
        w, dw = pieces[name]
        wn = w.reshape(w.shape[0], -1).norm(dim=1)  # one norm per output channel / output unit
        dn = dw.reshape(dw.shape[0], -1).norm(dim=1)
        torch.testing.assert_close(dn, wn, rtol=1e-6, atol=0)
        assert (dw != 0).all()
    for name in ("conv.bias", "bn.weight", "bn.bias", "fc.bias"):
        assert (pieces[name][1] == 0).all(), name


def test_layer_normalisation_matches_each_tensors_norm():
    torch.manual_seed(0)
    model = ConvNet()
    d = random_direction(model, norm="layer", seed=2)
    for name, (w, dw) in _pieces(model, d).items():
        torch.testing.assert_close(dw.norm(), w.norm(), rtol=1e-6, atol=0, msg=name)


def test_directions_share_one_gaussian_and_are_deterministic():
    torch.manual_seed(0)
    model = ConvNet().double()
    raw = random_direction(model, norm=None, seed=11)
    filt = random_direction(model, norm="filter", seed=11)
    assert raw.dtype == F64
    assert torch.equal(raw, random_direction(model, norm=None, seed=11))
    assert not torch.equal(raw, random_direction(model, norm=None, seed=12))
    # the filter-normalised direction is the raw draw rescaled filter by filter
    for (name, (w, r)), (_, (_, f)) in zip(_pieces(model, raw).items(), _pieces(model, filt).items(), strict=False):
        if w.ndim >= 2:
            r2, f2 = r.reshape(r.shape[0], -1), f.reshape(f.shape[0], -1)
            torch.testing.assert_close(f2, r2 * (f2.norm(dim=1) / r2.norm(dim=1))[:, None], msg=name)
    # raw draws look standard normal
    assert abs(float(raw.mean())) < 0.2 and abs(float(raw.std()) - 1) < 0.2


def test_direction_layout_matches_landscape_from_module():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
    X, Y = torch.randn(10, 3), torch.randn(10, 1)
    L = Landscape.from_module(model, nn.functional.mse_loss, (X, Y))
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    d = random_direction(model, norm="filter", seed=0)
    # stepping theta + d must move exactly the weight rows, as a model perturbed in place would
    moved = copy.deepcopy(model)
    with torch.no_grad():
        for (_, p), (_, (_, dp)) in zip(moved.named_parameters(), _pieces(model, d).items(), strict=False):
            p += dp
    want = nn.functional.mse_loss(moved(X), Y)
    torch.testing.assert_close(L.loss((theta + d)[None])[0], want)


# ---- plane --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("grid", [5, (4, 3), ([-2.0, 0.0, 0.5, 3.0], np.array([1.0, -1.0]))])
def test_plane_quadratic_is_exact(grid):
    L, A, b, f, rng = quadratic_problem(D=6, seed=1)
    c, u, v = (rng.standard_normal(6) for _ in range(3))
    alphas, betas, loss = plane(L, torch.tensor(c), torch.tensor(u), torch.tensor(v), grid)
    if isinstance(grid, int):
        want_a = want_b = np.linspace(-1, 1, grid)
    elif isinstance(grid[0], int):
        want_a, want_b = np.linspace(-1, 1, grid[0]), np.linspace(-1, 1, grid[1])
    else:
        want_a, want_b = np.asarray(grid[0]), np.asarray(grid[1])
    np.testing.assert_allclose(alphas.numpy(), want_a, atol=1e-15)
    np.testing.assert_allclose(betas.numpy(), want_b, atol=1e-15)
    want = np.array([[f(c + a * u + bb * v) for bb in want_b] for a in want_a])
    assert loss.shape == want.shape
    np.testing.assert_allclose(loss.numpy(), want, rtol=1e-12, atol=1e-12)


# ---- project_trajectory -------------------------------------------------------------------------------
def test_project_trajectory_recovers_known_coordinates_and_residuals():
    rng = np.random.default_rng(4)
    D = 9
    ti, tf = rng.standard_normal(D), rng.standard_normal(D)
    d = tf - ti
    E = rng.standard_normal((D, 2))
    E -= np.outer(d, d @ E) / (d @ d)  # directions off the line
    E, _ = np.linalg.qr(E)
    coord = np.array([0.0, -0.4, 0.2, 0.5, 1.0, 1.3])
    resid = np.array([0.0, 0.7, 2.0, 0.0, 0.0, 1.1])
    mix = rng.standard_normal((6, 2))
    mix /= np.linalg.norm(mix, axis=1, keepdims=True)
    pts = ti + coord[:, None] * d + (resid[:, None] * mix) @ E.T
    c, r = project_trajectory(torch.tensor(pts), ti, tf)
    assert c.dtype == r.dtype == F64
    np.testing.assert_allclose(c.numpy(), coord, atol=1e-12)
    np.testing.assert_allclose(r.numpy(), resid, atol=1e-12)


# ---- errors -------------------------------------------------------------------------------------------
def test_bad_inputs_get_named_errors():
    L, *_ , rng = quadratic_problem(D=4)
    t = torch.zeros(4, dtype=F64)
    with pytest.raises(TypeError, match="landscape: got"):
        interpolate("not a landscape", t, t, [0.5])
    with pytest.raises(ValueError, match=r"theta0: got tensor of shape \(5,\).*shape \(4,\)"):
        interpolate(L, torch.zeros(5), t, [0.5])
    with pytest.raises(ValueError, match=r"theta1: got tensor of shape \(1, 4\)"):
        interpolate(L, t, torch.zeros(1, 4), [0.5])
    with pytest.raises(ValueError, match="theta1: .*non-finite"):
        interpolate(L, t, torch.tensor([0.0, float("nan"), 0, 0]), [0.5])
    with pytest.raises(ValueError, match="theta0: .*int64.*floating"):
        interpolate(L, torch.zeros(4, dtype=torch.int64), t, [0.5])
    with pytest.raises(ValueError, match="alphas: .*non-finite"):
        interpolate(L, t, t, [0.0, float("inf")])
    with pytest.raises(ValueError, match=r"alphas: got .*shape \(2, 2\)"):
        interpolate(L, t, t, np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"alphas: got .*shape \(0,\)"):
        interpolate(L, t, t, [])
    with pytest.raises(TypeError, match="alphas: got str"):
        interpolate(L, t, t, "0.5")

    with pytest.raises(ValueError, match=r"grid: got 1, expected an integer in \[2, inf\]"):
        plane(L, t, t, t, 1)
    with pytest.raises(TypeError, match="grid: got float"):
        plane(L, t, t, t, 3.0)
    with pytest.raises(TypeError, match="grid: got tuple"):
        plane(L, t, t, t, (3, [0.0, 1.0]))
    with pytest.raises(ValueError, match=r"grid\[1\] \(betas\): .*non-finite"):
        plane(L, t, t, t, ([0.0], [float("nan")]))
    with pytest.raises(ValueError, match=r"v: got tensor of shape \(3,\)"):
        plane(L, t, t, torch.zeros(3), 3)

    model = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="norm: got 'model', expected one of 'filter', 'layer', None"):
        random_direction(model, norm="model")
    with pytest.raises(TypeError, match="model: got numpy array"):
        random_direction(np.zeros(3))
    with pytest.raises(ValueError, match="model: has no parameters"):
        random_direction(nn.ReLU())
    with pytest.raises(ValueError, match="seed: got -1"):
        random_direction(model, seed=-1)

    with pytest.raises(ValueError, match=r"thetas: got tensor of shape \(3, 5\).*\(T, 4\)"):
        project_trajectory(torch.zeros(3, 5, dtype=F64), t, t + 1)
    with pytest.raises(ValueError, match="theta_f: equals theta_i"):
        project_trajectory(torch.zeros(3, 4, dtype=F64), t, t)
    with pytest.raises(ValueError, match=r"theta_f: got tensor of shape \(3,\)"):
        project_trajectory(torch.zeros(3, 4, dtype=F64), t, torch.ones(3))
    with pytest.raises(ValueError, match="thetas: .*non-finite"):
        project_trajectory(torch.full((2, 4), float("nan"), dtype=F64), t, t + 1)
