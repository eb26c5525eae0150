"""Where the chunks of a long job run: in this process (`local`, the default) or as Ray tasks (`ray`), on
this machine or a cluster.

A job is a list of chunks; a chunk's result depends only on the job's inputs and the chunk's index (the
experiments draw every random number from per-model or per-cell streams), never on how many workers ran
it, where, or in which order.  So the same job gives bit-identical results on either executor.

    ex = get_executor("ray", ray_address="auto", num_cpus=1)      # or get_executor() -> LocalExecutor
    ex.map_chunks(fn, range(n), shared=big_inputs, on_result=save, label="cells", progress=True)

`fn(i, shared)` computes chunk i; `on_result(i, result)` runs on the driver as each chunk finishes (any
order with Ray), which is where results are checkpointed (lscape.experiments.io.checkpointed_chunks
skips chunks already on disk, so a run killed at any moment resumes losing only the chunks in flight).

Chunks that declare `threads` (map_chunks(..., threads=1): each chunk runs torch and the kernels on that
many threads, as Bosman's walk cells do) run side by side on a local machine with spare cores: a pool of
min(cores // threads, chunks) forked worker processes (Linux), each pinned to `threads` threads, one chunk
at a time each.  Their results are the same bits as one after another (a chunk's result depends only on
its index and the thread count it declares); on_result still runs on the driver, so checkpoints are
written there, one atomic file per chunk.  A chunk that raises fails the map with its own exception,
noted with the chunk's index and the worker's traceback; a worker that dies (killed, out of memory) stops
the map with an ExecutorLost naming the finished chunks, as a lost cluster does.

Ray (an extra: pip install "lscape[ray]"): `ray.init()` starts a local Ray when no address is named;
`ray_address` (or $RAY_ADDRESS) joins a cluster.  `shared` and `fn` go into the object store once, not
once per task.  Each task declares `num_cpus` and runs torch and lscape's kernels on that
many threads, so tasks never oversubscribe a node.  num_cpus defaults to the thread count a local run
uses (OMP_NUM_THREADS, else torch's): torch's CPU reductions and LAPACK sum in an order that depends on
the thread count (the fused kernels do not), so equal thread counts are what makes Ray's results
bit-identical to local ones.  A different --num-cpus gives results equal to a local run with
OMP_NUM_THREADS set to it.  A task whose worker dies (a killed process, a lost
node) is retried up to `max_retries` times; a task that raises is not retried unless its exception is
one a retry can cure (OSError, ConnectionError, TimeoutError, MemoryError): a bad input fails the run at
once with its own error.  So a lost worker node costs only its chunks in flight, rerun elsewhere (the
driver owns every task, and fn and shared sit in its own node's object store).  When the cluster itself fails (the
driver's node or the head is lost, its raylet dies, the object store runs out of memory, the driver loses
its connection, a chunk's retries run out), the map stops with an ExecutorLost that names the chunks
finished so far: they were handed to on_result, so a resumed run (on a fresh Ray, or locally) computes only
the others.  docs/cluster.md says which fault does what, as measured on a real two-node cluster.
"""
from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import socket
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from tqdm.auto import tqdm

__all__ = ["EXECUTORS", "Executor", "ExecutorLost", "LocalExecutor", "RayExecutor", "get_executor"]

EXECUTORS = ("local", "ray")
"""The executor names get_executor (and --executor) accepts."""
# Exceptions a retry can cure: the machine, not the input (a ValueError from bad input is never retried).
RETRYABLE = (OSError, ConnectionError, TimeoutError, MemoryError)

ChunkFn = Callable[[int, Any], Any]
OnResult = Callable[[int, Any], None]


class ExecutorLost(RuntimeError):
    """The executor lost the job (a node, the raylet, the object store, the driver's connection): finished
    holds the chunks whose results reached on_result, pending the others."""

    def __init__(self, message: str, *, finished: list[int], pending: list[int]) -> None:
        super().__init__(message)
        self.finished, self.pending = finished, pending


class Executor:
    """Runs fn(i, shared) for every chunk index i; on_result(i, result) on the driver as each finishes."""

    name = "executor"

    def map_chunks(self, fn: ChunkFn, chunks: Sequence[int], *, shared: Any = None, on_result: OnResult,
                   label: str = "", progress: bool = False, threads: int | None = None) -> None:
        """Run fn(i, shared) for every index i in `chunks` and call on_result(i, result) on the driver as each
        finishes (in completion order, which need not be index order).

        fn: a function of (chunk index, shared) returning the chunk's result (picklable for Ray).
        shared: one object every chunk reads (sent once to a cluster's object store).
        label, progress: a tqdm bar on stderr named `label` when progress is True.
        threads: None, or the torch/kernel threads every chunk pins itself to (fn must give the same bits
          whichever process runs it on that many threads); lets the local executor run chunks side by side
          and Ray tasks ask for that many CPUs.
        An exception raised by fn ends the map and propagates, noted with the chunk's index (after Ray's
        retries for dead workers).
        """
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def progress_bar(total: int, label: str, enabled: bool):
    """One tqdm bar on stderr over a stage's chunks (done / total, rate, ETA); None when disabled.  tqdm
    redraws in place on a terminal and writes occasional full lines to a log file."""
    if not enabled:
        return None
    return tqdm(total=total, desc=label or "chunks", unit="chunk", dynamic_ncols=True, mininterval=1.0,
                leave=True)


class LocalExecutor(Executor):
    """Chunks in this process one after another, each using every core through the kernels' threads; chunks
    that declare `threads` run side by side in forked worker processes when the cores allow two or more.

    workers: None (min(cores // threads, chunks) for chunks that declare threads, where cores are the ones
      this process may run on), or a fixed number of worker processes (1: always in this process)."""

    name = "local"

    def __init__(self, workers: int | None = None) -> None:
        if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
            raise ValueError(f"workers: got {workers!r}, expected None (as many as the cores allow) or a "
                             "positive integer")
        self.workers = workers

    def __repr__(self) -> str:
        return f"LocalExecutor(workers={self.workers!r})"

    def pool_size(self, n_chunks: int, threads: int | None) -> int:
        """How many worker processes a map of n_chunks chunks of `threads` threads each gets (1: none, the
        chunks run in this process): only chunks that declare threads, and only where fork is available."""
        if threads is None or n_chunks < 2 or not _CAN_FORK:
            return 1
        if self.workers is not None:
            return min(self.workers, n_chunks)
        return max(1, min(_cores() // threads, n_chunks))

    def map_chunks(self, fn: ChunkFn, chunks: Sequence[int], *, shared: Any = None, on_result: OnResult,
                   label: str = "", progress: bool = False, threads: int | None = None) -> None:
        """Executor.map_chunks here: one chunk after another in index order in this process, or, for
        chunks that declare `threads`, pool_size() worker processes handed chunks in index order."""
        _check_threads(threads)
        chunks = list(chunks)
        workers = self.pool_size(len(chunks), threads)
        if workers > 1:
            _map_forked(fn, chunks, shared, on_result, label, progress, threads, workers)
            return
        bar = progress_bar(len(chunks), label, progress)
        try:
            for i in chunks:
                try:
                    result = fn(i, shared)
                except Exception as exc:
                    exc.add_note(f"lscape: raised by chunk {i}")
                    raise
                on_result(i, result)
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()


_CAN_FORK = sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods()


def _cores() -> int:
    """The cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _check_threads(threads: int | None) -> None:
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads: got {threads!r}, expected None or a positive integer (threads per chunk)")


def _pin_threads(threads: int) -> None:
    """torch and lscape's kernels on `threads` threads in this process."""
    import torch

    os.environ["OMP_NUM_THREADS"] = str(threads)  # lscape._backend.num_threads reads it first
    torch.set_num_threads(threads)


def _worker(conn, fn: ChunkFn, shared: Any, threads: int, driver: int) -> None:
    """A forked worker: pinned to `threads` threads, it computes the chunk indices the driver sends (None:
    stop) and sends back (i, True, result) or (i, False, exception, traceback text)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle; it ends the workers
    with contextlib.suppress(Exception):  # Linux: die with the driver, even a SIGKILLed one
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != driver:  # the driver died before prctl
        os._exit(1)
    _pin_threads(threads)
    while True:
        try:
            i = conn.recv()
        except EOFError:
            break
        if i is None:
            break
        try:
            msg = (i, True, fn(i, shared))
        except BaseException as exc:  # sent back whole: the driver raises it, noted with the chunk
            msg = (i, False, exc, traceback.format_exc())
        try:
            conn.send(msg)
        except Exception as exc:  # an unpicklable result or exception: its description instead
            conn.send((i, False, RuntimeError(f"{type(exc).__name__}: {exc}"), traceback.format_exc()))
    conn.close()
    os._exit(0)  # no atexit handlers or finalizers inherited from the driver


def _worker_lost(p, i: int, chunks: list[int], finished: list[int]) -> ExecutorLost:
    """The ExecutorLost of a worker process that died while holding chunk i."""
    p.join(timeout=5)
    code = p.exitcode
    how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit status {code}"
    lost = sorted(set(chunks) - set(finished))
    return ExecutorLost(f"local: the worker process computing chunk {i} died ({how}); {len(finished)} of "
                        f"{len(chunks)} chunks finished, {len(lost)} not (chunks {_ranges(lost)})",
                        finished=finished, pending=lost)


def _map_forked(fn: ChunkFn, chunks: list[int], shared: Any, on_result: OnResult, label: str, progress: bool,
                threads: int, workers: int) -> None:
    """LocalExecutor.map_chunks on `workers` forked processes: chunks handed out in index order, one at a
    time per worker, results to on_result on the driver as they arrive."""
    from multiprocessing.connection import wait

    ctx = multiprocessing.get_context("fork")
    procs = []
    for _ in range(workers):  # fork before the bar exists: no tqdm thread is copied mid-lock
        mine, theirs = ctx.Pipe()
        p = ctx.Process(target=_worker, args=(theirs, fn, shared, threads, os.getpid()), daemon=True)
        p.start()
        theirs.close()
        procs.append((p, mine))
    bar = progress_bar(len(chunks), label, progress)
    todo = iter(chunks)
    busy: dict = {}  # connection -> (chunk index, process)
    finished: list[int] = []
    try:
        for p, conn in procs:
            i = next(todo, None)
            if i is None:
                break
            conn.send(i)
            busy[conn] = (i, p)
        while busy:
            sentinels = {p.sentinel: conn for conn, (_, p) in busy.items()}
            for ready in wait(list(busy) + list(sentinels)):
                conn = sentinels.get(ready, ready)
                if conn not in busy:
                    continue
                i, p = busy.pop(conn)
                try:
                    msg = conn.recv()
                except (EOFError, OSError):  # the worker died mid-chunk
                    raise _worker_lost(p, i, chunks, finished) from None
                if not msg[1]:
                    exc = msg[2]
                    exc.add_note(f"lscape: raised by chunk {i} in a local worker process; its traceback:\n"
                                 f"{msg[3].rstrip()}")
                    raise exc
                on_result(i, msg[2])
                finished.append(i)
                if bar is not None:
                    bar.update(1)
                nxt = next(todo, None)
                if nxt is not None:
                    try:
                        conn.send(nxt)
                    except OSError:  # the worker died between two chunks
                        raise _worker_lost(p, nxt, chunks, finished) from None
                    busy[conn] = (nxt, p)
    finally:
        for p, conn in procs:
            if busy:  # an error or an interruption: what is still running is dropped (nothing of it saved)
                p.kill()
            else:
                with contextlib.suppress(OSError):
                    conn.send(None)
        for p, conn in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
                p.join()
            conn.close()
        if bar is not None:
            bar.close()


def _run_task(fn: ChunkFn, i: int, shared: Any, num_cpus: int) -> Any:
    """A chunk inside a Ray worker: torch and lscape's kernels on the task's num_cpus threads."""
    _pin_threads(num_cpus)
    return fn(i, shared)


class RayExecutor(Executor):
    """Chunks as Ray tasks: a local Ray (address None) or a cluster's (an address, "auto", $RAY_ADDRESS)."""

    name = "ray"

    def __init__(self, address: str | None = None, *, num_cpus: int | None = None, max_retries: int = 3) -> None:
        try:
            import ray
        except ImportError:
            raise ImportError('executor: got "ray", but Ray is not installed; install it with '
                              'pip install "lscape[ray]" (or pip install ray)') from None
        if num_cpus is None:
            from ._backend import num_threads

            num_cpus = num_threads()  # as many as a local run's chunks use: the same arithmetic, bit for bit
        if isinstance(num_cpus, bool) or not isinstance(num_cpus, int) or num_cpus < 1:
            raise ValueError(f"num_cpus: got {num_cpus!r}, expected a positive integer (CPUs per task)")
        self._ray = ray
        self.address = address if address is not None else os.environ.get("RAY_ADDRESS") or None
        self.num_cpus, self.max_retries = num_cpus, max_retries
        self._connect()

    def _connect(self) -> None:
        ray = self._ray
        _check_reachable(self.address)  # also when a Ray is already up: a bad address is named either way
        if ray.is_initialized():
            return
        try:
            ray.init(address=self.address, ignore_reinit_error=True, log_to_driver=False,
                     include_dashboard=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise ConnectionError(f"ray_address: got {self.address!r}, but no Ray cluster could be joined "
                                  f"there ({exc}); start one with `ray start --head`, or pass no address "
                                  "for a local Ray") from None

    def __repr__(self) -> str:
        return f"RayExecutor(address={self.address!r}, num_cpus={self.num_cpus})"

    def map_chunks(self, fn: ChunkFn, chunks: Sequence[int], *, shared: Any = None, on_result: OnResult,
                   label: str = "", progress: bool = False, threads: int | None = None) -> None:
        """Executor.map_chunks as Ray tasks of num_cpus CPUs each (`threads` each for chunks that declare
        them), retried max_retries times on dead workers."""
        _check_threads(threads)
        ray = self._ray
        chunks = list(chunks)
        if not chunks:
            return
        num_cpus = self.num_cpus if threads is None else threads
        task = ray.remote(num_cpus=num_cpus, max_retries=self.max_retries,
                          retry_exceptions=list(RETRYABLE))(_run_task)
        bar = progress_bar(len(chunks), label, progress)
        finished: list[int] = []
        pending: dict = {}
        try:
            # inside the try: a full object store or a lost cluster fails the puts too
            fn_ref, shared_ref = ray.put(fn), ray.put(shared)  # once, not once per task
            pending = {task.remote(fn_ref, i, shared_ref, num_cpus): i for i in chunks}
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                i = pending[done[0]]
                try:
                    result = ray.get(done[0])
                except ray.exceptions.RayTaskError as exc:
                    cause = exc.as_instanceof_cause()  # the chunk's own error, e.g. a ValueError
                    cause.add_note(f"lscape: raised by chunk {i} in a Ray task")
                    raise cause from None
                del pending[done[0]]
                on_result(i, result)
                finished.append(i)
                if bar is not None:
                    bar.update(1)
        except (ray.exceptions.RayError, ConnectionError) as exc:  # the cluster's fault, not the chunk's
            if isinstance(exc, ray.exceptions.RayTaskError):
                raise
            lost = sorted(set(chunks) - set(finished))
            raise ExecutorLost(f"ray: the cluster lost the job ({type(exc).__name__}: {_first_line(exc)}); "
                               f"{len(finished)} of {len(chunks)} chunks finished, {len(lost)} lost "
                               f"(chunks {_ranges(lost)})", finished=finished, pending=lost) from exc
        finally:
            for ref in pending:  # an error or an interruption: stop what is still queued
                with contextlib.suppress(Exception):  # a dead cluster cannot cancel: nothing is left to stop
                    ray.cancel(ref, force=True)
            if bar is not None:
                bar.close()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else "no message"


def _ranges(idx: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2, 5'."""
    parts, start = [], None
    for k, i in enumerate(idx):
        if start is None:
            start = i
        if k + 1 == len(idx) or idx[k + 1] != i + 1:
            parts.append(str(start) if start == i else f"{start}-{i}")
            start = None
    return ", ".join(parts)


def _check_reachable(address: str | None, timeout: float = 3.0) -> None:
    """A named error at once for a host:port nobody answers on (ray.init itself would retry for minutes)."""
    if address is None or address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"ray_address: got {address!r}, expected 'auto', 'HOST:PORT' or 'ray://HOST:PORT'")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise ConnectionError(f"ray_address: got {address!r}, but nothing answers there ({exc}); start a "
                              "cluster with `ray start --head`, or pass no address for a local Ray") from None


def get_executor(executor: str | Executor | None = None, *, ray_address: str | None = None,
                 num_cpus: int | None = None) -> Executor:
    """An Executor from a name ("local", "ray"), an Executor (returned as is) or None ("local").

    ray_address / num_cpus only go with "ray" (num_cpus: CPUs and threads per task; default: the threads a
    local run uses, lscape._backend.num_threads(), which makes the results bit-identical to a local run)."""
    if isinstance(executor, Executor):
        return executor
    name = "local" if executor is None else executor
    if name not in EXECUTORS:
        raise ValueError(f"executor: got {executor!r}, expected one of {', '.join(map(repr, EXECUTORS))} "
                         "or an lscape.executor.Executor")
    if name == "local":
        if ray_address is not None:
            raise ValueError(f"ray_address: got {ray_address!r} with executor 'local'; it needs executor='ray'")
        return LocalExecutor()
    return RayExecutor(ray_address, num_cpus=num_cpus)
