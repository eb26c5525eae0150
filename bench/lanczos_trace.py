"""The floor of a Lanczos solve's product count: a plain, fully reorthogonalised Lanczos run on a BatchNorm
ResNet-20's Hessian (bench/hessian_resnet.py's case), recording every step's top Ritz values, so that what
any stopping rule could do is read off one run (issue 30: how few products give the top 2 to 1e-3).

    PYTHONPATH=python python bench/lanczos_trace.py --width 4 --images 128 --products 45 --threads 2
    PYTHONPATH=python python bench/lanczos_trace.py --start subsample --sub-images 16 --sub-products 16 ...

Starts:
  auto       hessian_eigs' own: the unit gradient plus a unit random vector (probes.spectrum._start_vector)
  subsample  the sum of the top-6 Ritz vectors of a Lanczos run on the first --sub-images images (cheaper
             products), plus 0.1 of a unit random vector
  class      the sum of the unit gradients of each class's samples, plus a unit random vector
  weighted   the unit gradient, plus the unit gradient of the samples' losses weighted by N(0, 1) draws, plus a
             unit random vector
Prints one line a product (products, wall seconds, the top 6 Ritz values) and, at the end, the first step
at which each of the top k (k = 1, 2, 5) is within 1e-3 relative of the last step's values.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hessian_resnet import CE, _case  # noqa: E402


def lanczos(op, q: torch.Tensor, products: int, tag: str) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
    """alpha, beta (products,) and the basis (products + 1, D) float64 of Lanczos from q."""
    Q = torch.empty(products + 1, q.numel(), dtype=torch.float64)
    Q[0] = q / q.norm()
    al, be, t0 = [], [], time.perf_counter()
    for j in range(products):
        w = op(Q[j][None])[0].double()
        al.append(float(w @ Q[j]))
        for _ in range(2):  # full reorthogonalisation, twice
            w -= Q[:j + 1].T @ (Q[:j + 1] @ w)
        be.append(float(w.norm()))
        Q[j + 1] = w / be[-1]
        vals = ritz(np.array(al), np.array(be), j + 1)
        print(tag, j + 1, f"{time.perf_counter() - t0:.0f}s", " ".join(f"{v:.6f}" for v in vals[:6]), flush=True)
    return np.array(al), np.array(be), Q


def ritz(al: np.ndarray, be: np.ndarray, n: int, vectors: bool = False):
    T = np.diag(al[:n]) + np.diag(be[:n - 1], 1) + np.diag(be[:n - 1], -1)
    if not vectors:
        return np.linalg.eigvalsh(T)[::-1]
    v, S = np.linalg.eigh(T)
    return v[::-1], S[:, ::-1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--width", type=int, default=4)
    ap.add_argument("--images", type=int, default=128)
    ap.add_argument("--products", type=int, default=45)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--start", choices=("auto", "subsample", "class", "weighted"), default="auto")
    ap.add_argument("--sub-images", type=int, default=16)
    ap.add_argument("--sub-products", type=int, default=16)
    a = ap.parse_args()
    from lscape import Landscape
    from lscape.probes import spectrum

    torch.set_num_threads(a.threads)
    model, X, Y = _case(a.width, a.images)
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    D = theta.numel()
    gen = torch.Generator().manual_seed(0)
    r = torch.randn(D, generator=gen, dtype=torch.float64)
    r /= r.norm()

    def unit_grad(weights: torch.Tensor) -> torch.Tensor:
        def loss(out, y):
            return (torch.nn.functional.cross_entropy(out, y, reduction="none") * weights).sum() / len(y)
        g = Landscape.from_module(model, loss, (X, Y)).loss_and_grad(theta[None])[1][0].double()
        return g / g.norm()

    L = Landscape.from_module(model, CE, (X, Y))
    op = spectrum.hessian_operator(L, theta, 32)
    if a.start == "auto":
        q = spectrum._start_vector(op, D, gen, L.device, "auto")
    elif a.start == "subsample":
        sub = spectrum.hessian_operator(Landscape.from_module(model, CE, (X[:a.sub_images], Y[:a.sub_images])),
                                        theta, 32)
        al, be, Q = lanczos(sub, spectrum._start_vector(sub, D, gen, L.device, "auto"), a.sub_products, "sub")
        _, S = ritz(al, be, a.sub_products, vectors=True)
        q = torch.from_numpy(np.ascontiguousarray(S[:, :6].T)) @ Q[:a.sub_products]
        q = q.sum(0) + 0.1 * r
        del Q
    elif a.start == "class":
        q = r + sum(unit_grad((Y == c).float()) for c in Y.unique())
    else:
        q = r + unit_grad(torch.ones(len(Y))) + unit_grad(torch.randn(len(Y), generator=gen))
    al, be, _ = lanczos(op, q, a.products, a.start)
    last = ritz(al, be, a.products)
    for k in (1, 2, 5):
        err = [np.max(np.abs(ritz(al, be, n)[:k] - last[:k]) / np.abs(last[:k])) if n >= k else np.inf
               for n in range(1, a.products + 1)]
        first = next((n + 1 for n, e in enumerate(err) if e < 1e-3), None)
        print(f"top {k}: within 1e-3 of step {a.products}'s values from product {first}")


if __name__ == "__main__":
    main()
