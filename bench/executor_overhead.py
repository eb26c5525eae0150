"""Ray's overhead on gamst-walker's ensemble stage: the same stage (checkpointed model shards) run with
`--executor local` and `--executor ray`, side by side, alternating, in one process.

Prints one JSON object: wall times of each run, Ray's overhead relative to local (target <= 15%), the
chunk count, one chunk's time, the model-steps per second per core, and the paper scale's projected wall
time on N cores from that rate.  `python bench/executor_overhead.py [--models 1600 --steps 20000
--shard 400 --repeats 2]` (defaults: the default scale's SGD ensemble stage); bench/report.py runs it.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

TARGET = 0.15  # Ray's wall time may exceed local's by at most this fraction


def _stage(out: Path, executor, models: int, steps: int, shard: int) -> float:
    """Wall seconds of one SGD ensemble stage of gamst-walker (fresh run folder each time)."""
    from lscape import tinymlp as tm
    from lscape.experiments import common
    from lscape.experiments import gamst_walker as gw
    from lscape.experiments.training import EnsembleJob, train_ensemble_stage

    cfg = gw.config("default", models_per_optimizer=models, steps=steps, shard_models=shard)
    ctx = common.start(cfg, out, resume=False, progress=False, stop_after_chunks=None, figures=False,
                       executor=executor)
    spec, _ = tm.wf_network()
    x, y = tm.wf_training_set()
    init = spec.init(models, seed=cfg.seed, scheme=cfg.init_scheme)
    job = EnsembleJob(spec, init.numpy(), x.numpy(), y.numpy(), "sgd", gw._opt_kwargs(cfg, "sgd"), steps,
                      cfg.record_every, shard, "cpu")
    t0 = time.perf_counter()
    train_ensemble_stage(ctx, "main_sgd", job)
    return time.perf_counter() - t0


def run(models: int, steps: int, shard: int, repeats: int, cores_for_projection: tuple[int, ...]) -> dict:
    import ray
    from lscape._backend import num_threads
    from lscape.executor import RayExecutor

    threads = num_threads()
    t0 = time.perf_counter()
    ray.init(num_cpus=threads, include_dashboard=False, log_to_driver=False)
    ray_start = time.perf_counter() - t0
    rex = RayExecutor()
    tmp = Path(tempfile.mkdtemp(prefix="lscape-exec-bench-"))
    local, remote = [], []
    try:
        for r in range(repeats):  # alternate, so drifting load hits both alike
            local.append(_stage(tmp / f"l{r}", "local", models, steps, shard))
            remote.append(_stage(tmp / f"r{r}", rex, models, steps, shard))
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    chunks = -(-models // shard)
    best_l, best_r = min(local), min(remote)
    rate_per_core = models * steps / best_l / threads
    paper_model_steps = 2 * 160_000 * 50_000 + 2 * 4096 * 20_000  # ensembles + basin retrainings
    return {
        "models": models, "steps": steps, "shard_models": shard, "chunks": chunks, "threads": threads,
        "local_s": local, "ray_s": remote, "ray_startup_s": ray_start,
        "ray_overhead": best_r / best_l - 1.0, "target": TARGET, "pass": best_r / best_l - 1.0 <= TARGET,
        "one_chunk_s": best_l / chunks, "model_steps_per_s_per_core": rate_per_core,
        "paper_hours_on_cores": {str(n): paper_model_steps / (rate_per_core * n) / 3600
                                 for n in cores_for_projection},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", type=int, default=1600)
    p.add_argument("--steps", type=int, default=20_000)
    p.add_argument("--shard", type=int, default=400)
    p.add_argument("--repeats", type=int, default=2)
    a = p.parse_args(argv)
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    print(json.dumps(run(a.models, a.steps, a.shard, a.repeats, (2, 16, 64, 256, 1024))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
