"""Benchmarks of nudged elastic bands on the W_f landscape (Gamst & Walker: 5x5 networks, D = 136, the
P = 321 point W_f training set), float32 on the CPU.

Group `neb-wf-B100-n32`: 100 bands of 32 images from the de-symmetrised W_f to 100 He-initialised
networks; one band-step = energies and gradients of the band's 30 interior images plus one NEB/FIRE
update.  Side by side in one run:

  lscape cpu               lscape.neb: one fused-kernel loss_and_grad call for all 3,000 images, then one
                           fused neb_step call, per step
  lscape torch ref         the same driver with every kernel on the pure-torch reference
  ASE NEB+FIRE             ase.mep.NEB (improved tangent, climbing image) + ase.optimize.FIRE on one
                           band, each image's energy and forces from lscape's own kernel (46 atoms x 3 =
                           138 coordinates; the last 2 unused)
  ASE, trivial calculator  the same with a calculator that returns zeros: ASE's own cost per band-step

Group `neb-kernel-B100-n32`: the neb_step kernel alone on those shapes, C++ against the torch reference.
The speed is band-steps per second (extra_info["model_steps"] holds bands * steps).  `cuda-` groups run
10,000 bands at once on a CUDA device when there is one.
"""
from __future__ import annotations

import lscape
import numpy as np
import pytest
import torch
from lscape import TinyMLP
from lscape.ops import neb as neb_ops
from lscape.reference.neb import NEBConfig
from lscape.tinymlp import desymmetrize, wf_network, wf_training_set

N_IMAGES = 32
# Rough speeds (band-steps/s) to size each call to ~0.5 s.
GUESS = {"lscape": 1e4, "reference": 5e2, "ase": 25.0, "ase-trivial": 50.0}


def _endpoints(B: int, device: str):
    spec, wf = wf_network()
    start = desymmetrize(spec, wf[None])[0].float().to(device).expand(B, -1).contiguous()
    end = spec.init(B, seed=7, scheme="he", device=device)
    return spec, start, end


def _landscape(spec: TinyMLP, device: str) -> lscape.Landscape:
    x, y = wf_training_set()
    return lscape.Landscape.from_mlp(spec, x.to(device), y.to(device), device=device)


def _ase_band(spec, L, start, end, trivial: bool):
    """An ASE NEB of N_IMAGES images from start to end (D,) with FIRE; returns the optimizer."""
    from ase import Atoms
    from ase.calculators.calculator import Calculator, all_changes
    from ase.mep import NEB
    from ase.optimize import FIRE

    D = spec.dim
    n_atoms = -(-D // 3)

    class WfLoss(Calculator):
        implemented_properties = ["energy", "forces"]

        def calculate(self, atoms=None, properties=None, system_changes=all_changes):
            super().calculate(atoms, properties, system_changes)
            if trivial:
                self.results = {"energy": 0.0, "forces": np.zeros((n_atoms, 3))}
                return
            theta = torch.from_numpy(self.atoms.positions.reshape(-1)[:D].astype(np.float32))
            loss, grad = L.loss_and_grad(theta[None])
            forces = np.zeros(3 * n_atoms)
            forces[:D] = -grad[0].double().numpy()
            self.results = {"energy": float(loss[0]), "forces": forces.reshape(n_atoms, 3)}

    images = []
    for i in range(N_IMAGES):
        p = np.zeros(3 * n_atoms)
        p[:D] = (start + (end - start) * (i / (N_IMAGES - 1))).double().numpy()
        atoms = Atoms(f"H{n_atoms}", positions=p.reshape(n_atoms, 3))
        atoms.calc = WfLoss()
        images.append(atoms)
    band = NEB(images, k=1.0, climb=True, method="improvedtangent")
    return FIRE(band, logfile=None)


def _steps(contender: str, B: int, device: str) -> int:
    rate = GUESS[contender] * (20 if device == "cuda" else 1)
    return max(2, int(0.5 * rate / B))


@pytest.mark.parametrize("contender", ["lscape", "reference", "ase", "ase-trivial"])
def test_neb_wf(bench_run, benchmark, contender):
    benchmark.group = "neb-wf-B100-n32"
    _bench_wf(bench_run, benchmark, contender, 100, "cpu")


@pytest.mark.gpu
def test_neb_wf_cuda(bench_run, benchmark):
    _require_cuda()
    benchmark.group = "cuda-neb-wf-B10000-n32"
    _bench_wf(bench_run, benchmark, "lscape", 10_000, "cuda")


def _bench_wf(bench_run, benchmark, contender, B, device):
    spec, start, end = _endpoints(B, device)
    L = _landscape(spec, device)
    if contender.startswith("ase"):
        pytest.importorskip("ase.mep", reason="ASE is the peer here (pip install 'lscape[bench]')")
        B = 1  # ASE runs one band at a time
    steps = _steps(contender, B, device)
    if contender.startswith("ase"):
        opt = _ase_band(spec, L, start[0], end[0], trivial=contender == "ase-trivial")

        def fn():
            opt.run(fmax=0.0, steps=steps)
    else:
        backend = "torch" if contender == "reference" else ("cuda" if device == "cuda" else "cpu")
        _check_agreement(L, start[:4], end[:4])

        def fn():
            with lscape.use_backend(backend):
                r = lscape.neb(L, start, end, n_images=N_IMAGES, fmax=0.0, steps=steps)
            if device == "cuda":
                torch.cuda.synchronize()
            return r

    labels = {"lscape": f"lscape {device}", "reference": "lscape torch ref", "ase": "ASE NEB+FIRE",
              "ase-trivial": "ASE, trivial calculator"}
    bench_run(fn, labels[contender], min_rounds=3, model_steps=B * steps, B=B, steps=steps, n=N_IMAGES,
              D=spec.dim, device=device)


def _check_agreement(L, start, end) -> None:
    """Before timing: the compiled path and the reference relax 4 bands to the same images."""
    kw = dict(n_images=N_IMAGES, fmax=0.0, steps=20)
    with lscape.use_backend("torch"):
        want = lscape.neb(L, start, end, **kw).images
    got = lscape.neb(L, start, end, **kw).images
    err = float((got.cpu() - want.cpu()).abs().max() / want.abs().max())
    assert err < 1e-4, f"lscape neb and its torch reference disagree after 20 steps: {err:.2e}"


@pytest.mark.parametrize("contender", ["lscape", "reference"])
def test_neb_kernel(bench_run, benchmark, contender):
    benchmark.group = "neb-kernel-B100-n32"
    _bench_kernel(bench_run, contender, 100, "cpu")


@pytest.mark.gpu
def test_neb_kernel_cuda(bench_run, benchmark):
    _require_cuda()
    benchmark.group = "cuda-neb-kernel-B10000-n32"
    _bench_kernel(bench_run, "lscape", 10_000, "cuda")


def _bench_kernel(bench_run, contender, B, device):
    D, n = 136, N_IMAGES
    g0 = torch.Generator().manual_seed(0)
    x = torch.randn(B, n, D, generator=g0).to(device)
    e = torch.randn(B, n, generator=g0).to(device)
    g = torch.randn(B, n, D, generator=g0).to(device)
    v = torch.zeros_like(x)
    x_out = x.clone()
    cfg = NEBConfig(fmax=0.0)
    st = neb_ops.BandState.fresh(B, cfg, x.device)
    backend = "torch" if contender == "reference" else ("cuda" if device == "cuda" else "cpu")
    steps = 20 if contender == "lscape" else 2

    def fn():
        with lscape.use_backend(backend):
            for _ in range(steps):
                neb_ops.step(cfg, x, e, g, v, x_out, st)
        if device == "cuda":
            torch.cuda.synchronize()

    label = f"lscape {device}" if contender == "lscape" else "lscape torch ref"
    bench_run(fn, label, min_rounds=3, model_steps=B * steps, B=B, steps=steps, n=n, D=D, device=device)


def _require_cuda():
    if not lscape.backends()["cuda"].available:
        pytest.skip(f"lscape cuda backend unavailable: {lscape.backends()['cuda'].reason}")
