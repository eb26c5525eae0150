"""lscape.radial: radius, RadiusRecorder, fit_random_walk, r_x."""
import math

import numpy as np
import pytest
import torch
from lscape.radial import RadiusRecorder, fit_random_walk, r_x, radius
from lscape.subspace import Subspace
from torch import nn


def test_radius_of_module_tensor_and_subspace():
    torch.manual_seed(0)
    m = nn.Linear(4, 3)
    expect = math.sqrt(float(m.weight.detach().double().pow(2).sum() + m.bias.detach().double().pow(2).sum()))
    assert radius(m) == pytest.approx(expect, rel=1e-12)
    assert radius(torch.tensor([3.0, 4.0])) == pytest.approx(5.0)
    sub = Subspace(m, 3, kind="hypersphere", r0=2.5)
    assert radius(sub) == pytest.approx(2.5, rel=1e-6)  # |r|, not |theta|
    with pytest.raises(ValueError, match="^model: .*no parameters"):
        radius(nn.ReLU())
    with pytest.raises(TypeError, match="^model: got"):
        radius([1.0, 2.0])


def test_fit_exact_power_law_and_linear_r2():
    t = np.arange(0, 200, dtype=float)
    r0, c = 1.5, 0.3
    r = np.sqrt(r0**2 + c * t)
    f = fit_random_walk(t, r, r0)
    assert f.diffusion == pytest.approx(c, rel=1e-10) and abs(f.intercept) < 1e-8
    r = 2.0 * t ** 0.37
    f = fit_random_walk(t, r, 0.0)
    assert f.exponent == pytest.approx(0.37, rel=1e-10)
    assert f.log_prefactor == pytest.approx(math.log(2.0), rel=1e-10)


def test_simulated_random_walk_has_exponent_one_half():
    """A random walk from r0 = 0 in D = 2000 dims, step variance sigma^2 per component:
    r ~ t^(1/2) and r^2 - r0^2 ~ D sigma^2 t."""
    rng = np.random.default_rng(0)
    D, T, sigma = 2000, 400, 0.01
    steps = rng.standard_normal((T, D)) * sigma
    pos = np.vstack([np.zeros(D), np.cumsum(steps, axis=0)])
    r = np.linalg.norm(pos, axis=1)
    f = fit_random_walk(np.arange(T + 1), r, 0.0)
    assert f.exponent == pytest.approx(0.5, abs=0.02)
    assert f.diffusion == pytest.approx(D * sigma**2, rel=0.05)


def test_fit_bad_inputs():
    with pytest.raises(ValueError, match="^t, r: got shapes"):
        fit_random_walk([0, 1, 2], [1, 2], 1.0)
    with pytest.raises(ValueError, match="^t: got 1 distinct"):
        fit_random_walk([1, 1], [1, 2], 1.0)
    with pytest.raises(ValueError, match="^r0: got -1.0"):
        fit_random_walk([0, 1, 2], [1, 2, 3], -1.0)
    with pytest.raises(ValueError, match="^r: expected finite"):
        fit_random_walk([0, 1, 2], [1, np.nan, 3], 1.0)


def test_recorder_follows_optimizer_steps():
    torch.manual_seed(0)
    m = nn.Linear(5, 1)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    rec = RadiusRecorder(m, every=2)
    rec.attach(opt)
    x = torch.randn(16, 5)
    for _ in range(6):
        opt.zero_grad()
        m(x).pow(2).mean().backward()
        opt.step()
    assert rec.t.tolist() == [0.0, 2.0, 4.0, 6.0]
    assert rec.r[-1] == pytest.approx(radius(m))
    assert rec.r0 != rec.r[-1]
    rec.detach()
    opt.step()
    assert len(rec.r) == 4
    assert isinstance(rec.fit().diffusion, float)


def test_recorder_on_constrained_subspace_records_r0():
    torch.manual_seed(0)
    sub = Subspace(nn.Linear(5, 1), 4, kind="hypersphere", r0=3.0)
    opt = torch.optim.Adam(sub.parameters(), lr=0.1)
    sub.constrain(opt)
    rec = RadiusRecorder(sub)
    rec.attach(opt)  # after the constraint's post-hook
    x = torch.randn(16, 5)
    for _ in range(5):
        opt.zero_grad()
        sub(x).pow(2).mean().backward()
        opt.step()
    np.testing.assert_allclose(rec.r, 3.0, rtol=1e-5)


def test_r_x_default_linear_matches_formula_and_samples():
    model = nn.Sequential(nn.Linear(100, 50), nn.ReLU(), nn.Linear(50, 10))
    expect = math.sqrt((100 * 50 + 50) / (3 * 100) + (50 * 10 + 10) / (3 * 50))
    assert r_x(model) == pytest.approx(expect, rel=1e-12)
    # the radius of fresh default initialisations concentrates there
    radii = []
    for s in range(20):
        torch.manual_seed(s)
        radii.append(radius(nn.Sequential(nn.Linear(100, 50), nn.ReLU(), nn.Linear(50, 10))))
    assert np.mean(radii) == pytest.approx(expect, rel=0.02)


def test_r_x_he_xavier_conv_norm_and_callable():
    lin = nn.Linear(20, 10)
    assert r_x(lin, "he") == pytest.approx(math.sqrt(2 / 20 * 200))
    assert r_x(lin, "xavier") == pytest.approx(math.sqrt(2 / 30 * 200))
    conv = nn.Conv2d(3, 4, 3)  # fan_in 27
    assert r_x(conv) == pytest.approx(math.sqrt((4 * 27 + 4) / (3 * 27)))
    bn = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6))
    assert r_x(bn) == pytest.approx(math.sqrt(30 / 12 + 6))  # BN weight = 1, bias = 0
    assert r_x(lin, lambda mod, name, p: 1.0) == pytest.approx(math.sqrt(210))


def test_r_x_errors():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(3))

    with pytest.raises(ValueError, match="^model: parameter 'w' of a Odd"):
        r_x(Odd())
    with pytest.raises(ValueError, match="^model: .*no parameters"):
        r_x(nn.ReLU())
    with pytest.raises(ValueError, match="^init: got 'lecun'"):
        r_x(nn.Linear(2, 2), "lecun")
    with pytest.raises(ValueError, match="^init: gave -1.0"):
        r_x(nn.Linear(2, 2), lambda *a: -1.0)
