"""Progressive random and gradient walks: the rules of Malan & Engelbrecht (CEC 2014, Algorithm 1) and
Bosman et al. (2019, §II) checked step by step, batching that changes nothing, NaN isolation, and
argument errors."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import count_calls
from lscape import Landscape, TinyMLP
from lscape.probes import walks
from lscape.probes.walks import progressive_walk
from lscape.tinymlp import wf_network, wf_training_set

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def bowl(D: int, center=None, scale=None) -> Landscape:
    """sum_j a_j (x_j - m_j)^2 (float64), gradient 2 a (x - m)."""
    m = torch.zeros(D, dtype=torch.float64) if center is None else torch.as_tensor(center, dtype=torch.float64)
    a = torch.ones(D, dtype=torch.float64) if scale is None else torch.as_tensor(scale, dtype=torch.float64)
    return Landscape.from_function(lambda t: (a * (t - m) ** 2).sum(1), D, batched=True)


def rosenbrock(D: int) -> Landscape:
    """A non-separable surface (each gradient entry couples neighbours), evaluated row by row via vmap."""
    return Landscape.from_function(lambda t: (100 * (t[1:] - t[:-1] ** 2) ** 2 + (1 - t[:-1]) ** 2).sum(), D)


def steps_of(res) -> torch.Tensor:
    """(W, steps, D) displacement of every step."""
    return res.positions[:, 1:] - res.positions[:, :-1]


# ---- batching ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("gradient", [True, False])
def test_every_step_is_one_call_on_all_walkers(gradient):
    L = bowl(4)
    calls = count_calls(L, "loss_and_grad")
    res = progressive_walk(L, 37, 12, 0.1, (-1.0, 1.0), gradient=gradient)
    assert calls == [37] * 13
    assert res.loss.shape == res.grad_norm.shape == (37, 13)
    assert res.end.shape == res.start.shape == (37, 4) and res.positions is None


@pytest.mark.parametrize("gradient", [True, False])
@pytest.mark.parametrize("surface", ["rosenbrock", "wf-mlp"])
def test_batched_equals_one_walker_at_a_time(surface, gradient):
    """Walker w of a batch walks exactly as a lone walker with first_walker=w: its path depends only on
    (seed, w), from random starts and from given starts, on vmapped and fused-kernel landscapes."""
    if surface == "rosenbrock":
        L, box, bound = rosenbrock(5), (-2.0, 2.0), 0.05
        given = torch.linspace(-1.5, 1.5, 6 * 5, dtype=torch.float64).reshape(6, 5)
    else:
        spec, wf = wf_network()
        L, box, bound = Landscape.from_mlp(spec, *wf_training_set()), (-3.0, 3.0), 0.02
        given = (wf.float() + 0.01 * TinyMLP(5, 5).init(6, seed=2)).clamp(-3, 3)
    for starts in (6, given):
        batch = progressive_walk(L, starts, 15, bound, box, gradient=gradient, seed=11, record_positions=True)
        for w in range(6):
            one = progressive_walk(L, 1 if isinstance(starts, int) else starts[w:w + 1], 15, bound, box,
                                   gradient=gradient, seed=11, first_walker=w, record_positions=True)
            assert torch.equal(one.positions[0], batch.positions[w]), f"walker {w} took another path"
            torch.testing.assert_close(one.loss[0], batch.loss[w], rtol=1e-6, atol=0)
            torch.testing.assert_close(one.grad_norm[0], batch.grad_norm[w], rtol=1e-6, atol=0)
        other = progressive_walk(L, starts, 15, bound, box, gradient=gradient, seed=12)
        assert not torch.equal(other.end, batch.end), "another seed should give other walks"


@pytest.mark.parametrize("gradient", [True, False])
def test_torch_step_path_equals_numpy_step_path(monkeypatch, gradient):
    """The step arithmetic runs in numpy on the CPU and in torch elsewhere (GPUs): both take the same path."""
    L = rosenbrock(6)
    args = dict(starts=9, steps=25, step_bound=[0.3, 0.01, 0.1, 0.2, 0.05, 0.4], bounds=(-1.0, 1.0),
                gradient=gradient, seed=3, record_positions=True)
    a = progressive_walk(L, **args)
    monkeypatch.setattr(walks, "_numpy_steps", lambda device: False)
    b = progressive_walk(L, **args)
    assert torch.equal(a.positions, b.positions) and torch.equal(a.loss, b.loss)
    torch.testing.assert_close(a.grad_norm, b.grad_norm, rtol=1e-14, atol=0)  # the sums' order differs


# ---- step sizes and bounds ---------------------------------------------------------------------------------
@pytest.mark.parametrize("gradient", [True, False])
def test_steps_never_exceed_the_bound_per_dimension(gradient):
    bound = torch.tensor([0.001, 0.01, 0.05, 0.2], dtype=torch.float64)
    res = progressive_walk(bowl(4), 200, 60, bound, (-1.0, 1.0), gradient=gradient, seed=5,
                           record_positions=True)
    d = steps_of(res).abs()
    assert bool((d <= bound * (1 + 1e-12)).all())
    # the bound is used: the largest step in each dimension comes close to it
    assert bool((d.amax(dim=(0, 1)) > 0.99 * bound).all())


def test_step_sizes_are_uniform_within_the_bound():
    """On a linear surface far from the bounds every gradient step is a full U(0, bound) draw: the
    fraction r / bound has mean 1/2 and variance 1/12."""
    c = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    L = Landscape.from_function(lambda t: t @ c, 3)
    bound = torch.tensor([0.01, 0.02, 0.04], dtype=torch.float64)
    res = progressive_walk(L, torch.zeros(100, 3, dtype=torch.float64), 40, bound, (-10.0, 10.0), seed=1,
                           record_positions=True)
    frac = (steps_of(res).abs() / bound).flatten()
    n = frac.numel()
    assert abs(float(frac.mean()) - 0.5) < 4 * math.sqrt(1 / 12 / n)
    assert abs(float(frac.var()) - 1 / 12) < 0.01


@pytest.mark.parametrize("gradient", [True, False])
def test_walkers_stay_inside_per_dimension_bounds(gradient):
    """Small domains and the largest allowed steps: walkers hit the walls constantly and never cross."""
    low = torch.tensor([-1.0, 0.0, 2.0, -0.1], dtype=torch.float64)
    high = torch.tensor([1.0, 0.5, 2.25, 0.1], dtype=torch.float64)
    L = bowl(4, center=[5.0, -5.0, 0.0, 3.0])  # the minimum lies outside the box: gradients push out
    res = progressive_walk(L, 50, 100, high - low, (low, high), gradient=gradient, seed=8,
                           record_positions=True)
    p = res.positions
    assert bool(((p >= low) & (p <= high)).all())
    assert bool(((res.end >= low) & (res.end <= high)).all())
    near = torch.minimum(p - low, high - p) < 0.01 * (high - low)
    assert float(near.double().mean()) > 0.01, "the walls should have been met often"


# ---- the progressive random walk (Malan & Engelbrecht 2014, Algorithm 1) -----------------------------------
def reference_random_walk(seed: int, walker: int, D: int, steps: int, low, high, bound) -> np.ndarray:
    """Algorithm 1 of Malan & Engelbrecht (2014), one walker, in plain float64 Python, fed the uniforms
    lscape's generator gives walker `walker` (documented contract: tag 0 for the start, s + 1 for step s)."""
    key = walks._walker_keys(seed, walker, 1)
    h = walks._draws(key, 0, 2 * D + 1)[0]
    u = walks._uniform(h)
    zone = [int(h[D + j] >> np.uint32(31)) for j in range(D)]
    x = []
    for j in range(D):
        r = u[j] * (high[j] - low[j]) / 2
        x.append(high[j] - r if zone[j] == 1 else low[j] + r)
    rd = min(int(u[2 * D] * D), D - 1)
    x[rd] = high[rd] if zone[rd] == 1 else low[rd]
    out = [list(x)]
    for s in range(steps):
        us = walks._uniform(walks._draws(key, s + 1, D))[0]
        for j in range(D):
            r = us[j] * bound[j]
            if zone[j] == 1:
                r = -r
            x[j] += r
            if x[j] > high[j]:
                x[j] = high[j] - (x[j] - high[j])
                zone[j] = 1 - zone[j]
            elif x[j] < low[j]:
                x[j] = low[j] + (low[j] - x[j])
                zone[j] = 1 - zone[j]
        out.append(list(x))
    return np.array(out)


def test_random_walk_follows_algorithm_1_step_by_step():
    low, high = [-1.0, 0.0, 10.0], [1.0, 0.3, 10.5]
    bound = [0.5, 0.3, 0.1]  # large against the domain: reflections every few steps
    box = (torch.tensor(low, dtype=torch.float64), np.array(high))  # a tensor and an array
    res = progressive_walk(bowl(3), 5, 80, bound, box, gradient=False,
                           seed=21, first_walker=3, record_positions=True)
    for w in range(5):
        ref = reference_random_walk(21, 3 + w, 3, 80, low, high, bound)
        np.testing.assert_allclose(res.positions[w].numpy(), ref, rtol=0, atol=1e-12)
        turns = (np.diff(np.sign(np.diff(ref, axis=0)), axis=0) != 0).sum()
        assert turns > 10, "the walk should have met the walls"


def test_random_starts_follow_the_starting_zones():
    """Each coordinate starts uniformly in its zone's half of the domain, one coordinate per walker on
    its zone's wall, and the first step moves every coordinate towards the other half."""
    W, D = 4000, 5
    low = torch.tensor([-1.0, 0.0, -5.0, 2.0, -0.5], dtype=torch.float64)
    high = torch.tensor([1.0, 1.0, 5.0, 3.0, 0.5], dtype=torch.float64)
    res = progressive_walk(bowl(D), W, 1, 1e-3 * (high - low), (low, high), gradient=False, seed=4,
                           record_positions=True)
    x0, x1 = res.positions[:, 0], res.positions[:, 1]
    mid, half = (low + high) / 2, (high - low) / 2
    on_wall = (x0 == low) | (x0 == high)
    assert bool((on_wall.sum(1) == 1).all()), "exactly one coordinate per walker starts on a wall"
    inner = ~on_wall
    upper = x0 > mid
    frac_upper = float(upper[inner].double().mean())
    assert abs(frac_upper - 0.5) < 4 * math.sqrt(0.25 / int(inner.sum()))
    # distance from the zone's wall, in units of the half-width: U(0, 1)
    depth = torch.where(upper, high - x0, x0 - low) / half
    d = depth[inner]
    assert float(d.max()) < 1 and float(d.min()) > 0
    assert abs(float(d.mean()) - 0.5) < 4 * math.sqrt(1 / 12 / d.numel())
    # the wall coordinate is spread over the dimensions
    counts = on_wall.sum(0).double()
    assert bool((abs(counts - W / D) < 4 * math.sqrt(W / D)).all())
    # starting zone 1 (upper half) walks down, zone 0 walks up; on a wall, away from it
    moved = torch.sign(x1 - x0)
    assert bool((moved[upper] == -1).all()) and bool((moved[~upper] == 1).all())


def test_given_starts_walk_across_the_domain():
    """Explicit starts take starting zone 1 above the middle (walk down) and 0 at or below it (walk up)."""
    starts = torch.tensor([[0.9, -0.9, 0.0], [-0.2, 0.3, -1.0]], dtype=torch.float64)
    res = progressive_walk(bowl(3), starts, 1, 0.05, (-1.0, 1.0), gradient=False, record_positions=True)
    want = torch.tensor([[-1, 1, 1], [1, -1, 1]], dtype=torch.float64)
    assert torch.equal(torch.sign(steps_of(res)[:, 0]), want)


# ---- the progressive gradient walk (Bosman et al. 2019, §II) ----------------------------------------------
def test_gradient_walk_steps_against_the_gradient_sign_on_a_linear_surface():
    """f = c . x has gradient c everywhere: every step moves dimension j by -sign(c_j) (+ where c_j = 0)."""
    c = torch.tensor([2.0, -3.0, 0.0, 0.5, -1e-9], dtype=torch.float64)
    L = Landscape.from_function(lambda t: t @ c, 5)
    res = progressive_walk(L, torch.zeros(20, 5, dtype=torch.float64), 30, 0.01, (-5.0, 5.0),
                           record_positions=True)
    want = torch.tensor([-1.0, 1.0, 1.0, -1.0, 1.0], dtype=torch.float64)
    assert torch.equal(torch.sign(steps_of(res)), want.expand(20, 30, 5))
    torch.testing.assert_close(res.grad_norm, torch.full((20, 31), float(c.norm()), dtype=torch.float64))


def test_gradient_walk_directions_follow_the_local_gradient():
    """On a bowl the gradient 2 a (x - m) changes sign as walkers pass the minimum: each step's sign must be
    -sign of the analytic gradient at the point it left (zero gradient: +)."""
    m = torch.tensor([0.3, -0.2, 0.0, 0.1], dtype=torch.float64)
    a = torch.tensor([1.0, 5.0, 0.2, 2.0], dtype=torch.float64)
    res = progressive_walk(bowl(4, m, a), 30, 60, 0.05, (-1.0, 1.0), seed=2, record_positions=True)
    p = res.positions
    g = 2 * a * (p[:, :-1] - m)
    want = torch.where(g > 0, -1.0, 1.0).to(torch.float64)
    assert torch.equal(torch.sign(steps_of(res)), want)
    torch.testing.assert_close(res.grad_norm, (2 * a * (p - m)).norm(dim=2))
    torch.testing.assert_close(res.loss, (a * (p - m) ** 2).sum(2))
    # the walk is attracted to the minimum and dithers around it
    assert float((res.end - m).abs().max()) < 0.2


def test_gradient_walk_on_the_wf_network_follows_the_kernel_gradient():
    spec, wf = wf_network()
    L = Landscape.from_mlp(spec, *wf_training_set())
    starts = wf.float() + 0.05 * spec.init(8, seed=1)
    res = progressive_walk(L, starts, 10, 1e-3, None, record_positions=True)
    _, g = L.loss_and_grad(res.positions[:, :-1].reshape(-1, spec.dim))
    want = torch.where(g > 0, -1.0, 1.0).reshape(8, 10, spec.dim)
    d = steps_of(res)
    moved = d != 0  # float32: a tiny step can vanish against a large coordinate
    assert float(moved.double().mean()) > 0.99
    assert torch.equal(torch.sign(d)[moved], want[moved])


def test_unbounded_gradient_walk_goes_where_the_gradient_leads():
    c = torch.tensor([1.0, -1.0], dtype=torch.float64)
    L = Landscape.from_function(lambda t: t @ c, 2)
    res = progressive_walk(L, torch.zeros(3, 2, dtype=torch.float64), 400, 0.1, None, seed=0)
    assert bool((res.end[:, 0] < -5).all()) and bool((res.end[:, 1] > 5).all())


# ---- non-finite losses ---------------------------------------------------------------------------------
def cliff(D: int) -> Landscape:
    """-x_0 + 0.1 |x|^2, NaN where x_0 > 0.5: gradient walkers climb x_0 into the NaN region."""
    def fn(t):
        v = -t[0] + 0.1 * (t * t).sum()
        return torch.where(t[0] > 0.5, torch.full_like(v, math.nan), v)
    return Landscape.from_function(fn, D)


def test_a_nan_walker_stops_alone_in_a_gradient_walk():
    D = 3
    starts = torch.tensor([[-0.9, 0.0, 0.1], [0.3, 0.2, 0.0], [-0.8, -0.5, 0.5]], dtype=torch.float64)
    L = cliff(D)
    res = progressive_walk(L, starts, 30, 0.05, (-1.0, 1.0), seed=6, record_positions=True)
    k = int(res.first_nonfinite[1])
    assert k >= 5, "walker 1 needs at least 4 steps of <= 0.05 to climb from 0.3 past 0.5"
    assert bool(torch.isfinite(res.loss[1, :k]).all()) and bool(torch.isnan(res.loss[1, k:]).all())
    assert bool(torch.isnan(res.grad_norm[1, k + 1:]).all())
    assert bool((res.positions[1, k:] == res.positions[1, k]).all()), "a stopped walker stays put"
    assert torch.equal(res.end[1], res.positions[1, k])
    assert res.finite.tolist() == [True, False, True]
    for w in (0, 2):  # the others walk exactly as they would alone
        one = progressive_walk(L, starts[w:w + 1], 30, 0.05, (-1.0, 1.0), seed=6, first_walker=w,
                               record_positions=True)
        assert torch.equal(one.positions[0], res.positions[w])
        assert torch.equal(one.loss[0], res.loss[w])
        assert bool(torch.isfinite(res.loss[w]).all())


def test_a_random_walker_reports_nan_and_walks_on():
    """The random walk never reads the loss: a walker crossing a NaN region keeps its path (the same as on
    the surface without the NaNs) and reports where it first met a non-finite value."""
    starts = torch.tensor([[-0.2, 0.0], [-0.5, 0.0]], dtype=torch.float64)  # both walk up in x_0
    args = dict(steps=40, step_bound=0.1, bounds=(-1.0, 1.0), gradient=False, seed=2, record_positions=True)
    res = progressive_walk(cliff(2), starts, **args)
    clean = progressive_walk(bowl(2), starts, **args)
    assert torch.equal(res.positions, clean.positions)
    nan_at = (res.positions[:, :, 0] > 0.5)
    assert bool(nan_at[0].any()), "walker 0 should enter the NaN region"
    assert int(res.first_nonfinite[0]) == int(torch.nonzero(nan_at[0])[0])
    assert torch.equal(torch.isnan(res.loss), nan_at)
    first1 = int(res.first_nonfinite[1])
    assert first1 == (int(torch.nonzero(nan_at[1])[0]) if nan_at[1].any() else -1)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("surface", ["rosenbrock", "wf-mlp"])
def test_a_continued_walk_draws_as_one_uninterrupted_walk(monkeypatch, surface, fused):
    """Walking 4 + 7 steps, the second call from the first's end with first_step=4, gives the same
    samples and end, bit for bit, as 11 steps in one call (what bosman's chunked walks rely on)."""
    if not fused:
        monkeypatch.setattr(walks._backend, "kernel", lambda *a, **k: None)
    if surface == "rosenbrock":
        L, bound, x = rosenbrock(5), 0.05, torch.linspace(-1.5, 1.5, 6 * 5, dtype=torch.float64).reshape(6, 5)
    else:
        spec, wf = wf_network()
        L, bound, x = Landscape.from_mlp(spec, *wf_training_set()), 0.02, wf.float() + 0.01 * TinyMLP(5, 5).init(
            6, seed=2)
    whole = progressive_walk(L, x, 11, bound, None, seed=9, first_walker=3, record_positions=True)
    a = progressive_walk(L, x, 4, bound, None, seed=9, first_walker=3, record_positions=True)
    b = progressive_walk(L, a.end, 7, bound, None, seed=9, first_walker=3, record_positions=True, first_step=4)
    assert torch.equal(whole.end, b.end)
    assert torch.equal(whole.positions, torch.cat([a.positions, b.positions[:, 1:]], 1))
    assert torch.equal(whole.loss, torch.cat([a.loss, b.loss[:, 1:]], 1))
    assert torch.equal(whole.grad_norm, torch.cat([a.grad_norm, b.grad_norm[:, 1:]], 1))
    restarted = progressive_walk(L, a.end, 7, bound, None, seed=9, first_walker=3)  # first_step 0: new draws
    assert not torch.equal(restarted.end, b.end)


# ---- progress and errors -------------------------------------------------------------------------------
def test_progress_callback_sees_every_step():
    seen = []
    progressive_walk(bowl(2), 3, 7, 0.1, (-1.0, 1.0), progress=lambda done, total: seen.append((done, total)))
    assert seen == [(s, 7) for s in range(1, 8)]


def test_zero_steps_evaluates_the_starts():
    res = progressive_walk(bowl(2), torch.tensor([[0.5, -0.5]], dtype=torch.float64), 0, 0.1, (-1.0, 1.0))
    assert res.loss.tolist() == [[0.5]] and torch.equal(res.end, res.start)


BAD = [
    (dict(landscape="not a landscape"), TypeError, r"landscape: got str"),
    (dict(starts=torch.zeros(4, 3, dtype=torch.float64)), ValueError, r"starts: got tensor of shape \(4, 3\)"),
    (dict(starts=torch.full((2, 2), 2.0, dtype=torch.float64)), ValueError,
     r"starts: got starts\[0, 0\] = 2.0, expected every start inside bounds"),
    (dict(starts=torch.tensor([[0.0, math.nan]], dtype=torch.float64)), ValueError, r"starts: got non-finite"),
    (dict(starts=0), ValueError, r"starts: got 0, expected an integer in \[1"),
    (dict(starts="many"), TypeError, r"starts: got str"),
    (dict(steps=-1), ValueError, r"steps: got -1"),
    (dict(steps=2.5), TypeError, r"steps: got float"),
    (dict(step_bound=0.0), ValueError, r"step_bound: got a smallest value of 0.0, expected positive"),
    (dict(step_bound=[0.1, 0.2, 0.3]), ValueError, r"step_bound: got .*expected a real number or a vector of "
                                                   r"shape \(2,\)"),
    (dict(step_bound=3.0), ValueError, r"step_bound: got 3.0 in dimension 0, expected at most the width"),
    (dict(step_bound=math.inf), ValueError, r"step_bound: got non-finite"),
    (dict(bounds=(1.0, -1.0)), ValueError, r"bounds: got low\[0\] = 1.0 >= high\[0\] = -1.0"),
    (dict(bounds=(-1.0,)), TypeError, r"bounds: got tuple"),
    (dict(bounds=([-1.0, -1.0, -1.0], 1.0)), ValueError, r"bounds\[0\] \(low\): got"),
    (dict(bounds=None, gradient=False), ValueError, r"bounds: got None, expected \(low, high\): the random walk"),
    (dict(bounds=None), ValueError, r"bounds: got None, expected \(low, high\): random starts"),
    (dict(gradient="yes"), TypeError, r"gradient: got str"),
    (dict(seed=-1), ValueError, r"seed: got -1"),
    (dict(first_walker=-2), ValueError, r"first_walker: got -2"),
    (dict(progress="loud"), TypeError, r"progress: got 'loud'"),
    (dict(record_positions=1), TypeError, r"record_positions: got int"),
    (dict(first_step=-1), ValueError, r"first_step: got -1"),
    (dict(first_step=1.5), TypeError, r"first_step: got float"),
    (dict(first_step=3, gradient=False), ValueError, r"first_step: got 3 with gradient=False, expected 0"),
]


@pytest.mark.parametrize("change, exc, match", BAD)
def test_bad_arguments_are_named(change, exc, match):
    args = dict(landscape=bowl(2), starts=4, steps=3, step_bound=0.1, bounds=(-1.0, 1.0))
    args.update(change)
    L = args["landscape"]
    if isinstance(L, Landscape):
        calls = count_calls(L, "loss_and_grad")
    with pytest.raises(exc, match=match):
        progressive_walk(**args)
    if isinstance(L, Landscape):
        assert calls == [], "arguments are checked before any evaluation"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("D", "W"), [(walks._BLOCK + 37, 3), (100, 500)])  # blocks of columns; of rows
def test_blocked_step_sizes_are_the_unfused_expression_bit_for_bit(dtype, D, W):
    """_step_sizes (in place, blocks of columns) = _uniform(_draws(...)).astype(dtype) * bound, every bit."""
    keys = walks._walker_keys(7, 5, W)
    bound = (0.01 + np.random.default_rng(0).random(D)).astype(dtype)
    with np.errstate(over="ignore"):
        counters = np.arange(D, dtype=np.uint32) * walks.rng.GOLDEN32
    got = walks._step_sizes(keys, 4, bound, counters, np.empty((W, D), dtype))
    want = walks._uniform(walks._draws(keys, 4, D)).astype(dtype) * bound
    assert got.dtype == want.dtype and np.array_equal(got.view(np.uint8), want.view(np.uint8))
