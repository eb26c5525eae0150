"""Grokking through the landscape: Nanda et al.'s (2023) modular addition, and Omnigrok's (Liu, Michaud &
Tegmark 2023) LU mechanism and MNIST grokking.

    lscape reproduce grokking --scale smoke|default|paper --out DIR [--resume] [--data-dir DIR]

1. Modular addition: (a + b) mod p as the tokens `a b =` (lscape.data.modular_arithmetic), Nanda et al.'s
   one-layer ReLU transformer without LayerNorm (lscape.models.nanogpt), full-batch AdamW (lr 1e-3, weight
   decay 1, betas 0.9 / 0.98) on a fraction of the pairs, cross-entropy at the last position.  Recorded at
   log-spaced plus evenly spaced epochs: train / test loss and accuracy and the weight norm r(t); at the
   snapshots (a sparser log + even grid, parameters kept): the top Hessian eigenvalues (Lanczos) and the
   Hutch++ trace of the training loss.  Then the PCA plane of the snapshots with the train- and test-loss
   surfaces and the trajectory on both, and the loss along the straight line and along a nudged elastic
   band from the memorising snapshot (the first with train accuracy >= 0.99) to the last one.
2. The LU mechanism (Omnigrok §2-3): training confined to the sphere |theta| = w of the full space (d = D,
   Subspace kind="sphere") for w = s w0 on a grid of s, w0 the norm of the standard initialisation; for
   the transformer on the same task and for Omnigrok's MNIST MLP (width 200, depth 3, 1,000 training
   images, MSE on one-hot targets, Adam lr 1e-3, batch 100).
3. MNIST grokking (Omnigrok §4): the same MLP trained normally (AdamW, weight decay 0.01, batch 200) from
   its initialisation times 8; r(t) against test accuracy.

Every training segment, Hessian snapshot, LU cell and the line/NEB stage is a checkpointed chunk: a killed
run resumes where it stopped, and the independent chunks (Hessians, LU cells) run side by side on Ray.
Hessian products go through the network as it is trained, F.scaled_dot_product_attention included
(lscape._hvpattention writes out its second derivatives).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

from .. import _checks
from . import common
from . import grokking_stages as stages
from .grokking_summary import summary

NAME = "grokking"


@dataclass(frozen=True)
class Config:
    scale: str
    # 1. modular addition (Nanda et al. 2023)
    p: int = 113
    train_fraction: float = 0.3
    d_model: int = 128
    n_heads: int = 4
    lr: float = 1e-3
    weight_decay: float = 1.0
    beta2: float = 0.98
    epochs: int = 40_000
    segment_epochs: int = 2_000  # epochs per checkpointed training chunk
    record_log: int = 60  # log-spaced record epochs in [1, epochs] ...
    record_every: int = 100  # ... plus every this many epochs
    snapshot_log: int = 16  # log-spaced snapshot epochs (parameters kept; Hessian at each) ...
    snapshot_linear: int = 24  # ... plus this many evenly spaced
    hessian_k: int = 3  # top eigenvalues
    hessian_tol: float = 1e-3  # Lanczos stopping tolerance (relative; PyHessian's accuracy)
    hessian_iters: int = 200  # at most this many Hessian-vector products per Lanczos run
    hutchinson_samples: int = 30  # Hutch++ products for the trace
    surface_grid: int = 25  # points per axis of the PCA-plane surfaces
    line_points: int = 41  # points on the straight line memorised -> grokked
    neb_images: int = 16
    neb_steps: int = 300
    # 2. the LU mechanism: w = s * w0 for s in lu_scales
    lu_scales: tuple[float, ...] = (0.25, 0.35, 0.5, 0.7, 1.0, 1.4, 2.0, 2.8, 4.0)
    lu_epochs: int = 10_000  # transformer cells: full-batch Adam steps
    lu_lr: float = 1e-3
    mnist_dataset: str = "mnist"  # "mnist" (Omnigrok's) or "digits" (embedded; smoke)
    mnist_train: int = 1_000
    mnist_test: int = 10_000
    mnist_width: int = 200
    mnist_depth: int = 3
    mnist_lr: float = 1e-3  # Omnigrok's Adam(W) learning rate, LU cells and grokking run alike
    mnist_lu_steps: int = 10_000  # Omnigrok: 10,000 steps, batch 100
    mnist_lu_batch: int = 100
    # 3. MNIST grokking (Omnigrok §4): init x 8, AdamW wd 0.01, batch 200, 100,000 steps
    mnist_init_scale: float = 8.0
    mnist_weight_decay: float = 0.01
    mnist_batch: int = 200
    mnist_steps: int = 100_000
    mnist_segment_steps: int = 10_000
    mnist_record_log: int = 80
    evals: int = 20  # evaluations per LU cell (the best and the final are reported)
    device: str = "auto"  # "auto": cuda when available, else cpu
    seed: int = 0

    def __post_init__(self) -> None:
        p = _checks.int_arg("p", self.p, low=3)
        if any(p % q == 0 for q in range(2, int(p ** 0.5) + 1)):
            raise ValueError(f"p: got {p}, expected a prime >= 3 (the residues mod p must form a field)")
        f = _checks.float_arg("train_fraction", self.train_fraction, low=0.0, high=1.0, low_open=True)
        if f >= 1.0:
            raise ValueError(f"train_fraction: got {f}, expected a number in (0, 1)")
        if not self.lu_scales:
            raise ValueError("lu_scales: got an empty grid, expected at least one norm scale w / w0 > 0")
        for s in self.lu_scales:
            if not isinstance(s, (int, float)) or not s > 0 or s == float("inf"):
                raise ValueError(f"lu_scales: got {s!r} in {self.lu_scales}, expected finite norms w / w0 > 0")
        for name in ("epochs", "segment_epochs", "record_every", "lu_epochs", "mnist_train", "mnist_test",
                     "mnist_lu_steps", "mnist_steps", "mnist_segment_steps", "mnist_batch", "mnist_lu_batch",
                     "neb_images", "surface_grid", "line_points", "evals", "d_model", "n_heads", "hessian_iters"):
            _checks.int_arg(name, getattr(self, name), low=3 if name in ("neb_images", "surface_grid") else 1)
        if self.d_model % self.n_heads:
            raise ValueError(f"n_heads: got {self.n_heads}, expected a divisor of d_model = {self.d_model}")
        if self.mnist_depth < 2:
            raise ValueError(f"mnist_depth: got {self.mnist_depth}, expected >= 2 Linear layers")
        for name in ("mnist_init_scale", "lr", "lu_lr", "mnist_lr"):
            _checks.float_arg(name, getattr(self, name), low=0.0, high=float("inf"), low_open=True)
        _checks.choice_arg("mnist_dataset", self.mnist_dataset, ("mnist", "digits"))


SCALES: dict[str, Config] = {
    # seconds: what the tests run (p = 23, a 16-wide transformer, the embedded digits for "MNIST")
    "smoke": Config("smoke", p=23, train_fraction=0.5, d_model=16, n_heads=2, lr=3e-3, epochs=40, segment_epochs=20,
                    record_log=6, record_every=10, snapshot_log=3, snapshot_linear=4, hessian_k=2, hessian_tol=1e-2,
                    hessian_iters=20, hutchinson_samples=6, surface_grid=5, line_points=5, neb_images=5, neb_steps=5,
                    lu_scales=(0.5, 1.0, 2.0), lu_epochs=10, mnist_dataset="digits", mnist_train=200, mnist_test=300,
                    mnist_width=32, mnist_lu_steps=10, mnist_steps=40, mnist_segment_steps=20, mnist_record_log=6,
                    evals=3),
    # <= 10 minutes on 2 cores: p = 59 with half the pairs for training (1,740), Nanda et al.'s network and
    # optimiser; measured: train accuracy 1 by epoch 100, test accuracy 0.9 near epoch 850 (at 30% of the
    # pairs p = 59 had not grokked by epoch 3,300); MNIST grokking with weight decay 0.2 (not 0.01), so the
    # norm decays, and the test accuracy rises, within 8,000 steps
    "default": Config("default", p=59, train_fraction=0.5, epochs=2_000, segment_epochs=500, record_log=30,
                      record_every=25,
                      snapshot_log=4, snapshot_linear=10, hessian_k=2, hessian_tol=1e-2, hessian_iters=30,
                      hutchinson_samples=6, surface_grid=11, line_points=21, neb_images=8, neb_steps=40,
                      lu_scales=(0.3, 0.5, 0.7, 1.0, 1.5, 2.2, 3.3), lu_epochs=200, lu_lr=3e-3,
                      mnist_test=2_000, mnist_lu_steps=1_000, mnist_weight_decay=0.2, mnist_steps=8_000,
                      mnist_segment_steps=2_000, mnist_record_log=40, evals=5),
    # the papers' budgets: Nanda et al.'s 40,000 epochs, Omnigrok's 10,000 / 100,000 steps and its grid
    # of 21 norms from w0 / 10 to 10 w0 (the transformer's own run: 1.4 w0 at memorisation, ~0.9 w0 once
    # grokked)
    "paper": Config("paper", lu_scales=tuple(round(10 ** (k / 10), 4) for k in range(-10, 11))),
}

PLOTS = "grokking_plots"

config, replot = common.module_functions(__name__)  # config(scale, **overrides), replot(out)


def run(scale: str = "default", out: str = "grokking", *, resume: bool = False, progress: bool = True,
        data_dir: str | None = None, stop_after_chunks: int | None = None, figures: bool = True,
        executor=None, **overrides: Any) -> dict[str, Any]:
    """Run (or resume) the three studies into folder `out`; returns the summary (also in summary.json)."""
    cfg = config(scale, **overrides)
    data = stages.load_data(cfg, data_dir)  # both data sets first: a missing MNIST fails before any work
    ctx = common.start(cfg, out, resume=resume, progress=progress, stop_after_chunks=stop_after_chunks,
                       figures=figures, executor=executor)
    res: dict[str, Any] = {}
    res.update(stages.modular_training(ctx, data))
    res.update(stages.hessians(ctx, data, res))
    res.update(stages.plane_and_paths(ctx, data, res))
    res.update(stages.lu_sweeps(ctx, data))
    res.update(stages.mnist_grokking(ctx, data))
    return ctx.finish(sys.modules[__name__], res, summary(cfg, res))
