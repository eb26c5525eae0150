"""Surface files: HDF5 with Goldstein's dataset names (xcoordinates, ycoordinates, train_loss, ...;
-1 in cells not computed yet) or .npz when h5py is absent; every write goes to a temporary file that
replaces the old one, so a killed run leaves a valid file.  lscape's files carry checksums (.npz: the
SHA-256 of the arrays in the metadata; .h5: HDF5's Fletcher-32 filter on every dataset, which in-place
edits by HDF5 tools keep right), so a torn or corrupted file is refused by name (DamagedSurfaceFile),
never read as a surface.  Plus a .vtp export for ParaView."""
from __future__ import annotations

import json
import os
import zipfile
import zlib

import numpy as np

from ._atomicfiles import arrays_digest, write_npz

__all__ = ["DamagedSurfaceFile", "write_surface", "read_surface", "write_vtp"]


class DamagedSurfaceFile(ValueError):
    """A surface file that cannot be read or fails its checksum."""

_META = ("directions", "center", "trajectory")


def _h5py():
    try:
        import h5py
    except ImportError:
        return None
    return h5py


def write_surface(path: str, x, y, values: dict, done, directions, center, info: dict, trajectory,
                  points=None) -> None:
    """Atomic write: values are stored with -1 where `done` is False (Goldstein's convention)."""
    path = os.fspath(path)
    tmp = path + ".tmp"
    stored = {k: np.where(done, v, -1.0) for k, v in values.items()}
    arrays = {"xcoordinates": np.asarray(x), **stored, "done": np.asarray(done),
              "directions": np.asarray(directions), "center": np.asarray(center)}
    if y is not None:
        arrays["ycoordinates"] = np.asarray(y)
    if trajectory is not None:
        arrays["trajectory"] = np.asarray(trajectory)
    if points is not None:
        arrays["points"] = np.asarray(points)
    meta = {"info": info, "metrics": list(values)}
    if path.endswith(".npz"):
        meta = json.dumps({**meta, "sha256": arrays_digest(arrays)})
        with open(tmp, "wb") as f:
            write_npz(f, {"meta": np.array(meta), **arrays})
            f.flush()
            os.fsync(f.fileno())
    else:
        h5py = _h5py()
        if h5py is None:
            raise ImportError("saving .h5 needs h5py (pip install lscape[surface]); or save to a .npz path")
        with h5py.File(tmp, "w") as f:
            for k, a in arrays.items():
                # HDF5's own per-chunk checksum: verified on every read, kept right by in-place edits (h5py)
                f.create_dataset(k, data=a, fletcher32=a.size > 0 and a.ndim > 0)
            f.attrs["lscape"] = json.dumps(meta)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)  # on disk before it replaces the old file
        finally:
            os.close(fd)
    os.replace(tmp, path)


def read_surface(path: str) -> dict:
    """-> dict of the arguments of write_surface (values with NaN where not done); DamagedSurfaceFile
    when the file cannot be read or its arrays fail the checksum written with them."""
    path = os.fspath(path)
    try:
        arrays, meta = _read_arrays(path)
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, KeyError, ValueError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise DamagedSurfaceFile(f"file: {path!r} is damaged (unreadable: {type(exc).__name__}: {exc})") from None
    if "sha256" in meta and meta["sha256"] != arrays_digest(arrays):
        raise DamagedSurfaceFile(f"file: {path!r} is damaged (its arrays fail the checksum written with them)")
    names = meta["metrics"] or [k for k in arrays if k.startswith(("train_", "test_"))]
    x = arrays["xcoordinates"]
    y = arrays.get("ycoordinates")
    values = {k: np.asarray(arrays[k], dtype=np.float64) for k in names}
    done = arrays["done"].astype(bool) if "done" in arrays else next(iter(values.values())) != -1
    values = {k: np.where(done, v, np.nan) for k, v in values.items()}
    return {"x": x, "y": y, "values": values, "done": done, "directions": arrays.get("directions"),
            "center": arrays.get("center"), "info": meta["info"], "trajectory": arrays.get("trajectory"),
            "points": arrays.get("points")}


def _read_arrays(path: str) -> tuple[dict, dict]:
    """Every array of a surface file, and its lscape metadata."""
    if path.endswith(".npz"):
        with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as f:  # fh is closed even on a bad file
            arrays = {k: f[k] for k in f.files}
        meta = json.loads(str(arrays.pop("meta")))
    else:
        h5py = _h5py()
        if h5py is None:
            raise ImportError("reading .h5 needs h5py (pip install lscape[surface])")
        with h5py.File(path, "r") as f:
            arrays = {k: f[k][()] for k in f.keys()}
            meta = json.loads(f.attrs["lscape"]) if "lscape" in f.attrs else {"info": {}, "metrics": None}
    return arrays, meta


def write_vtp(path: str, x, y, z, *, log: bool = False, zmax: float | None = None) -> None:
    """The surface z (nx, ny) as a ParaView PolyData file (points + one quad per cell), with
    Goldstein's h52vtp.py options: log=True stores log(z + 0.1), zmax caps z before that."""
    z = np.array(z, dtype=np.float64)
    if zmax is not None and zmax > 0:
        z = np.minimum(z, zmax)
    if log:
        z = np.log(z + 0.1)
    X, Y = np.meshgrid(x, y, indexing="ij")
    pts = np.stack([X.ravel(), Y.ravel(), z.ravel()], axis=1)
    nx, ny = z.shape
    quads = [(i * ny + j, (i + 1) * ny + j, (i + 1) * ny + j + 1, i * ny + j + 1)
             for i in range(nx - 1) for j in range(ny - 1)]
    conn = " ".join(" ".join(map(str, q)) for q in quads)
    offs = " ".join(str(4 * (k + 1)) for k in range(len(quads)))
    zs = " ".join(f"{v:.8g}" for v in pts[:, 2])
    with open(path, "w") as f:
        f.write('<VTKFile type="PolyData" version="1.0" byte_order="LittleEndian">\n<PolyData>\n'
                f'<Piece NumberOfPoints="{len(pts)}" NumberOfPolys="{len(quads)}">\n'
                f'<PointData Scalars="loss"><DataArray type="Float64" Name="loss" format="ascii">{zs}'
                '</DataArray></PointData>\n<Points><DataArray type="Float64" NumberOfComponents="3" '
                f'format="ascii">{" ".join(f"{v:.8g}" for v in pts.ravel())}</DataArray></Points>\n'
                f'<Polys><DataArray type="Int64" Name="connectivity" format="ascii">{conn}</DataArray>\n'
                f'<DataArray type="Int64" Name="offsets" format="ascii">{offs}</DataArray></Polys>\n'
                '</Piece>\n</PolyData>\n</VTKFile>\n')
