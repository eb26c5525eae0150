"""Training helpers the experiments share: ensembles of tiny networks trained in model shards through
the run's executor, and torch's thread count for small networks."""
from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..tinymlp import TinyMLP


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch on n threads inside the block: tiny networks only lose to a thread pool, badly so on a
    busy machine (measured: 36 ms per backward of a 2-16-16-2 net on 2 loaded threads)."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def resolve_device(device: str) -> torch.device:
    """"auto": cuda when lscape's CUDA backend can run, else cpu; otherwise torch.device(device)."""
    if device == "auto":
        from .. import _backend

        return torch.device("cuda" if _backend.backends()["cuda"].available else "cpu")
    return torch.device(device)


@dataclass(frozen=True)
class EnsembleJob:
    """Everything a shard of an ensemble needs (shipped once to the executor's workers): train rows
    [j * shard, (j + 1) * shard) of params0 (M, D) for `steps` steps on (x, y)."""
    spec: TinyMLP
    params0: np.ndarray
    x: np.ndarray
    y: np.ndarray
    optimizer: str
    opt_kwargs: Mapping[str, Any]
    steps: int
    record_every: int
    shard: int
    device: str

    @property
    def shards(self) -> int:
        return max(1, math.ceil(self.params0.shape[0] / self.shard))


def train_shard(j: int, job: EnsembleJob) -> dict[str, np.ndarray]:
    """Shard j of an ensemble, trained for all of job.steps in one fused call.  Every model's result is
    independent of which others share its shard (the kernels vectorise across models and never mix them),
    so the concatenated shards equal one run over all models, however they were split or scheduled."""
    from ..ensemble import train_ensemble

    dev = torch.device(job.device)
    p = torch.from_numpy(job.params0[j * job.shard:(j + 1) * job.shard]).to(dev)
    res = train_ensemble(job.spec, p, torch.from_numpy(job.x).to(dev), torch.from_numpy(job.y).to(dev),
                         optimizer=job.optimizer, steps=job.steps, record_every=job.record_every,
                         **job.opt_kwargs)
    return {"params": res.params.cpu().numpy(), "loss": res.loss.cpu().numpy(),
            "history": res.history.cpu().numpy(), "diverged": res.diverged.cpu().numpy()}


def train_ensemble_stage(ctx, stage: str, job: EnsembleJob) -> dict[str, np.ndarray]:
    """Train job's ensemble in checkpointed shards (checkpoints/<stage>_<j>.npz) on the run's executor;
    -> {"params" (M, D), "loss" (M,), "history" (M, steps // record_every), "diverged" (M,)}."""
    if job.steps % job.record_every:
        raise ValueError(f"{stage}: steps ({job.steps}) must be a multiple of record_every ({job.record_every})")
    rows = ctx.chunks([f"{stage}_{j}" for j in range(job.shards)], train_shard, shared=job, label=stage)
    return {k: np.concatenate([r[k] for r in rows]) for k in ("params", "loss", "history", "diverged")}
