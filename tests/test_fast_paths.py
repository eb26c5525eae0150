"""lscape._fastops and probes.mlp_hvp against torch itself: the cross-entropy form against
F.cross_entropy (values, gradients, Hessian-vector products), narrow linear layers against F.linear,
and the written-out MLP Hessian-vector product against autograd's double backward through a loss built
from F.cross_entropy and torch.func.functional_call alone; plus every case where each must step aside."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from lscape import Landscape
from lscape._fastops import cross_entropy_rows, fast_loss, narrow_linears
from lscape.probes import hessian
from lscape.probes.mlp_hvp import MLPHessian
from lscape.probes.spectrum import hessian_eigs, hvp
from torch import nn
from torch.nn import functional as F

pytestmark = pytest.mark.usefixtures("one_torch_thread")
F64 = torch.float64


# ---- cross-entropy ------------------------------------------------------------------------------------
@pytest.mark.parametrize("scale", [1.0, 30.0, 1e4])
@pytest.mark.parametrize("classes", [1, 2, 10, 37])
def test_cross_entropy_rows_matches_torch_in_value_gradient_and_hvp(scale, classes):
    gen = torch.Generator().manual_seed(classes)
    z = (torch.randn(50, classes, generator=gen, dtype=F64) * scale).requires_grad_()
    y = torch.randint(0, classes, (50,), generator=gen)
    v = torch.randn(50, classes, generator=gen, dtype=F64)
    out = []
    for fn in (F.cross_entropy, cross_entropy_rows):
        loss = fn(z, y)
        (g,) = torch.autograd.grad(loss, z, create_graph=True)
        (hv,) = torch.autograd.grad(g, z, v)
        out.append((loss.detach(), g.detach(), hv))
    for a, b in zip(*out, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12 * scale)


def test_fast_loss_wraps_only_plain_cross_entropy_and_falls_back_per_call():
    assert fast_loss(F.cross_entropy) is not F.cross_entropy
    assert fast_loss(nn.CrossEntropyLoss()) is not None
    for other in (F.mse_loss, nn.CrossEntropyLoss(label_smoothing=0.1), nn.CrossEntropyLoss(reduction="sum"),
                  nn.CrossEntropyLoss(weight=torch.ones(3)), nn.CrossEntropyLoss(ignore_index=0)):
        assert fast_loss(other) is other
    ce = fast_loss(F.cross_entropy)
    z = torch.randn(6, 3, dtype=F64)
    y = torch.tensor([0, 1, 2, -100, 1, 0])  # an ignored target: the original handles it
    assert ce(z, y) == F.cross_entropy(z, y)
    probs = torch.softmax(torch.randn(6, 3, dtype=F64), 1)  # soft targets: the original too
    assert ce(z, probs) == F.cross_entropy(z, probs)
    z3, y3 = torch.randn(4, 3, 5, dtype=F64), torch.randint(0, 3, (4, 5))  # (N, C, d) logits
    assert ce(z3, y3) == F.cross_entropy(z3, y3)
    zb, yb = torch.randn(6, 3).bfloat16(), torch.randint(0, 3, (6,))  # low precision: torch's own kernel
    assert ce(zb, yb) == F.cross_entropy(zb, yb)
    # checked targets are remembered, but an edit in place is seen: an ignored target goes to torch again
    yy = torch.tensor([0, 1, 2, 1, 1, 0])
    assert ce(z, yy) == cross_entropy_rows(z, yy)
    yy[2] = -100
    assert ce(z, yy) == F.cross_entropy(z, yy) != cross_entropy_rows(z, yy.clamp_min(0))


# ---- narrow linear layers -----------------------------------------------------------------------------
def test_narrow_linears_compute_the_same_layer_while_entered_and_only_then():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 10), nn.Linear(10, 4, bias=False))
    X = torch.randn(300, 20)
    want = model(X)
    head, tiny = model[2], model[3]
    with narrow_linears(model, skip=[model[0]]):
        assert "forward" in head.__dict__ and "forward" not in tiny.__dict__  # 4 outputs: not narrow
        got = model(X)
        assert head(torch.randn(300, 30)).stride() == (1, 300)  # computed transposed
        # functional_call's parameters are the ones used
        params = {k: v * 2 for k, v in model.named_parameters()}
        fc = torch.func.functional_call(model, params, (X,))
    assert "forward" not in head.__dict__
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fc, torch.func.functional_call(model, params, (X,)), rtol=1e-5, atol=1e-5)
    X3 = torch.randn(2, 7, 20)  # a 3-D input takes F.linear
    with narrow_linears(model):
        torch.testing.assert_close(model(X3), model.__class__.forward(model, X3))


# ---- the MLP Hessian-vector product -------------------------------------------------------------------
def _autograd_hvp(model: nn.Module, batches, theta: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """H v of the batch-size-weighted mean F.cross_entropy, by autograd alone."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]

    def loss(t):
        params, o = {}, 0
        for n, s in zip(names, shapes, strict=True):
            params[n] = t[o:o + s.numel()].view(s)
            o += s.numel()
        total = sum(X.shape[0] for X, _ in batches)
        return sum(F.cross_entropy(torch.func.functional_call(model, params, (X,)), Y) * X.shape[0]
                   for X, Y in batches) / total

    return torch.autograd.functional.hvp(loss, theta, v)[1]


def _mlp(act: type | None, bias: bool = True) -> nn.Sequential:
    torch.manual_seed(1)
    mk = (lambda: act()) if act is not None else None
    layers = [nn.Linear(5, 12, bias=bias)] + ([mk()] if mk else []) + [nn.Linear(12, 9)]
    layers += ([mk()] if mk else []) + [nn.Identity(), nn.Linear(9, 7, bias=bias)]
    return nn.Sequential(*layers).double()


@pytest.mark.parametrize("act", [nn.ReLU, nn.LeakyReLU, nn.ELU, nn.Tanh, nn.Sigmoid, None])
@pytest.mark.parametrize("bias", [True, False])
def test_mlp_hvp_matches_autograd_double_backward(act, bias):
    model = _mlp(act, bias)
    gen = torch.Generator().manual_seed(2)
    batches = [(torch.randn(n, 5, generator=gen, dtype=F64) * 2, torch.randint(0, 7, (n,), generator=gen))
               for n in (40, 17)]
    L = Landscape.from_module(model, F.cross_entropy, batches)
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    op = MLPHessian.of(L, theta)
    assert op is not None
    V = torch.randn(3, L.dim, generator=gen, dtype=F64)
    want = torch.stack([_autograd_hvp(model, batches, theta, v) for v in V])
    for v, w in zip(V, want, strict=True):
        torch.testing.assert_close(op(v), w, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(hvp(L, theta, V), want, rtol=1e-10, atol=1e-12)  # spectrum's path uses it


def test_hessian_eigs_through_the_mlp_path_match_the_dense_hessian():
    model = _mlp(nn.Tanh)
    gen = torch.Generator().manual_seed(3)
    X, Y = torch.randn(60, 5, generator=gen, dtype=F64), torch.randint(0, 7, (60,), generator=gen)
    L = Landscape.from_module(model, nn.CrossEntropyLoss(), (X, Y))
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    assert MLPHessian.of(L, theta) is not None
    want = np.linalg.eigvalsh(hessian(L, theta[None])[0].numpy())
    for which, ref in (("LA", want[::-1][:4]), ("SA", want[:4])):
        np.testing.assert_allclose(hessian_eigs(L, theta, 4, which=which).numpy(), ref, rtol=1e-8, atol=1e-10)


class _Wrapped(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = _mlp(nn.ReLU)

    def forward(self, x):
        return self.net(x)


@pytest.mark.parametrize("case", ["mse", "smoothing", "not-sequential", "batchnorm", "dropout", "ignored",
                                  "3d-input", "float-targets", "two-activations"])
def test_mlp_hvp_steps_aside_where_it_does_not_apply(case):
    model, loss = _mlp(nn.ReLU), F.cross_entropy
    gen = torch.Generator().manual_seed(4)
    X, Y = torch.randn(30, 5, generator=gen, dtype=F64), torch.randint(0, 7, (30,), generator=gen)
    if case == "mse":
        loss, Y = F.mse_loss, torch.randn(30, 7, generator=gen, dtype=F64)
    elif case == "smoothing":
        loss = nn.CrossEntropyLoss(label_smoothing=0.1)
    elif case == "not-sequential":
        model = _Wrapped().double()
    elif case == "batchnorm":
        model = nn.Sequential(nn.Linear(5, 12), nn.BatchNorm1d(12), nn.ReLU(), nn.Linear(12, 7)).double().eval()
    elif case == "dropout":
        model = nn.Sequential(nn.Linear(5, 12), nn.Dropout(0.5), nn.Linear(12, 7)).double()
    elif case == "ignored":
        Y = Y.clone()
        Y[3] = -100
    elif case == "3d-input":
        # (30, 2, 7) outputs: F.cross_entropy reads 2 classes over 7 positions
        X, Y = torch.randn(30, 2, 5, generator=gen, dtype=F64), torch.randint(0, 2, (30, 7), generator=gen)
    elif case == "float-targets":
        Y = torch.softmax(torch.randn(30, 7, generator=gen, dtype=F64), 1)
    elif case == "two-activations":
        model = nn.Sequential(nn.Linear(5, 12), nn.ReLU(), nn.Tanh(), nn.Linear(12, 7)).double()
    L = Landscape.from_module(copy.deepcopy(model), loss, (X, Y))
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    assert MLPHessian.of(L, theta) is None
    if case in ("ignored", "smoothing", "two-activations"):  # autograd still gives the right answer
        v = torch.randn(L.dim, generator=gen, dtype=F64)
        H = hessian(L, theta[None])[0]
        torch.testing.assert_close(hvp(L, theta, v[None])[0], H @ v, rtol=1e-9, atol=1e-11)
