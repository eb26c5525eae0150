"""One writer per run folder or result file: a lock file holding the owner's pid, host and start time.

    with hold_folder(out, "--out"):       # lscape reproduce, an experiment's run()
        ...
    with hold_file(path, "file"):         # lscape.surface(file=...), a study's file=

A function that writes a result file takes its lock in one line, as lscape.surface does:

    @locks_file("file")                   # e.g. intrinsic_dimension(..., file=None): held while it runs
    def intrinsic_dimension(..., file=None): ...

(or `with hold_file(file, "file"):` around the part that writes it).

The lock is an exclusive, non-blocking `flock` on a file (OUT/.lscape.lock, or FILE.lock next to a
result file), so a second live process is refused at once with a RunLocked error that names the argument
and the owner.  The kernel drops a flock when its process dies, however it dies; a lock file still
naming a process (its record left behind by a SIGKILL) is then stale and is taken over with a warning.
Where the filesystem refuses flock altogether (ENOLCK, EOPNOTSUPP), the record alone decides: an owner on
this host is checked by pid; one on another host is trusted (delete the lock file if you know it is gone).

Limits.  A lock is per process: a second acquisition in the same process (a resume after an interrupted
run in one Python session) reuses the lock it already holds.  On NFS, Linux maps flock to NFS byte-range
locks (NFSv4, or NFSv3 with lockd), which hold across hosts; a client that dies keeps its lock until the
server's lease expires (NFSv4: about 90 s).  A mount with `-o nolock` makes locks local to each host: two
hosts then both get the lock, and the record's warning on takeover is the only sign.
"""
from __future__ import annotations

import atexit
import contextlib
import datetime
import errno
import functools
import json
import os
import socket
import warnings
from collections.abc import Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: the record and the pid check alone
    fcntl = None

__all__ = ["RunLock", "RunLocked", "StaleLockWarning", "file_lock", "folder_lock", "hold", "hold_file", "hold_folder",
           "locks_file"]

LOCK_NAME = ".lscape.lock"


class RunLocked(FileExistsError):
    """A live process owns the run folder or file."""


class StaleLockWarning(UserWarning):
    """A lock file left by a dead process was taken over."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _describe(owner: dict) -> str:
    return f"pid {owner.get('pid')} on {owner.get('host')}, started {owner.get('started')}"


_HELD: dict[str, RunLock] = {}  # lock file (resolved) -> the lock this process holds on it


class RunLock:
    """The lock on one lock file; `what` names the argument in messages (e.g. "--out /runs/gw")."""

    def __init__(self, lock_path: str | os.PathLike, what: str) -> None:
        self.path = Path(lock_path)
        self.what = what
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def _read_owner(self, fd: int) -> dict:
        os.lseek(fd, 0, os.SEEK_SET)
        raw = os.read(fd, 4096)
        try:
            owner = json.loads(raw.decode()) if raw.strip() else {}
        except (UnicodeDecodeError, json.JSONDecodeError):
            owner = {"pid": None, "host": "?", "started": f"unreadable record {raw[:40]!r}"}
        return owner if isinstance(owner, dict) else {}

    def _refuse(self, owner: dict):
        return RunLocked(f"{self.what}: already in use by a live run ({_describe(owner)}; lock file "
                         f"{self.path}); wait for it to finish or stop it, or choose another "
                         f"{self.what.split()[0]}")

    def acquire(self) -> RunLock:
        """Take the lock, or raise RunLocked at once; a stale lock is taken over with a StaleLockWarning."""
        key = os.path.realpath(self.path)
        mine = _HELD.get(key)
        if mine is not None and mine.held:
            return mine  # this process already owns it (a resumed run in the same session)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                locked = self._flock(fd)
                owner = self._read_owner(fd)
                if not locked:  # no flock here: the record and the pid check decide
                    alive = owner.get("host") != socket.gethostname() or _pid_alive(int(owner.get("pid") or 0))
                    if owner.get("pid") and owner.get("pid") != os.getpid() and alive:
                        raise self._refuse(owner)
                # a holder may have unlinked the file between our open and our flock: retry on the new one
                try:
                    same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
                except FileNotFoundError:
                    same = False
                if not same:
                    os.close(fd)
                    continue
            except BaseException:
                os.close(fd)
                raise
            break
        if owner.get("pid") and owner.get("pid") != os.getpid():
            warnings.warn(f"{self.what}: taking over the stale lock of a run that is gone ({_describe(owner)})",
                          StaleLockWarning, stacklevel=3)
        record = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps(record).encode())
        os.fsync(fd)
        self._fd = fd
        _HELD[key] = self
        return self

    def _flock(self, fd: int) -> bool:
        """True when flock holds the lock; False when this filesystem has no flock; RunLocked when held."""
        if fcntl is None:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise self._refuse(self._read_owner(fd)) from None
        except OSError as exc:
            if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                return False
            raise
        return True

    def release(self) -> None:
        """Remove the lock file and drop the lock (idempotent)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        _HELD.pop(os.path.realpath(self.path), None)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)  # while still locked, so nobody locks the old file after we drop it
        os.close(fd)  # drops the flock

    def release_held(self) -> None:
        """Release the lock this process holds on this lock file, through whichever RunLock took it."""
        held = _HELD.get(os.path.realpath(self.path))
        if held is not None:
            held.release()

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def folder_lock(folder: str | os.PathLike, arg: str = "--out") -> RunLock:
    """The lock of a run folder (FOLDER/.lscape.lock); arg names the argument in messages."""
    return RunLock(Path(folder) / LOCK_NAME, f"{arg} {os.fspath(folder)}")


def file_lock(file: str | os.PathLike, arg: str = "file") -> RunLock:
    """The lock of a result file (FILE.lock beside it)."""
    file = Path(file)
    return RunLock(file.with_name(file.name + ".lock"), f"{arg} {os.fspath(file)}")


@contextlib.contextmanager
def hold(lock: RunLock) -> Iterator[RunLock]:
    """Hold `lock` for the block, released at its end whatever ends it (unless this process already held
    it before the block: then its outer holder releases it)."""
    outer = _HELD.get(os.path.realpath(lock.path))
    held = lock.acquire()
    try:
        yield held
    finally:
        if outer is None:
            held.release()


def hold_folder(folder: str | os.PathLike, arg: str = "--out"):
    """Hold a run folder's lock for a with-block."""
    return hold(folder_lock(folder, arg))


def hold_file(file: str | os.PathLike, arg: str = "file"):
    """Hold a result file's lock for a with-block."""
    return hold(file_lock(file, arg))


def locks_file(arg: str = "file"):
    """Decorator: while the function runs, it holds the lock of the file its keyword argument `arg` names
    (when not None).  For every function that writes a result file (surface(file=...), a study's file=)."""

    def wrap(fn):
        @functools.wraps(fn)
        def locked(*args, **kwargs):
            path = kwargs.get(arg)
            if path is None:
                return fn(*args, **kwargs)
            if not isinstance(path, (str, os.PathLike)):
                raise TypeError(f"{arg}: got {type(path).__name__} {path!r}, expected a path (str or os.PathLike)")
            with hold_file(path, arg):
                return fn(*args, **kwargs)

        return locked

    return wrap


@atexit.register
def release_all() -> None:
    """Release every lock this process holds (at exit; by hand before os._exit, which skips atexit)."""
    for lock in list(_HELD.values()):
        lock.release()
