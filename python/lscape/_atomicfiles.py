"""Files that are never half-written, and arrays with a checksum: the small file layer under every writer.

A file is written into a temp file next to its path, fsynced, then renamed over it (os.replace), so a reader
sees the old file or the new one, never a torn one. arrays_digest is the SHA-256 that checkpoints
(lscape.experiments.io), surface chunks (lscape.surface_io) and intrinsic-dimension sweeps store beside their
arrays, so a damaged file is found on reading it back.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np


def arrays_digest(arrays: Mapping[str, Any]) -> str:
    """SHA-256 of named arrays: names, dtypes, shapes and bytes, in name order."""
    h = hashlib.sha256()
    for k in sorted(arrays):
        a = np.ascontiguousarray(arrays[k])
        h.update(f"{k}\0{a.dtype.str}\0{a.shape}\0".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _atomic_write(path: Path, write: Callable[[Any], None], mode: str = "wb") -> None:
    """write(file) into a temp file next to path, fsync, then os.replace: path is never half-written."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_npz(f, arrays: Mapping[str, Any]) -> None:
    """np.savez(f, **arrays) through memory, then one write: a failing write (a full disk) raises from
    f.write, and no half-written zip object is left to fail again when it is collected (numpy 1.x's
    savez leaves one open on the closed file)."""
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
    f.write(buf.getbuffer())


def atomic_savez(path: str | os.PathLike, arrays: Mapping[str, Any]) -> None:
    """np.savez(path, **arrays), atomically."""
    _atomic_write(Path(path), lambda f: write_npz(f, arrays))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """obj as indented JSON with sorted keys (numpy scalars and arrays as numbers and lists), atomically."""
    _atomic_write(Path(path), lambda f: f.write(json.dumps(obj, indent=2, sort_keys=True, default=jsonable)
                                                + "\n"), mode="w")


def jsonable(v: Any) -> Any:
    """json.dumps's `default`: a numpy scalar as its Python number, an array as nested lists."""
    if isinstance(v, (np.floating, np.integer, np.bool_)):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    raise TypeError(f"not JSON serialisable: {type(v).__name__}")


def load_npz(path: str | os.PathLike) -> dict[str, np.ndarray] | None:
    """The arrays of an .npz file as a dict (read fully, file closed), or None if it does not exist."""
    path = Path(path)
    if not path.exists():
        return None
    with open(path, "rb") as f, np.load(f, allow_pickle=False) as z:  # our handle: closed even on a bad file
        return {k: z[k] for k in z.files}
