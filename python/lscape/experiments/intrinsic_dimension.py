"""Li et al. (2018), "Measuring the Intrinsic Dimension of Objective Landscapes": d_int90 of an MNIST
784-200-200-10 FC net (their 750) and of LeNet-5 (their 290), with lscape.intrinsic_dimension.

    lscape reproduce intrinsic-dimension --scale smoke|default|paper --out DIR [--resume]

Each network is trained from its own he_normal initialisation (zero biases; one draw per seed) in random
d-dimensional hyperplanes r = theta0 + P theta (theta from zero, P's columns of unit norm over all D),
with the official code's setup (uber-research/intrinsic-dimension, train.py / standard_parser.py /
model_builders.py and its scripts/*mnist*): Adam, lr 1e-3, beta2 0.99, batch 128, L2 1e-4 on the full
kernels (Keras' kernel_regularizer: the weight matrices and conv filters, not the biases), test accuracy
after the last epoch, 3 seeds, d swept densely around the crossing.  The same network trained in the
full space with the same budget (the d = D point) is the measured baseline; its accuracy after every
epoch (and every swept d's) shows how far training has plateaued.

d_int90 is read as Li et al. read it: the first swept d whose mean test accuracy over seeds reaches
threshold x baseline with baseline 1.0 (so 0.9 absolute accuracy), with the linear interpolation between
the bracketing d and each seed's own crossing beside it; the reading relative to the measured baseline
(threshold x the full-space accuracy) is reported too.

Scales: smoke (seconds, digits, tiny nets), default (minutes, the embedded 8x8 digits: the 64-200-200-10
net and a LeNet-5 with same-padded convs), paper (MNIST at the official budget: 100 epochs, 3 seeds, d
swept densely around Li et al.'s crossings, FC d in 600..1,000 and LeNet-5 d in 200..400, with the
full-space baselines; hours of a few CPU cores, so it is meant to be run chunk by chunk with --resume).
Any field can be replaced from the command line, `--set fc_epochs=50 --set fc_dims=500,750,1000`.
Every (network, d, seed) run is one chunk on the executor, checkpointed to checkpoints/<network>.npz (the
study file of lscape.intrinsic_dimension, which also records the projection storage each run was built
with: what storage="auto" chose): an interrupted run resumes without redoing finished runs.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn
from torch.nn import functional as F

from .. import data as datasets
from ..intrinsic import IntrinsicDimension, intrinsic_dimension
from . import common

NAME = "intrinsic-dimension"
NETWORKS = ("fc", "lenet")
LI_ET_AL = {"fc": 750, "lenet": 290}  # their d_int90 on MNIST (Table 1 / §3.1)


@dataclass(frozen=True)
class Config:
    scale: str
    dataset: str = "digits"  # "digits" (embedded, 8x8) or "mnist" (28x28)
    networks: tuple[str, ...] = NETWORKS
    hidden: tuple[int, ...] = (200, 200)  # the FC net's widths
    lenet_width: tuple[int, int, int, int] = (6, 16, 120, 84)  # conv1, conv2 channels; fc1, fc2 widths
    fc_dims: tuple[int, ...] = (10, 25, 50, 100, 200, 400, 800)
    lenet_dims: tuple[int, ...] = (10, 25, 50, 100, 200, 400, 800)
    fc_epochs: int = 10
    lenet_epochs: int = 10
    seeds: int = 3
    batch: int = 128
    lr: float = 1e-3
    beta2: float = 0.99
    l2: float = 1e-4  # on the kernels (weights, conv filters), as Keras' kernel_regularizer
    threshold: float = 0.9
    baseline: float = 1.0  # Li et al.'s reading on MNIST: 0.9 x 1.0 is an absolute accuracy threshold
    train_size: int = 0  # 0: the whole training split (smoke uses a subset)
    storage: str = "auto"
    # also train the full space with the same budget (the measured baseline, the d = D point, one run per
    # seed); False leaves Li et al.'s absolute reading only, for a CPU that cannot afford those runs too
    full_space: bool = True


SCALES: dict[str, Config] = {
    "smoke": Config("smoke", hidden=(16,), lenet_width=(2, 4, 16, 12), fc_dims=(8, 64, 512),
                    lenet_dims=(8, 64, 512), fc_epochs=3, lenet_epochs=3, seeds=2, batch=32, lr=5e-2, train_size=512),
    # digits: D = 55,210 (FC) and 21,386 (LeNet), 7 d x 3 seeds + 3 full-space runs each, minutes on a CPU;
    # 1,437 training images: a larger step and smaller batches than the paper's, for enough steps
    "default": Config("default", batch=64, lr=1e-2, fc_epochs=20, lenet_epochs=20),
    # MNIST: D = 199,210 (FC) and 44,426 (LeNet-5) at the official budget (100 epochs, 3 seeds, the
    # full-space baselines), d dense around Li et al.'s 750 and 290.  storage "auto" picks the stored sparse
    # P for every one of these d (FASTFOOD_MIN_D keeps d <= 2,000 off Fastfood); the summary and the study
    # files record what it picked.  About 3.5 h of one idle core (50 min FC, 2.7 h LeNet-5), resumable by chunk
    "paper": Config("paper", dataset="mnist", fc_dims=(600, 700, 750, 800, 900, 1000),
                    lenet_dims=(200, 250, 290, 350, 400), fc_epochs=100, lenet_epochs=100),
}

PLOTS = "intrinsic_dimension_plots"

config, replot = common.module_functions(__name__)  # config(scale, **overrides), replot(out)


def he_normal(model: nn.Module) -> nn.Module:
    """The official code's initialisation (Keras 2.1.5, its requirements.txt): he_normal kernels, that is
    a normal of std sqrt(2 / fan_in) truncated at 2 std (so the kernels' actual std is 0.88 of it: Keras
    only rescaled for the truncation from 2.2.3 on), and zero biases."""
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            std = math.sqrt(2.0 / m.weight[0].numel())  # fan_in: inputs x kernel area
            nn.init.trunc_normal_(m.weight, 0.0, std, -2 * std, 2 * std)
            nn.init.zeros_(m.bias)
    return model


def make_fc(n_in: int, hidden: tuple[int, ...], n_out: int) -> nn.Sequential:
    """The FC net [n_in -> hidden... -> n_out], ReLU, he_normal (784-200-200-10 on MNIST: D = 199,210)."""
    sizes = (n_in, *hidden)
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:], strict=True):
        layers += [nn.Linear(a, b), nn.ReLU()]
    layers.append(nn.Linear(sizes[-1], n_out))
    return he_normal(nn.Sequential(*layers))


def make_lenet(side: int, width: tuple[int, int, int, int], n_out: int) -> nn.Sequential:
    """LeNet-5 on flat (N, side * side) images: conv 5x5 -> ReLU -> max-pool 2, twice, then FC
    fc1 -> fc2 -> n_out with ReLU; valid convs on 28x28 MNIST (D = 44,426 at the default widths, as
    Li et al.'s), same-padded on smaller images (8x8 digits) so that two pools still fit."""
    c1, c2, f1, f2 = width
    pad = 0 if side >= 28 else 2
    s = ((side - 4 + 2 * pad) // 2 - 4 + 2 * pad) // 2  # the side after conv, pool, conv, pool
    if s < 1:
        raise ValueError(f"side: got {side}, too small for LeNet-5's two 5x5 convs and pools")
    return he_normal(nn.Sequential(
        nn.Unflatten(1, (1, side, side)), nn.Conv2d(1, c1, 5, padding=pad), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(c1, c2, 5, padding=pad), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(c2 * s * s, f1), nn.ReLU(), nn.Linear(f1, f2), nn.ReLU(), nn.Linear(f2, n_out)))


def model_factory(cfg: Config, network: str, data: datasets.Split):
    """A zero-argument, picklable factory of the network (intrinsic_dimension seeds torch before each
    call, so each seed gets its own theta0)."""
    n_in, n_out = data.x_train.shape[1], data.n_classes
    if network == "fc":
        return functools.partial(make_fc, n_in, tuple(cfg.hidden), n_out)
    if network == "lenet":
        side = math.isqrt(n_in)
        if side * side != n_in:
            raise ValueError(f"dataset: {cfg.dataset!r} has {n_in} features, expected square images for LeNet")
        return functools.partial(make_lenet, side, tuple(cfg.lenet_width), n_out)
    raise ValueError(f"networks: got {network!r}, expected one of {', '.join(map(repr, NETWORKS))}")


def study(ctx: common.Context, network: str, data: datasets.Split) -> tuple[IntrinsicDimension, np.ndarray]:
    """One network's sweep, resumed from (and saved to) checkpoints/<network>.npz; -> the result and the
    full-space runs' test accuracy after every epoch (seeds, epochs)."""
    cfg = ctx.cfg
    epochs = cfg.fc_epochs if network == "fc" else cfg.lenet_epochs
    n = cfg.train_size or data.x_train.shape[0]
    base_hist = ctx.rd.load(f"{network}_baseline_history") or {}

    def on_run(d: int, seed: int, row: dict[str, Any]) -> None:
        if d == 0:  # a full-space run: keep its curve (the result holds the swept d's curves only)
            base_hist[f"seed_{seed}"] = np.asarray(row["history"])
            ctx.rd.save(f"{network}_baseline_history", base_hist)
        ctx.budget.tick()

    res = intrinsic_dimension(
        model_factory(cfg, network, data), F.cross_entropy, (data.x_train[:n], data.y_train[:n]),
        test_data=(data.x_test, data.y_test), dims=list(getattr(cfg, f"{network}_dims")),
        threshold=cfg.threshold, baseline="measured" if cfg.full_space else cfg.baseline,
        seeds=cfg.seeds, epochs=epochs, batch_size=cfg.batch,
        lr=cfg.lr, optimizer="adam", optimizer_kwargs={"betas": (0.9, cfg.beta2)}, l2=cfg.l2,
        storage=cfg.storage, executor=ctx.executor, file=ctx.rd.ckpt / f"{network}.npz",
        progress=ctx.progress, history=True, on_run=on_run)
    hist = np.array([base_hist.get(f"seed_{s}", np.full(epochs, np.nan)) for s in res.seeds.tolist()])
    return res, hist


def run(scale: str = "default", out: str = "intrinsic-dimension", *, resume: bool = False, progress: bool = True,
        data_dir: str | None = None, stop_after_chunks: int | None = None, figures: bool = True,
        executor=None, **overrides: Any) -> dict[str, Any]:
    """Run (or resume) the sweeps into folder `out`, each (network, d, seed) run a chunk on `executor`
    ("local", "ray" or an lscape.executor.Executor); returns the summary (also in summary.json)."""
    cfg = config(scale, **overrides)
    for net in cfg.networks:
        if net not in NETWORKS:
            raise ValueError(f"networks: got {net!r}, expected some of {', '.join(map(repr, NETWORKS))}")
    data = datasets.load(cfg.dataset, data_dir)
    ctx = common.start(cfg, out, resume=resume, progress=progress, stop_after_chunks=stop_after_chunks,
                       figures=figures, executor=executor)
    res: dict[str, Any] = {"networks": np.array(cfg.networks)}
    for net in cfg.networks:
        r, hist = study(ctx, net, data)
        res.update({f"{net}_D": r.D, f"{net}_dims": r.dims, f"{net}_scores": r.scores, f"{net}_losses": r.losses,
                    f"{net}_history": r.history, f"{net}_baseline_scores": r.baseline_scores,
                    f"{net}_baseline_history": hist,
                    # the projection storage each swept d was trained with (storage="auto" resolved)
                    f"{net}_storage": np.array([r.info["storage_chosen"][str(d)] for d in r.dims.tolist()])})
    return ctx.finish(sys.modules[__name__], res, _summary(cfg, res))


def reading(res: dict[str, Any], net: str, threshold: float, baseline: float) -> IntrinsicDimension:
    """The sweep of `net` read against threshold x baseline (IntrinsicDimension's own d_int rules)."""
    return IntrinsicDimension(
        dims=res[f"{net}_dims"], scores=res[f"{net}_scores"], losses=res[f"{net}_losses"],
        train_losses=np.full_like(res[f"{net}_scores"], np.nan), history=res[f"{net}_history"],
        baseline=float(baseline), baseline_scores=res[f"{net}_baseline_scores"], threshold=float(threshold),
        D=int(res[f"{net}_D"]), seeds=np.arange(res[f"{net}_scores"].shape[1]), runs=0,
        order=res[f"{net}_dims"])


def late_gain(history: np.ndarray) -> float:
    """history (seeds, epochs) -> the mean over seeds of the score's rise over the last 20% of the epochs
    (from the end of epoch 0.8 x epochs to the last)."""
    return float(np.mean(history[:, -1] - history[:, max(0, int(0.8 * history.shape[1]) - 1)]))


def _nan_to_none(x: float) -> float | None:
    return None if not math.isfinite(x) else float(x)


def _summary(cfg: Config, res: dict[str, Any]) -> dict[str, Any]:
    nets: dict[str, Any] = {}
    for net in cfg.networks:
        base = res[f"{net}_baseline_scores"]
        measured = float(np.mean(base)) if base.size else math.nan  # nan: no full-space runs (full_space=False)
        li = reading(res, net, cfg.threshold, cfg.baseline)
        rel = dataclasses.replace(li, baseline=measured)
        hist = res[f"{net}_baseline_history"]
        nets[net] = {
            "D": int(res[f"{net}_D"]), "epochs": cfg.fc_epochs if net == "fc" else cfg.lenet_epochs,
            "threshold": cfg.threshold * cfg.baseline,  # the accuracy d_int90 asks for (Li et al.'s reading)
            "d_int90": li.d_int, "d_int90_interpolated": _nan_to_none(li.d_int_interpolated),
            "per_seed": [_nan_to_none(x) for x in li.per_seed],
            "baseline_acc": _nan_to_none(measured), "baseline_acc_per_seed": base.tolist(),
            # the accuracy gained over the last 20% of the epochs (mean over seeds): how far training has
            # plateaued, in the full space and at each swept d
            "baseline_acc_gain_last_20pct_epochs": _nan_to_none(late_gain(hist)),
            "acc_gain_last_20pct_epochs": [_nan_to_none(late_gain(h)) for h in res[f"{net}_history"]],
            "relative": None if not base.size else {
                "threshold": cfg.threshold * measured, "d_int90": rel.d_int,
                "d_int90_interpolated": _nan_to_none(rel.d_int_interpolated)},
            "dims": res[f"{net}_dims"].tolist(), "mean_acc": res[f"{net}_scores"].mean(axis=1).tolist(),
            "storage": cfg.storage,  # as asked; storage_chosen: what each d's runs were built with
            "storage_chosen": dict(zip(map(str, res[f"{net}_dims"].tolist()), res[f"{net}_storage"].tolist(),
                                       strict=True)),
            "li_et_al_d_int90": LI_ET_AL[net] if cfg.dataset == "mnist" else None}
    return {"experiment": NAME, "scale": cfg.scale, "dataset": cfg.dataset, "seeds": cfg.seeds, "networks": nets}
