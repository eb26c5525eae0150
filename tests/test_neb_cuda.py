"""The CUDA NEB step (csrc/cuda/neb.cu) through lscape._cuda's raw binding, against the torch reference
(lscape.reference.neb): both force paths (a team per image for D <= 8192, chunked rows above), warp and
block teams, climbing on and off, FIRE and descent, fresh and running bands, the status rules, several
steps with double buffering, and argument checks.

Inputs are drawn on the CPU and moved to the GPU, so every run sees the same numbers.  The main oracle is
the reference in float32 on the same device: it does the same float operations, so the kernel matches it to
a few ulps; the float64 reference checks the scalars and the positions too."""
from __future__ import annotations

import math

import lscape
import pytest
import torch
from conftest import cuda_stream as stream
from lscape.ops.neb import BandState
from lscape.reference import neb as ref

DEVICE = "cuda"
SENTINEL = 1234.5  # x_out's endpoint rows: the kernel never writes them


# ---- problems ------------------------------------------------------------------------------------

def scene(B, n, D, seed=0, fresh=False):
    """Random bands (x, e, g, v on DEVICE, float32) and a BandState: random energies reach every tangent
    branch; a band with equal energies has a zero tangent.  Unless fresh, bands carry velocities and FIRE
    states of every kind: fresh (nsteps -1), below and above n_min."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(B, n, D, generator=gen)
    e = torch.randn(B, n, generator=gen)
    g = torch.randn(B, n, D, generator=gen)
    v = 0.1 * torch.randn(B, n, D, generator=gen)
    if B > 2:
        e[1] = 0.25  # flat band: tau = 0 everywhere
    st = BandState.fresh(B, ref.NEBConfig(), torch.device("cpu"))
    if fresh:
        v.zero_()
    else:
        st.nsteps.copy_(torch.randint(-1, 12, (B,), generator=gen, dtype=torch.int32))
        st.dt.copy_(0.05 + 0.25 * torch.rand(B, generator=gen, dtype=torch.float64))
        st.a.copy_(0.02 + 0.08 * torch.rand(B, generator=gen, dtype=torch.float64))
    return (x.to(DEVICE), e.to(DEVICE), g.to(DEVICE), v.to(DEVICE)), to_device(st)


def to_device(st: BandState) -> BandState:
    return BandState(*(t.to(DEVICE) for t in (st.dt, st.a, st.nsteps, st.status, st.fmax, st.imax)))


def copy_state(st: BandState) -> BandState:
    return BandState(*(t.clone() for t in (st.dt, st.a, st.nsteps, st.status, st.fmax, st.imax)))


def fresh_out(x):
    """x_out with its endpoint rows set to SENTINEL and its interior to garbage."""
    out = torch.full_like(x, math.nan)
    out[:, 0] = SENTINEL
    out[:, -1] = SENTINEL
    return out


# ---- runs ------------------------------------------------------------------------------------------

def kernel(cuda_ext, cfg, x, e, g, v, st, x_out=None):
    """One kernel step on copies of v and st: (x_out, v, st)."""
    B, n, D = x.shape
    v, st = v.clone(), copy_state(st)
    x_out = fresh_out(x) if x_out is None else x_out
    work = torch.full((cuda_ext.neb_work_size(B, n, D),), math.nan, dtype=torch.float64, device=x.device)
    cuda_ext.neb_step(cfg.as_tuple(), B, n, D, x.data_ptr(), e.data_ptr(), g.data_ptr(), v.data_ptr(), x_out.data_ptr(),
                 st.dt.data_ptr(), st.a.data_ptr(), st.nsteps.data_ptr(), st.status.data_ptr(), st.fmax.data_ptr(),
                 st.imax.data_ptr(), work.data_ptr(), False, stream())
    return x_out, v, st


def reference(cfg, x, e, g, v, st, dtype=torch.float32):
    """One reference step in `dtype` on copies: (x_out, v, st)."""
    x, e, g, v = (t.to(dtype, copy=True) for t in (x, e, g, v))
    st = copy_state(st)
    x_out = fresh_out(x)
    ref.step(cfg, x, e, g, v, x_out, st.dt, st.a, st.nsteps, st.status, st.fmax, st.imax)
    return x_out, v, st


def assert_rows_close(got, want, rtol, what):
    """Each entry within rtol of the reference, relative to the entry plus its row's largest entry."""
    got, want = got.double().cpu(), want.double().cpu()
    tol = rtol * (want.abs() + want.abs().amax(dim=-1, keepdim=True))
    bad = (got - want).abs() > tol
    assert not bad.any(), (f"{what}: {int(bad.sum())} entries off; worst "
                           f"{float(((got - want).abs() / tol.clamp_min(1e-300)).max()):.3g} x tol")


def assert_matches(got, want, rtol=1e-5, srtol=1e-6, skip=()):
    """x_out (all rows: the endpoints stay SENTINEL), v, the discrete state exactly, the float state to
    srtol (NaN where the reference has NaN).  Bands in `skip` are left out of imax (a diverged band's
    climbing index is not specified)."""
    (xo, v, st), (xo_r, v_r, st_r) = got, want
    assert_rows_close(xo, xo_r, rtol, "x_out")
    assert_rows_close(v, v_r, rtol, "v")
    for name in ("status", "nsteps"):
        assert torch.equal(getattr(st, name).cpu(), getattr(st_r, name).cpu()), name
    keep = [b for b in range(st.imax.shape[0]) if b not in skip]
    assert torch.equal(st.imax.cpu()[keep], st_r.imax.cpu()[keep]), "imax"
    for name in ("dt", "a", "fmax"):
        u, w = getattr(st, name).cpu(), getattr(st_r, name).cpu()
        torch.testing.assert_close(u, w, rtol=srtol, atol=0, equal_nan=True, msg=name)


def same(u, w) -> bool:
    """Bitwise equal, NaN equal to NaN."""
    return u.shape == w.shape and bool(((u == w) | (u != u) & (w != w)).all())


def assert_bands_equal(a, b, bands_a, bands_b):
    """Bitwise the same results for bands_a of run a and bands_b of run b."""
    for u, w in zip(a[:2], b[:2], strict=False):
        assert same(u[bands_a], w[bands_b])
    for name in ("dt", "a", "nsteps", "status", "fmax", "imax"):
        assert same(getattr(a[2], name)[bands_a], getattr(b[2], name)[bands_b]), name


CONFIGS = {
    "fire": ref.NEBConfig(),
    "fire-noclimb": ref.NEBConfig(climb=False, k=0.7, n_min=3),
    "fire-nocap": ref.NEBConfig(maxstep=1e6, dt_max=0.2),
    "descent": ref.NEBConfig(method="descent", lr=0.02),
    "descent-noclimb": ref.NEBConfig(method="descent", climb=False, lr=1e-4),
}
SHAPES = [(1, 3, 1), (3, 4, 7), (4, 5, 129), (3, 6, 1001), (2, 4, 1025), (2, 3, 8192), (2, 4, 8193),
          (2, 5, 100003), (3000, 32, 136)]  # warp team; block team; chunked rows


# ---- GPU tests -------------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("fresh", [False, True], ids=["running", "fresh"])
@pytest.mark.parametrize("cname", list(CONFIGS))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_step_matches_reference(cuda_gpu, shape, cname, fresh):
    cfg = CONFIGS[cname]
    args, st = scene(*shape, seed=sum(shape), fresh=fresh)
    got = kernel(cuda_gpu, cfg, *args, st)
    assert_matches(got, reference(cfg, *args, st))
    # float64: the same decisions and scalars; positions to 1e-5 of their rows.  fmax to 1e-6 of itself plus
    # the band's largest |g_i|: F is -g plus a multiple of tau, and in float32 it carries rounding errors of
    # the order of |g| (relative to F itself they are large where F nearly cancels, e.g. D = 1).
    r64 = reference(cfg, *args, st, torch.float64)
    for name in ("status", "nsteps", "imax"):
        assert torch.equal(getattr(got[2], name).cpu(), getattr(r64[2], name).cpu()), name
    for name in ("dt", "a"):
        torch.testing.assert_close(getattr(got[2], name), getattr(r64[2], name), rtol=1e-6, atol=0, msg=name)
    f, f64 = got[2].fmax.cpu(), r64[2].fmax.cpu()
    gscale = args[2][:, 1:-1].double().norm(dim=-1).amax(dim=1).cpu()
    assert ((f - f64).abs() <= 1e-6 * (f64.abs() + gscale)).all(), (f - f64).abs().max()
    assert_rows_close(got[0], r64[0], 1e-5, "x_out vs float64")


@pytest.mark.gpu
@pytest.mark.parametrize("D", [7, 2000, 20000])
def test_status_rules(cuda_gpu, D):
    """Band 1 has a NaN energy (diverged, fmax NaN, nothing moves) and the others are bitwise what a run
    without it gives; band 3 lies on a straight line with no gradient (converges: x_out = x); bands 4 and 5
    were converged and diverged on entry (keep everything); the rest step."""
    B, n = 8, 6
    (x, e, g, v), st = scene(B, n, D, seed=D)
    x[3] = x[3, 0] + torch.linspace(0, 1, n, device=DEVICE)[:, None] * (x[3, -1] - x[3, 0])
    g[3] = 0.0
    st.status[4], st.status[5] = ref.CONVERGED, ref.DIVERGED
    st.fmax[4], st.fmax[5], st.imax[4], st.imax[5] = 0.01, 0.5, 3, 2
    cfg = ref.NEBConfig()
    clean = kernel(cuda_gpu, cfg, x, e, g, v, st)
    bad_e = e.clone()
    bad_e[1, 2] = math.nan
    dirty = kernel(cuda_gpu, cfg, x, bad_e, g, v, st)
    assert_matches(dirty, reference(cfg, x, bad_e, g, v, st), skip=(1,))

    xo, vo, so = dirty
    assert so.status.tolist() == [0, 2, 0, 1, 1, 2, 0, 0]
    others = [0, 2, 6, 7]
    assert_bands_equal(dirty, clean, others, others)
    assert math.isnan(so.fmax[1].item())
    for b in (1, 3, 4, 5):  # nothing moves
        assert torch.equal(xo[b, 1:-1], x[b, 1:-1]) and torch.equal(vo[b], v[b]), b
        for name in ("dt", "a", "nsteps"):
            assert torch.equal(getattr(so, name)[b], getattr(st, name)[b]), (name, b)
    assert 0.0 <= so.fmax[3].item() < cfg.fmax
    for b in (4, 5):  # stopped on entry: fmax and imax kept too
        assert torch.equal(so.fmax[b], st.fmax[b]) and so.imax[b] == st.imax[b]
    for b in others:
        assert not torch.equal(xo[b, 1:-1], x[b, 1:-1]), b


@pytest.mark.gpu
@pytest.mark.parametrize("n,D", [(5, 1), (7, 300), (4, 10001)])
def test_bands_are_independent(cuda_gpu, n, D):
    """A batch and some of its bands run alone give bitwise the same results."""
    B = 40
    (x, e, g, v), st = scene(B, n, D, seed=7)
    cfg = ref.NEBConfig(climb=False)
    whole = kernel(cuda_gpu, cfg, x, e, g, v, st)
    pick = [0, 5, 31, 39]
    part = kernel(cuda_gpu, cfg, x[pick].contiguous(), e[pick].contiguous(), g[pick].contiguous(), v[pick].contiguous(),
                  BandState(*(t[pick].contiguous() for t in (st.dt, st.a, st.nsteps, st.status, st.fmax, st.imax))))
    assert_bands_equal(whole, part, pick, list(range(len(pick))))


def _energy(x):
    """e = sum(x^2 / 2 - cos(3 x) / 3) per image, in x's dtype, and its gradient."""
    e = (0.5 * x * x - torch.cos(3 * x) / 3).sum(-1, dtype=torch.float64).to(x.dtype)
    return e, x + torch.sin(3 * x)


@pytest.mark.gpu
@pytest.mark.parametrize("cname", ["fire", "fire-noclimb", "descent"])
@pytest.mark.parametrize("shape", [(3, 7, 5), (2, 9, 2000), (1, 5, 20000)], ids=lambda s: "x".join(map(str, s)))
def test_steps_with_double_buffering(cuda_gpu, shape, cname):
    """Twelve steps from a fresh band, the caller swapping x and x_out and evaluating e and g at the new
    positions; every step within 1e-5 of the float32 reference doing the same, and the endpoints fixed."""
    cfg = CONFIGS[cname]
    if cfg.method == "fire":
        cfg = ref.NEBConfig(climb=cfg.climb, k=cfg.k, n_min=2, maxstep=0.5)  # dt grows within the run
    B, n, D = shape
    gen = torch.Generator().manual_seed(11)
    a = torch.randn(B, 1, D, generator=gen)
    b = a + 2.0 + torch.randn(B, 1, D, generator=gen)
    t = torch.linspace(0, 1, n)[None, :, None]
    x0 = ((1 - t) * a + t * b + 0.2 * torch.randn(B, n, D, generator=gen) * (t * (1 - t) > 0)).to(DEVICE)
    st0 = to_device(BandState.fresh(B, cfg, torch.device("cpu")))

    def run(step_fn):
        x, x_out, v, st = x0.clone(), x0.clone(), torch.zeros_like(x0), copy_state(st0)
        hist = []
        for _ in range(12):
            e, g = _energy(x)
            step_fn(x, e, g, v, x_out, st)
            hist.append((x_out.clone(), v.clone(), copy_state(st)))
            x, x_out = x_out, x
        return hist

    def k_step(x, e, g, v, x_out, st):
        got = kernel(cuda_gpu, cfg, x, e, g, v, st, x_out=x_out)
        v.copy_(got[1])
        for name in ("dt", "a", "nsteps", "status", "fmax", "imax"):
            getattr(st, name).copy_(getattr(got[2], name))

    def r_step(x, e, g, v, x_out, st):
        ref.step(cfg, x, e, g, v, x_out, st.dt, st.a, st.nsteps, st.status, st.fmax, st.imax)

    got, want = run(k_step), run(r_step)
    for i, (u, w) in enumerate(zip(got, want, strict=False)):
        assert_matches(u, w)
        assert torch.equal(u[0][:, 0], x0[:, 0]) and torch.equal(u[0][:, -1], x0[:, -1]), i


@pytest.mark.gpu
def test_dispatch_runs_the_kernel(cuda_gpu):
    """lscape.ops.neb.step on CUDA float32 tensors runs this kernel; float64 runs the reference under auto and
    is refused when cuda is forced."""
    from lscape.ops import neb as ops

    (x, e, g, v), st = scene(3, 6, 50, seed=2)
    cfg = ref.NEBConfig()
    want = kernel(cuda_gpu, cfg, x, e, g, v, st)
    x_out, v2, st2 = fresh_out(x), v.clone(), copy_state(st)
    with lscape.use_backend("cuda"):
        ops.step(cfg, x, e, g, v2, x_out, st2)
    assert_bands_equal((x_out, v2, st2), want, slice(None), slice(None))
    x64, e64, g64, v64 = (t.double() for t in (x, e, g, v))
    x_out64, st64 = fresh_out(x64), copy_state(st)
    with lscape.use_backend("cuda"), pytest.raises(lscape._backend.UnsupportedKernel, match="neb_step.*float64"):
        ops.step(cfg, x64, e64, g64, v64, x_out64, st64)  # forced: no float32-only kernel runs float64
    ops.step(cfg, x64, e64, g64, v64, x_out64, st64)  # auto: the reference runs it
    assert_matches((x_out64, v64, st64), reference(cfg, x, e, g, v, st, torch.float64), rtol=1e-12, srtol=1e-12)


@pytest.mark.gpu
def test_runs_on_the_given_stream(cuda_gpu):
    (x, e, g, v), st = scene(4, 5, 3000, seed=4)
    cfg = ref.NEBConfig()
    want = kernel(cuda_gpu, cfg, x, e, g, v, st)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        got = kernel(cuda_gpu, cfg, x, e, g, v, st)
    s.synchronize()
    assert_bands_equal(got, want, slice(None), slice(None))


@pytest.mark.gpu
def test_empty_batch_does_nothing(cuda_gpu):
    """B = 0 touches nothing: real buffers passed with B = 0 keep every byte, and null ones are accepted."""
    (x, e, g, v), st = scene(2, 4, 5, seed=5)
    x_out = fresh_out(x)
    work = torch.full((cuda_gpu.neb_work_size(2, 4, 5),), math.nan, dtype=torch.float64, device=x.device)
    outputs = (v, x_out, st.dt, st.a, st.nsteps, st.status, st.fmax, st.imax)
    before = [t.clone() for t in outputs]
    bufs = (x, e, g, v, x_out, st.dt, st.a, st.nsteps, st.status, st.fmax, st.imax, work)
    cuda_gpu.neb_step(ref.NEBConfig().as_tuple(), 0, 4, 5, *(t.data_ptr() for t in bufs), False, stream())
    assert cuda_gpu.neb_step(ref.NEBConfig().as_tuple(), 0, 3, 5, *([0] * 12), False, stream()) is None
    torch.cuda.synchronize()
    for i, (t, t0) in enumerate(zip(outputs, before, strict=True)):
        assert torch.equal(t.isnan(), t0.isnan()) and torch.equal(t.nan_to_num(), t0.nan_to_num()), i
    assert work.isnan().all()


# ---- argument checks (no GPU needed) ---------------------------------------------------------------

BUFFERS = ("x", "e", "g", "v", "x_out", "dt", "a", "nsteps", "status", "fmax", "imax", "work")


def _call(e, cfg=None, B=1, n=3, D=4, null=None, f64=False):
    """neb_step with addresses that are never dereferenced (1), but 0 for the buffer named `null`."""
    cfg = ref.NEBConfig().as_tuple() if cfg is None else cfg
    ptrs = [0 if name == null else 1 for name in BUFFERS]
    return e.neb_step(cfg, B, n, D, *ptrs, f64, 0)


@pytest.mark.parametrize("kw,match", [
    (dict(f64=True), "neb: the _cuda NEB kernel takes float32; float64 runs on the reference"),
    (dict(n=2), "n must be >= 3"),
    (dict(B=-1), "B must be >= 0"),
    (dict(D=0), "D must be >= 1"),
    (dict(cfg=(1.0, 1, 2, 0.05, 0.2, 0.01, 1.0, 5, 1.1, 0.5, 0.1, 0.99)),
     r"method must be 0 \(fire\) or 1 \(descent\)"),
    (dict(cfg=(1.0, 1, -1, 0.05, 0.2, 0.01, 1.0, 5, 1.1, 0.5, 0.1, 0.99)), "method must be"),
    (dict(f64=True, B=0), "takes float32"),
] + [(dict(null=name), f"neb: {name} must not be null") for name in BUFFERS])
def test_bad_arguments_are_refused_before_any_launch(cuda_ext, kw, match):
    """Checked in the binding, so no GPU is needed (the addresses are never dereferenced)."""
    with pytest.raises(ValueError, match=match):
        _call(cuda_ext, **kw)


def test_empty_batch_needs_no_buffers(cuda_ext):
    """B = 0 returns before any buffer check or launch."""
    assert _call(cuda_ext, B=0, null="x") is None
    cuda_ext.neb_step(ref.NEBConfig().as_tuple(), 0, 3, 5, *([0] * 12), False, 0)
