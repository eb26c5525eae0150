"""A real Ray cluster of several nodes on this machine, in a process of its own, for the node-loss test
(tests/test_cluster.py).

    python tests/ray_cluster.py NODES TEMP_DIR    # prints one JSON line: {"address": ..., "raylets": [pid, ...]}

Node 0 is the head (it holds the GCS, and a driver on this machine attaches to it), the others are worker
nodes; each has one CPU.  The cluster lives until its stdin closes, then shuts down.  Every Ray process it
starts dies with it even when it is SIGKILLed (Ray's kernel fate sharing, PR_SET_PDEATHSIG on Linux), so
a test that closes or kills it leaves nothing running.  It runs apart from the test process because
ray.cluster_utils.Cluster resets the calling process's Ray state on shutdown, which would break the test
session's own Ray (tests/conftest.py's ray_executor).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# The GCS declares a silent node dead after 3 missed health checks 0.5 s apart (Ray's defaults: 5, 3 s apart):
# the node-loss tests then wait seconds, not 15-20 s.  It also narrows the race docs/cluster.md describes
# (lscape's stop against Ray ending a driver whose node died), which is where that race was measured.
HEALTH_CHECK = {"health_check_period_ms": 500, "health_check_failure_threshold": 3, "health_check_timeout_ms": 500}


def main(nodes: int, temp_dir: str) -> None:
    from ray._private import ray_constants
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False,
                                                            "temp_dir": temp_dir, "_system_config": HEALTH_CHECK})
    for _ in range(nodes - 1):
        cluster.add_node(num_cpus=1, temp_dir=temp_dir)
    cluster.wait_for_nodes()
    raylets = [n.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid for n in cluster.list_all_nodes()]
    print(json.dumps({"address": cluster.address, "raylets": raylets}), flush=True)
    sys.stdin.read()  # until the test is done with the cluster
    cluster.shutdown()


@contextlib.contextmanager
def ray_cluster(nodes: int, env: dict[str, str]) -> Iterator[dict[str, Any]]:
    """A cluster of `nodes` one-CPU nodes (the first the head) whose processes have environment `env` (a
    worker imports what a task needs through its PYTHONPATH); yields {"address", "raylets", "temp_dir"}: the
    address to join, the raylets' pids in node order, and the cluster's own Ray folder (its logs are under
    session_latest/logs).  Closed, and every process of it gone, when the block ends, even by an error."""
    # a short folder of its own: Ray's socket paths must fit 107 bytes, and /tmp/ray may be another Ray's
    temp_dir = tempfile.mkdtemp(prefix="lscape-ray-", dir="/tmp")
    proc = subprocess.Popen([sys.executable, __file__, str(nodes), temp_dir], env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the Ray cluster did not start (exit status {proc.wait(timeout=60)})")
        yield {**json.loads(line), "temp_dir": temp_dir}
    finally:
        with contextlib.suppress(OSError):
            proc.stdin.close()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:  # its Ray processes die with it (fate sharing)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        proc.stdout.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def _stat(pid: int | str) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state, ppid, ...); None when it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def running_task(raylet: int, task: str = "_run_task") -> bool:
    """Whether a worker of the node whose raylet is `raylet` is running `task` now (a Ray worker is a child
    of its node's raylet and titles itself ray::TASK while it runs one, ray::IDLE between tasks)."""
    for proc in Path("/proc").glob("[0-9]*"):
        stat = _stat(proc.name)
        if stat is None or stat[1] != str(raylet):
            continue
        try:
            title = (proc / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        except OSError:  # gone meanwhile
            continue
        if title.split()[:1] == [f"ray::{task}"]:
            return True
    return False


def alive(pid: int) -> bool:
    """Whether process `pid` exists and is not a zombie."""
    stat = _stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


if __name__ == "__main__":
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    main(int(sys.argv[1]), sys.argv[2])
