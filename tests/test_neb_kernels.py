"""The compiled NEB step (csrc/cpu/neb.cpp; csrc/cuda/neb.cu through the kernel_backend fixture) against
the torch reference, and the reference's own pieces against direct formulas."""
import math

import pytest
import torch
from conftest import device_of
from lscape import use_backend
from lscape.ops import neb as ops
from lscape.reference import neb as ref

SHAPES = [(1, 3, 1), (3, 5, 7), (2, 4, 8), (4, 32, 136), (2, 9, 1001), (1, 4, 100003)]
CONFIGS = [ref.NEBConfig(fmax=1e-12), ref.NEBConfig(climb=False, k=0.3, fmax=1e-12, maxstep=1e3),
           ref.NEBConfig(method="descent", lr=0.05, fmax=1e-12), ref.NEBConfig(fmax=1e-12, maxstep=1e-3)]


def _problem(B, n, D, dtype, device, seed=0):
    """Random bands on the energy e = |x|^2 / 2 + a ramp along the band, with velocities and FIRE states
    that exercise every branch (fresh, mixing below and above n_min, reset)."""
    g0 = torch.Generator().manual_seed(seed)
    x = torch.randn(B, n, D, generator=g0, dtype=torch.float64)
    v = 0.1 * torch.randn(B, n, D, generator=g0, dtype=torch.float64)
    nsteps = torch.tensor([-1, 0, 3, 7, 12][:B] + [6] * max(0, B - 5), dtype=torch.int32)
    return x.to(dtype).to(device), v.to(dtype).to(device), nsteps.to(device)


def _energy(x):
    n = x.shape[1]
    e = 0.5 * (x.double() ** 2).sum(-1) + 0.3 * torch.arange(n, device=x.device) ** 1.5
    return e.to(x.dtype), x.clone()


def _run(backend, cfg, x, v, nsteps, steps, status=None, poison=None):
    x, v = x.clone(), v.clone()
    st = ops.BandState.fresh(x.shape[0], cfg, x.device)
    st.nsteps.copy_(nsteps)
    if status is not None:
        st.status.copy_(status)
    x_out = x.clone()
    for _ in range(steps):
        e, g = _energy(x)
        if poison is not None:
            e[poison, 2] = float("nan")
        with use_backend(backend):
            ops.step(cfg, x, e, g, v, x_out, st)
        x, x_out = x_out, x
    return x, v, st


def _assert_match(a, b, rtol):
    (xa, va, sa), (xb, vb, sb) = a, b
    for name in ("status", "nsteps", "imax"):
        assert torch.equal(getattr(sa, name).cpu(), getattr(sb, name).cpu()), name
    for u, w in ((xa, xb), (va, vb)):
        u, w = u.double().cpu(), w.double().cpu()
        assert torch.allclose(u, w, rtol=rtol, atol=rtol * max(1.0, float(w.abs().max()))), float((u - w).abs().max())
    for name in ("dt", "a", "fmax"):
        assert torch.allclose(getattr(sa, name).cpu(), getattr(sb, name).cpu(), rtol=1e-5, equal_nan=True), name


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("ci", range(len(CONFIGS)))
def test_kernel_matches_reference(kernel_backend, shape, ci):
    cfg, dev = CONFIGS[ci], device_of(kernel_backend)
    x, v, ns = _problem(*shape, torch.float32, dev)
    steps = 3 if shape[2] < 10**5 else 1
    _assert_match(_run(kernel_backend, cfg, x, v, ns, steps), _run("torch", cfg, x, v, ns, steps), 1e-5)


@pytest.mark.parametrize("shape", SHAPES[:5], ids=lambda s: "x".join(map(str, s)))
def test_cpu_kernel_float64(shape):
    cfg = CONFIGS[0]
    x, v, ns = _problem(*shape, torch.float64, "cpu")
    _assert_match(_run("cpu", cfg, x, v, ns, 5), _run("torch", cfg, x, v, ns, 5), 1e-12)


def test_kernel_status_rules(kernel_backend):
    """A NaN energy marks its band diverged (fmax NaN, nothing moves) and leaves the others bit-identical
    to a run without it; converged and already-stopped bands do not move."""
    dev = device_of(kernel_backend)
    x, v, ns = _problem(5, 6, 33, torch.float32, dev, seed=3)
    cfg = ref.NEBConfig(fmax=1e-12)
    keep = [0, 1, 3, 4]
    full = _run(kernel_backend, cfg, x, v, ns, 3, poison=2)
    alone = _run(kernel_backend, cfg, x[keep], v[keep], ns[keep], 3)
    assert full[2].status.tolist() == [0, 0, 2, 0, 0]
    assert math.isnan(full[2].fmax[2].item())
    assert torch.equal(full[0][2], x[2]) and torch.equal(full[1][2], v[2])
    assert torch.equal(full[0][keep], alone[0]) and torch.equal(full[1][keep], alone[1])
    # fmax above every band's force: all converge on the first call, and nothing moves.
    conv = _run(kernel_backend, ref.NEBConfig(fmax=1e30), x, v, ns, 1)
    assert conv[2].status.tolist() == [1] * 5 and torch.equal(conv[0], x) and torch.equal(conv[1], v)
    # Bands stopped on entry keep everything, including fmax and imax.
    status = torch.tensor([1, 2, 0, 1, 0], dtype=torch.uint8, device=dev)
    out = _run(kernel_backend, cfg, x, v, ns, 2, status=status)
    for b in (0, 1, 3):
        assert torch.equal(out[0][b], x[b]) and out[2].status[b] == status[b] and math.isnan(out[2].fmax[b])
    assert not torch.equal(out[0][2], x[2])


def test_reference_forces_match_direct_formula():
    """neb_forces against a per-image loop written from Henkelman & Jonsson's equations."""
    x, _, _ = _problem(2, 7, 5, torch.float64, "cpu", seed=5)
    e, g = _energy(x)
    e[0, 3] = e[0, 2]  # a tie: neither rising nor falling
    cfg = ref.NEBConfig(k=0.7)
    F, imax = ref.neb_forces(cfg, x, e, g)
    for b in range(2):
        im = 1 + int(torch.argmax(e[b, 1:-1]))
        assert imax[b] == im
        for i in range(1, 6):
            tp, tm = x[b, i + 1] - x[b, i], x[b, i] - x[b, i - 1]
            ep, ei, en = e[b, i - 1].item(), e[b, i].item(), e[b, i + 1].item()
            if en > ei > ep:
                tau = tp
            elif en < ei < ep:
                tau = tm
            else:
                big, small = max(abs(en - ei), abs(ep - ei)), min(abs(en - ei), abs(ep - ei))
                tau = tp * big + tm * small if en > ep else tp * small + tm * big
            tau = tau / tau.norm()
            f = -g[b, i]
            if i == im:
                want = f - 2 * (f @ tau) * tau
            else:
                want = f - (f @ tau) * tau + cfg.k * (tp.norm() - tm.norm()) * tau
            assert torch.allclose(F[b, i - 1], want, rtol=1e-12, atol=1e-12)


def test_fire_scalars_follow_ase_rules():
    """band_step against FIRE's rules written out for each branch (ase.optimize.FIRE)."""
    cfg = ref.NEBConfig(maxstep=1e9)
    d = lambda *v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    vf, F2, v2 = d(0.0, 2.0, 2.0, -1.0), d(4.0, 4.0, 4.0, 4.0), d(0.0, 9.0, 9.0, 9.0)
    dt, a = d(0.1, 0.2, 0.2, 0.2), d(0.1, 0.05, 0.05, 0.05)
    ns = torch.tensor([-1, 3, 6, 9], dtype=torch.int32)
    c1, c2, s, dt2, a2, n2 = ref.band_step(cfg, vf, F2, v2, dt, a, ns)
    assert n2.tolist() == [0, 4, 7, 0]
    assert torch.allclose(dt2, d(0.1, 0.2, 0.22, 0.1)) and torch.allclose(a2, d(0.1, 0.05, 0.0495, 0.1))
    assert torch.allclose(c1, d(0.0, 0.95, 0.95, 0.0))
    assert torch.allclose(c2, d(0.1, 0.05 * 3 / 2 + 0.2, 0.05 * 3 / 2 + 0.22, 0.1))
    assert torch.allclose(s, dt2)
    # The step-length cap: |dt * v_new| = maxstep exactly.
    capped = ref.NEBConfig(maxstep=0.01)
    c1, c2, s, dt2, *_ = ref.band_step(capped, vf, F2, v2, dt, a, ns)
    vnew = (c1 ** 2 * v2 + 2 * c1 * c2 * vf + c2 ** 2 * F2).sqrt()
    assert torch.allclose(s * vnew, torch.full_like(s, 0.01))
