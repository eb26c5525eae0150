"""lscape.executor: the local and Ray executors run every chunk exactly once and give bit-identical
results; the reproductions run on either; faults (a worker that dies, a driver killed mid-run, a chunk
with bad input) behave as the executor promises."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest
from lscape import experiments
from lscape.executor import EXECUTORS, Executor, LocalExecutor, get_executor


def _square(i: int, shared: int) -> dict[str, np.ndarray]:
    return {"v": np.array([i * i + shared])}


def test_local_runs_every_chunk_in_order_and_names_bad_arguments():
    got = []
    LocalExecutor().map_chunks(_square, [3, 1, 2], shared=10, on_result=lambda i, r: got.append((i, int(r["v"][0]))))
    assert got == [(3, 19), (1, 11), (2, 14)]
    ex = LocalExecutor()
    assert get_executor(ex) is ex and isinstance(get_executor(), LocalExecutor) and EXECUTORS == ("local", "ray")
    with pytest.raises(ValueError, match="executor: got 'dask', expected one of 'local', 'ray'"):
        get_executor("dask")
    with pytest.raises(ValueError, match="ray_address: got 'auto' with executor 'local'"):
        get_executor("local", ray_address="auto")


def test_ray_missing_and_misplaced_ray_options_are_named_errors_before_any_work(monkeypatch, capsys, tmp_path):
    import builtins

    real_import = builtins.__import__

    def no_ray(name, *a, **k):
        if name == "ray":
            raise ImportError("No module named 'ray'")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(ImportError, match=r'pip install "lscape\[ray\]"'):
        get_executor("ray")
    monkeypatch.setattr(builtins, "__import__", real_import)
    from lscape import cli

    rc = cli.main(["reproduce", "huang", "--scale", "smoke", "--out", str(tmp_path / "a"), "--ray-address", "x"])
    assert rc == 2 and "--ray-address and --num-cpus go with --executor ray" in capsys.readouterr().err
    rc = cli.main(["reproduce", "huang", "--scale", "smoke", "--out", str(tmp_path / "b"), "--chunk", "3"])
    assert rc == 2 and "--chunk: got 3; huang's chunks are fixed" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.skipif(sys.platform != "linux", reason="the unreachable-address check is timed for Linux")
def test_ray_unreachable_address_is_a_named_error():
    pytest.importorskip("ray", reason="needs Ray (pip install '.[ray]')")
    from lscape.executor import RayExecutor

    # whether or not a Ray is already up in this process (the session fixture's), the address is checked

    with pytest.raises(ConnectionError, match="ray_address: got .127.0.0.1:1., but nothing answers.*ray start --head"):
        RayExecutor("127.0.0.1:1")


# ---- faults, on the session's local Ray -----------------------------------------------------------------
def _dies_once(i: int, marker_dir: str) -> dict[str, np.ndarray]:
    """Chunk 1's first attempt kills its worker process mid-chunk (as a lost node would)."""
    marker = Path(marker_dir) / f"attempt_{i}"
    attempts = len(list(Path(marker_dir).glob(f"attempt_{i}*")))
    Path(f"{marker}_{attempts}").touch()
    if i == 1 and attempts == 0:
        os._exit(1)
    return {"v": np.array([10 * i + 1])}


def _bad_input(i: int, marker_dir: str) -> dict[str, np.ndarray]:
    Path(marker_dir, f"bad_{i}_{time.monotonic_ns()}").touch()
    if i == 2:
        raise ValueError("lr: got -1.0, expected a positive number")
    return {"v": np.array([i])}


def test_a_chunk_whose_worker_dies_is_retried_and_the_results_are_whole(ray_executor, tmp_path):
    got: dict[int, int] = {}
    ray_executor.map_chunks(_dies_once, range(4), shared=str(tmp_path),
                            on_result=lambda i, r: got.__setitem__(i, int(r["v"][0])))
    assert got == {0: 1, 1: 11, 2: 21, 3: 31}  # what an uninterrupted run gives
    assert len(list(tmp_path.glob("attempt_1_*"))) == 2  # the dead attempt and its retry


def test_a_chunk_with_bad_input_fails_the_run_with_its_own_error_at_once(ray_executor, tmp_path):
    with pytest.raises(ValueError, match="lr: got -1.0"):
        ray_executor.map_chunks(_bad_input, range(4), shared=str(tmp_path), on_result=lambda i, r: None)
    assert len(list(tmp_path.glob("bad_2_*"))) == 1  # not retried


def test_a_killed_driver_resumes_computing_only_the_missing_chunks(tmp_path):
    """SIGKILL the driver once some chunks are on disk; the resumed run leaves those files untouched,
    computes the rest, and ends identical to an uninterrupted run."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    cmd = [sys.executable, "-m", "lscape.cli", "reproduce", "huang", "--scale", "smoke"]
    ref, out = tmp_path / "ref", tmp_path / "killed"
    subprocess.run(cmd + ["--out", str(ref)], check=True, env=env, capture_output=True, timeout=600)
    proc = subprocess.Popen(cmd + ["--out", str(out)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = out / "checkpoints"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and len(list(ckpt.glob("minimum_*.npz"))) < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    kept = {f.name: f.stat().st_mtime_ns for f in ckpt.glob("minimum_*.npz")}
    total = len(list((ref / "checkpoints").glob("minimum_*.npz")))
    assert 2 <= len(kept) < total and not (out / "results.npz").exists()
    subprocess.run(cmd + ["--out", str(out), "--resume"], check=True, env=env, capture_output=True, timeout=600)
    assert all((ckpt / n).stat().st_mtime_ns == t for n, t in kept.items())  # finished chunks not redone
    assert len(list(ckpt.glob("minimum_*.npz"))) == total
    with np.load(ref / "results.npz") as a, np.load(out / "results.npz") as b:
        for k in a.files:
            if k != "tsne":  # scikit-learn's t-SNE is not bit-reproducible across processes
                np.testing.assert_array_equal(a[k], b[k], err_msg=k)


# ---- every reproduction on Ray equals local ---------------------------------------------------------------
SMOKE = {"gamst-walker": {"hessian_models": 1, "basin_trials": 8}, "goodfellow": {}, "huang": {},
         "bosman": {}, "goldilocks": {}}


@pytest.mark.parametrize("name", sorted(SMOKE))
def test_every_reproduction_on_ray_is_bit_identical_to_local(name, ray_executor, tmp_path):
    run = experiments.get(name).run
    run("smoke", tmp_path / "local", progress=False, figures=False, **SMOKE[name])
    run("smoke", tmp_path / "ray", progress=False, figures=False, executor=ray_executor, **SMOKE[name])
    with np.load(tmp_path / "local" / "results.npz") as a, np.load(tmp_path / "ray" / "results.npz") as b:
        assert sorted(a.files) == sorted(b.files)
        for k in a.files:
            np.testing.assert_array_equal(a[k], b[k], err_msg=f"{name}: {k}")
    assert isinstance(ray_executor, Executor)


def test_a_surface_on_ray_equals_local(ray_executor, tmp_path):
    """A loss surface's grid rows as Ray tasks: the same cells, bit for bit, and a resumable file."""
    import lscape
    import torch
    from lscape.directions import random_directions
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    g = torch.Generator().manual_seed(1)
    X, Y = torch.randn(40, 6, generator=g), torch.randint(0, 3, (40,), generator=g)
    dirs = random_directions(model, 2, seed=3)
    a = lscape.surface(model, nn.functional.cross_entropy, (X, Y), directions=dirs, grid=5)
    b = lscape.surface(model, nn.functional.cross_entropy, (X, Y), directions=dirs, grid=5,
                       executor=ray_executor, file=tmp_path / "s.npz")
    assert b.done.all() and sorted(a.values) == sorted(b.values)
    for k in a.values:
        np.testing.assert_array_equal(a.values[k], b.values[k], err_msg=k)


# ---- cluster faults: the run stops with the finished chunks named, and resumes ---------------------------
class _FakeRay:
    """Ray's API as RayExecutor.map_chunks uses it, running the chunks in this process, with Ray's own
    exception raised when chunk `fail_at` is fetched (or by ray.put when fail_at is "put")."""

    def __init__(self, exc: BaseException, fail_at):
        import ray

        self.exceptions, self.exc, self.fail_at = ray.exceptions, exc, fail_at

    def remote(self, **_):
        return lambda fn: types.SimpleNamespace(remote=lambda f, i, shared, n: (f, i, shared))

    def put(self, value):
        if self.fail_at == "put":
            raise self.exc
        return value

    def wait(self, refs, num_returns):
        return refs[:num_returns], refs[num_returns:]

    def get(self, ref):
        f, i, shared = ref
        if i == self.fail_at:
            raise self.exc
        return f(i, shared)

    def cancel(self, ref, force):
        raise self.exceptions.RaySystemError("the cluster is gone")  # a dead cluster cannot cancel either


def _cluster_faults():
    ray = pytest.importorskip("ray", reason="Ray's exception types come from Ray (pip install '.[ray]')")
    e = ray.exceptions
    return {"node lost": e.NodeDiedError("node 10.0.0.7 died"), "raylet died": e.LocalRayletDiedError(),
            "head lost": e.RaySystemError("GCS unreachable"), "object store full": e.ObjectStoreFullError("full"),
            "out of memory": e.OutOfMemoryError("OOM killer"), "worker retries spent": e.WorkerCrashedError(),
            "driver disconnected": ConnectionError("driver lost its connection to the cluster")}


@pytest.mark.parametrize("fault", ["node lost", "raylet died", "head lost", "object store full", "out of memory",
                                   "worker retries spent", "driver disconnected"])
def test_a_cluster_fault_stops_the_run_naming_its_finished_chunks_and_a_local_resume_equals_local(fault, tmp_path,
                                                                                                   capsys, monkeypatch):
    from lscape import cli
    from lscape.executor import ExecutorLost, RayExecutor
    from lscape.experiments import io as run_io

    exc = _cluster_faults()[fault]
    ex = object.__new__(RayExecutor)
    ex.num_cpus, ex.max_retries, ex._ray = 1, 0, _FakeRay(exc, fail_at=3)
    names = [f"chunk_{i}" for i in range(6)]

    def job(out, executor):
        rd = run_io.RunDir(out, {"job": "t"}, resume=True)
        return run_io.checkpointed_chunks(rd, names, _square, executor, run_io.ChunkBudget(None), shared=7)

    ref = job(tmp_path / "ref", LocalExecutor())
    with pytest.raises(run_io.RunStopped, match=rf"ray: the cluster lost the job \({type(exc).__name__}: .*\); "
                       r"3 of 6 chunks finished, 3 lost \(chunks 3-5\); .*\(chunk_0, chunk_1, chunk_2\) and are "
                       "kept; resume the run") as info:
        job(tmp_path / "run", ex)
    assert isinstance(info.value.__cause__, ExecutorLost) and info.value.__cause__.finished == [0, 1, 2]
    assert info.value.finished == 3 and info.value.total == 6
    for a, b in zip(job(tmp_path / "run", LocalExecutor()), ref, strict=True):
        np.testing.assert_array_equal(a["v"], b["v"])
    ex._ray = _FakeRay(exc, fail_at="put")  # before any chunk: nothing finished, nothing lost on disk
    with pytest.raises(ExecutorLost, match=r"0 of 2 chunks finished, 2 lost \(chunks 0-1\)"):
        ex.map_chunks(_square, [0, 1], shared=0, on_result=lambda i, r: None)
    # the command line ends such a run with the command that continues it
    capsys.readouterr()
    ex._ray = _FakeRay(exc, fail_at=3)
    monkeypatch.setattr(experiments.get("bosman"), "run", lambda **kw: job(Path(kw["out"]), ex))
    rc = cli.main(["reproduce", "bosman", "--scale", "smoke", "--out", str(tmp_path / "cli")])
    err = capsys.readouterr().err
    assert rc == 75 and "3 of 6 chunks finished" in err and "(chunk_0, chunk_1, chunk_2)" in err
    assert f"`lscape reproduce bosman --scale smoke --out {tmp_path / 'cli'} --resume`" in err


_RAYLET_KILLER = """
import os, signal, sys, time
import numpy as np, ray
from lscape.executor import RayExecutor
from lscape.experiments import io as run_io

def chunk(i, shared):
    if i == 3:
        os.kill(os.getppid(), signal.SIGKILL)  # a Ray worker's parent is its node's raylet
        time.sleep(120)
    return {"v": np.arange(50.0) * (i + 1)}

ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
rd = run_io.RunDir(sys.argv[1], {"job": "raylet"}, resume=True)
t0 = time.monotonic()
try:
    run_io.checkpointed_chunks(rd, [f"c{i}" for i in range(6)], chunk, RayExecutor(num_cpus=1, max_retries=1),
                               run_io.ChunkBudget(None))
except run_io.RunStopped as exc:
    print(f"STOPPED after {time.monotonic() - t0:.0f} s: {exc}", flush=True)
    os._exit(75)
print("NOT STOPPED", flush=True)
"""


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="kills a raylet by pid: Linux process semantics")
def test_a_killed_raylet_stops_the_run_within_a_minute_and_a_local_resume_equals_local(tmp_path):
    """A real local Ray (in a subprocess, so the session's Ray lives on) whose raylet is killed mid-run."""
    pytest.importorskip("ray", reason="needs Ray (pip install '.[ray]')")
    from lscape.experiments import io as run_io

    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", _RAYLET_KILLER, str(tmp_path / "run")], env=env,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 75, (proc.stdout, proc.stderr[-3000:])
    assert "LocalRayletDiedError" in proc.stdout and "(c0, c1, c2) and are kept" in proc.stdout, proc.stdout
    stopped_after = float(proc.stdout.split("STOPPED after ")[1].split(" s")[0])
    assert stopped_after < 60, (stopped_after, time.monotonic() - t0)

    def chunk(i, shared):
        return {"v": np.arange(50.0) * (i + 1)}

    def job(out):
        rd = run_io.RunDir(out, {"job": "raylet"}, resume=True)
        return run_io.checkpointed_chunks(rd, [f"c{i}" for i in range(6)], chunk, LocalExecutor(),
                                          run_io.ChunkBudget(None))

    for a, b in zip(job(tmp_path / "run"), job(tmp_path / "ref"), strict=True):
        np.testing.assert_array_equal(a["v"], b["v"])


def test_a_run_stopped_by_a_lost_cluster_resumes_on_a_fresh_ray_to_the_local_results(ray_executor, tmp_path):
    """The other way forward: the stopped run resumed on a (new) Ray equals a local run bit for bit."""
    from lscape.executor import RayExecutor
    from lscape.experiments import io as run_io

    lost = object.__new__(RayExecutor)
    lost.num_cpus, lost.max_retries, lost._ray = 1, 0, _FakeRay(_cluster_faults()["node lost"], fail_at=2)
    names = [f"chunk_{i}" for i in range(5)]

    def job(out, executor):
        rd = run_io.RunDir(out, {"job": "t"}, resume=True)
        return run_io.checkpointed_chunks(rd, names, _square, executor, run_io.ChunkBudget(None), shared=3)

    with pytest.raises(run_io.RunStopped, match=r"2 of 5 chunks finished"):
        job(tmp_path / "run", lost)
    for a, b in zip(job(tmp_path / "run", ray_executor), job(tmp_path / "ref", LocalExecutor()), strict=True):
        np.testing.assert_array_equal(a["v"], b["v"])
