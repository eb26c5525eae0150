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
from ray_cluster import alive


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


# ---- the local executor: chunks that pin one thread run side by side --------------------------------------
def _where(i: int, shared) -> dict[str, np.ndarray]:
    import torch

    return {"pid": np.array(os.getpid()), "threads": np.array(torch.get_num_threads()),
            "omp": np.array(int(os.environ.get("OMP_NUM_THREADS", "0")))}


def test_chunks_that_declare_threads_run_in_worker_processes_pinned_to_them():
    got: dict[int, dict] = {}
    LocalExecutor(workers=2).map_chunks(_where, range(6), on_result=got.__setitem__, threads=1)
    assert sorted(got) == list(range(6))
    pids = {int(r["pid"]) for r in got.values()}
    assert len(pids) == 2 and os.getpid() not in pids  # two workers, neither of them the driver
    assert all(int(r["threads"]) == 1 and int(r["omp"]) == 1 for r in got.values())
    here: dict[int, dict] = {}
    LocalExecutor(workers=2).map_chunks(_where, range(3), on_result=here.__setitem__)  # no threads declared
    assert {int(r["pid"]) for r in here.values()} == {os.getpid()}
    assert LocalExecutor().pool_size(1, 1) == 1 and LocalExecutor().pool_size(8, None) == 1
    assert LocalExecutor(workers=3).pool_size(8, 1) == 3 and LocalExecutor(workers=3).pool_size(2, 1) == 2
    with pytest.raises(ValueError, match="workers: got 0, expected None"):
        LocalExecutor(workers=0)
    with pytest.raises(ValueError, match=r"threads: got 0, expected None or a positive integer"):
        LocalExecutor().map_chunks(_where, range(2), on_result=got.__setitem__, threads=0)


def test_bosman_cells_side_by_side_are_bit_identical_to_one_after_another(tmp_path):
    """Bosman's cells pin one thread and declare it: two worker processes give the same bits as the driver
    alone (a cell's result depends only on its index)."""
    run = experiments.get("bosman").run
    for w in (1, 2):
        run("smoke", tmp_path / f"w{w}", progress=False, figures=False, executor=LocalExecutor(workers=w))
    with np.load(tmp_path / "w1" / "results.npz") as a, np.load(tmp_path / "w2" / "results.npz") as b:
        assert a.files == b.files
        for k in a.files:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def _fragile(i: int, shared) -> dict[str, np.ndarray]:
    """Chunk i of a job that fails at chunk shared[1] as shared[0] says ("raise" / "die"), else computes."""
    how, at = shared
    if i == at and how == "raise":
        raise ValueError(f"x: got {i}, expected anything else")
    if i == at and how == "die":
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(0.05)  # the other worker is busy meanwhile
    return {"v": np.arange(50, dtype=np.float64) * (i + 1)}


def test_a_chunk_failing_in_a_worker_is_reported_by_chunk_and_a_resume_loses_nothing_finished(tmp_path):
    from lscape.experiments import io as run_io

    def job(out, how, at):
        rd = run_io.RunDir(out, {"job": "fragile"}, resume=True)
        return run_io.checkpointed_chunks(rd, [f"c{i}" for i in range(6)], _fragile, LocalExecutor(workers=2),
                                          run_io.ChunkBudget(None), shared=(how, at), threads=1)

    with pytest.raises(ValueError, match="x: got 3, expected anything else") as err:
        job(tmp_path / "raise", "raise", 3)
    notes = "\n".join(getattr(err.value, "__notes__", []))
    assert "raised by chunk 3 in a local worker process" in notes and "_fragile" in notes  # its traceback
    ckpt = tmp_path / "die" / "checkpoints"
    with pytest.raises(run_io.RunStopped, match=r"local: the worker process computing chunk 4 died \(killed "
                                                r"by signal 9\); [34] of 6 chunks finished.*resume the run"):
        job(tmp_path / "die", "die", 4)
    kept = {f.name: f.stat().st_mtime_ns for f in ckpt.glob("c*.npz")}
    assert len(kept) >= 3 and "c4.npz" not in kept  # chunk 4 went out after three had finished
    rows = job(tmp_path / "die", None, -1)  # resumed: only the missing chunks are computed
    assert all((ckpt / n).stat().st_mtime_ns == t for n, t in kept.items())
    for i, r in enumerate(rows):
        np.testing.assert_array_equal(r["v"], np.arange(50, dtype=np.float64) * (i + 1))


_KILLED_DRIVER = """
import os, sys, time
import numpy as np
from lscape.executor import LocalExecutor

def chunk(i, pids):
    with open(os.path.join(pids, str(os.getpid())), "w"):
        pass
    time.sleep(60)
    return {"v": np.array(i)}

LocalExecutor(workers=2).map_chunks(chunk, range(4), shared=sys.argv[1], on_result=lambda i, r: None, threads=1)
"""


def test_workers_die_with_a_killed_driver(tmp_path):
    """SIGKILL the driver mid-chunk: its workers do not compute on (PR_SET_PDEATHSIG)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_DRIVER, str(tmp_path)], env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(list(tmp_path.iterdir())) < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    pids = [int(f.name) for f in tmp_path.iterdir()]
    assert len(pids) == 2

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(map(alive, pids)):
        time.sleep(0.05)
    assert not any(map(alive, pids))


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


def test_chunks_with_costs_start_costliest_first_and_give_the_same_results(tmp_path):
    """cost= only orders the work (costliest first, equal costs in index order); every chunk's result
    is that of its index, the same as without costs; a cost list of the wrong length is named."""
    from lscape.experiments import io as run_io

    order = []

    class Recording(LocalExecutor):
        def map_chunks(self, fn, chunks, **kw):
            order.extend(chunks)
            return super().map_chunks(fn, chunks, **kw)

    names = [f"c{i}" for i in range(5)]

    def job(out, **kw):
        rd = run_io.RunDir(out, {"job": "t"}, resume=True)
        return run_io.checkpointed_chunks(rd, names, _square, Recording(), run_io.ChunkBudget(None), shared=2, **kw)

    plain = job(tmp_path / "a")
    assert order == [0, 1, 2, 3, 4]
    order.clear()
    costed = job(tmp_path / "b", cost=[1.0, 5.0, 3.0, 5.0, 0.5])
    assert order == [1, 3, 2, 0, 4]
    assert [int(r["v"][0]) for r in costed] == [int(r["v"][0]) for r in plain] == [i * i + 2 for i in range(5)]
    with pytest.raises(ValueError, match=r"cost: got 2 values, expected one per chunk \(5\)"):
        job(tmp_path / "c", cost=[1.0, 2.0])
