"""The affine input-layer path (lscape._affine) equals plain evaluation, and stays off where it must."""
import lscape
import numpy as np
import pytest
import torch
from lscape import Landscape, _affine
from lscape._affine import input_layers
from lscape._flat import FlatLayout
from lscape.directions import random_directions
from lscape.probes import lines
from torch import nn

CE = nn.functional.cross_entropy


class _Normalised(nn.Module):
    """Input scaled by a parameter before the first layer: the affine trick must not apply."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(8))
        self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))

    def forward(self, x):
        return self.net(x * self.scale)


class _Twice(nn.Module):
    """One Linear applied twice (to the input, then to its own output): not affine, must not apply."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.out = nn.Linear(8, 3)

    def forward(self, x):
        return self.out(torch.tanh(self.fc(torch.tanh(self.fc(x)))))


class _Flattened(nn.Module):
    """A custom forward: the input reshaped, then a Linear (eligible), plus a second tower reading the
    input through a Conv1d (eligible too), and a skip of the raw input into the head."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 16)
        self.conv = nn.Conv1d(1, 2, 3, padding=1)
        self.head = nn.Linear(16 + 16 + 8, 3)

    def forward(self, x):
        a = torch.relu(self.fc(x.reshape(x.shape[0], -1)))
        b = torch.tanh(self.conv(x.reshape(x.shape[0], 1, -1))).flatten(1)
        return self.head(torch.cat([a, b, x.reshape(x.shape[0], -1)], 1))


@pytest.fixture(autouse=True)
def _cache_any_layer(monkeypatch):
    """These models' input layers are narrow (fan-in 8-9): cache them anyway, to test the trick itself."""
    monkeypatch.setattr(_affine, "MIN_FAN_IN_PER_TERM", 0)


def test_narrow_input_layers_are_left_to_the_plain_path(monkeypatch):
    monkeypatch.setattr(_affine, "MIN_FAN_IN_PER_TERM", 16)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 36, 3), nn.ReLU(), nn.Linear(3, 2))
    X = torch.randn(4, 3, 8, 8)
    layout = FlatLayout.of(model)
    assert input_layers(model, layout, X, terms=None) == ("0",)
    assert input_layers(model, layout, X, terms=1) == ("0",)  # fan-in 27 >= 16
    assert input_layers(model, layout, X, terms=3) == ()  # 27 < 48: the sum of 3 cached terms costs more


def _models():
    torch.manual_seed(0)
    return {
        "mlp": (nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 3)),
                (8,), ("0",)),
        "cnn-bn": (nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                                 nn.Linear(4 * 64, 3)), (1, 8, 8), ("0",)),
        "custom": (_Flattened(), (2, 4), ("fc", "conv")),
        "scaled-input": (_Normalised(), (8,), ()),
        "shared-layer": (_Twice(), (8,), ()),
        "reflect-padding": (nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, padding_mode="reflect"), nn.Flatten(),
                                          nn.Linear(2 * 64, 3)), (1, 8, 8), ()),
    }


def _data(shape, n=50, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g), torch.randint(0, 3, (n,), generator=g)


@pytest.mark.parametrize("name", list(_models()))
def test_detects_exactly_the_input_layers(name):
    model, shape, want = _models()[name]
    X, _ = _data(shape)
    assert input_layers(model.eval(), FlatLayout.of(model), X) == want


@pytest.mark.parametrize("name", list(_models()))
def test_surface_affine_equals_plain(name):
    model, shape, _ = _models()[name]
    model.eval()
    X, Y = _data(shape)
    d = random_directions(model, 2, norm="layer", ignore=None, seed=2)
    fast = lscape.surface(model, CE, (X, Y), test_data=_data(shape, 20, 3), directions=d, grid=5)
    plain = lscape.surface(model, CE, (X, Y), test_data=_data(shape, 20, 3), directions=d, grid=5, affine=False)
    for k in ("train_loss", "test_loss"):
        np.testing.assert_allclose(fast[k], plain[k], rtol=1e-5)
    np.testing.assert_array_equal(fast["train_acc"], plain["train_acc"])


def _plain_losses(L, origin, coeffs, dirs):
    """The block path of probes.lines, which never takes the affine route."""
    pts = (origin + coeffs @ dirs).to(L.dtype)
    return L.loss(pts)


@pytest.mark.parametrize("per_point", [False, True])
@pytest.mark.parametrize("name", list(_models()))
def test_lines_and_planes_equal_plain(name, per_point, monkeypatch):
    """interpolate and plane on a module landscape equal plain evaluation to 1e-5 relative in float32, on
    both of the landscape's paths (vmapped chunks, points one by one), streamed over two batches."""
    import lscape.landscape as landscape_mod

    monkeypatch.setattr(landscape_mod, "PER_POINT_WORK", 1 if per_point else 1 << 62)
    model, shape, want = _models()[name]
    model.eval()
    X, Y = _data(shape, 60)
    L = Landscape.from_module(model, CE, [(X[:35], Y[:35]), (X[35:], Y[35:])], chunk=7)
    assert L.per_point is per_point
    layout = FlatLayout.of(model)
    t0 = layout.flatten(model).double()
    d = torch.as_tensor(random_directions(model, 2, norm="layer", ignore=None, seed=4).vectors)
    alphas = torch.linspace(-0.5, 1.5, 23, dtype=torch.float64)
    got = lines.interpolate(L, t0, t0 + d[0], alphas)
    coeffs = torch.stack([1 - alphas, alphas], 1)
    ref = _plain_losses(L, torch.zeros_like(t0), coeffs, torch.stack([t0, t0 + d[0]]))
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    a, b, grid = lines.plane(L, t0, d[0], d[1], grid=(5, 4))
    A, B = torch.meshgrid(a, b, indexing="ij")
    ref = _plain_losses(L, t0, torch.stack([A.reshape(-1), B.reshape(-1)], 1), d).reshape(5, 4)
    torch.testing.assert_close(grid, ref, rtol=1e-5, atol=1e-6)


def test_the_affine_route_is_taken_and_skips_the_layer(monkeypatch):
    """On an MLP the first layer's own forward never runs per point: only its products are computed."""
    model, shape, _ = _models()["mlp"]
    X, Y = _data(shape)
    L = Landscape.from_module(model.eval(), CE, (X, Y))
    calls = []
    linear = nn.Linear.forward

    def counted(self, x):
        calls.append(self is model[0])
        return linear(self, x)

    monkeypatch.setattr(nn.Linear, "forward", counted)
    t0 = FlatLayout.of(model).flatten(model)
    got = lines.interpolate(L, t0, t0 * 0.5, torch.linspace(0, 1, 40))
    # the first layer ran once to find it and never again (its products are taken with F.linear);
    # the other two Linear layers ran at every point (40 points in 3 vmapped chunks, plus the probe pass)
    assert calls.count(True) == 1 and calls.count(False) == 2 * (3 + 1)
    assert torch.isfinite(got).all()


def test_bn_recompute_and_other_landscapes_take_the_plain_route():
    from lscape import _affine

    model, shape, _ = _models()["cnn-bn"]
    X, Y = _data(shape)
    L = Landscape.from_module(model, CE, (X, Y), bn="recompute")
    z = torch.zeros(1, L.dim, dtype=torch.float64)
    assert _affine.landscape_losses(L, z[0], torch.ones(1, 1, dtype=torch.float64), z) is None
    F = Landscape.from_function(lambda t: (t ** 2).sum(), dim=3)
    z = torch.zeros(1, 3, dtype=torch.float64)
    assert _affine.landscape_losses(F, z[0], torch.ones(1, 1, dtype=torch.float64), z) is None
