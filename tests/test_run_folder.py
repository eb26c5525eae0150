"""A run folder survives what disks and other runs do to it: one live owner at a time (a second process
is refused at once, a dead owner's lock is taken over), checkpoints that are torn, truncated, bit-flipped
or without a checksum are detected, named and recomputed (never loaded), a full or unwritable disk stops
the run with a named error and intact earlier chunks, and every resumed run equals an uninterrupted one."""
from __future__ import annotations

import errno
import fcntl
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from lscape import _runlock, cli, experiments
from lscape._atomicfiles import atomic_savez
from lscape.executor import LocalExecutor
from lscape.experiments import bosman, common
from lscape.experiments import io as run_io

RUNLOCK_PY = Path(_runlock.__file__)


# ---- one owner per run folder ---------------------------------------------------------------------------
@pytest.fixture
def holder(tmp_path):
    """A second, live process holding the lock of tmp_path/'run' (and of tmp_path/'s.npz'): it loads
    lscape/_runlock.py on its own (no torch import, so it starts in a fraction of a second)."""
    code = ("import importlib.util, sys\n"
            f"spec = importlib.util.spec_from_file_location('runlock', {str(RUNLOCK_PY)!r})\n"
            "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
            "m.folder_lock(sys.argv[1]).acquire(); m.file_lock(sys.argv[2]).acquire()\n"
            "print('held', flush=True); sys.stdin.read()\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "run"), str(tmp_path / "s.npz")],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    proc.stdin.close()
    proc.stdout.close()


def _small_surface(file, **kw):
    import lscape
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    X, Y = torch.randn(16, 3), torch.randint(0, 2, (16,))
    return lscape.surface(model, nn.functional.cross_entropy, (X, Y), directions="filter", grid=3, file=file, **kw)


def test_a_second_live_run_is_refused_without_waiting_naming_out_and_its_owner(holder, tmp_path, capsys,
                                                                              monkeypatch):
    owner = rf"pid {holder.pid} on {socket.gethostname()}, started \d{{4}}-"
    # "at once" as behaviour, not a clock: every exclusive flock is non-blocking and nothing sleeps
    ops, real_flock = [], fcntl.flock
    monkeypatch.setattr(fcntl, "flock", lambda fd, op: (ops.append(op), real_flock(fd, op))[1])

    def no_sleep(seconds):
        raise AssertionError(f"the refusal waited ({seconds} s)")

    monkeypatch.setattr(time, "sleep", no_sleep)
    with pytest.raises(_runlock.RunLocked, match=rf"out {tmp_path / 'run'}: already in use by a live run \({owner}"):
        experiments.run("bosman", scale="smoke", out=tmp_path / "run", progress=False, figures=False)
    assert not (tmp_path / "run" / "config.json").exists()  # nothing of the owner's run was touched
    rc = cli.main(["reproduce", "bosman", "--scale", "smoke", "--out", str(tmp_path / "run")])
    assert rc == 2 and f"--out {tmp_path / 'run'}: already in use by a live run (pid {holder.pid}" in \
        capsys.readouterr().err
    with pytest.raises(_runlock.RunLocked, match=rf"file {tmp_path / 's.npz'}: already in use .*{owner}"):
        _small_surface(tmp_path / "s.npz")
    assert not (tmp_path / "s.npz").exists()
    exclusive = [op for op in ops if op & fcntl.LOCK_EX]
    assert exclusive and all(op & fcntl.LOCK_NB for op in exclusive)


def test_the_lock_of_a_killed_owner_is_taken_over_with_a_warning(holder, tmp_path):
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    lock = tmp_path / "run" / _runlock.LOCK_NAME
    assert f'"pid": {holder.pid}' in lock.read_text()  # SIGKILL left its record behind
    with pytest.warns(_runlock.StaleLockWarning, match=f"taking over the stale lock .*pid {holder.pid}"):
        bosman.run("smoke", tmp_path / "run", progress=False, figures=False)
    assert (tmp_path / "run" / "results.npz").is_file() and not lock.exists()  # released at the end
    with pytest.warns(_runlock.StaleLockWarning, match=f"pid {holder.pid}"):
        s = _small_surface(tmp_path / "s.npz")
    assert s.done.all() and not (tmp_path / "s.npz.lock").exists()


def test_without_flock_the_record_and_pid_decide(monkeypatch, tmp_path):
    """A filesystem that refuses flock (an NFS mount without lockd): a live owner on this host is still
    refused by its pid, a dead one taken over."""
    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(_runlock.fcntl, "flock", no_flock)
    lock_file = tmp_path / "run" / _runlock.LOCK_NAME
    lock_file.parent.mkdir()
    lock_file.write_text(f'{{"pid": {os.getppid()}, "host": "{socket.gethostname()}", "started": "x"}}')
    with pytest.raises(_runlock.RunLocked, match=f"out {tmp_path / 'run'}: already in use .*pid {os.getppid()}"):
        _runlock.folder_lock(tmp_path / "run", "out").acquire()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock_file.write_text(f'{{"pid": {dead.pid}, "host": "{socket.gethostname()}", "started": "x"}}')
    with pytest.warns(_runlock.StaleLockWarning, match=f"pid {dead.pid}"), \
            _runlock.hold_folder(tmp_path / "run", "out") as lock:
        assert lock.held and f'"pid": {os.getpid()}' in lock_file.read_text()
    assert not lock_file.exists()


def test_a_run_interrupted_in_this_process_resumes_in_it(tmp_path):
    """The lock is per process: an interrupted run's own process resumes it (no refusal, no warning)."""
    with pytest.raises(common.RunInterrupted, match="stopped after 2 chunk"):
        bosman.run("smoke", tmp_path / "run", progress=False, figures=False, stop_after_chunks=2)
    bosman.run("smoke", tmp_path / "run", resume=True, progress=False, figures=False)
    assert not (tmp_path / "run" / _runlock.LOCK_NAME).exists()


# ---- checksummed chunks ---------------------------------------------------------------------------------
def _chunk(i: int, calls: list) -> dict[str, np.ndarray]:
    calls.append(i)
    return {"v": np.arange(2000, dtype=np.float64) * (i + 1), "i": np.array(i)}


def _job(out: Path, calls: list, executor=None, n: int = 6) -> list[dict[str, np.ndarray]]:
    rd = run_io.RunDir(out, {"job": "test"}, resume=True)
    return run_io.checkpointed_chunks(rd, [f"chunk_{i}" for i in range(n)], _chunk, executor or LocalExecutor(),
                                      run_io.ChunkBudget(None), shared=calls)


def _assert_same(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert sorted(x) == sorted(y)
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])


def _flip_a_bit_in_the_data(path: Path, value: np.ndarray) -> None:
    raw = bytearray(path.read_bytes())
    at = raw.find(value.tobytes()[:64])
    assert at > 0
    raw[at + 17] ^= 0x08
    path.write_bytes(bytes(raw))


def _change_the_data_keep_the_checksum(path: Path) -> None:
    """Re-save a checkpoint with its arrays changed and its old checksum: a valid zip (every CRC right)
    whose contents no longer match the digest recorded inside, so only the SHA-256 check can catch it."""
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["v"] = arrays["v"].copy()
    arrays["v"][17] += 1.0
    atomic_savez(path, arrays)


def test_damaged_chunks_are_named_recomputed_and_never_loaded(tmp_path):
    ref = _job(tmp_path / "ref", [])
    out = tmp_path / "run"
    _job(out, [])
    ck = out / "checkpoints"
    size = (ck / "chunk_1.npz").stat().st_size
    with open(ck / "chunk_1.npz", "r+b") as f:  # truncated: a copy cut short
        f.truncate(size // 2)
    (ck / "chunk_2.npz").write_bytes(b"")  # torn: a crash before the data reached the disk
    _flip_a_bit_in_the_data(ck / "chunk_3.npz", np.arange(2000, dtype=np.float64) * 4)  # a bad sector
    atomic_savez(ck / "chunk_4.npz", {"v": np.zeros(3), "i": np.array(4)})  # no checksum: not ours
    _change_the_data_keep_the_checksum(ck / "chunk_5.npz")  # rewritten by hand: the zip is fine, the data not
    calls: list[int] = []
    with pytest.warns(run_io.DamagedCheckpointWarning) as rec:
        got = _job(out, calls)
    msgs = [str(w.message) for w in rec]
    for i, why in ((1, "unreadable"), (2, "unreadable"), (3, "checksum mismatch|unreadable"),
                   (4, "no checksum inside"), (5, "checksum mismatch")):
        assert any(f"chunk_{i}.npz is damaged" in m and any(w in m for w in why.split("|")) for m in msgs), (i, msgs)
    assert sorted(calls) == [1, 2, 3, 4, 5]  # only the damaged ones were recomputed
    _assert_same(got, ref)
    assert {p.name for p in ck.glob("*.damaged")} == {f"chunk_{i}.npz.damaged" for i in (1, 2, 3, 4, 5)}


def test_a_damaged_checkpoint_of_a_reproduction_resumes_to_the_uninterrupted_results(tmp_path):
    bosman.run("smoke", tmp_path / "ref", progress=False, figures=False)
    out = tmp_path / "run"
    with pytest.raises(common.RunInterrupted, match="stopped after 4 chunk"):
        bosman.run("smoke", out, progress=False, figures=False, stop_after_chunks=4)
    files = sorted((out / "checkpoints").glob("*.npz"))
    with open(files[0], "r+b") as f:
        f.truncate(f.seek(0, 2) - 100)
    raw = bytearray(files[1].read_bytes())
    raw[len(raw) // 2] ^= 0x01
    files[1].write_bytes(bytes(raw))
    with pytest.warns(run_io.DamagedCheckpointWarning) as rec:
        bosman.run("smoke", out, resume=True, progress=False, figures=False)
    named = " ".join(str(w.message) for w in rec)
    assert f"{files[0].name} is damaged" in named and f"{files[1].name} is damaged" in named, named
    with np.load(tmp_path / "ref" / "results.npz") as a, np.load(out / "results.npz") as b:
        assert sorted(a.files) == sorted(b.files)
        for k in a.files:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


# ---- full and unwritable disks --------------------------------------------------------------------------
@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EROFS, errno.EACCES])
def test_a_failing_write_stops_the_run_by_name_and_resume_completes(err, tmp_path, monkeypatch):
    """The third checkpoint write fails half-way (a disk filling up, a remount read-only, a lost
    permission): a RunStopped names the file, the reason and the finished chunks; the first two files and
    no temp file remain; the resumed run computes the rest and equals an uninterrupted one."""
    ref = _job(tmp_path / "ref", [])
    real_savez, writes = np.savez, []

    def failing_savez(f, **arrays):
        writes.append(1)
        if len(writes) == 3:
            f.write(b"PK\x03\x04 half a file")
            raise OSError(err, os.strerror(err))
        return real_savez(f, **arrays)

    monkeypatch.setattr(np, "savez", failing_savez)
    out = tmp_path / "run"
    with pytest.raises(run_io.RunStopped, match=rf"out: could not write checkpoint .*chunk_2\.npz "
                                                rf"\({os.strerror(err)}\); 2 of 6 chunks .* \(chunk_0, chunk_1\) "
                                                "and are kept; resume the run"):
        _job(out, [])
    monkeypatch.setattr(np, "savez", real_savez)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["chunk_0.npz", "chunk_1.npz"]
    kept = {p: p.stat().st_mtime_ns for p in (out / "checkpoints").iterdir()}
    calls: list[int] = []
    _assert_same(_job(out, calls), ref)
    assert calls == [2, 3, 4, 5] and all(p.stat().st_mtime_ns == t for p, t in kept.items())


def _mount_tmpfs(where: Path, size: str) -> bool:
    where.mkdir()
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                          capture_output=True).returncode == 0


def test_a_real_full_disk_stops_the_run_and_resume_completes_after_space_is_freed(tmp_path):
    disk = tmp_path / "disk"
    if sys.platform != "linux" or os.geteuid() != 0 or not _mount_tmpfs(disk, "64k"):
        pytest.skip("mounting a tiny tmpfs needs root on Linux (the injected-failure test covers the rest)")
    try:
        ref = _job(tmp_path / "ref", [], n=8)
        with pytest.raises(run_io.RunStopped, match=r"could not write checkpoint .*\(No space left on device\)"):
            _job(disk / "run", [], n=8)
        kept = sorted((disk / "run" / "checkpoints").glob("*.npz"))
        assert 1 <= len(kept) < 8 and not list((disk / "run" / "checkpoints").glob(".*tmp*"))
        subprocess.run(["mount", "-o", "remount,size=1m", str(disk)], check=True)
        calls: list[int] = []
        _assert_same(_job(disk / "run", calls, n=8), ref)
        assert calls == list(range(len(kept), 8))
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def test_an_unwritable_out_is_a_named_error_before_any_work(tmp_path, capsys):
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(OSError, match="out: cannot write the run folder .*a_file/run"):
        bosman.run("smoke", tmp_path / "a_file" / "run", progress=False, figures=False)
    rc = cli.main(["reproduce", "bosman", "--scale", "smoke", "--out", str(tmp_path / "a_file" / "run")])
    assert rc == 2 and "--out: cannot write the run folder" in capsys.readouterr().err


def test_the_cli_ends_a_stopped_run_with_the_resume_command(tmp_path, capsys, monkeypatch):
    def stopped(**kw):
        raise run_io.RunStopped("ray: the cluster lost the job (LocalRayletDiedError: ...); 3 of 8 chunks "
                                "finished", out=Path(kw["out"]), finished=3, total=8)

    monkeypatch.setattr(bosman, "run", stopped)
    out = str(tmp_path / "run")
    rc = cli.main(["reproduce", "bosman", "--scale", "smoke", "--out", out])
    err = capsys.readouterr().err
    assert rc == 75 and "3 of 8 chunks finished" in err
    assert f"Continue with `lscape reproduce bosman --scale smoke --out {out} --resume`" in err


# ---- surface files --------------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".npz", ".h5"])
def test_a_damaged_surface_file_is_refused_by_name_and_replaced_only_when_asked(suffix, tmp_path):
    if suffix == ".h5":
        pytest.importorskip("h5py", reason="HDF5 surface files need h5py (pip install '.[surface]')")
    import lscape

    path = tmp_path / f"s{suffix}"
    ref = _small_surface(path)
    assert lscape.Surface.load(path).done.all()
    raw = bytearray(path.read_bytes())
    at = raw.find(np.asarray(ref.values["train_loss"]).tobytes()[:16])
    assert at > 0  # the loss values' bytes, stored as they are
    raw[at + 3] ^= 0x10
    path.write_bytes(bytes(raw))
    # .npz: the zip's own CRC catches the flip (before lscape's SHA-256); .h5: HDF5's Fletcher-32 filter
    why = "unreadable: BadZipFile: Bad CRC-32" if suffix == ".npz" else "unreadable: OSError: .*filter returned failure"
    with pytest.raises(ValueError, match=rf"file: '{path}' is damaged \({why}"):
        lscape.Surface.load(path)
    with pytest.raises(ValueError, match=rf"file: '{path}' is damaged .*pass overwrite=True .* or a new path"):
        _small_surface(path)
    path.write_bytes(bytes(raw[: len(raw) // 3]))  # truncated
    with pytest.raises(ValueError, match=rf"file: '{path}' is damaged \(unreadable"):
        _small_surface(path)
    if suffix == ".npz":  # a well-formed zip whose arrays were changed behind lscape's back: the SHA-256
        ref.save(path)
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files}
        arrays["train_loss"] = arrays["train_loss"] + 1.0
        np.savez(path, **arrays)
        with pytest.raises(ValueError, match=rf"file: '{path}' is damaged \(its arrays fail the checksum"):
            lscape.Surface.load(path)
    again = _small_surface(path, overwrite=True)
    for k in ref.values:
        np.testing.assert_array_equal(again.values[k], ref.values[k])
    np.testing.assert_array_equal(lscape.Surface.load(path).values["train_loss"], ref.values["train_loss"])


def test_a_full_disk_or_a_lost_cluster_stops_a_surface_by_name_and_the_same_call_continues(tmp_path, monkeypatch):
    """surface(file=...): the write of its third row fails (ENOSPC), then the executor loses the job after
    one row; each stops with a named error, the file keeps the rows before, and the same call completes
    it to the values of an uninterrupted run."""
    import lscape
    from lscape import executor as ex_mod

    surface_mod = sys.modules["lscape.surface"]  # (lscape.surface is the function)
    ref = _small_surface(tmp_path / "ref.npz")
    path = tmp_path / "s.npz"
    real_write, writes = surface_mod.write_surface, []

    def failing_write(*a, **k):
        writes.append(1)
        if len(writes) == 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(*a, **k)

    monkeypatch.setattr(surface_mod, "write_surface", failing_write)
    with pytest.raises(OSError, match=rf"file: could not write {path} \(No space left on device\); its earlier "
                                      "rows are intact"):
        _small_surface(path)
    monkeypatch.setattr(surface_mod, "write_surface", real_write)
    assert lscape.Surface.load(path).done.sum(1).tolist() == [3, 3, 0]  # two rows of three cells

    class LosesTheJob(LocalExecutor):
        def map_chunks(self, fn, chunks, *, shared=None, on_result, label="", progress=False, threads=None):
            chunks = list(chunks)
            on_result(chunks[0], fn(chunks[0], shared))
            raise ex_mod.ExecutorLost("ray: the cluster lost the job (NodeDiedError: node died); 1 of 2 chunks "
                                      "finished", finished=chunks[:1], pending=chunks[1:])

    path.unlink()
    with pytest.raises(ex_mod.ExecutorLost, match=rf"NodeDiedError.*the finished rows are in {path}: call again "
                                                  "with the same file= to continue"):
        _small_surface(path, executor=LosesTheJob())
    assert lscape.Surface.load(path).done.sum(1).tolist() == [3, 0, 0]
    again = _small_surface(path)
    for k in ref.values:
        np.testing.assert_array_equal(again.values[k], ref.values[k])
