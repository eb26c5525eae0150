"""lscape.executor: the local and Ray executors run every chunk exactly once and give bit-identical
results; the reproductions run on either; faults (a worker that dies, a driver killed mid-run, a chunk
with bad input) behave as the executor promises."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
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


def test_ray_missing_or_unreachable_is_a_named_error_before_any_work(monkeypatch, capsys, tmp_path):
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
    ray = pytest.importorskip("ray", reason="needs Ray (pip install '.[ray]')")
    if ray.is_initialized():
        pytest.skip("a Ray is already running in this process (the session fixture's)")
    from lscape.executor import RayExecutor

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
