"""The interactive page of a loss surface (plotly, from the `plot` extra): lscape.plot.interactive's figure.

A 2-D surface is drawn twice, side by side: a 3-D surface one can rotate and zoom, and its contour, both
coloured on one scale, with the training trajectory (PCA directions) and the models the plane passes through
(plane_through) on each, and every value on hover.  A 1-D surface is one curve.  The page carries plotly's
JavaScript itself, so it opens offline and fetches nothing.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from ._plotvalues import quantity_values, scaled

_HEIGHT = 540  # px; the width follows the window (responsive)
_MARK = "crimson"
_LIFT = 0.02  # of the colour range: how far above the 3-D surface its trajectory and points are drawn
_COLORS = "Viridis"  # as the PNGs
_KINDS = {"pca": "PCA plane of a training run", "plane": "plane through three models", "random": "random directions",
          "given": "given directions"}


def plotly():
    """plotly.graph_objects and make_subplots, or an ImportError that names the extra to install."""
    try:
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots
    except ImportError as e:
        raise ImportError("lscape.plot.interactive needs plotly: pip install 'lscape[plot]'") from e
    return go, make_subplots


def _bilinear(x: np.ndarray, y: np.ndarray, z: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """z (nx, ny) on the grid at the points (m, 2), interpolated bilinearly; NaN outside the grid."""
    out = np.full(len(pts), np.nan)
    if len(x) < 2 or len(y) < 2 or np.any(np.diff(x) <= 0) or np.any(np.diff(y) <= 0):
        return out  # searchsorted needs increasing axes; a grid given in another order gets no heights
    i = np.clip(np.searchsorted(x, pts[:, 0]) - 1, 0, len(x) - 2)
    j = np.clip(np.searchsorted(y, pts[:, 1]) - 1, 0, len(y) - 2)
    inside = (pts[:, 0] >= x[0]) & (pts[:, 0] <= x[-1]) & (pts[:, 1] >= y[0]) & (pts[:, 1] <= y[-1])
    tx = (pts[:, 0] - x[i]) / (x[i + 1] - x[i])
    ty = (pts[:, 1] - y[j]) / (y[j + 1] - y[j])
    v = (z[i, j] * (1 - tx) * (1 - ty) + z[i + 1, j] * tx * (1 - ty) + z[i, j + 1] * (1 - tx) * ty
         + z[i + 1, j + 1] * tx * ty)
    out[inside] = v[inside]
    return out


def _marks(surface: Any) -> list[tuple[str, np.ndarray, list[str]]]:
    """[(name, coordinates (m, 2), hover labels)] of the trajectory and the points the surface carries."""
    out = []
    traj = getattr(surface, "trajectory", None)
    if traj is not None and len(traj):
        files = (getattr(surface, "info", None) or {}).get("checkpoints")
        labels = [os.path.basename(str(f)) for f in files] if files and len(files) == len(traj) else \
            [f"checkpoint {k}" for k in range(len(traj))]
        out.append(("trajectory", np.asarray(traj, dtype=np.float64), labels))
    pts = getattr(surface, "points", None)
    if pts is not None and len(pts):
        out.append(("points", np.asarray(pts, dtype=np.float64), [f"θ{k}" for k in range(len(pts))]))
    return out


def _hover(quantity: str, log: bool) -> str:
    value = f"{quantity}=%{{customdata:.5g}}" + (" (log10 %{z:.4g})" if log else "")
    return "α=%{x:.4g}<br>β=%{y:.4g}<br>" + value + "<extra></extra>"


def figure(surface: Any, quantity: str = "train_loss", *, log: bool = False):
    """The plotly Figure of lscape.plot.interactive."""
    go, make_subplots = plotly()
    raw = quantity_values(surface, quantity)
    z, label = scaled(raw, "log" if log else "linear", quantity)
    z = z.filled(np.nan)
    raw = np.where(np.isnan(z), np.nan, raw)
    x = np.asarray(surface.x, dtype=np.float64)
    kind = (getattr(surface, "info", None) or {}).get("kind")
    title = quantity + (f" · {_KINDS.get(kind, kind)}" if kind else "")
    if surface.ndim == 1:
        fig = go.Figure(go.Scatter(x=x, y=z, customdata=raw, mode="lines+markers", name=quantity,
                                   hovertemplate=f"α=%{{x:.4g}}<br>{quantity}=%{{customdata:.5g}}<extra></extra>"))
        fig.update_layout(title=f"{quantity} along the direction", xaxis_title="α", yaxis_title=label,
                          height=_HEIGHT, template="plotly_white")
        return fig
    y = np.asarray(surface.y, dtype=np.float64)
    fig = make_subplots(rows=1, cols=2, specs=[[{"type": "scene"}, {"type": "xy"}]], column_widths=[0.55, 0.45],
                        horizontal_spacing=0.06, subplot_titles=("3-D surface", "contour"))
    # plotly wants z[row = y][col = x]; lscape's values are [i = x][j = y].  One colour scale, one colour bar
    # (a shared coloraxis is refused for contours: plotly.js warns and drops it)
    lo, hi = float(np.nanmin(z)), float(np.nanmax(z))
    fig.add_trace(go.Surface(x=x, y=y, z=z.T, customdata=raw.T, colorscale=_COLORS, cmin=lo, cmax=hi, showscale=False,
                             name=quantity, hovertemplate=_hover(quantity, log)), 1, 1)
    fig.add_trace(go.Contour(x=x, y=y, z=z.T, customdata=raw.T, colorscale=_COLORS, zmin=lo, zmax=hi, name=quantity,
                             ncontours=25, line_width=0.5, colorbar={"title": {"text": label}},
                             hovertemplate=_hover(quantity, log)), 1, 2)
    for name, pts, labels in _marks(surface):
        # drawn a little above the surface, so that the surface does not swallow the line where they meet
        on_surface = _bilinear(x, y, z, pts) + _LIFT * (hi - lo)
        line = name == "trajectory"
        mode = "lines+markers" if line else "markers+text"
        marker = {"size": 4 if line else 7, "color": _MARK, "symbol": "circle" if line else "diamond"}
        fig.add_trace(go.Scatter3d(x=pts[:, 0], y=pts[:, 1], z=on_surface, mode=mode, marker=marker, text=labels,
                                   line={"color": _MARK, "width": 4}, name=name, legendgroup=name,
                                   hovertemplate="%{text}<br>α=%{x:.4g}<br>β=%{y:.4g}<extra>" + name + "</extra>"),
                      1, 1)
        fig.add_trace(go.Scatter(x=pts[:, 0], y=pts[:, 1], mode=mode, marker=marker, text=labels,
                                 textposition="top center", line={"color": _MARK, "width": 2}, name=name,
                                 legendgroup=name, showlegend=False,
                                 hovertemplate="%{text}<br>α=%{x:.4g}<br>β=%{y:.4g}<extra>" + name + "</extra>"),
                      1, 2)
        if line:  # where training ended: the centre of a PCA plane
            fig.add_trace(go.Scatter(x=pts[-1:, 0], y=pts[-1:, 1], mode="markers", name="end", hoverinfo="skip",
                                     marker={"size": 13, "color": _MARK, "symbol": "star"}), 1, 2)
    fig.update_layout(title=title, height=_HEIGHT, template="plotly_white", margin={"l": 10, "r": 10, "t": 80, "b": 40},
                      # the camera a little farther than plotly's default, so the rims stay in view
                      scene={"xaxis_title": "α", "yaxis_title": "β", "zaxis_title": label,
                             "camera": {"eye": {"x": 1.6, "y": 1.6, "z": 1.25}}},
                      legend={"orientation": "h", "x": 0.0, "y": -0.02})
    fig.update_xaxes(title_text="α (direction 1)", row=1, col=2)
    fig.update_yaxes(title_text="β (direction 2)", row=1, col=2)
    return fig


_CONFIG = {"displaylogo": False, "responsive": True}


def page(surface: Any, quantity: str = "train_loss", *, log: bool = False) -> str:
    """One self-contained HTML page (plotly.js embedded; a fixed element id, so the same surface gives the
    same file)."""
    return figure(surface, quantity, log=log).to_html(include_plotlyjs=True, full_html=True, config=_CONFIG,
                                                      div_id="lscape-surface")


def fragment(surface: Any) -> str | None:
    """A notebook cell's HTML of the surface's train_loss (else its first loss; plotly.js embedded), or None
    without plotly or with nothing computed yet, so that the notebook shows the text repr instead."""
    names = sorted(surface.values)
    losses = [n for n in names if "loss" in n] or names
    if not losses:
        return None
    quantity = "train_loss" if "train_loss" in names else losses[0]
    if not np.isfinite(np.asarray(surface.values[quantity], dtype=np.float64)).any():
        return None
    try:
        fig = figure(surface, quantity)
    except ImportError:
        return None
    return fig.to_html(include_plotlyjs=True, full_html=False, config=_CONFIG)
