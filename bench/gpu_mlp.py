"""Fused ensemble training on a CUDA device: model-steps per second of lscape._cuda's mlp_train.

5x5 networks on the W_f training set (P = 321, Gamst & Walker), M in (16384, 320000), each optimizer,
timed over --steps full-batch steps after a warm-up.  Before timing, a subset is checked:
  * against the float64 torch reference after 200 steps (next to the float32 reference's own distance
    from it: both are float32 approximations of one trajectory);
  * batch independence: those models trained alone end bitwise where they end inside the big batch.
Prints one JSON object per measurement and a summary table with the paper-scale estimate
(320K models x 50K steps).  Run on a GPU machine: `python bench/gpu_mlp.py [--steps 1000] [--quick]`.
"""
from __future__ import annotations

import argparse
import json
import time

import torch
from lscape import TinyMLP, _backend
from lscape.reference import mlp as ref
from lscape.tinymlp import wf_training_set

OPTS = {"sgd": ref.OptConfig("sgd", lr=0.01, momentum=0.9), "adadelta": ref.OptConfig("adadelta", lr=1.0),
        "adam": ref.OptConfig("adam", lr=1e-3)}
SIZES = (16384, 320000)
PAPER_MODEL_STEPS = 320_000 * 50_000
TARGET_RATE = 5e7  # model-steps/s: the paper's run in under ~6 minutes


def train(ext, K, N, opt, p, x, y, steps):
    """`steps` steps from zero optimizer state, in place on p; returns the diverged flags."""
    M = p.shape[0]
    s0 = torch.zeros_like(p)
    s1 = torch.zeros_like(p) if opt.kind != "sgd" else None
    div = torch.zeros(M, dtype=torch.uint8, device=p.device)
    ext.mlp_train(K, N, opt.as_tuple(), M, x.numel(), p.data_ptr(), s0.data_ptr(), 0 if s1 is None else s1.data_ptr(),
                  div.data_ptr(), x.data_ptr(), y.data_ptr(), 0, steps, 1, 0, torch.cuda.current_stream().cuda_stream)
    return div


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).abs().max() / b.abs().max())


def check(ext, spec, x, y, name, opt, M=256, steps=200) -> dict:
    K, N = spec.spec
    p0 = spec.init(M, seed=1, device="cuda")
    got = p0.clone()
    train(ext, K, N, opt, got, x, y, steps)
    p32, p64 = p0.clone(), p0.double()
    for p in (p32, p64):
        s0 = torch.zeros_like(p)
        s1 = torch.zeros_like(p) if opt.kind != "sgd" else None
        div = torch.zeros(M, dtype=torch.bool, device="cuda")
        ref.train(K, N, opt, p, s0, s1, div, x.to(p.dtype), y.to(p.dtype), 0, steps, 1, None)
    k_err, r_err = rel(got, p64), rel(p32, p64)
    return {"check": name, "models": M, "steps": steps, "kernel_vs_ref64": k_err, "ref32_vs_ref64": r_err,
            "ok": k_err <= max(1e-4, 10 * r_err)}


def bench(ext, spec, x, y, name, opt, M, steps) -> dict:
    K, N = spec.spec
    p0 = spec.init(M, seed=0, device="cuda")
    train(ext, K, N, opt, p0.clone(), x, y, 5)  # warm-up: module load, clocks
    p = p0.clone()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    div = train(ext, K, N, opt, p, x, y, steps)
    torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    rate = M * steps / dt
    # Batch independence: a few of the models trained alone land bitwise where the big run left them.
    pick = torch.tensor([0, 1, 31, 32, M // 2, M - 1], device="cuda")
    alone = p0[pick].clone()
    train(ext, K, N, opt, alone, x, y, steps)
    return {"optimizer": name, "M": M, "steps": steps, "seconds": dt, "model_steps_per_s": rate,
            "paper_run_s": PAPER_MODEL_STEPS / rate, "diverged": int(div.sum()),
            "batch_independent": bool(torch.equal(alone, p[pick]))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--quick", action="store_true", help="only the small M, 200 steps")
    args = ap.parse_args()
    ext = _backend.cuda_extension()
    if ext is None or not torch.cuda.is_available():
        raise SystemExit("needs lscape._cuda and a CUDA device")
    spec = TinyMLP(5, 5)
    x, y = (t.cuda() for t in wf_training_set())
    print(json.dumps({"device": torch.cuda.get_device_name(), "P": x.numel(), "D": spec.dim}))
    checks = [check(ext, spec, x, y, name, opt) for name, opt in OPTS.items()]
    for c in checks:
        print(json.dumps(c))
    sizes, steps = (SIZES[:1], 200) if args.quick else (SIZES, args.steps)
    rows = []
    for M in sizes:
        for name, opt in OPTS.items():
            rows.append(bench(ext, spec, x, y, name, opt, M, steps))
            print(json.dumps(rows[-1]), flush=True)
    print(f"\n{'optimizer':>9} {'M':>7} {'model-steps/s':>14} {'paper run':>10} {'indep':>6}")
    for r in rows:
        print(f"{r['optimizer']:>9} {r['M']:>7} {r['model_steps_per_s']:>14.3e} {r['paper_run_s']:>9.0f}s "
              f"{str(r['batch_independent']):>6}")
    big = [r for r in rows if r["M"] == max(sizes)]
    ok = all(c["ok"] for c in checks) and all(r["batch_independent"] for r in rows)
    fast = all(r["model_steps_per_s"] >= TARGET_RATE for r in big)
    print(f"\nchecks {'passed' if ok else 'FAILED'}; target {TARGET_RATE:.0e} model-steps/s at M={max(sizes)}: "
          f"{'met' if fast else 'NOT met'}")


if __name__ == "__main__":
    main()
