"""Real Ray clusters on this machine (tests/ray_cluster.py) losing a raylet in the middle of a reproduction
run through the command line: a worker node lost while the head lives costs only its chunk in flight (Ray reruns it
on the head and the run ends equal to a local one); the driver's own node lost stops the run with lscape's
exit status 75, the finished chunks kept and `--resume` named, and the resumed run equals a local one."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from ray_cluster import alive, ray_cluster, running_task

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="kills raylets by pid and reads /proc: Linux "
                                                              "processes")
pytest.importorskip("ray", reason="the cluster tests need Ray (pip install '.[ray]')")

# Goldilocks at smoke scale, lengthened so that a raylet can be killed mid-run: 9 cells (3 radii for the
# hyperplane, the hypersphere and the full space) of about a second each on one thread.
RUN = ["reproduce", "goldilocks", "--scale", "smoke", "--set", "epochs=30", "--set", "dims=10", "--set", "r0_points=3"]
CELLS = 9
ATTEMPTS = 3  # the driver's-node test: how many fresh clusters Ray's race (see that test) may take


def _env() -> dict[str, str]:
    # one thread everywhere: each task then declares one CPU (a node's only one, so both nodes run chunks),
    # and the local run sums in the same order, which makes the two bit-identical (docs/cluster.md)
    return dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p), OMP_NUM_THREADS="1",
                RAY_USAGE_STATS_ENABLED="0")


def _lscape(out: Path, *extra: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "lscape.cli", *RUN, "--out", str(out), *extra], env=_env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def local_run(tmp_path_factory) -> Path:
    """The run in this process's executor (local), uninterrupted: what every cluster run must equal."""
    out = tmp_path_factory.mktemp("local") / "run"
    _lscape(out)
    return out


def _assert_same_results(a: Path, b: Path) -> None:
    with np.load(a / "results.npz") as x, np.load(b / "results.npz") as y:
        assert sorted(x.files) == sorted(y.files)
        for k in x.files:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def _chunks(out: Path) -> dict[str, int]:
    """The finished chunk files of a run: name -> mtime (ns)."""
    return {f.name: f.stat().st_mtime_ns for f in (out / "checkpoints").glob("cell_*.npz")}


def _kill_raylet_mid_run(cluster: dict, node: int, out: Path) -> tuple[subprocess.CompletedProcess, dict, float]:
    """`lscape reproduce` RUN on the cluster, its node `node`'s raylet SIGKILLed once a chunk is on disk and
    one is running on that node.  Returns the ended run, its chunk files at the kill, and the seconds from
    the kill to the run's end."""
    raylet = cluster["raylets"][node]
    cmd = [sys.executable, "-m", "lscape.cli", *RUN, "--out", str(out), "--executor", "ray",
           "--ray-address", cluster["address"]]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        done: dict = {}
        while proc.poll() is None and time.monotonic() < deadline:
            done = _chunks(out) if (out / "checkpoints").is_dir() else {}
            if done and running_task(raylet):
                break
            time.sleep(0.02)
        assert proc.poll() is None, f"the run ended before the kill: {proc.stderr.read()[-3000:]}"
        os.kill(raylet, signal.SIGKILL)
        killed = time.monotonic()
        stdout, stderr = proc.communicate(timeout=300)
        after = time.monotonic() - killed
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert 1 <= len(done) < CELLS, sorted(done)  # mid-run: some chunks finished, not all
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr), done, after


def test_a_worker_node_lost_mid_run_reruns_its_chunk_on_the_head_and_the_run_equals_a_local_run(local_run, tmp_path):
    """Two one-CPU nodes; the worker node's raylet is killed while a chunk runs there.  Its worker dies with
    it, the driver (the task's owner, on the head) sees the task's worker die, and Ray retries the task
    (max_retries) on the head: the run ends by itself with every chunk, equal to a local run's bits."""
    out = tmp_path / "run"
    with ray_cluster(2, _env()) as cluster:
        proc, at_kill, _ = _kill_raylet_mid_run(cluster, 1, out)
        assert alive(cluster["raylets"][0]) and not alive(cluster["raylets"][1])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "lost the job" not in proc.stderr and len(_chunks(out)) == CELLS
    assert all(_chunks(out)[n] == t for n, t in at_kill.items())  # chunks finished before the kill: not redone
    _assert_same_results(local_run, out)


def _driver_log(cluster: dict) -> str:
    """The cluster's driver logs (where Ray says why it ended a driver)."""
    logs = Path(cluster["temp_dir"], "session_latest", "logs").glob("python-core-driver-*")
    return "".join(p.read_text(errors="replace") for p in logs)


def test_a_killed_raylet_of_the_drivers_node_stops_the_run_with_status_75_and_a_local_resume_equals_local(
        local_run, tmp_path):
    """One node, its raylet killed mid-run: the driver loses its own node (its local raylet and object
    store), the map stops with ExecutorLost, and `lscape reproduce` exits with 75, the finished chunks
    kept and the command to resume named.  Ray may instead end the driver itself (a race inside Ray: when
    the driver's core worker reaches the dead object store before any exception reaches Python, it logs
    "plasma store is failed. Terminate the process" and exits); that attempt is logged and a fresh cluster
    tried, up to ATTEMPTS times."""
    for attempt in range(1, ATTEMPTS + 1):
        out = tmp_path / f"attempt{attempt}"
        with ray_cluster(1, _env()) as cluster:
            proc, at_kill, after = _kill_raylet_mid_run(cluster, 0, out)
            log = _driver_log(cluster)
        print(f"attempt {attempt}: exit status {proc.returncode} {after:.1f} s after the kill, "
              f"{len(at_kill)} of {CELLS} chunks finished at the kill, {len(_chunks(out))} kept")
        if proc.returncode == 75:
            break
        if "plasma store is failed" not in log or "lscape reproduce:" in proc.stderr:
            pytest.fail(f"attempt {attempt}: exit status {proc.returncode}, neither lscape's stop (75) nor Ray "
                        f"ending the driver itself; the run's stderr ends:\n{proc.stderr[-2000:]}")
    assert proc.returncode == 75, f"Ray ended the driver itself in all {ATTEMPTS} attempts"
    err = proc.stderr
    assert "ray: the cluster lost the job (LocalRayletDiedError" in err, err[-3000:]
    assert f"Continue with `lscape reproduce goldilocks --scale smoke --set epochs=30 --set dims=10 " \
           f"--set r0_points=3 --out {out} --resume`" in err, err[-3000:]
    assert after < 60, after  # the minute
    kept = _chunks(out)
    assert at_kill.keys() <= kept.keys() and len(kept) < CELLS and f"{len(kept)} of {CELLS} chunks" in err
    assert not (out / "results.npz").exists() and not (out / ".lscape.lock").exists()  # the lock released
    _lscape(out, "--resume")  # locally: the finished chunks are read back, only the others run
    assert all(_chunks(out)[n] == t for n, t in kept.items())
    _assert_same_results(local_run, out)
