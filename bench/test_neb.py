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

Group `resnet20-neb-n16`: one band of 16 images (14 interior) of ResNet-20 (lscape.models.resnet20,
BatchNorm in eval mode with non-trivial statistics, D = 272,474) on 64 CIFAR-shaped images (3 x 32 x 32,
Gaussian pixels; 64 keeps a round near ten seconds on 2 shared cores), resumed from a fresh band and
relaxed for RN_STEPS FIRE steps, then the interior energies refreshed, as lscape.neb returns them:
  lscape               lscape.neb(resume=..., steps=RN_STEPS) on Landscape.from_module: every image's loss
                       and gradient through lscape._modeleval (BatchNorm folded into the convolutions at
                       each point, channels-last), then the fused neb_step kernel
  plain image loop     each interior image by hand: vector_to_parameters into a model copy,
                       CE(model(X), Y).backward(), parameters_to_vector of the .grad; the same neb_step
                       kernel for the update and a plain forward per image for the final energies; its
                       images are checked against lscape's
The speed is band-steps per second; the target (issue 26) is lscape at least as fast as the plain loop.
"""
from __future__ import annotations

import copy
import dataclasses

import lscape
import numpy as np
import pytest
import torch
from lscape import TinyMLP
from lscape._flat import FlatLayout
from lscape.directions import random_directions
from lscape.models import resnet20
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


# ---- ResNet-20: lscape's band step against a plain loop over images -----------------------------------
RN_IMAGES, RN_BAND, RN_STEPS = 64, 16, 2
CE = torch.nn.functional.cross_entropy


@pytest.fixture(scope="module")
def resnet_band():
    """ResNet-20, its data, and a fresh band (one NEB evaluation done) from its weights along a random
    filter-normalised direction."""
    m = resnet20(1, 10, 3, seed=0)
    g = torch.Generator().manual_seed(0)
    X, Y = torch.randn(RN_IMAGES, 3, 32, 32, generator=g), torch.randint(0, 10, (RN_IMAGES,), generator=g)
    start = FlatLayout.of(m).flatten(m).float()
    end = start + torch.as_tensor(random_directions(m, 1, seed=1).vectors[0]).float()
    L = lscape.Landscape.from_module(m, CE, (X, Y))
    return m, X, Y, L, lscape.neb(L, start, end, n_images=RN_BAND, steps=0, fmax=0.0)


def _rn_lscape(m, X, Y, L, r0):
    def run():
        return lscape.neb(L, None, None, resume=r0, steps=RN_STEPS).images
    return run


def _rn_plain(m, X, Y, L, r0):
    """Each image's loss and gradient the way a user writes it, then the same update kernel."""
    mm = copy.deepcopy(m).eval()
    params = list(mm.parameters())

    def energy(theta: torch.Tensor, grad: bool):
        torch.nn.utils.vector_to_parameters(theta, params)
        if not grad:
            with torch.no_grad():
                return CE(mm(X), Y), None
        mm.zero_grad(set_to_none=True)
        loss = CE(mm(X), Y)
        loss.backward()
        return loss.detach(), torch.nn.utils.parameters_to_vector([p.grad for p in params])

    def run():
        x, e, v = r0.images.clone(), r0.energies.clone(), r0.velocity.clone()
        st = neb_ops.BandState(**{f.name: getattr(r0.state, f.name).clone() for f in dataclasses.fields(r0.state)})
        g, x_out = torch.zeros_like(x), x.clone()
        for _ in range(RN_STEPS):
            for i in range(1, RN_BAND - 1):
                e[0, i], g[0, i] = energy(x[0, i], True)
            neb_ops.step(r0.config, x, e, g, v, x_out, st)
            x, x_out = x_out, x
        for i in range(1, RN_BAND - 1):
            e[0, i] = energy(x[0, i], False)[0]
        return x
    return run


RN_NEB = {"lscape": _rn_lscape, "plain image loop": _rn_plain}


@pytest.mark.parametrize("contender", list(RN_NEB))
def test_neb_resnet20(bench_run, benchmark, resnet_band, contender):
    benchmark.group = f"resnet20-neb-n{RN_BAND}"
    fn = RN_NEB[contender](*resnet_band)
    if contender != "lscape":  # the same band: the plain loop's images equal lscape's
        want, got = _rn_lscape(*resnet_band)(), fn()
        step = float((want - resnet_band[4].images).abs().max())
        err = float((got - want).abs().max())
        assert step > 0 and err < 1e-2 * step, f"plain loop vs lscape.neb: {err:.2e} (step {step:.2e})"
    D = resnet_band[3].dim
    bench_run(fn, contender, min_rounds=2, model_steps=RN_STEPS, B=1, steps=RN_STEPS, n=RN_BAND, D=D,
              P=RN_IMAGES, device="cpu")


def _require_cuda():
    if not lscape.backends()["cuda"].available:
        pytest.skip(f"lscape cuda backend unavailable: {lscape.backends()['cuda'].reason}")
