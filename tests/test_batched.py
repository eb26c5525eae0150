"""lscape._batched.BatchedForward (many parameter points in one forward pass) against the plain module at
each point, its fallbacks, and lscape.surface's use of it."""
import importlib
import warnings

import lscape
import numpy as np
import pytest
import torch
from lscape._batched import BatchedForward, Unsupported
from lscape._flat import FlatLayout
from lscape._modeleval import FastForward
from lscape.directions import random_directions
from torch import nn

S = importlib.import_module("lscape.surface")  # the module: lscape.surface is the function


def _stats(m: nn.Module) -> nn.Module:
    """Non-trivial running statistics, eval mode: a BatchNorm fold that ignored them would show."""
    g = torch.Generator().manual_seed(5)
    for mod in m.modules():
        if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
            mod.running_mean.copy_(torch.randn(mod.num_features, generator=g))
            mod.running_var.copy_(torch.rand(mod.num_features, generator=g) + 0.5)
    return m.eval()


MODELS = {
    "cnn-bn": (lambda: nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
                                     nn.Linear(8 * 36, 10)), (1, 8, 8)),
    "cnn-no-bn-padded-strided-grouped": (lambda: nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, stride=2, groups=2, bias=False),
        nn.BatchNorm2d(6), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 3 * 3, 5)), (3, 8, 8)),
    "mlp-bn": (lambda: nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.5),
                                     nn.Linear(16, 3)), (8,)),
    "conv1d": (lambda: nn.Sequential(nn.Conv1d(2, 4, 3), nn.ReLU(), nn.Conv1d(4, 4, 3, bias=False),
                                     nn.BatchNorm1d(4), nn.Flatten(), nn.Linear(4 * 6, 3)), (2, 10)),
    "conv3d": (lambda: nn.Sequential(nn.Conv3d(1, 2, 2), nn.BatchNorm3d(2), nn.ReLU(), nn.Flatten(),
                                     nn.Linear(2 * 27, 3)), (1, 4, 4, 4)),
}


class _Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.conv2 = nn.Conv2d(3, 3, 3, padding=1)
        self.fc = nn.Linear(3 * 16, 4)

    def forward(self, x):
        h = torch.relu(self.bn(self.conv(x)))
        h = torch.relu(self.conv2(h) + h)  # a residual sum of two batched activations
        return self.fc(torch.flatten(h, 1))


MODELS["residual"] = (_Residual, (2, 4, 4))


def _points(m: nn.Module, k: int = 5) -> torch.Tensor:
    c = FlatLayout.of(m).flatten(m)
    g = torch.Generator().manual_seed(1)
    return c + 0.3 * torch.randn(k, c.numel(), generator=g)


@pytest.mark.parametrize("name", list(MODELS))
def test_batched_points_equal_the_plain_module_at_each_point(name):
    make, shape = MODELS[name]
    torch.manual_seed(0)
    m = _stats(make())
    layout = FlatLayout.of(m)
    X = torch.randn(20, *shape, generator=torch.Generator().manual_seed(2))
    bf = BatchedForward(FastForward(m))
    assert bf.supported, bf.reason
    thetas = _points(m)
    with torch.no_grad():
        got = bf(layout.split(thetas), X)
        for _ in range(2):  # a second call reuses the cached patches and output buffers
            again = bf(layout.split(thetas), X)
        for b, theta in enumerate(thetas):
            plain = torch.func.functional_call(m, layout.split(theta), (X,))
            np.testing.assert_allclose(got[b].numpy(), plain.numpy(), rtol=1e-5, atol=1e-5 * float(plain.abs().max()))
    assert torch.equal(got, again)


def test_an_output_is_never_overwritten_by_the_next_call():
    """A model whose output is a view of a reused conv buffer (Conv -> Flatten): the first call's result
    stays as it was after a second call at other points."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 3, 3), nn.Flatten()).eval()
    layout = FlatLayout.of(m)
    X = torch.randn(6, 1, 5, 5)
    bf = BatchedForward(FastForward(m))
    th = _points(m, 3)
    with torch.no_grad():
        first = bf(layout.split(th), X)
        kept = first.clone()
        bf(layout.split(th + 1.0), X)
    assert torch.equal(first, kept)


class _Hooked(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(x) if x.sum() > 0 else -self.fc(x)  # data-dependent: fx cannot trace it


@pytest.mark.parametrize("case", ["pooling", "bn-after-relu", "untraceable", "hooks", "bn-train"])
def test_graphs_it_cannot_run_are_refused_with_a_reason(case):
    torch.manual_seed(0)
    if case == "pooling":
        m = nn.Sequential(nn.Conv2d(1, 2, 3), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(2 * 9, 3))
    elif case == "bn-after-relu":
        m = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.BatchNorm1d(5), nn.Linear(5, 3))
    elif case == "untraceable":
        m = _Hooked()
    else:
        m = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 3))
        if case == "hooks":
            m[0].register_forward_hook(lambda *a: None)
    m.eval()
    bf = BatchedForward(FastForward(m))
    if case == "bn-train":
        assert bf.supported
        m[1].train()  # its BatchNorm leaves eval mode after the fold was built
    assert not bf.supported
    assert case == "bn-train" or bf.reason
    with pytest.raises(Unsupported):
        bf(FlatLayout.of(m).split(_points(m, 2)), torch.randn(3, 4) if case != "pooling" else torch.randn(3, 1, 8, 8))


def _reference(m, theta, X, Y):
    mm = __import__("copy").deepcopy(m)
    torch.nn.utils.vector_to_parameters(theta.float(), mm.parameters())
    with torch.no_grad():
        out = mm.eval()(X)
    return float(nn.functional.cross_entropy(out, Y)), float((out.argmax(1) == Y).double().mean()), out


@pytest.mark.parametrize("name", ["cnn-bn", "residual", "pooling"])
def test_surface_batches_points_where_it_can_and_equals_the_plain_loop(name, monkeypatch):
    """lscape.surface runs a row's points several per call (BatchedForward) where the model allows and one
    by one where it does not (a MaxPool); both equal the plain loop, and so does a metric vmap refuses (it
    returns a float: evaluated point by point)."""
    calls = []
    real = S._points
    monkeypatch.setattr(S, "_points", lambda st, th, sh: calls.append(th.shape[0]) or real(st, th, sh))
    torch.manual_seed(0)
    if name == "pooling":
        m, shape = nn.Sequential(nn.Conv2d(1, 2, 3), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(2 * 9, 3)), (1, 8, 8)
    else:
        make, shape = MODELS[name]
        m = make()
    m = _stats(m)
    g = torch.Generator().manual_seed(3)
    X, Xt = torch.randn(40, *shape, generator=g), torch.randn(15, *shape, generator=g)
    classes = m(X[:1]).shape[1]
    Y, Yt = torch.randint(0, classes, (40,), generator=g), torch.randint(0, classes, (15,), generator=g)
    d = random_directions(m, 2, seed=3)
    metrics = {"top": lambda o, t: float(o.max())}  # a float: vmap refuses it
    s = lscape.surface(m, nn.functional.cross_entropy, (X, Y), test_data=(Xt, Yt), directions=d, grid=(2, 5),
                       metrics=metrics)
    assert (bool(calls) and all(k > 1 for k in calls)) == (name != "pooling")
    c = FlatLayout.of(m).flatten(m).double()
    u, v = (torch.as_tensor(a) for a in d.vectors)
    for i, a in enumerate(s.x):
        for j, b in enumerate(s.y):
            theta = c + a * u + b * v
            loss, acc, out = _reference(m, theta, X, Y)
            np.testing.assert_allclose(s["train_loss"][i, j], loss, rtol=1e-5)
            assert s["train_acc"][i, j] == pytest.approx(acc)
            np.testing.assert_allclose(s["train_top"][i, j], float(out.max()), rtol=1e-5)
            tl, ta, _ = _reference(m, theta, Xt, Yt)
            np.testing.assert_allclose(s["test_loss"][i, j], tl, rtol=1e-5)
            assert s["test_acc"][i, j] == pytest.approx(ta)


def test_batch_size_follows_the_work_and_memory_rules(monkeypatch):
    """Points per call: 1 above BATCH_MAX_MACS a point, else as many as fit BATCH_BYTES, at most a row."""
    torch.manual_seed(0)
    m = _stats(MODELS["cnn-bn"][0]())
    X, Y = torch.randn(50, 1, 8, 8), torch.randint(0, 10, (50,))
    d = random_directions(m, 2, seed=0)

    def batch() -> int:
        sh = S._Shared(m, nn.functional.cross_entropy, {}, S._batches("data", (X, Y), None), None, (), "eval",
                       np.zeros(FlatLayout.of(m).dim), d.vectors, np.zeros(3), np.zeros(7), np.ones((3, 7), bool))
        return S._state(sh).batch

    assert batch() == 7  # the row: 7 points
    monkeypatch.setattr(S, "BATCH_BYTES", 1)
    assert batch() == 1
    monkeypatch.setattr(S, "BATCH_BYTES", 1 << 26)
    monkeypatch.setattr(S, "BATCH_MAX_MACS", 1.0)
    assert batch() == 1


@pytest.mark.slow  # torch.compile's first compilation: 10-60 s of inductor on this 2-core machine
def test_compiled_surface_equals_the_uncompiled_one(monkeypatch):
    """compile=True evaluates its points through the compiled function (a spy on _Compiled.fn counts the
    calls that returned, dynamo's counters the graphs it built), and the values equal the uncompiled ones."""
    from torch._dynamo.utils import counters

    ran: list[int] = []

    class Spied(S._Compiled):
        def __init__(self, fast):
            super().__init__(fast)
            compiled = self.fn

            def counted(x):
                out = compiled(x)
                ran.append(len(x))
                return out

            self.fn = counted

    monkeypatch.setattr(S, "_Compiled", Spied)
    torch.manual_seed(0)
    m = _stats(MODELS["cnn-bn"][0]())
    g = torch.Generator().manual_seed(3)
    X, Y = torch.randn(30, 1, 8, 8, generator=g), torch.randint(0, 10, (30,), generator=g)
    d = random_directions(m, 2, seed=3)
    kw = {"directions": d, "grid": (2, 3), "test_data": (X[:10], Y[:10])}
    plain = lscape.surface(m, nn.functional.cross_entropy, (X, Y), **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch's own, when inductor is first imported
        warnings.simplefilter("error", RuntimeWarning)  # a failed compilation warns: that fails here
        counters.clear()
        comp = lscape.surface(m, nn.functional.cross_entropy, (X, Y), compile=True, **kw)
    assert ran, "compile=True never called the compiled function"
    assert counters["stats"]["unique_graphs"] >= 1, dict(counters["stats"])  # torch.compile built a graph
    for k in plain.values:
        np.testing.assert_allclose(comp[k], plain[k], rtol=1e-5)


def test_compile_auto_follows_the_break_even_and_bad_values_are_named(monkeypatch):
    torch.manual_seed(0)
    m = _stats(MODELS["cnn-bn"][0]())
    X, Y = torch.randn(30, 1, 8, 8), torch.randint(0, 10, (30,))
    d = random_directions(m, 2, seed=3)
    for bad in ("yes", None, 1, 0.5):
        with pytest.raises(ValueError, match="compile: got"):
            lscape.surface(m, nn.functional.cross_entropy, (X, Y), directions=d, grid=2, compile=bad)
    built = []
    monkeypatch.setattr(S, "_Compiled", lambda fast: built.append(fast) or fast)
    lscape.surface(m, nn.functional.cross_entropy, (X, Y), directions=d, grid=3, compile="auto")
    assert not built  # a small surface of a small model: compiling would not pay
    monkeypatch.setattr(S, "COMPILE_MIN_MACS", 1.0)
    monkeypatch.setattr(S, "BATCH_MAX_MACS", 0.0)  # one point per call, where compile applies
    lscape.surface(m, nn.functional.cross_entropy, (X, Y), directions=d, grid=3, compile="auto")
    assert len(built) == 1
