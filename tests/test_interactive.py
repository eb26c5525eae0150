"""lscape.plot.interactive: one self-contained HTML page (plotly), `lscape plot --html`, the notebook display,
and the page opened in headless Chromium with the network refused (tests/browser.py)."""
from __future__ import annotations

import re
import sys

import numpy as np
import pytest

pytest.importorskip("plotly", reason="lscape.plot.interactive needs plotly (the `plot` extra)")

from browser import chromium, open_page  # noqa: E402
from conftest import missing_dependency  # noqa: E402
from lscape import Surface, plot  # noqa: E402
from lscape._interactive import _LIFT, figure  # noqa: E402
from lscape.cli import main  # noqa: E402


def surface_2d(kind: str = "pca") -> Surface:
    x, y = np.linspace(-3, 1, 25), np.linspace(-1.5, 1.5, 19)   # nx != ny catches a transposition
    X, Y = np.meshgrid(x, y, indexing="ij")
    loss = 0.2 + 0.3 * (X + 0.2) ** 2 + Y**2 + 0.2 * np.sin(2 * X) * np.cos(3 * Y)
    vals = {"train_loss": loss, "train_acc": np.exp(-loss)}
    t = np.linspace(0, 1, 9)
    traj = np.stack([-2.5 * (1 - t), (1 - t) ** 2 - 0.1 * np.sin(np.pi * t)], 1)   # from node (-2.5, 1) to (0, 0)
    info = {"kind": kind, "checkpoints": [f"ckpt/epoch_{k}.pt" for k in range(9)]}
    s = Surface(x, y, vals, np.ones(loss.shape, bool), np.zeros((2, 5)), np.zeros(5), info,
                traj if kind == "pca" else None)
    if kind == "plane":
        s.points = np.array([[0.0, 0.0], [-2.0, 0.0], [0.0, 1.0]])
    return s


def traces(fig) -> dict[str, list]:
    out: dict[str, list] = {}
    for t in fig.data:
        out.setdefault(t.type, []).append(t)
    return out


def test_the_page_is_self_contained(tmp_path):
    s = surface_2d()
    html = plot.interactive(s, path=tmp_path / "p.html")
    assert (tmp_path / "p.html").read_text(encoding="utf-8") == html
    assert "<html>" in html[:100] and len(html) > 1_000_000              # plotly.js itself is in the page
    assert not re.search(r"<script[^>]+src=|<link[^>]+href=\"?https?:", html)  # and nothing comes from elsewhere
    assert plot.interactive(s) == html                                    # a fixed div id: the same page twice


def test_the_figure_holds_surface_contour_marks_and_hover():
    s = surface_2d()
    t = traces(figure(s))
    surf, cont = t["surface"][0], t["contour"][0]
    # plotly's z is [row = y][column = x]
    np.testing.assert_allclose(np.asarray(surf.z), s.values["train_loss"].T)
    np.testing.assert_allclose(np.asarray(cont.z), s.values["train_loss"].T)
    assert "train_loss=%{customdata" in surf.hovertemplate and "α=%{x" in cont.hovertemplate
    (line3d,) = t["scatter3d"]
    np.testing.assert_allclose(np.c_[line3d.x, line3d.y], s.trajectory)
    # the trajectory lies on the surface, lifted by a fixed share of its range: at the grid's nodes, the values
    at_nodes = [k for k, (a, b) in enumerate(s.trajectory) if np.isclose(a, s.x).any() and np.isclose(b, s.y).any()]
    z = s.values["train_loss"]
    lift = _LIFT * (z.max() - z.min())
    for k in at_nodes:
        i, j = np.argmin(abs(s.x - s.trajectory[k, 0])), np.argmin(abs(s.y - s.trajectory[k, 1]))
        assert line3d.z[k] == pytest.approx(z[i, j] + lift)
    assert at_nodes == [0, 8] and np.isfinite(line3d.z).all()
    assert list(line3d.text) == [f"epoch_{k}.pt" for k in range(9)]
    assert [tr.name for tr in t["scatter"]] == ["trajectory", "end"]
    p = traces(figure(surface_2d("plane")))
    assert list(p["scatter3d"][0].text) == ["θ0", "θ1", "θ2"] and "plane through three models" in \
        figure(surface_2d("plane")).layout.title.text


def test_log_masks_cells_that_are_not_positive():
    s = surface_2d()
    s.values["train_loss"][:3, :4] = 0.0
    s.values["train_loss"][5, 5] = -1.0
    surf = traces(figure(s, log=True))["surface"][0]
    z = np.asarray(surf.z, dtype=np.float64).T
    bad = s.values["train_loss"] <= 0
    assert np.isnan(z[bad]).all() and np.isfinite(z[~bad]).all()
    np.testing.assert_allclose(z[~bad], np.log10(s.values["train_loss"][~bad]))
    s.values["train_loss"][:] = -1.0
    with pytest.raises(ValueError, match="positive"):
        figure(s, log=True)


def test_a_1d_surface_is_a_curve_and_unknown_quantities_are_named():
    x = np.linspace(-1, 1, 11)
    s = Surface(x, None, {"train_loss": x**2}, np.ones(11, bool), np.zeros((1, 5)), np.zeros(5))
    (curve,) = figure(s).data
    assert curve.type == "scatter"
    np.testing.assert_allclose(curve.y, x**2)
    with pytest.raises((KeyError, ValueError), match="test_loss"):
        figure(s, "test_loss")


def test_notebook_display():
    s = surface_2d()
    html = s._repr_html_()
    assert html is not None and "plotly" in html and "<html>" not in html
    empty = Surface(s.x, s.y, {"train_loss": np.full((25, 19), np.nan)}, np.zeros((25, 19), bool), s.directions,
                    s.center)
    assert empty._repr_html_() is None    # nothing computed: the text repr instead


def test_without_plotly_the_errors_name_the_install(monkeypatch, tmp_path, capsys):
    s = surface_2d()
    s.save(tmp_path / "s.npz")
    monkeypatch.setitem(sys.modules, "plotly", None)   # import plotly now raises ImportError
    monkeypatch.setitem(sys.modules, "plotly.graph_objects", None)
    with pytest.raises(ImportError, match=r"pip install 'lscape\[plot\]'"):
        plot.interactive(s)
    assert s._repr_html_() is None
    assert main(["plot", str(tmp_path / "s.npz"), "--html", "--out", str(tmp_path / "pages")]) == 2
    assert "--html needs plotly: pip install 'lscape[plot]'" in capsys.readouterr().err
    assert not (tmp_path / "pages").exists()


def test_cli_writes_a_page_per_quantity(tmp_path, capsys):
    s = surface_2d()
    s.save(tmp_path / "s.npz")
    out = tmp_path / "pages"
    assert main(["plot", str(tmp_path / "s.npz"), "--html", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["train_acc.html", "train_loss.html"]
    assert main(["plot", str(tmp_path / "s.npz"), "--html", "--out", str(out), "--quantity", "train_loss",
                 "--log"]) == 0
    assert (out / "train_loss_log.html").stat().st_size > 1_000_000
    assert main(["plot", str(tmp_path / "s.npz"), "--html", "--out", str(out), "--quantity", "nope"]) == 2
    assert "--quantity: got ['nope']" in capsys.readouterr().err


# ---- in a real browser -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser():
    exe = chromium()
    if exe is None:
        missing_dependency("chromium", "no Chromium on PATH (Debian: apt-get install chromium; .ci/run installs "
                                       "it), so the page cannot be opened in a browser here")
    return exe


def coloured(png, box) -> tuple[float, int]:
    """(share of the box's pixels that are saturated colour, number of distinct such colours at 5 bits)."""
    from PIL import Image

    a = np.asarray(Image.open(png).convert("RGB")).astype(np.int16)
    x, y, w, h = (int(round(v)) for v in box)
    px = a[y:y + h, x:x + w].reshape(-1, 3)
    sat = (px.max(1) - px.min(1)) > 40        # viridis; not the white ground, grey grid lines or black text
    return float(sat.mean()), len(np.unique(px[sat] // 8, axis=0))


def test_the_page_draws_in_headless_chromium_offline(browser, tmp_path):
    s = surface_2d()
    s.done[-4:, -3:] = False        # a run cut off before its last cells: holes in the surface, not errors
    s.save(tmp_path / "s.npz")
    assert main(["plot", str(tmp_path / "s.npz"), "--html", "--out", str(tmp_path), "--quantity",
                 "train_loss"]) == 0
    shot = open_page(tmp_path / "train_loss.html", tmp_path / "shot.png", width=1100, height=620)
    assert shot.errors == [] and shot.requests == []
    assert shot.drawn and shot.scene is not None and shot.area is not None
    share, colours = coloured(shot.png, shot.scene)      # the WebGL 3-D surface
    assert share > 0.05 and colours > 100, (share, colours)
    share, colours = coloured(shot.png, shot.area)       # the contour
    assert share > 0.6 and colours > 20, (share, colours)


def test_the_browser_check_fails_a_page_that_needs_the_network(browser, tmp_path):
    # the same figure with plotly.js from its CDN: refused, so nothing is drawn and the failure is seen
    figure(surface_2d()).write_html(tmp_path / "cdn.html", include_plotlyjs="cdn")
    w, h = 1100, 620
    shot = open_page(tmp_path / "cdn.html", tmp_path / "cdn.png", width=w, height=h, wait=2.0)
    scripts = [u for u in shot.requests if re.fullmatch(r"https://cdn\.plot\.ly/plotly-[\w.-]+\.js", u)]
    assert len(scripts) == 1, shot.requests
    # the failed load of that very script is reported, not just some error (its absence also throws
    # "Plotly is not defined", which alone would not say why)
    assert any(e.startswith("network: ") and "ERR_" in e and scripts[0] in e for e in shot.errors), shot.errors
    assert not shot.drawn and shot.scene is None and shot.area is None
    share, colours = coloured(shot.png, (0, 0, w, h))  # the whole viewport: nothing drawn (the drawn
    assert share < 1e-3 and colours <= 1, (share, colours)  # page's viewport reads ~0.3, over 1000 colours
