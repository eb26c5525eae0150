"""Figures of loss surfaces, Hessian spectra and NEB bands (matplotlib: the `plot` extra).

Every function returns the matplotlib Figure it drew on; pass `ax=` to draw into an existing Axes (then the
Figure is `ax.figure`).  Surfaces are any object with the attributes of `lscape.Surface`: x (nx,), y (ny,) or
None, values {name: (nx,) | (nx, ny)} with NaN in cells not computed yet, done, ndim, trajectory (T, 2) or None,
points (n, 2) or None (contour, filled_contour, heat map and trajectory draw the last two).
value[i, j] is at (x[i], y[j]), so 2-D arrays are transposed for matplotlib, which wants z[row=y, col=x].

scale="log" draws log10 of the quantity: cells that are not positive are masked like the uncomputed (NaN)
ones, and a quantity with no positive value at all is a ValueError.  1-D curves, spectra and NEB profiles
use a log y axis instead (matplotlib masks non-positive values there).

`interactive` writes one self-contained HTML page (plotly, also in the `plot` extra): the 3-D surface to rotate
and zoom and its contour, with the trajectory and points, and values on hover.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ._plotvalues import check_scale, quantity_values, scaled, surface_arg

__all__ = ["contour", "filled_contour", "heatmap", "surface3d", "curve", "trajectory", "spectral_density",
           "neb_profile", "intrinsic_dimension", "plot_all", "interactive"]

def _mpl():
    """matplotlib's Figure class, or an ImportError that names the extra to install."""
    try:
        from matplotlib.figure import Figure
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("lscape.plot needs matplotlib: pip install 'lscape[plot]'") from e
    return Figure


def _axes(ax, projection: str | None = None):
    """(figure, axes): a new Figure (no pyplot, so no GUI backend is touched) unless ax is given."""
    if ax is not None:
        return ax.figure, ax
    fig = _mpl()(figsize=(6.4, 4.8), layout="constrained")
    return fig, fig.add_subplot(projection=projection)


def _require_2d(surface: Any, what: str) -> None:
    surface_arg(surface)
    if surface.ndim != 2 or surface.y is None:
        raise ValueError(f"surface: got a {surface.ndim}-D surface, expected a 2-D one for {what} "
                         "(use lscape.plot.curve for 1-D surfaces)")


def _plane(surface: Any, quantity: str, scale: str, what: str):
    """(X, Y, Z) meshes for a 2-D plot of `quantity`: Z[j, i] is the value at (x[i], y[j])."""
    _require_2d(surface, what)
    z, label = scaled(quantity_values(surface, quantity), scale, quantity)
    X, Y = np.meshgrid(np.asarray(surface.x, dtype=np.float64), np.asarray(surface.y, dtype=np.float64))
    return X, Y, z.T, label


def _label_plane(ax, title: str) -> None:
    ax.set_xlabel("α (direction 1)")
    ax.set_ylabel("β (direction 2)")
    ax.set_title(title)


def _masked_note(ax, z: np.ma.MaskedArray) -> None:
    """Say on the figure how many cells are masked, so a half-computed surface is not read as complete."""
    n = int(np.ma.count_masked(z))
    if n:
        ax.text(0.01, 0.01, f"{n} of {z.size} cells masked (not computed or not drawable)",
                transform=ax.transAxes, fontsize=7, color="0.3")


def _path(path) -> np.ndarray:
    path = np.asarray(path, dtype=np.float64)
    if path.ndim != 2 or path.shape[1] != 2 or len(path) < 1:
        raise ValueError(f"path: got shape {path.shape}, expected (T, 2) with T >= 1")
    return path


def _draw_marks(ax, path: np.ndarray | None, points: np.ndarray | None) -> None:
    """A trajectory from a circle (start) to a star (end), and labelled points θ0, θ1, ..., with a legend."""
    if path is not None:
        path = _path(path)
        ax.plot(path[:, 0], path[:, 1], "-", color="crimson", lw=1.5, label="trajectory")
        ax.plot(path[0, 0], path[0, 1], "o", color="crimson", ms=6, label="start")
        ax.plot(path[-1, 0], path[-1, 1], "*", color="crimson", ms=12, label="end")
    if points is not None:
        points = _path(points)
        ax.plot(points[:, 0], points[:, 1], "D", color="crimson", mec="white", ms=7, label="models")
        for k, (a, b) in enumerate(points):
            ax.annotate(f"θ{k}", (a, b), xytext=(4, 4), textcoords="offset points", fontsize=8, color="crimson")
    if path is not None or points is not None:
        ax.legend(loc="best", fontsize=8)


def _surface_marks(ax, surface: Any, marks: bool) -> None:
    if marks:
        _draw_marks(ax, getattr(surface, "trajectory", None), getattr(surface, "points", None))


def contour(surface: Any, quantity: str = "train_loss", *, ax=None, scale: str = "linear", levels: int = 20,
            filled: bool = False, marks: bool = True):
    """Contour lines (or filled contours) of a quantity of a 2-D surface, with a colour bar, and the surface's
    trajectory and points when it has them (marks=False leaves them out).  Returns the Figure."""
    X, Y, Z, label = _plane(surface, quantity, scale, "a contour plot")
    fig, ax = _axes(ax)
    draw = ax.contourf if filled else ax.contour
    cs = draw(X, Y, Z, levels=levels, cmap="viridis")
    if not filled:
        ax.clabel(cs, fontsize=7, fmt="%.3g")
    fig.colorbar(cs, ax=ax, label=label)
    _label_plane(ax, ("filled contour of " if filled else "contour of ") + quantity)
    _masked_note(ax, Z)
    _surface_marks(ax, surface, marks)
    return fig


def filled_contour(surface: Any, quantity: str = "train_loss", *, ax=None, scale: str = "linear",
                   levels: int = 20, marks: bool = True):
    """Filled contours of a quantity of a 2-D surface (with its trajectory and points).  Returns the Figure."""
    return contour(surface, quantity, ax=ax, scale=scale, levels=levels, filled=True, marks=marks)


def heatmap(surface: Any, quantity: str = "train_loss", *, ax=None, scale: str = "linear", marks: bool = True):
    """A heat map (one cell per grid point, masked cells blank) of a 2-D surface (with its trajectory and
    points).  Returns the Figure."""
    X, Y, Z, label = _plane(surface, quantity, scale, "a heat map")
    fig, ax = _axes(ax)
    mesh = ax.pcolormesh(X, Y, Z, shading="nearest", cmap="viridis")
    fig.colorbar(mesh, ax=ax, label=label)
    _label_plane(ax, "heat map of " + quantity)
    _masked_note(ax, Z)
    _surface_marks(ax, surface, marks)
    return fig


def surface3d(surface: Any, quantity: str = "train_loss", *, ax=None, scale: str = "linear"):
    """A 3-D surface of a quantity of a 2-D surface (masked cells are holes).  Returns the Figure.
    A given `ax` must be a 3-D Axes (projection="3d")."""
    X, Y, Z, label = _plane(surface, quantity, scale, "a 3-D surface plot")
    fig, ax = _axes(ax, projection="3d")
    # plot_surface ignores masks but leaves NaN faces out
    surf = ax.plot_surface(X, Y, Z.filled(np.nan), cmap="viridis", linewidth=0, antialiased=True)
    fig.colorbar(surf, ax=ax, label=label, shrink=0.6, pad=0.1)
    ax.set_xlabel("α")
    ax.set_ylabel("β")
    ax.set_zlabel(label)
    ax.set_title("3-D surface of " + quantity)
    return fig


def _is_accuracy(name: str) -> bool:
    return name.endswith("acc") or name.endswith("accuracy")


def curve(surface: Any, quantities: list[str] | None = None, *, ax=None, scale: str = "linear"):
    """A 1-D surface: losses (and other metrics) on the left axis, accuracies on a twin right axis; NaN points
    are gaps.  quantities: default all of the surface's.  scale="log" makes the left axis logarithmic.
    Returns the Figure."""
    check_scale(scale)
    if surface_arg(surface).ndim != 1:
        raise ValueError(f"surface: got a {surface.ndim}-D surface, expected a 1-D one for a curve "
                         "(use lscape.plot.contour for 2-D surfaces)")
    names = sorted(surface.values) if quantities is None else list(quantities)
    vals = {n: quantity_values(surface, n) for n in names}
    x = np.asarray(surface.x, dtype=np.float64)
    fig, ax = _axes(ax)
    left = [n for n in names if not _is_accuracy(n)]
    right = [n for n in names if _is_accuracy(n)]
    lines = []
    for k, n in enumerate(left):
        lines += ax.plot(x, vals[n], color=f"C{k}", label=n)
    ax.set_xlabel("α (along the direction)")
    ax.set_ylabel("loss" if left else "")
    if scale == "log":
        ax.set_yscale("log", nonpositive="mask")
    if right:
        ax2 = ax.twinx()
        for k, n in enumerate(right):
            lines += ax2.plot(x, vals[n], color=f"C{k + len(left)}", linestyle="--", label=n)
        ax2.set_ylabel("accuracy")
    ax.legend(lines, [ln.get_label() for ln in lines], loc="best", fontsize=8)
    ax.set_title("1-D surface")
    return fig


def trajectory(surface: Any, quantity: str = "train_loss", *, ax=None, scale: str = "linear", levels: int = 20,
               path: np.ndarray | None = None):
    """A path (default surface.trajectory, (T, 2) coordinates on the plane) over contours of a quantity, from
    a circle (start) to a star (end), with the surface's points.  Returns the Figure."""
    _require_2d(surface, "a trajectory plot")
    path = getattr(surface, "trajectory", None) if path is None else path
    if path is None:
        raise ValueError("surface.trajectory: got None, expected a (T, 2) path (PCA directions of a trajectory "
                         "record one) or pass path=")
    path = _path(path)
    fig = contour(surface, quantity, ax=ax, scale=scale, levels=levels, marks=False)
    ax = fig.axes[0] if ax is None else ax
    _draw_marks(ax, path, getattr(surface, "points", None))
    ax.set_title(f"trajectory over {quantity}")
    return fig


def _np(name: str, a) -> np.ndarray:
    """A tensor or array as float64 numpy (no torch import needed here); a TypeError naming `name` else."""
    if hasattr(a, "detach"):
        a = a.detach().cpu().numpy()
    try:
        if a is None or isinstance(a, (str, bytes)):
            raise TypeError
        return np.asarray(a, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: got {type(a).__name__} {a!r:.60}, expected an array of numbers") from None


def spectral_density(grid, density=None, *, ax=None, scale: str = "log"):
    """The Hessian eigenvalue density from `lscape.probes.spectral_density`: pass its (grid, density) tuple or
    the two (G,) arrays.  scale="log" (the default, as the spectra span decades) uses a log density axis.
    Returns the Figure."""
    check_scale(scale)
    if density is None:
        if not (isinstance(grid, tuple) and len(grid) == 2):
            raise TypeError(f"density: got None with grid {type(grid).__name__}, expected the (G,) density, or "
                            "grid as the (grid, density) tuple of lscape.probes.spectral_density")
        grid, density = grid
    g, d = _np("grid", grid), _np("density", density)
    if g.ndim != 1 or g.shape != d.shape or g.size == 0:
        raise ValueError(f"grid, density: got shapes {g.shape} and {d.shape}, expected two equal (G,) arrays")
    for name, a in (("grid", g), ("density", d)):
        if not np.isfinite(a).all():
            raise ValueError(f"{name}: got non-finite values, expected finite numbers")
    fig, ax = _axes(ax)
    ax.plot(g, d, color="C0")
    if scale == "log":
        if not (d > 0).any():
            raise ValueError("scale='log': density has no positive value to draw")
        ax.set_yscale("log", nonpositive="mask")
        ax.set_ylim(max(d[d > 0].min(), d.max() * 1e-12), d.max() * 2)
    ax.set_xlabel("eigenvalue λ")
    ax.set_ylabel("density")
    ax.set_title("Hessian eigenvalue density (stochastic Lanczos quadrature)")
    return fig


def neb_profile(result: Any, *, ax=None, scale: str = "linear", bands: list[int] | None = None):
    """Energy against arc length along each NEB band of an `lscape.NEBResult` (images (B, n, D), energies
    (B, n)); each band's highest image (the saddle estimate) is marked.  bands: which to draw, default all.
    Returns the Figure."""
    check_scale(scale)
    if not (hasattr(result, "energies") and hasattr(result, "images")):
        raise TypeError(f"result: got {type(result).__name__} {result!r:.60}, expected an lscape.NEBResult "
                        "(images (B, n, D), energies (B, n))")
    E = _np("result.energies", result.energies)
    images = _np("result.images", result.images)
    if E.ndim == 1:
        E, images = E[None], images[None]
    if images.ndim != 3 or images.shape[:2] != E.shape:
        raise ValueError(f"result: got images {images.shape} and energies {E.shape}, expected (B, n, D) and (B, n)")
    seg = np.linalg.norm(np.diff(images, axis=1), axis=-1)   # the same as lscape.neb.arc_length
    s = np.concatenate([np.zeros((len(E), 1)), seg.cumsum(1)], axis=1)
    picked = range(len(E)) if bands is None else bands
    fig, ax = _axes(ax)
    for b in picked:
        if not 0 <= b < len(E):
            raise ValueError(f"bands: got {b}, expected indices in [0, {len(E)})")
        ax.plot(s[b], E[b], "o-", ms=3, color=f"C{b % 10}", label=f"band {b}" if len(E) > 1 else "band")
        k = int(np.nanargmax(E[b]))
        ax.plot(s[b, k], E[b, k], "*", ms=12, color=f"C{b % 10}")
    if scale == "log":
        ax.set_yscale("log", nonpositive="mask")
    ax.set_xlabel("arc length along the band")
    ax.set_ylabel("energy (loss)")
    ax.set_title("NEB energy profile (★ highest image)")
    if len(E) <= 10:
        ax.legend(fontsize=8)
    return fig


def intrinsic_dimension(result: Any, *, ax=None):
    """Score against d (log axis) of an lscape.IntrinsicDimension: each seed's runs as points, their mean
    as a line, the baseline (dashed) and threshold x baseline (dotted) as horizontal lines, and d_int
    (Li et al.'s reading) and its interpolation as vertical lines."""
    for name in ("dims", "scores", "baseline", "target", "d_int", "d_int_interpolated"):
        if not hasattr(result, name):
            raise TypeError(f"result: got {type(result).__name__}, expected an lscape.IntrinsicDimension "
                            f"(it has no {name!r})")
    fig, ax = _axes(ax)
    dims, scores = np.asarray(result.dims, dtype=np.float64), np.asarray(result.scores, dtype=np.float64)
    for s in range(scores.shape[1]):
        ax.plot(dims, scores[:, s], "o", ms=3, alpha=0.4, color="C0", label="seeds" if s == 0 else None)
    ax.plot(dims, scores.mean(axis=1), "-", color="C0", label="mean over seeds")
    ax.axhline(result.baseline, ls="--", color="0.3", lw=1, label=f"baseline {result.baseline:.3g}")
    ax.axhline(result.target, ls=":", color="C3", lw=1, label=f"{result.threshold:g} x baseline")
    if result.d_int is not None:
        ax.axvline(result.d_int, color="C3", lw=1, label=f"d_int = {result.d_int:,}")
        ax.axvline(result.d_int_interpolated, color="C3", lw=1, ls="--",
                   label=f"interpolated {result.d_int_interpolated:,.0f}")
    ax.set_xscale("log")
    ax.set_xlabel("subspace dimension d")
    ax.set_ylabel("score")
    ax.set_title(f"intrinsic dimension (D = {result.D:,})" if hasattr(result, "D") else "intrinsic dimension")
    ax.legend(fontsize="small")
    return fig


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=120)
    return path


def plot_all(surface: Any, out_dir: str | Path, *, quantities: list[str] | None = None,
             scale: str = "linear") -> list[Path]:
    """Draw the sensible set of PNGs for a surface into out_dir (created if needed) and return their paths:
    a 1-D surface gets one curve; a 2-D one gets contour, filled contour, heat map and 3-D surface of every
    quantity (default all), and the trajectory over the first loss if the surface has one."""
    check_scale(scale)
    surface_arg(surface)
    if not isinstance(out_dir, (str, os.PathLike)):
        raise TypeError(f"out_dir: got {type(out_dir).__name__} {out_dir!r}, expected a folder path")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = sorted(surface.values) if quantities is None else list(quantities)
    for n in names:
        quantity_values(surface, n)  # every name is checked before anything is drawn
    suffix = "_log" if scale == "log" else ""
    if surface.ndim == 1:
        return [_save(curve(surface, names, scale=scale), out / f"curve{suffix}.png")]
    paths = []
    for n in names:
        for kind, fn in (("contour", contour), ("filled_contour", filled_contour), ("heatmap", heatmap),
                         ("surface3d", surface3d)):
            paths.append(_save(fn(surface, n, scale=scale), out / f"{n}_{kind}{suffix}.png"))
    if getattr(surface, "trajectory", None) is not None:
        losses = [n for n in names if not _is_accuracy(n)] or names
        paths.append(_save(trajectory(surface, losses[0], scale=scale), out / f"{losses[0]}_trajectory{suffix}.png"))
    return paths


def interactive(surface: Any, quantity: str = "train_loss", *, log: bool = False,
                path: str | Path | None = None) -> str:
    """One self-contained HTML page of a surface (plotly.js embedded: it opens offline and fetches nothing), and
    written to `path` when given.  A 2-D surface: the 3-D surface (rotate, zoom) beside its contour on one colour
    scale, with the trajectory (lifted onto the 3-D surface by bilinear interpolation) and the points; a 1-D
    surface: the curve.  Hovering shows α, β and the value.  log=True draws log10 of the quantity, with the cells
    that are not positive masked as in the PNGs.  Needs plotly (pip install 'lscape[plot]').  Returns the HTML."""
    from ._interactive import page

    html = page(surface, quantity, log=log)
    if path is not None:
        Path(path).write_text(html, encoding="utf-8")
    return html
