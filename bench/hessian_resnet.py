"""lscape's Hessian spectra against PyHessian's on BatchNorm ResNet-20s (eval mode, 3x32x32 inputs, float32
on the CPU) and on the reference nanoGPT (--model nanogpt), each case alone in its own process so that its
peak memory (ru_maxrss) is its own.

    # issue 36's rows: the nanoGPT-style model (4 blocks, d_model 128, 4 heads, context 64, vocab 65, tied
    # head; D = 809,856) on 64 sequences of 64 tokens, top-2: lscape differentiates the model as it is
    # (F.scaled_dot_product_attention), PyHessian its twin with attention written out (attention="math",
    # the same weights), which is the only form it can differentiate twice
    PYTHONPATH=python nice -n 19 python bench/hessian_resnet.py compare --model nanogpt --images 64 --ks 2 --threads 2

    # the issue-30 table: width x4 (D = 4.33 M), 128 images, top-2 and top-5, lscape at its default
    # (exact) tolerance, at 1e-3 and at 1e-3 with stop="change", against PyHessian at its defaults
    # (maxIter=100, tol=1e-3); the last column is each row's largest relative error against lscape's default
    PYTHONPATH=python nice -n 19 python bench/hessian_resnet.py compare --width 4 --images 128
    # one case in this process (what `compare` runs in each subprocess); prints one JSON line
    PYTHONPATH=python python bench/hessian_resnet.py one --who lscape --width 10 --images 32 --k 5
    PYTHONPATH=python python bench/hessian_resnet.py one --who lscape-slq --width 10 --images 32 --steps 100
    # issue 26's row: ResNet-20 (width 1), top-5 at matched accuracy, both at tol 1e-6
    PYTHONPATH=python nice -n 19 python bench/hessian_resnet.py compare --width 1 --images 16 --ks 5 \
        --maxiter 1000 --cases pyhessian:1e-6 lscape:1e-6 lscape:default

Cases:
  lscape          lscape.probes.spectrum.hessian_eigs(k) on Landscape.from_module (thick-restart Lanczos,
                  basis of 2k + 10 vectors, started from the gradient plus a random vector; --tol default:
                  float32's eps |H| on each eigenvalue's error bound)
  lscape-f64      the same with basis_dtype=torch.float64 (the default for a float32 landscape is a float32
                  basis)
  lscape-change   the same with stop="change": every wanted Ritz value changed by < tol relative between
                  consecutive Lanczos steps (PyHessian's reading of tol; --tol default: 1e-3)
  lscape-slq      lscape.probes.spectrum.spectral_density(n_vectors=1, steps=--steps)
  pyhessian       pyhessian.hessian(model, CE, data=(X, Y)).eigenvalues(top_n=k) (power iteration with
                  deflation; --tol default: its own 1e-3; --maxiter default: its own 100 per eigenvalue)
Each prints: CPU and wall seconds of the solve (model, data and import excluded; CPU time, user + system,
is what the ratios use: on a shared machine it counts the work, whatever the load), Hessian-vector
products, CPU seconds per product, peak resident memory of the whole process (GB, from getrusage: the
imports and the data included, the same for every case), and the eigenvalues.  `compare` adds the ratios
to PyHessian's row.
--products-only N: stop after N products (lscape: iters=N; pyhessian: maxIter=N) to measure the cost per
product and the memory on a machine too slow for the full solve; the row is then marked "partial".
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings

import _isolated
import torch
from torch import nn

CE = nn.functional.cross_entropy


def _case(a: argparse.Namespace):
    """(lscape's model, PyHessian's model, inputs, targets, loss): the same function for both."""
    if a.model == "nanogpt":
        from lscape import token_cross_entropy
        from lscape.models import nanogpt

        gen = torch.Generator().manual_seed(1)
        seq = torch.randint(0, 65, (a.images, 65), generator=gen)
        return nanogpt(), nanogpt(attention="math"), seq[:, :-1], seq[:, 1:], token_cross_entropy
    from lscape.models import resnet20

    model = resnet20(a.width)
    gen = torch.Generator().manual_seed(1)
    X = torch.randn(a.images, 3, 32, 32, generator=gen)
    Y = torch.randint(0, 10, (a.images,), generator=gen)
    return model, model, X, Y, CE


def _progress(products: int) -> None:
    """A line on stderr per product (products so far, CPU seconds): what a long case had done when stopped."""
    print(f"product {products} cpu {_isolated.cpu_seconds():.1f}", file=sys.stderr, flush=True)


def one(a: argparse.Namespace) -> dict:
    torch.set_num_threads(a.threads)
    model, twin, X, Y, loss = _case(a)
    D = sum(p.numel() for p in model.parameters())
    counter = [0]
    tol = None if a.tol == "default" else float(a.tol)
    if a.who.startswith("lscape"):
        from lscape import Landscape
        from lscape.probes import spectrum

        call = spectrum._HVP.__call__

        def counting(self, V):
            counter[0] += V.shape[0]
            _progress(counter[0])
            return call(self, V)

        spectrum._HVP.__call__ = counting
        L = Landscape.from_module(model, loss, (X, Y))
        theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
        t0, c0 = time.perf_counter(), _isolated.cpu_seconds()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if a.who == "lscape-slq":
                x, dens = spectrum.spectral_density(L, theta, n_vectors=1, steps=a.steps)
                vals = [float(x[int(dens.argmax())])]
            else:
                kw = {} if a.products_only is None else {"iters": a.products_only}
                if a.who == "lscape-f64":
                    kw["basis_dtype"] = torch.float64
                if a.who == "lscape-change":
                    kw["stop"] = "change"
                vals = spectrum.hessian_eigs(L, theta, a.k, tol=tol, **kw).tolist()
        secs, cpu = time.perf_counter() - t0, _isolated.cpu_seconds() - c0
        converged = not any("not converged" in str(w.message) for w in caught)
    else:
        import pyhessian  # noqa: F401 - the package's __init__ shadows its `hessian` module with the class

        ph = sys.modules["pyhessian.hessian"]

        hvp = ph.hessian_vector_product

        def counting(gradsH, params, v):
            counter[0] += 1
            _progress(counter[0])
            return hvp(gradsH, params, v)

        ph.hessian_vector_product = counting
        torch.manual_seed(0)  # its start vectors come from the global generator
        kw = {}
        if tol is not None:
            kw["tol"] = tol
        if a.maxiter is not None:
            kw["maxIter"] = a.maxiter
        if a.products_only is not None:
            kw["maxIter"] = a.products_only
        t0, c0 = time.perf_counter(), _isolated.cpu_seconds()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # backward(create_graph=True)'s reference-cycle warning
            H = ph.hessian(twin, loss, data=(X, Y), cuda=False)
            vals, _ = H.eigenvalues(top_n=a.k, **kw)
        secs, cpu = time.perf_counter() - t0, _isolated.cpu_seconds() - c0
        vals = sorted((float(v) for v in vals), reverse=True)
        converged = True  # PyHessian does not say
    peak = _isolated.peak_gb()
    return {"who": a.who, "width": a.width, "D": D, "images": a.images, "k": a.k, "tol": a.tol,
            "seconds": secs, "cpu_seconds": cpu, "products": counter[0],
            "s_per_product": cpu / max(1, counter[0]),
            "peak_gb": peak, "eigenvalues": vals, "converged": converged,
            "partial": a.products_only is not None, "threads": a.threads}


def compare(a: argparse.Namespace) -> None:
    rows = []
    base = ["--width", str(a.width), "--images", str(a.images), "--threads", str(a.threads), "--model", a.model]
    if a.products_only is not None:
        base += ["--products-only", str(a.products_only)]
    if a.maxiter is not None:
        base += ["--maxiter", str(a.maxiter)]
    for k in a.ks:
        for case in a.cases:
            who, tol = case.split(":")
            rows.append(_isolated.one_in_a_process(__file__, [*base, "--who", who, "--k", str(k), "--tol", tol]))
    what = "nanoGPT (SDPA; PyHessian: its math-attention twin)" if a.model == "nanogpt" else \
        f"ResNet-20 width x{a.width}"
    print(f"\n{what} (D = {rows[0]['D']:,}), {a.images} {'sequences' if a.model == 'nanogpt' else 'images'}, "
          f"float32, CPU, "
          f"{a.threads} thread(s){' (partial: cost per product only)' if a.products_only else ''}")
    print("| k | case | tol | CPU s | wall s | products | CPU s/product | peak GB | speed-up vs PyHessian (CPU) |"
          " products: PyHessian / this | memory / PyHessian | eigenvalues | largest relative error |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for k in a.ks:
        ph = next(r for r in rows if r["k"] == k and r["who"] == "pyhessian")
        # the exact answer: lscape at its default tolerance, when that case ran
        exact = next((r for r in rows if r["k"] == k and r["who"] == "lscape" and r["tol"] == "default"), None)
        for r in (r for r in rows if r["k"] == k):
            ev = ", ".join(f"{v:.6g}" for v in r["eigenvalues"])
            pairs = [] if exact is None else zip(r["eigenvalues"], exact["eigenvalues"], strict=True)
            err = f"{max(abs(v - e) / abs(e) for v, e in pairs):.2g}" if exact is not None else "—"
            print(f"| {k} | {r['who']} | {r['tol']} | {r['cpu_seconds']:.1f} | {r['seconds']:.1f} | {r['products']} | "
                  f"{r['s_per_product']:.2f} | {r['peak_gb']:.2f} | {ph['cpu_seconds'] / r['cpu_seconds']:.2f}x | "
                  f"{ph['products'] / r['products']:.2f}x | {r['peak_gb'] / ph['peak_gb']:.2f} | {ev} | {err} |")


def main() -> None:
    ap = _isolated.parser(__doc__)
    ap.add_argument("--who", choices=("lscape", "lscape-f64", "lscape-change", "lscape-slq", "pyhessian"),
                    default="lscape")
    ap.add_argument("--model", choices=("resnet20", "nanogpt"), default="resnet20")
    ap.add_argument("--width", type=int, default=4)
    ap.add_argument("--images", type=int, default=128)
    ap.add_argument("--k", type=int, default=2)
    ap.add_argument("--ks", type=int, nargs="+", default=[2, 5])
    ap.add_argument("--tol", default="default")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--products-only", type=int, default=None)
    ap.add_argument("--maxiter", type=int, default=None, help="PyHessian's maxIter per eigenvalue (its default: 100)")
    ap.add_argument("--cases", nargs="+", default=["pyhessian:default", "lscape:default", "lscape:1e-3",
                                                   "lscape-change:1e-3"],
                    help="who:tol pairs that `compare` runs, in order")
    _isolated.main(ap, one, compare)


if __name__ == "__main__":
    main()
