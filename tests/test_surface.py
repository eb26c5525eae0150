"""lscape.surface against a plain vector_to_parameters + model(X) loop."""
import importlib

import lscape
import numpy as np
import pytest
import torch
from lscape.directions import pca_directions, plane_through, random_directions
from torch import nn


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))


def _cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 3))


def _data(shape, n=60, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g), torch.randint(0, 3, (n,), generator=g)


def _batches(X, Y, bs=16):
    return [(X[i:i + bs], Y[i:i + bs]) for i in range(0, len(X), bs)]


def _reference(model, X, Y, theta, bn):
    m = __import__("copy").deepcopy(model)
    torch.nn.utils.vector_to_parameters(theta.float(), m.parameters())
    if bn == "recompute":
        torch.optim.swa_utils.update_bn(_batches(X, Y), m)
    m.eval()
    with torch.no_grad():
        out = m(X)
    return float(nn.functional.cross_entropy(out, Y)), float((out.argmax(1) == Y).double().mean())


@pytest.mark.parametrize("make,shape", [(_mlp, (8,)), (_cnn, (1, 8, 8))])
@pytest.mark.parametrize("bn", ["eval", "recompute"])
def test_surface_equals_plain_loop(make, shape, bn):
    model = make()
    X, Y = _data(shape)
    Xt, Yt = _data(shape, 30, seed=2)
    d = random_directions(model, 2, seed=3)
    s = lscape.surface(model, nn.functional.cross_entropy, _batches(X, Y), directions=d, grid=(3, 4),
                       test_data=(Xt, Yt), bn=bn)
    assert s.ndim == 2 and s["train_loss"].shape == (3, 4) and s.done.all()
    c = torch.nn.utils.parameters_to_vector(model.parameters()).double()
    u, v = (torch.as_tensor(a) for a in d.vectors)
    for i, a in enumerate(s.x):
        for j, b in enumerate(s.y):
            theta = c + a * u + b * v
            loss, acc = _reference(model, X, Y, theta, bn)
            np.testing.assert_allclose(s["train_loss"][i, j], loss, rtol=1e-5)
            assert s["train_acc"][i, j] == pytest.approx(acc)
            if bn == "eval":
                tl, ta = _reference(model, Xt, Yt, theta, bn)
                np.testing.assert_allclose(s["test_loss"][i, j], tl, rtol=1e-5)


def test_custom_metric_and_1d():
    model = _mlp()
    X, Y = _data((8,))
    d = random_directions(model, 1, seed=0)
    s = lscape.surface(model, nn.functional.cross_entropy, (X, Y), directions=d, grid=5,
                       metrics={"nll2": lambda o, t: 2 * nn.functional.cross_entropy(o, t)})
    assert s.ndim == 1 and s.y is None and s["train_nll2"].shape == (5,)
    np.testing.assert_allclose(s["train_nll2"], 2 * s["train_loss"], rtol=1e-6)


def test_pca_equals_numpy_svd():
    model = _mlp()
    D = sum(p.numel() for p in model.parameters())
    rng = np.random.default_rng(0)
    traj = rng.normal(size=(6, D))
    d = pca_directions(list(traj), model=model)
    M = traj[:-1] - traj[-1]
    _, sv, vt = np.linalg.svd(M, full_matrices=False)
    for k in range(2):
        assert abs(abs(d.vectors[k] @ vt[k]) - 1) < 1e-10
    np.testing.assert_allclose(d.info["explained_variance_ratio"], (sv ** 2 / (sv ** 2).sum())[:2])
    np.testing.assert_allclose(d.trajectory, (traj - traj[-1]) @ d.vectors.T)


@pytest.mark.parametrize("ortho", [False, True])
def test_three_model_plane_passes_through_all_three(ortho):
    ms = [_mlp() for _ in range(3)]
    for k, m in enumerate(ms):
        torch.manual_seed(k + 10)
        for p in m.parameters():
            p.data.normal_()
    d = plane_through(*ms, model=ms[0], orthonormal=ortho)
    thetas = [torch.nn.utils.parameters_to_vector(m.parameters()).detach().double().numpy() for m in ms]
    assert d.trajectory is None
    for t, (a, b) in zip(thetas, d.points, strict=True):
        np.testing.assert_allclose(d.center + a * d.vectors[0] + b * d.vectors[1], t, atol=1e-9)
    if not ortho:
        np.testing.assert_allclose(d.points, [[0, 0], [1, 0], [0, 1]], atol=1e-9)


class _Counting(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = _mlp()
        # a hook, not a counter in forward: lscape._modeleval traces forward once (and keeps a hooked model plain)
        self.register_forward_pre_hook(lambda *_: setattr(type(self), "total", type(self).total + 1))

    def forward(self, x):
        return self.net(x)


def test_resume_computes_only_missing_cells(tmp_path):
    _Counting.total = 0
    model = _Counting()
    model.eval()
    X, Y = _data((8,))
    d = random_directions(model, 2, seed=0)
    f = str(tmp_path / "s.h5")
    # affine=False: every forward pass is then one point (the affine path adds a capture pass per row)
    full = lscape.surface(model, nn.functional.cross_entropy, (X, Y), directions=d, grid=3, file=f, affine=False)
    assert _Counting.total == 1 + 9  # 1: the argument check's forward pass on the first batch
    import h5py
    with h5py.File(f, "r+") as h:
        assert h["xcoordinates"].shape == (3,) and h["ycoordinates"].shape == (3,)
        assert h["train_loss"].shape == (3, 3) and h["train_acc"].shape == (3, 3)
        h["done"][1, 2] = False
        h["done"][0, 0] = False
        tl = h["train_loss"][()]
        tl[1, 2] = tl[0, 0] = -1
        h["train_loss"][...] = tl
    _Counting.total = 0
    again = lscape.surface(model, nn.functional.cross_entropy, (X, Y), directions=d, grid=3, file=f, affine=False)
    assert _Counting.total == 1 + 2
    np.testing.assert_allclose(again["train_loss"], full["train_loss"])
    loaded = lscape.Surface.load(f)
    assert loaded.done.all() and loaded.info["kind"] == "random"


def test_npz_roundtrip_marks_missing_as_nan(tmp_path):
    s = lscape.Surface(np.linspace(-1, 1, 3), np.linspace(-1, 1, 2), {"train_loss": np.ones((3, 2))},
                       np.array([[True, False]] * 3), np.zeros((2, 5)), np.zeros(5), {"kind": "given"})
    f = str(tmp_path / "s.npz")
    s.save(f)
    t = lscape.Surface.load(f)
    assert np.isnan(t["train_loss"][:, 1]).all() and (t["train_loss"][:, 0] == 1).all()


def test_to_vtp_writes_the_grid_the_capped_log_values_and_one_quad_per_cell(tmp_path):
    """Read the .vtp back as XML: point count, coordinates, log(min(z, zmax) + 0.1), quads and offsets."""
    import xml.etree.ElementTree as ET

    x, y = np.linspace(-1, 1, 4), np.linspace(0, 2, 3)  # nx != ny catches a transposition
    z = np.add.outer(x ** 2, y) + 0.5
    z[3, 2] = 50.0  # above zmax: capped
    s = lscape.Surface(x, y, {"train_loss": z}, np.ones(z.shape, bool), np.zeros((2, 5)), np.zeros(5), {})
    s.to_vtp(str(tmp_path / "s.vtp"), log=True, zmax=10)
    root = ET.parse(tmp_path / "s.vtp").getroot()
    assert root.get("type") == "PolyData"
    piece = root.find("PolyData/Piece")
    assert (int(piece.get("NumberOfPoints")), int(piece.get("NumberOfPolys"))) == (4 * 3, 3 * 2)

    def array(path, name=None):
        (el,) = [e for e in piece.findall(path) if name is None or e.get("Name") == name]
        return np.array(el.text.split(), dtype=float)

    pts = array("Points/DataArray").reshape(-1, 3)
    X, Y = np.meshgrid(x, y, indexing="ij")
    want_z = np.log(np.minimum(z, 10.0) + 0.1)
    np.testing.assert_allclose(pts, np.c_[X.ravel(), Y.ravel(), want_z.ravel()], rtol=1e-7)
    np.testing.assert_allclose(array("PointData/DataArray", "loss"), want_z.ravel(), rtol=1e-7)
    quads = array("Polys/DataArray", "connectivity").astype(int).reshape(-1, 4)
    np.testing.assert_array_equal(array("Polys/DataArray", "offsets"), 4 * np.arange(1, 7))
    for q in quads:  # each quad's corners are one grid cell: two x values, two y values, 4 distinct points
        corners = pts[q, :2]
        assert len({tuple(c) for c in corners}) == 4
        assert len(set(corners[:, 0])) == 2 and len(set(corners[:, 1])) == 2
    cells = {(round(min(pts[q, 0]), 6), round(min(pts[q, 1]), 6)) for q in quads}  # (written with 8 digits)
    assert len(quads) == 6 and cells == {(round(a, 6), round(b, 6)) for a in x[:-1] for b in y[:-1]}


def test_bad_inputs_are_named():
    model = _mlp()
    X, Y = _data((8,))
    f = nn.functional.cross_entropy
    d = random_directions(model, 2)
    with pytest.raises(ValueError, match="directions"):
        lscape.surface(model, f, (X, Y), directions=np.zeros((2, 3)), grid=3)
    with pytest.raises(ValueError, match="grid"):
        lscape.surface(model, f, (X, Y), directions=d, grid=1)
    with pytest.raises(ValueError, match="data: yielded no batch"):
        lscape.surface(model, f, [], directions=d, grid=2)
    with pytest.raises(ValueError, match="bn"):
        lscape.surface(model, f, (X, Y), directions=d, grid=2, bn="train")
    with pytest.raises(TypeError, match="metrics"):
        lscape.surface(model, f, (X, Y), directions=d, grid=2, metrics={"x": 3})


@pytest.mark.parametrize("make,shape", [(_mlp, (8,)), (_cnn, (1, 8, 8))])
def test_train_and_test_pairs_in_one_pass_equal_the_plain_loop(make, shape, monkeypatch):
    """Train and test given as one pair each run as one forward pass per point (surface._joined); the
    values are those of two separate plain passes."""
    surface_mod = importlib.import_module("lscape.surface")  # the module: lscape.surface is the function

    joins = []
    real = surface_mod._joined
    monkeypatch.setattr(surface_mod, "_joined", lambda sh: joins.append(real(sh)) or joins[-1])
    model = make().eval()
    X, Y = _data(shape)
    Xt, Yt = _data(shape, 30, seed=2)
    d = random_directions(model, 2, seed=3)
    s = lscape.surface(model, nn.functional.cross_entropy, (X, Y), directions=d, grid=3, test_data=(Xt, Yt),
                       affine=False)
    assert joins and all(j is not None and j[0].shape[0] == 90 and j[1] == 60 for j in joins)
    c = torch.nn.utils.parameters_to_vector(model.parameters()).double()
    u, v = (torch.as_tensor(a) for a in d.vectors)
    for i, a in enumerate(s.x):
        for j, b in enumerate(s.y):
            theta = c + a * u + b * v
            for (XX, YY), k in (((X, Y), "train"), ((Xt, Yt), "test")):
                loss, acc = _reference(model, XX, YY, theta, "eval")
                np.testing.assert_allclose(s[f"{k}_loss"][i, j], loss, rtol=1e-5)
                assert s[f"{k}_acc"][i, j] == pytest.approx(acc)


def test_train_and_test_of_different_shapes_are_not_joined():
    surface_mod = importlib.import_module("lscape.surface")  # the module: lscape.surface is the function

    model = _mlp()
    X, Y = _data((8,))
    sh = surface_mod._Shared(model, None, {}, surface_mod._batches("data", (X, Y), None),
                             surface_mod._batches("test_data", (X[:, :4], Y), None), (), "eval",
                             None, None, None, None, None)
    assert surface_mod._joined(sh) is None
    sh.test = surface_mod._batches("test_data", _batches(X, Y), None)  # several batches: streamed as given
    assert surface_mod._joined(sh) is None
    sh.test, sh.bn = surface_mod._batches("test_data", (X, Y), None), "recompute"
    assert surface_mod._joined(sh) is None
