"""Benchmarks of fused ensemble training: 5x5 networks on the W_f training set (Gamst & Walker), full batch.

Groups `mlp-{optimizer}-M{M}` for optimizer in sgd / adadelta / adam and M in 1024 / 16384 models; each
times, side by side in one run, float32 on the CPU:

  lscape cpu          lscape.train_ensemble on the C++ kernel (steps fused in the kernel)
  torch.func vmap     what a user would write: torch.func.vmap(torch.func.grad(loss)) over the stacked
                      parameters of M copies of the nn.Sequential, then torch.optim's own step on the
                      (M, D) tensor (the update rules are elementwise, so this is exact)
  lscape torch ref    lscape.train_ensemble on the pure-torch reference
  lscape cpu avx2     (M = 1024 only) the C++ kernel forced onto one ISA build with _C.set_isa, so the
  lscape cpu avx512   ISA paths are timed side by side in one run (skipped where the CPU lacks the ISA)

Each call runs a number of steps sized to about half a second; the speed is model-steps per
second = M * steps / median time (extra_info["model_steps"] holds M * steps), and the report's ratio is
lscape cpu's rate over the contender's.  `cuda-` groups run the same on a CUDA device when there is one.
"""
from __future__ import annotations

import contextlib

import lscape
import pytest
import torch
from lscape import TinyMLP
from lscape.tinymlp import wf_training_set

OPTS = {"sgd": dict(lr=0.01, momentum=0.9), "adadelta": dict(), "adam": dict(lr=1e-3)}
TORCH_OPT = {"sgd": (torch.optim.SGD, dict(lr=0.01, momentum=0.9)), "adadelta": (torch.optim.Adadelta, {}),
             "adam": (torch.optim.Adam, dict(lr=1e-3))}
SIZES = [1024, 16384]
CONTENDERS = ["lscape", "vmap", "reference", "avx2", "avx512"]
ISAS = ("avx2", "avx512")
LABELS = {"lscape": "lscape cpu", "vmap": "torch.func vmap", "reference": "lscape torch ref",
          **{isa: f"lscape cpu {isa}" for isa in ISAS}}
# Rough speeds (model-steps/s) to size each call to ~0.5 s (a long run's per-call costs, such as the
# final loss evaluation, then weigh as little as in real use); a wrong guess only changes the rounds.
GUESS = {"lscape": 5e5, "vmap": 1.5e4, "reference": 1.5e4, "avx2": 5e5, "avx512": 5e5}


def _steps(contender: str, M: int, device: str) -> int:
    rate = GUESS[contender] * (100 if device == "cuda" else 1)
    return max(1, int(0.5 * rate / M))


def _vmap_trainer(spec: TinyMLP, params: torch.Tensor, x: torch.Tensor, y: torch.Tensor, optimizer: str):
    """A step function training the (M, D) tensor with vmap(grad) and torch.optim."""
    model = spec.to_module(params[0])
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    sizes = [s.numel() for s in shapes]
    X = x[:, None]

    def loss(theta):
        ps = {n: t.view(s) for n, t, s in zip(names, torch.split(theta, sizes), shapes, strict=False)}
        out = torch.func.functional_call(model, ps, (X,))[:, 0]
        return ((out - y) ** 2).mean()

    grad = torch.func.vmap(torch.func.grad(loss))
    w = params.clone().requires_grad_(True)
    cls, kw = TORCH_OPT[optimizer]
    opt = cls([w], **kw)

    def run(steps: int):
        for _ in range(steps):
            w.grad = grad(w.detach())
            opt.step()
        return w

    return run


def _isa(name: str | None) -> contextlib.ExitStack:
    """The CPU kernels forced onto one ISA build (None: the run-time choice), restored on exit."""
    stack = contextlib.ExitStack()
    if name is not None:
        from lscape import _C

        stack.callback(_C.set_isa, _C.isa())
        _C.set_isa(name)
    return stack


def _isa_skip(contender: str) -> None:
    if contender not in ISAS:
        return
    try:
        from lscape import _C
    except ImportError:
        pytest.skip("lscape._C is not built: no ISA builds to time")
    before = _C.isa()
    try:
        _C.set_isa(contender)
    except (ValueError, RuntimeError) as exc:
        pytest.skip(f"{contender} build not runnable here: {exc}")
    finally:
        _C.set_isa(before)


def _bench(bench_run, benchmark, contender: str, optimizer: str, M: int, device: str):
    spec = TinyMLP(5, 5)
    x, y = (t.to(device) for t in wf_training_set())
    params = spec.init(M, seed=0, scheme="he", device=device)
    steps = _steps(contender, M, device)
    if contender == "vmap":
        run = _vmap_trainer(spec, params, x, y, optimizer)
        fn = lambda: run(steps)  # noqa: E731
    else:
        backend = "torch" if contender == "reference" else ("cuda" if device == "cuda" else "cpu")

        def fn():
            with lscape.use_backend(backend), _isa(contender if contender in ISAS else None):
                return lscape.train_ensemble(spec, params, x, y, optimizer=optimizer, steps=steps,
                                             record_every=steps, **OPTS[optimizer])

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def timed():
        out = fn()
        sync()
        return out

    label = LABELS[contender] if device == "cpu" else LABELS[contender].replace("cpu", "cuda")
    bench_run(timed, label, min_rounds=3, model_steps=M * steps, M=M, steps=steps, optimizer=optimizer,
              P=int(x.shape[0]), D=spec.dim, device=device)
    rate = M * steps / benchmark.stats.stats.median
    benchmark.extra_info["model_steps_per_s"] = rate


def _check_agreement(optimizer: str, device: str) -> None:
    """Before timing: lscape's kernel and the vmap peer train 8 models to the same parameters."""
    spec = TinyMLP(5, 5)
    x, y = (t.to(device) for t in wf_training_set())
    p = spec.init(8, seed=1, scheme="he", device=device)
    got = lscape.train_ensemble(spec, p, x, y, optimizer=optimizer, steps=20, **OPTS[optimizer]).params
    want = _vmap_trainer(spec, p, x, y, optimizer)(20).detach()
    err = float((got - want).abs().max() / want.abs().max())
    assert err < 1e-4, f"lscape and torch.func vmap disagree after 20 {optimizer} steps: {err:.2e}"


@pytest.mark.parametrize("contender", CONTENDERS)
@pytest.mark.parametrize("M", SIZES)
@pytest.mark.parametrize("optimizer", list(OPTS))
def test_train(bench_run, benchmark, optimizer, M, contender):
    benchmark.group = f"mlp-{optimizer}-M{M}"
    if contender in ISAS and M != SIZES[0]:
        pytest.skip(f"the ISA builds are timed side by side at M = {SIZES[0]} only")
    _isa_skip(contender)
    if contender == "lscape":
        _check_agreement(optimizer, "cpu")
    _bench(bench_run, benchmark, contender, optimizer, M, "cpu")


@pytest.mark.gpu
@pytest.mark.parametrize("contender", ["lscape", "vmap"])
@pytest.mark.parametrize("M", [16384, 320000])
@pytest.mark.parametrize("optimizer", list(OPTS))
def test_train_cuda(bench_run, benchmark, optimizer, M, contender):
    if not lscape.backends()["cuda"].available:
        pytest.skip(f"lscape cuda backend unavailable: {lscape.backends()['cuda'].reason}")
    if contender == "vmap" and M > 16384:
        pytest.skip("torch.func vmap at M = 320,000 would take minutes per round; timed at M = 16,384")
    benchmark.group = f"cuda-mlp-{optimizer}-M{M}"
    if contender == "lscape":
        _check_agreement(optimizer, "cuda")
    _bench(bench_run, benchmark, contender, optimizer, M, "cuda")

