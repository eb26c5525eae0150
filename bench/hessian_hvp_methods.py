"""Which exact Hessian-vector product is cheapest on a BatchNorm ResNet-20 (eval mode), float32 on the CPU.

    PYTHONPATH=python nice -n 19 python bench/hessian_hvp_methods.py [--width 1] [--images 32] [--vectors 4]

Contenders, each timed over the same vectors after one untimed warm-up call, all checked against the first:
  double backward       the gradient's graph built once (create_graph), one backward pass through it per
                        vector (what PyHessian does), torch's own derivatives throughout
  double backward, K    the same, K vectors in one pass (autograd.grad is_grads_batched: vmap inside)
  ..., _hvpops          the same two with the convolutions' and ReLUs' double backward written out
                        (lscape._hvpops.hvp_mode: what lscape.probes.spectrum does)
  jvp of grad           torch.func.jvp(torch.func.grad(loss)): forward-over-reverse, forward and backward
                        repeated per vector
  vmap jvp of grad, K   the same vmapped over K vectors
Prints seconds per vector and the largest relative difference from the first contender.
"""
from __future__ import annotations

import argparse
import contextlib
import time

import torch
from lscape import Landscape
from lscape._hvpops import hvp_mode
from lscape.models import resnet20
from torch import nn


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--width", type=int, default=1)
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--vectors", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    model = resnet20(a.width)
    gen = torch.Generator().manual_seed(1)
    X, Y = torch.randn(a.images, 3, 32, 32, generator=gen), torch.randint(0, 10, (a.images,), generator=gen)
    L = Landscape.from_module(model, nn.functional.cross_entropy, (X, Y))
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    V = torch.randn(a.vectors, theta.numel(), generator=gen)
    print(f"ResNet-20 width {a.width}: D = {theta.numel():,}, {a.images} images, {a.vectors} vectors, "
          f"{a.threads} thread(s)")

    def graph(second_order: bool = False):
        x = theta.clone().requires_grad_(True)
        with hvp_mode(model) if second_order else contextlib.nullcontext():
            (g,) = torch.autograd.grad(L.point_loss(x), x, create_graph=True)
        return x, g

    graphs = {False: graph(), True: graph(True)}

    def double_backward(second_order: bool = False):
        x, g = graphs[second_order]
        return torch.stack([torch.autograd.grad(g, x, v, retain_graph=True)[0] for v in V])

    def double_backward_k(second_order: bool = False):
        x, g = graphs[second_order]
        return torch.autograd.grad(g, x, V, retain_graph=True, is_grads_batched=True)[0]

    grad = torch.func.grad(L.point_loss)

    def jvp_of_grad():
        return torch.stack([torch.func.jvp(grad, (theta,), (v,))[1] for v in V])

    def vmap_jvp_of_grad():
        return torch.func.vmap(lambda v: torch.func.jvp(grad, (theta,), (v,))[1])(V)

    def graph_build():  # the one-time cost of the held graph, per point
        return graph()[1][None]

    def graph_build_hvpops():
        return graph(True)[1][None]

    ref = ref_g = None
    for name, fn, per in (("double backward", double_backward, a.vectors),
                          (f"double backward, {a.vectors} batched", double_backward_k, a.vectors),
                          ("double backward, _hvpops", lambda: double_backward(True), a.vectors),
                          (f"double backward, {a.vectors} batched, _hvpops", lambda: double_backward_k(True),
                           a.vectors),
                          ("jvp of grad", jvp_of_grad, a.vectors),
                          (f"vmap jvp of grad, {a.vectors}", vmap_jvp_of_grad, a.vectors),
                          ("(gradient graph, once per point)", graph_build, 1),
                          ("(the same, _hvpops)", graph_build_hvpops, 1)):
        try:
            out = fn()
            t0 = time.perf_counter()
            out = fn()
            dt = (time.perf_counter() - t0) / per
        except (RuntimeError, NotImplementedError) as exc:
            print(f"  {name:34s} failed: {type(exc).__name__}: {str(exc)[:80]}")
            continue
        out = out.detach()
        if ref is None:
            ref = out
        if name.startswith("("):
            ref_g = out if ref_g is None else ref_g
            err = float((out - ref_g).norm() / ref_g.norm())
        else:
            err = float((out - ref).norm() / ref.norm())
        print(f"  {name:34s} {dt:8.3f} s per vector   rel. diff {err:.1e}")


if __name__ == "__main__":
    main()
