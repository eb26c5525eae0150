"""Basin volume along random rays: exact ray radii and volumes of ellipsoids {x : (x - m)^T A (x - m) < c}
(radius sqrt(c / u^T A u), volume V_D c^(D/2) / sqrt(det A)), log-space volumes where exp(D log r) over-
or underflows, censoring, the first crossing, batching, and argument errors."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import count_calls
from lscape import Landscape
from lscape.probes.basin import basin_volume, log_star_volume, log_unit_ball_volume, ray_directions
from lscape.tinymlp import wf_network, wf_training_set

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def ellipsoid(D: int, seed: int, eig=(0.5, 4.0)):
    """(Landscape of (x - m)^T A (x - m), A, m): A = Q diag(eigenvalues in eig) Q^T, m random."""
    gen = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(D, D, generator=gen, dtype=torch.float64))
    lam = torch.linspace(*eig, D, dtype=torch.float64)
    A = Q @ torch.diag(lam) @ Q.T
    A = 0.5 * (A + A.T)
    m = torch.randn(D, generator=gen, dtype=torch.float64)
    L = Landscape.from_function(lambda t: (((t - m) @ A) * (t - m)).sum(1), D, batched=True)
    return L, A, m


def exact_radii(A: torch.Tensor, c: float, U: torch.Tensor) -> torch.Tensor:
    return torch.sqrt(c / ((U @ A) * U).sum(1))


def exact_log_volume(A: torch.Tensor, c: float) -> float:
    D = A.shape[0]
    return log_unit_ball_volume(D) + 0.5 * D * math.log(c) - 0.5 * float(torch.logdet(A))


# ---- radii and volumes of ellipsoids -------------------------------------------------------------------
@pytest.mark.parametrize("D", [2, 3, 5])
def test_ray_radii_match_the_ellipsoid(D):
    L, A, m = ellipsoid(D, seed=D)
    c, tol = 0.7, 1e-7
    res = basin_volume(L, m, c, n_rays=500, r_max=2.0, tol=tol, seed=1)
    want = exact_radii(A, c, ray_directions(500, D, seed=1))
    assert not bool(res.censored.any())
    assert float((res.radii - want).abs().max()) <= tol / 2 + 1e-12
    assert res.loss_at_theta == 0.0 and res.dim == D


@pytest.mark.parametrize("D", [2, 3, 5])
def test_volume_matches_the_ellipsoid_within_the_stated_uncertainty(D):
    L, A, m = ellipsoid(D, seed=10 + D)
    c = 1.3
    res = basin_volume(L, m, c, n_rays=4000, r_max=2.0, seed=2)
    want = exact_log_volume(A, c)
    assert 0 < res.log_volume_se < 0.05, "enough rays for a useful estimate"
    assert abs(res.log_volume - want) < 3 * res.log_volume_se
    assert res.ess > 1000 and not res.is_lower_bound


def test_the_standard_error_is_calibrated():
    """Over 40 seeds the errors of log V divided by their stated standard errors look standard normal."""
    L, A, m = ellipsoid(3, seed=7, eig=(0.3, 3.0))
    want = exact_log_volume(A, 1.0)
    z = []
    for seed in range(40):
        res = basin_volume(L, m, 1.0, n_rays=400, r_max=3.0, tol=1e-5, seed=seed)
        z.append((res.log_volume - want) / res.log_volume_se)
    z = np.array(z)
    assert abs(z.mean()) < 0.6  # 3.8 standard errors of a mean of 40 unit normals
    assert 0.6 < z.std() < 1.5


@pytest.mark.parametrize("R", [0.5, 3.0])
def test_log_volume_in_high_dimension_where_exp_would_overflow_or_underflow(R):
    """D = 3000: exp(D log R) underflows to 0 (R = 0.5) or overflows to inf (R = 3); log V does neither."""
    D = 3000
    with np.errstate(over="ignore", under="ignore"):
        naive = np.exp(D * np.log(R))
    assert naive == (0.0 if R < 1 else np.inf)
    m = torch.linspace(-1, 1, D, dtype=torch.float64)
    L = Landscape.from_function(lambda t: ((t - m) ** 2).sum(1) / R**2, D, batched=True)
    tol = 1e-10
    res = basin_volume(L, m, 1.0, n_rays=64, r_max=2 * R, tol=tol, seed=3)
    assert float((res.radii - R).abs().max()) <= tol / 2 + 1e-13
    want = log_unit_ball_volume(D) + D * math.log(R)
    assert math.isfinite(res.log_volume)
    assert abs(res.log_volume - want) < D * tol / R + 1e-9
    assert res.ess == pytest.approx(64, rel=1e-6)


def test_log_star_volume_handles_extreme_radii():
    for D in (1, 7, 10_000, 10**7):
        for R in (1e-3, 1.0, 1e3):
            lv, se, ess = log_star_volume(np.full(10, R), D)
            assert lv == pytest.approx(log_unit_ball_volume(D) + D * math.log(R), rel=1e-12, abs=1e-9)
            assert se == 0.0 and ess == pytest.approx(10)
    # two rays, one e^50 times longer in D = 100 terms of log r: the mean is all the longer ray's
    lv, se, ess = log_star_volume([1.0, math.exp(0.5)], 100)
    assert lv == pytest.approx(log_unit_ball_volume(100) + 50 - math.log(2), abs=1e-12)
    assert ess == pytest.approx(1.0, abs=1e-12)


def test_unit_ball_volume_follows_the_recursion():
    """V_1 = 2, V_2 = pi, V_D = 2 pi / D V_{D-2}: summed in logs up to D = 3001, independent of lgamma."""
    logs = {1: math.log(2.0), 2: math.log(math.pi)}
    for D in range(3, 3002):
        logs[D] = logs[D - 2] + math.log(2 * math.pi / D)
    for D in (1, 2, 3, 5, 136, 3000, 3001):
        assert log_unit_ball_volume(D) == pytest.approx(logs[D], rel=1e-12, abs=1e-12)


# ---- censoring and the first crossing ------------------------------------------------------------------
def test_rays_that_never_cross_are_censored_at_r_max():
    L, A, m = ellipsoid(3, seed=4, eig=(0.25, 4.0))  # radii from 0.5 to 2 for c = 1
    r_max = 0.8
    res = basin_volume(L, m, 1.0, n_rays=600, r_max=r_max, tol=1e-8, seed=5)
    want = exact_radii(A, 1.0, ray_directions(600, 3, seed=5))
    clear = (want - r_max).abs() > 1e-6
    assert torch.equal(res.censored[clear], (want > r_max)[clear])
    assert 50 < int(res.censored.sum()) < 550, "both kinds of ray should occur"
    assert bool((res.radii[res.censored] == r_max).all())
    inside = ~res.censored
    assert float((res.radii[inside] - want[inside]).abs().max()) <= 1e-8
    assert res.is_lower_bound and res.log_volume < exact_log_volume(A, 1.0)


def test_the_first_crossing_is_found_not_a_later_one():
    """A radial loss above the threshold on 1 <= |x - m| < 1.5 and again beyond 2.5: every ray stops at 1."""
    m = torch.tensor([0.2, -0.1, 0.4, 0.0], dtype=torch.float64)

    def fn(t):
        r = (t - m).norm(dim=1)
        return (((r >= 1.0) & (r < 1.5)) | (r >= 2.5)).double()

    L = Landscape.from_function(fn, 4, batched=True)
    res = basin_volume(L, m, 0.5, n_rays=200, r_max=4.0, tol=1e-9, seed=0)
    assert float((res.radii - 1.0).abs().max()) <= 1e-9


def test_a_nan_loss_counts_as_outside():
    m = torch.zeros(3, dtype=torch.float64)

    def fn(t):
        r = t.norm(dim=1)
        return torch.where(r > 0.7, torch.full_like(r, math.nan), 0.0 * r)

    res = basin_volume(Landscape.from_function(fn, 3, batched=True), m, 1.0, n_rays=50, r_max=2.0, tol=1e-9)
    assert float((res.radii - 0.7).abs().max()) <= 1e-9


# ---- batching, determinism, other landscapes --------------------------------------------------------------
def test_every_scan_radius_and_bisection_step_is_one_call_on_all_rays():
    L, A, m = ellipsoid(2, seed=3, eig=(1.0, 1.0))  # a disc of radius 0.949 for c = 0.9
    calls = count_calls(L, "loss")
    res = basin_volume(L, m, 0.9, n_rays=300, r_max=2.0, tol=1e-6, seed=0, n_scan=16)
    cell = 2.0 / 16
    n_bisect = math.ceil(math.log2(cell / 1e-6))
    # the loss at theta, then 8 scan radii (the 8th, 1.0, is the first outside), then the bisection
    assert calls == [1] + [300] * 8 + [300] * n_bisect
    assert res.evaluations == 8 + n_bisect


def test_the_scan_stops_evaluating_rays_that_have_crossed():
    L, A, m = ellipsoid(2, seed=6, eig=(1.0, 16.0))  # radii from 0.25 to 1
    calls = count_calls(L, "loss")
    res = basin_volume(L, m, 1.0, n_rays=400, r_max=2.0, seed=1, n_scan=8)
    scan = calls[1:1 + 4]  # scan radii 0.25, 0.5, 0.75, 1.0: the last ray crosses at 1.0
    assert scan[0] == 400 and scan == sorted(scan, reverse=True) and scan[-1] < 400
    assert all(n == 400 for n in calls[5:]), "the bisection runs on every ray at once"
    assert not res.censored.any()


def test_rays_depend_only_on_seed_and_index():
    U = ray_directions(50, 7, seed=9)
    torch.testing.assert_close(U.norm(dim=1), torch.ones(50, dtype=torch.float64))
    assert torch.equal(ray_directions(20, 7, seed=9), U[:20])
    assert torch.equal(ray_directions(10, 7, seed=9, first=30), U[30:40])
    assert not torch.equal(ray_directions(50, 7, seed=10), U)
    L, A, m = ellipsoid(3, seed=1)
    a = basin_volume(L, m, 1.0, n_rays=100, r_max=3.0, seed=4)
    b = basin_volume(L, m, 1.0, n_rays=100, r_max=3.0, seed=4)
    assert torch.equal(a.radii, b.radii) and a.log_volume == b.log_volume


def test_directions_are_uniform_on_the_sphere():
    U = ray_directions(20000, 3, seed=0)
    assert float(U.mean(0).abs().max()) < 4 * math.sqrt(1 / 3 / 20000)
    torch.testing.assert_close(U.T @ U / 20000, torch.eye(3, dtype=torch.float64) / 3, atol=0.01, rtol=0)


def test_basin_of_the_wf_network_on_the_fused_kernel():
    """float32 fused-kernel landscape: radii bracket the threshold crossing to tol."""
    spec, wf = wf_network()
    L = Landscape.from_mlp(spec, *wf_training_set())
    loss0 = float(L.loss(wf.float()[None])[0])
    thr = loss0 + 1e-3
    res = basin_volume(L, wf.float(), thr, n_rays=64, r_max=1.0, tol=1e-5, seed=0)
    assert not res.censored.any()
    U = ray_directions(64, spec.dim, seed=0).float()
    inner = L.loss(wf.float() + (res.radii - 1e-5).float()[:, None] * U)
    outer = L.loss(wf.float() + (res.radii + 1e-5).float()[:, None] * U)
    assert bool((inner < thr).all()) and bool((outer >= thr).all())
    assert math.isfinite(res.log_volume)


def test_progress_reaches_the_end():
    L, A, m = ellipsoid(2, seed=1)
    seen = []
    basin_volume(L, m, 1.0, n_rays=10, r_max=3.0, progress=lambda d, t: seen.append((d, t)))
    assert seen[-1][0] == seen[-1][1] and [d for d, _ in seen] == sorted(d for d, _ in seen)


# ---- errors -----------------------------------------------------------------------------------------------
def test_theta_above_the_threshold_is_refused():
    L, A, m = ellipsoid(3, seed=0)
    lam, vec = torch.linalg.eigh(A)
    assert float(lam[0]) == pytest.approx(0.5)  # so the loss at m + 2 v_0 is 4 * 0.5 = 2
    with pytest.raises(ValueError, match=r"threshold: got 1.5, but the loss at theta is already (1\.99|2\.0)"):
        basin_volume(L, m + 2.0 * vec[:, 0], 1.5)


BAD = [
    (dict(landscape=3), TypeError, r"landscape: got int"),
    (dict(theta=torch.zeros(4, dtype=torch.float64)), ValueError,
     r"theta: got tensor of shape \(4,\).*expected one finite floating point of shape \(3,\) or \(1, 3\)"),
    (dict(theta=torch.zeros(2, 3, dtype=torch.float64)), ValueError, r"theta: got tensor of shape \(2, 3\)"),
    (dict(theta=torch.tensor([0.0, math.nan, 0.0], dtype=torch.float64)), ValueError, r"theta: got"),
    (dict(threshold=math.inf), ValueError, r"threshold: got inf, expected a finite real"),
    (dict(threshold="low"), TypeError, r"threshold: got str"),
    (dict(theta=torch.zeros(3, dtype=torch.int64)), ValueError,
     r"theta: got tensor of shape \(3,\), dtype torch.int64"),
    (dict(n_rays=0), ValueError, r"n_rays: got 0"),
    (dict(r_max=0.0), ValueError, r"r_max: got 0.0"),
    (dict(r_max=math.inf), ValueError, r"r_max: got inf"),
    (dict(tol=0.0), ValueError, r"tol: got 0.0"),
    (dict(tol=5.0), ValueError, r"tol: got 5.0, expected a number in \(0.0, 1.0\]"),
    (dict(seed=-3), ValueError, r"seed: got -3"),
    (dict(n_scan=0), ValueError, r"n_scan: got 0"),
    (dict(progress=3), TypeError, r"progress: got 3"),
]


@pytest.mark.parametrize("change, exc, match", BAD)
def test_bad_arguments_are_named(change, exc, match):
    L, A, m = ellipsoid(3, seed=0)
    args = dict(landscape=L, theta=m, threshold=1.0, n_rays=10, r_max=1.0)
    args.update(change)
    calls = count_calls(L, "loss")
    with pytest.raises(exc, match=match):
        basin_volume(**args)
    assert calls == [], "arguments are checked before any evaluation"
