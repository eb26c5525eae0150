"""Where lscape.surface's compile=True pays (issue 26 item 2): seconds to compile the one-point evaluation
(lscape.surface._Compiled: torch.compile of FastForward's folded graph) and the seconds a point costs with and
without it, for ResNet-20 (512 CIFAR-shaped images, BatchNorm folded), the digits CNN (1,798 8x8 images, one
point at a time) and the reference nanoGPT (issue 36's surface case: 64 sequences of 64 characters).  Everything
in wall seconds, one clock for the compilation and the points alike (inductor compiles in worker processes,
which this process's thread time would miss), so the break-even divides like by like; a point's time is the
least of 3 rounds that time plain and compiled in turn (bench/timing.py).  Run it on an idle machine: wall
clocks move with the load.

    PYTHONPATH=python python bench/compile_break_even.py [resnet|digits|nanogpt ...]
"""
from __future__ import annotations

import functools
import sys
import time

import lscape.data
import torch
from lscape._flat import FlatLayout
from lscape._modeleval import FastForward
from lscape.models import nanogpt, resnet20
from lscape.surface import _Compiled
from timing import least_interleaved
from torch import nn


def case(name: str):
    if name == "resnet":
        g = torch.Generator().manual_seed(0)
        return resnet20(1, 10, 3, seed=0).eval(), torch.randn(512, 3, 32, 32, generator=g)
    if name == "nanogpt":
        g = torch.Generator().manual_seed(0)
        return nanogpt(), torch.randint(0, 65, (64, 64), generator=g)
    d = lscape.data.digits()
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 36, 10)).eval()
    return m, torch.cat([d.x_train, d.x_test]).reshape(-1, 1, 8, 8)


def point(forward, layout: FlatLayout, model: nn.Module, theta: torch.Tensor, X: torch.Tensor) -> None:
    """One point of a surface: the parameters loaded, then the forward pass."""
    layout.load(model, theta)
    forward(X)


def main(names: list[str]) -> None:
    torch.set_num_threads(1)
    for name in names:
        model, X = case(name)
        layout = FlatLayout.of(model)
        theta = layout.flatten(model)
        fast = FastForward(model)
        comp = _Compiled(fast)  # what lscape.surface(compile=True) evaluates with
        plain, compiled = (lambda X, f=fast: f(None, X)), (lambda X, f=comp: f(None, X))
        with torch.no_grad():
            t = time.perf_counter()
            compiled(X)
            compile_s = time.perf_counter() - t
            a, b = least_interleaved([functools.partial(point, f, layout, model, theta, X) for f in (plain, compiled)],
                                     rounds=3, calls=50 if name == "digits" else 2)
            diff = float((compiled(X) - plain(X)).abs().max() / plain(X).abs().max())
        saved = a - b
        even = compile_s / saved if saved > 0 else float("inf")
        print(f"{name}: compile {compile_s:.1f} s; a point {a * 1e3:.2f} ms plain, {b * 1e3:.2f} ms "
              f"compiled (wall seconds, both); saves {saved * 1e3:.2f} ms a point; break-even {even:.0f} points; "
              f"max rel diff {diff:.1e}")


if __name__ == "__main__":
    main(sys.argv[1:] or ["digits", "resnet"])
