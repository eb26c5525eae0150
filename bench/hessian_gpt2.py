"""GPT-2 small's Hessian from its configuration (transformers.GPT2Config(): 124 M parameters, the default
attn_implementation="sdpa"; 8 sequences of 128 random tokens, its own causal-LM loss, float32, CPU): the top
eigenvalue at tol 1e-3 and a 100-probe Hutchinson trace, each in its own process so that its peak memory is
its own, beside one gradient's.

    PYTHONPATH=python nice -n 19 python bench/hessian_gpt2.py compare --threads 2
    PYTHONPATH=python python bench/hessian_gpt2.py one --case top1      # one case; prints one JSON line

Cases: grad (one gradient), top1 (probes.hessian_eigs(k=1, tol=1e-3)), trace (probes.hutchinson_trace with
100 probes, Hutch++).  Each prints wall and CPU seconds (CPU time counts the work whatever the load), the
Hessian-vector products taken, and the process's peak resident memory (GB).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import _isolated
import torch


def one(a: argparse.Namespace) -> dict:
    import lscape
    import transformers
    from lscape import probes
    from lscape.probes import spectrum

    torch.set_num_threads(a.threads)
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config()).eval()
    ids = torch.randint(0, 50257, (8, 128), generator=torch.Generator().manual_seed(1))
    batch = {"input_ids": ids, "labels": ids}
    L = lscape.Landscape.from_module(model, None, batch)
    theta = torch.nn.utils.parameters_to_vector(model.parameters()).detach()
    products = [0]
    call = spectrum._HVP.__call__

    def counting(self, V):
        products[0] += V.shape[0]
        print(f"products {products[0]} cpu {_isolated.cpu_seconds():.0f}", file=sys.stderr, flush=True)
        return call(self, V)

    spectrum._HVP.__call__ = counting
    t0, c0 = time.perf_counter(), _isolated.cpu_seconds()
    if a.case == "grad":
        value = float(L.loss_and_grad(theta[None])[0][0])
    elif a.case == "top1":
        value = probes.hessian_eigs(L, theta, k=1, tol=1e-3).tolist()
    else:
        est, se = probes.hutchinson_trace(L, theta, n_samples=100)
        value = [float(est), float(se)]
    wall, cpu = time.perf_counter() - t0, _isolated.cpu_seconds() - c0
    peak = _isolated.peak_gb()
    return {"case": a.case, "D": L.dim, "wall_s": wall, "cpu_s": cpu, "products": products[0], "peak_gb": peak,
            "value": value, "threads": a.threads, "load": os.getloadavg()[0]}


def compare(a: argparse.Namespace) -> None:
    rows = []
    for case in a.cases:
        rows.append(_isolated.one_in_a_process(__file__, ["--case", case, "--threads", str(a.threads)]))
    grad = next((r for r in rows if r["case"] == "grad"), None)
    print(f"\nGPT-2 small (D = {rows[0]['D']:,}), 8 x 128 tokens, float32, CPU, {a.threads} thread(s)")
    print("| case | wall s | CPU s | products | peak GB | peak / gradient's | value |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        rel = f"{r['peak_gb'] / grad['peak_gb']:.2f}" if grad else "—"
        print(f"| {r['case']} | {r['wall_s']:.0f} | {r['cpu_s']:.0f} | {r['products']} | {r['peak_gb']:.2f} | {rel} | "
              f"{r['value']} |")


def main() -> None:
    ap = _isolated.parser(__doc__)
    ap.add_argument("--case", choices=("grad", "top1", "trace"), default="top1")
    ap.add_argument("--cases", nargs="+", default=["grad", "top1", "trace"])
    ap.add_argument("--threads", type=int, default=2)
    _isolated.main(ap, one, compare)


if __name__ == "__main__":
    main()
