"""lscape.neb on the Mueller-Brown surface: known saddles, ASE's NEB number for number, many bands at once,
resume, respacing, insertion, divergence and bad input."""
import math

import lscape
import numpy as np
import pytest
import torch
from lscape import use_backend
from lscape.neb import NEBResult, arc_length, neb, respace
from neb_surfaces import MIN_A, MIN_B, MIN_C, SADDLE_AC, SADDLE_CB, ase_mb_calculator, mb_landscape, mb_torch

BACKENDS = ("torch", "cpu")  # float64 runs on the reference and the C++ kernel (CUDA: test_neb_kernels)


def _t(p):
    return torch.tensor(p, dtype=torch.float64)


def _check_saddle(point, energy, known):
    """A first-order saddle (gradient ~0, one negative Hessian eigenvalue) at the published position."""
    p = point.detach().double()
    g = torch.func.grad(mb_torch)(p)
    eig = torch.linalg.eigvalsh(torch.autograd.functional.hessian(mb_torch, p))
    assert float(g.norm()) < 1e-2
    assert eig[0] < 0 < eig[1]
    assert abs(p[0].item() - known[0]) < 2e-3 and abs(p[1].item() - known[1]) < 2e-3
    assert abs(energy - known[2]) < 1e-2


@pytest.mark.parametrize("backend", BACKENDS)
def test_mueller_brown_saddles(backend):
    """Bands A->C and C->B (two at once) put their climbing images on the two known saddles."""
    L = mb_landscape()
    with use_backend(backend):
        r = neb(L, torch.stack([_t(MIN_A), _t(MIN_C)]), torch.stack([_t(MIN_C), _t(MIN_B)]), n_images=12, k=10.0,
                maxstep=0.02, fmax=1e-3, steps=4000)
    assert r.converged.all() and not r.diverged.any()
    for b, known in enumerate((SADDLE_AC, SADDLE_CB)):
        i = int(r.saddle[b])
        _check_saddle(r.images[b, i], float(r.energies[b, i]), known)
        assert float(r.barrier[b]) == float(r.energies[b, i] - r.energies[b, 0])
    assert r.fmax.max() < 1e-3 and r.fmax_history.shape == (int(r.steps.max()), 2)
    # The energies returned are those of the images returned.
    assert torch.allclose(r.energies, L.loss(r.images.reshape(-1, 2)).view(2, -1), rtol=1e-12)


def _ase_band(n, k, maxstep, fmax, steps):
    from ase import Atoms
    from ase.mep import NEB
    from ase.optimize import FIRE

    images = []
    for i in range(n):
        p = np.array(MIN_A) + (np.array(MIN_B) - np.array(MIN_A)) * i / (n - 1)
        atoms = Atoms("H", positions=[[p[0], p[1], 0.0]])
        atoms.calc = ase_mb_calculator()
        images.append(atoms)
    band = NEB(images, k=k, climb=True, method="improvedtangent")
    opt = FIRE(band, logfile=None, maxstep=maxstep)
    converged = opt.run(fmax=fmax, steps=steps)
    return np.array([a.positions[0, :2] for a in images]), converged, opt.nsteps


@pytest.mark.parametrize("backend", BACKENDS)
def test_agrees_with_ase_number_for_number(backend):
    """ASE's NEB (improved tangent, climbing image) + FIRE and lscape.neb take the same steps: the same
    images to rounding after 60 steps, and the same step count to convergence."""
    pytest.importorskip("ase.mep", reason="ASE is the peer this test compares with (in the test extra)")
    L = mb_landscape()
    n, k, maxstep = 9, 1.0, 0.05
    ase_x, _, _ = _ase_band(n, k, maxstep, fmax=1e-12, steps=60)
    with use_backend(backend):
        r = neb(L, _t(MIN_A), _t(MIN_B), n_images=n, k=k, maxstep=maxstep, fmax=1e-12, steps=60)
    assert np.abs(r.images[0].numpy() - ase_x).max() < 1e-9
    ase_x, ase_conv, ase_steps = _ase_band(n, 5.0, 0.03, fmax=0.05, steps=3000)
    with use_backend(backend):
        r = neb(L, _t(MIN_A), _t(MIN_B), n_images=n, k=5.0, maxstep=0.03, fmax=0.05, steps=3000)
    assert ase_conv and bool(r.converged[0])
    assert int(r.steps[0]) == ase_steps + 1  # ASE counts steps taken; lscape counts force calls
    assert np.abs(r.images[0].numpy() - ase_x).max() < 1e-6
    i = int(r.saddle[0])
    assert abs(r.images[0, i, 0].item() - SADDLE_AC[0]) < 5e-3


def test_many_bands_equal_each_band_alone():
    L = mb_landscape()
    starts = torch.stack([_t(MIN_A), _t(MIN_C), _t(MIN_A), _t(MIN_B)])
    ends = torch.stack([_t(MIN_C), _t(MIN_B), _t(MIN_B), _t(MIN_A)])
    kw = dict(n_images=7, k=5.0, maxstep=0.03, fmax=0.01, steps=300)
    together = neb(L, starts, ends, **kw)
    for b in range(4):
        alone = neb(L, starts[b], ends[b], **kw)
        assert torch.equal(together.images[b], alone.images[0])
        assert torch.equal(together.energies[b], alone.energies[0])
        assert together.steps[b] == alone.steps[0] and together.converged[b] == alone.converged[0]


def test_resume_continues_exactly(tmp_path):
    L = mb_landscape()
    kw = dict(n_images=8, k=5.0, maxstep=0.03, fmax=1e-6)
    whole = neb(L, _t(MIN_A), _t(MIN_C), steps=80, **kw)
    first = neb(L, _t(MIN_A), _t(MIN_C), steps=30, **kw)
    np.savez(tmp_path / "ck.npz", **first.to_dict())
    loaded = NEBResult.from_dict(np.load(tmp_path / "ck.npz"))
    rest = neb(L, None, None, resume=loaded, steps=50)
    assert torch.equal(rest.images, whole.images) and torch.equal(rest.velocity, whole.velocity)
    assert torch.equal(rest.steps, whole.steps)
    assert torch.allclose(rest.fmax_history, whole.fmax_history, equal_nan=True)


def test_diverging_band_is_flagged_and_others_go_on():
    """A landscape that is NaN beyond x = 2: the band that crosses it stops as diverged; the other is
    bit-identical to a run without it."""
    def fn(p):
        return torch.where(p[0] > 2.0, torch.full_like(p[0], float("nan")), mb_torch(p))

    L = lscape.Landscape.from_function(fn, 2)
    starts, ends = torch.stack([_t(MIN_A), _t((3.0, 0.0))]), torch.stack([_t(MIN_C), _t((1.0, 0.0))])
    with pytest.raises(ValueError, match="non-finite"):
        neb(L, starts, ends.clone().fill_(float("inf")))
    r = neb(L, starts, ends, n_images=6, k=5.0, maxstep=0.03, fmax=0.01, steps=3000)
    alone = neb(L, starts[0], ends[0], n_images=6, k=5.0, maxstep=0.03, fmax=0.01, steps=3000)
    assert r.diverged.tolist() == [False, True] and bool(r.converged[0])
    assert int(r.steps[1]) == 1 and math.isnan(r.fmax[1].item())
    assert torch.equal(r.images[0], alone.images[0])


def test_result_geometry():
    L = lscape.Landscape.from_function(lambda p: (p ** 2).sum(), 3)
    x0, x1 = _t((0.0, 0.0, 0.0)), _t((3.0, 0.0, 4.0))
    r = neb(L, x0, x1, n_images=6, steps=0)
    assert torch.allclose(r.arc_length, torch.linspace(0, 5, 6, dtype=torch.float64)[None])
    assert torch.allclose(r.angles(), torch.zeros(1, 4, dtype=torch.float64), atol=1e-7)
    assert torch.allclose(r.energies[0], (r.images[0] ** 2).sum(-1))
    # A right-angled band: one angle of pi/2.
    bent = torch.tensor([[[0.0, 0, 0], [1, 0, 0], [1, 1, 0]]], dtype=torch.float64)
    r2 = neb(L, bent[0, 0], bent[0, -1], n_images=3, init=bent, steps=0)
    assert torch.allclose(r2.angles(), torch.full((1, 1), math.pi / 2, dtype=torch.float64))
    # respace: uneven images along a polyline move to equal arc length, on the polyline.
    uneven = torch.tensor([[[0.0, 0], [0.1, 0], [0.2, 0], [2, 0], [2, 2]]], dtype=torch.float64)
    even = respace(uneven)
    assert torch.allclose(arc_length(even), torch.linspace(0, 4, 5, dtype=torch.float64)[None])
    assert torch.allclose(even[0, 1:4], torch.tensor([[1.0, 0], [2, 0], [2, 1]], dtype=torch.float64))


def test_respacing_and_insertion_still_find_the_saddle():
    L = mb_landscape()
    w = torch.tensor([0.0, 0.01, 0.03, 0.06, 0.1, 1.0], dtype=torch.float64)[:, None]
    bunched = _t(MIN_C) + w * (_t(MIN_B) - _t(MIN_C))  # five of six images near the start
    kw = dict(n_images=6, k=10.0, maxstep=0.02, fmax=1e-3, init=bunched)
    plain = neb(L, _t(MIN_C), _t(MIN_B), steps=11, **kw)
    spaced = neb(L, _t(MIN_C), _t(MIN_B), steps=11, respace_every=10, **kw)
    seg = lambda r: torch.diff(r.images[0], dim=0).norm(dim=-1)  # noqa: E731
    assert seg(spaced).max() / seg(spaced).min() < seg(plain).max() / seg(plain).min()
    r = neb(L, _t(MIN_C), _t(MIN_B), steps=3000, respace_every=10, insert=4, **kw)
    assert r.images.shape == (1, 10, 2) and bool(r.converged[0])
    i = int(r.saddle[0])
    _check_saddle(r.images[0, i], float(r.energies[0, i]), SADDLE_CB)
    assert torch.allclose(r.energies, L.loss(r.images[0]).view(1, -1), rtol=1e-12)


def test_descent_optimizer():
    L = mb_landscape()
    r = neb(L, _t(MIN_C), _t(MIN_B), n_images=8, k=10.0, optimizer="descent", lr=2e-4, maxstep=0.02,
            fmax=1e-2, steps=20000)
    assert bool(r.converged[0])
    i = int(r.saddle[0])
    assert abs(r.images[0, i, 0].item() - SADDLE_CB[0]) < 5e-3


@pytest.mark.parametrize("kwargs, match", [
    (dict(end=torch.zeros(2, 2)), "start, end"),
    (dict(start=torch.zeros(3)), r"start: .*\(2,\) or \(B, 2\)"),
    (dict(end=torch.tensor([0.0, float("nan")])), "end: got non-finite"),
    (dict(n_images=2), "n_images: got 2"),
    (dict(optimizer="lbfgs"), "optimizer: got 'lbfgs'"),
    (dict(k=-1.0), "k: got -1.0"),
    (dict(maxstep=0.0), "maxstep: got 0.0"),
    (dict(steps=-1), "steps: got -1"),
    (dict(init=torch.zeros(5, 3)), r"init: .*\(1, 6, 2\) or \(6, 2\)"),
    (dict(init="spline"), "init: got 'spline'"),
    (dict(landscape=lambda x: x), "landscape: got"),
])
def test_bad_input_is_named(kwargs, match):
    args = dict(landscape=mb_landscape(), start=_t(MIN_A), end=_t(MIN_B), n_images=6, steps=1)
    args.update(kwargs)
    with pytest.raises((ValueError, TypeError), match=match):
        neb(args.pop("landscape"), args.pop("start"), args.pop("end"), **args)
