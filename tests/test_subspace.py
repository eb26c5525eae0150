"""lscape.subspace: Subspace (hyperplane / hypersphere / sphere) and SphereConstraint."""
import pytest
import torch
from lscape.projection import SparseSignProjection
from lscape.subspace import OffSphereError, SphereConstraint, Subspace
from torch import nn


def tiny(seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1)).to(dtype)  # D = 32 + 9 = 41


def data(dtype=torch.float64):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 3, generator=g, dtype=dtype)
    return x, torch.sin(x.sum(1, keepdim=True))


def flat(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


@pytest.mark.parametrize("kind", ["hyperplane", "hypersphere"])
@pytest.mark.parametrize("storage", ["indices", "implicit", "fastfood"])
def test_grad_theta_is_Pt_grad_r(kind, storage):
    model = tiny()
    sub = Subspace(model, 7, kind=kind, seed=3, storage=storage)
    with torch.no_grad():
        sub.theta.add_(0.3 * torch.randn(7, dtype=torch.float64))
    if sub.constraint is not None:  # a hand edit leaves the sphere: back onto it, or forward refuses
        sub.constraint.project_()
    x, y = data()
    loss = nn.functional.mse_loss(sub(x), y)
    loss.backward()
    # dL/dr at r, by functional_call on a leaf copy of r
    r = sub.flat_params().detach().clone().requires_grad_(True)
    out = torch.func.functional_call(model, sub.params_dict(r), (x,))
    (gr,) = torch.autograd.grad(nn.functional.mse_loss(out, y), r)
    torch.testing.assert_close(sub.theta.grad, sub.P.rmatvec(gr), rtol=1e-10, atol=1e-12)
    # and P^T against the dense matrix
    torch.testing.assert_close(sub.theta.grad, sub.P.to_dense(torch.float64).T @ gr, rtol=1e-10, atol=1e-12)


def test_only_theta_is_trainable_and_a_is_a_buffer():
    model = tiny()
    sub = Subspace(model, 5)
    names = [n for n, _ in sub.named_parameters()]
    assert names == ["theta"]
    assert "a" in dict(sub.named_buffers())
    assert not any(p is q for p in sub.parameters() for q in model.parameters())


def test_hyperplane_starts_at_model_init_and_matches_model():
    model = tiny()
    sub = Subspace(model, 9)
    assert torch.equal(sub.theta.detach(), torch.zeros(9, dtype=torch.float64))
    torch.testing.assert_close(sub.flat_params().detach(), flat(model))
    x, _ = data()
    torch.testing.assert_close(sub(x), model(x))
    assert sub.radius() == pytest.approx(float(flat(model).norm()))


def test_hyperplane_r0_gives_a_seeded_non_radial_offset_of_norm_r0():
    sub = Subspace(tiny(), 9, r0=3.5, seed=2)
    assert sub.radius() == pytest.approx(3.5, rel=1e-12)
    assert not torch.allclose(sub.a, flat(sub.model) * 3.5 / flat(sub.model).norm())
    # deterministic in seed
    torch.testing.assert_close(Subspace(tiny(), 9, r0=3.5, seed=2).a, sub.a)


def test_full_dimension_hyperplane():
    """d = D is allowed: r = a + P theta with a D x D sparse P (not the identity: columns have unit norm,
    so P^T P has unit diagonal, but are orthogonal only in expectation).  For an exact identity use
    kind="sphere" or train the model itself."""
    model = tiny()
    D = sum(p.numel() for p in model.parameters())
    sub = Subspace(model, D, seed=4)
    dense = sub.P.to_dense(torch.float64)
    nz = sub.P.col_counts > 0
    torch.testing.assert_close(torch.diagonal(dense.T @ dense)[nz], torch.ones(int(nz.sum()), dtype=torch.float64))
    theta = torch.randn(D, dtype=torch.float64)
    with torch.no_grad():
        sub.theta.copy_(theta)
    torch.testing.assert_close(sub.flat_params().detach(), flat(model) + dense @ theta)


def test_hyperplane_trains_to_lower_loss():
    x, y = data()
    sub = Subspace(tiny(), 20, seed=1)
    opt = torch.optim.Adam(sub.parameters(), lr=0.05)
    loss0 = float(nn.functional.mse_loss(sub(x), y).detach())
    for _ in range(150):
        opt.zero_grad()
        nn.functional.mse_loss(sub(x), y).backward()
        opt.step()
    loss1 = float(nn.functional.mse_loss(sub(x), y).detach())
    assert loss1 < 0.5 * loss0


@pytest.mark.parametrize("kind,d", [("hypersphere", 12), ("sphere", None)])
def test_radius_held_after_100_adam_steps(kind, d):
    x, y = data(torch.float32)
    sub = Subspace(tiny(dtype=torch.float32), d, kind=kind, r0=4.0, seed=5)
    assert sub.radius() == pytest.approx(4.0, rel=1e-6)
    opt = torch.optim.Adam(sub.parameters(), lr=0.05)
    sub.constrain(opt)
    loss0 = float(nn.functional.mse_loss(sub(x), y).detach())
    for _ in range(100):
        opt.zero_grad()
        nn.functional.mse_loss(sub(x), y).backward()
        opt.step()
        assert abs(sub.radius() - 4.0) <= 1e-5 * 4.0
    assert float(nn.functional.mse_loss(sub(x), y).detach()) < loss0  # it also trains


@pytest.mark.parametrize("kind,d", [("hypersphere", 12), ("sphere", None)])
def test_without_constraint_the_forward_pass_refuses_to_leave_the_sphere(kind, d):
    """The trap of issue 19: Adam without constrain() leaves the sphere; the next forward pass says so."""
    x, y = data()
    sub = Subspace(tiny(), d, kind=kind, r0=4.0, seed=5)
    opt = torch.optim.Adam(sub.parameters(), lr=0.05)
    nn.functional.mse_loss(sub(x), y).backward()
    opt.step()
    assert abs(sub.radius() - 4.0) > 1e-6 * 4.0  # the unconstrained step did leave the sphere
    with pytest.raises(OffSphereError, match=r"sub\.constrain\(optimizer\)"):
        sub(x)
    sub.constraint.project_()  # back on the sphere: it runs again
    assert sub(x).shape == y.shape


def test_a_forward_pass_after_loading_a_point_on_the_sphere_runs():
    x, y = data()
    sub = Subspace(tiny(), 12, kind="hypersphere", r0=4.0, seed=5)
    other = Subspace(tiny(), 12, kind="hypersphere", r0=4.0, seed=5)
    opt = torch.optim.Adam(other.parameters(), lr=0.05)
    other.constrain(opt)
    nn.functional.mse_loss(other(x), y).backward()
    opt.step()  # a constrained step: theta changes, |r| stays r0
    sub.load_state_dict(other.state_dict())
    assert torch.equal(sub.theta, other.theta)
    torch.testing.assert_close(sub(x), other(x))


def test_hypersphere_init_and_default_r0():
    model = tiny()
    sub = Subspace(model, 10, kind="hypersphere", seed=0)
    assert sub.r0 == pytest.approx(float(flat(model).norm()))
    assert sub.radius() == pytest.approx(sub.r0, rel=1e-12)
    assert sub.a is None
    sph = Subspace(model, None, kind="sphere")
    torch.testing.assert_close(sph.flat_params().detach(), flat(model))


def test_constraint_steps_are_tangent():
    """after_step keeps only the step's component orthogonal to n = P^T P theta, then rescales."""
    P = SparseSignProjection(200, 15, seed=7)
    theta = nn.Parameter(torch.randn(15, dtype=torch.float64))
    c = SphereConstraint(theta, 2.0, P)
    c.project_()
    assert c.radius() == pytest.approx(2.0, rel=1e-13)
    old = theta.detach().clone()
    n = P.rmatvec(P.matvec(old))
    theta.grad = torch.randn(15, dtype=torch.float64)
    c.before_step()
    assert abs(float(theta.grad @ n)) < 1e-12 * float(n.norm() * theta.grad.norm())
    with torch.no_grad():
        theta.add_(1e-4 * n + 1e-3 * torch.randn(15, dtype=torch.float64))  # a step with a radial part
    c.after_step()
    assert c.radius() == pytest.approx(2.0, rel=1e-13)
    step = theta.detach() - old
    # second-order: the step is tangent up to the rescaling (O(|step|^2))
    assert abs(float(step @ n)) / float(n.norm()) < 1e-5


def _hypersphere_run(steps: int, remember: bool) -> torch.Tensor:
    x, y = data(torch.float32)
    sub = Subspace(tiny(dtype=torch.float32), 12, kind="hypersphere", r0=4.0, seed=5)
    if not remember:
        sub.constraint.remember_image = lambda image: None
    opt = torch.optim.Adam(sub.parameters(), lr=0.05)
    sub.constrain(opt)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.mse_loss(sub(x), y).backward()
        opt.step()
    return sub.theta.detach()


def test_the_forward_image_spares_a_product_and_changes_nothing(monkeypatch):
    """before_step reuses the forward pass's P theta: the same steps bit for bit, one matvec fewer."""
    from lscape.ops import projection as ops

    calls: list[bool] = []
    real = ops.product
    monkeypatch.setattr(ops, "product", lambda P, x, transpose: calls.append(transpose) or real(P, x, transpose))
    without = _hypersphere_run(5, remember=False)
    n_without = len(calls)
    calls.clear()
    with_image = _hypersphere_run(5, remember=True)
    assert torch.equal(with_image, without)
    # per step: forward matvec, backward rmatvec, normal (matvec + rmatvec, its matvec now spared), project
    assert n_without - len(calls) == 5 and calls.count(False) == 5 * 2 + 1  # + 1: the constructor's project_


def test_a_stale_image_is_not_used():
    P = SparseSignProjection(200, 15, seed=7)
    theta = nn.Parameter(torch.randn(15, dtype=torch.float64))
    c = SphereConstraint(theta, 2.0, P)
    image = P.matvec(theta.detach())
    for spoil in ("theta", "image"):
        c.remember_image(image.clone() if spoil == "image" else image)
        with torch.no_grad():  # an in-place change after handing it over
            (theta if spoil == "theta" else c._image[1]).add_(torch.randn(15 if spoil == "theta" else 200,
                                                                          dtype=torch.float64))
        theta.grad = torch.randn(15, dtype=torch.float64)
        c.before_step()
        n = P.rmatvec(P.matvec(theta.detach()))
        assert abs(float(theta.grad @ n)) < 1e-12 * float(n.norm() * theta.grad.norm()), spoil
        c.after_step()


def test_constraint_attach_and_remove():
    theta = nn.Parameter(torch.randn(6, dtype=torch.float64))
    c = SphereConstraint(theta, 1.0)
    opt = torch.optim.SGD([theta], lr=0.1)
    h = c.attach(opt)
    theta.grad = torch.randn(6, dtype=torch.float64)
    opt.step()
    assert float(theta.detach().norm()) == pytest.approx(1.0, rel=1e-13)
    h.remove()
    theta.grad = torch.ones(6, dtype=torch.float64)
    opt.step()
    assert float(theta.detach().norm()) != pytest.approx(1.0, rel=1e-6)
    with pytest.raises(ValueError, match="optimizer"):
        c.attach(torch.optim.SGD([nn.Parameter(torch.zeros(2))], lr=0.1))


def test_batchnorm_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 1)).double()
    sub = Subspace(model, 8, kind="hyperplane", seed=2)
    x, y = data()
    before = model[1].running_mean.clone()
    opt = torch.optim.SGD(sub.parameters(), lr=0.05)
    opt.zero_grad()
    nn.functional.mse_loss(sub(x), y).backward()
    opt.step()
    assert not torch.equal(model[1].running_mean, before)  # statistics updated in train mode
    assert int(model[1].num_batches_tracked) == 1
    assert sub.theta.grad is not None and torch.isfinite(sub.theta.grad).all()
    sub.eval()
    assert not model.training
    rm = model[1].running_mean.clone()
    out = sub(x[:1])  # eval mode: running statistics used, batch of one is fine
    assert out.shape == (1, 1) and torch.equal(model[1].running_mean, rm)
    sub.train()
    assert model.training


def test_load_into_model():
    model = tiny()
    sub = Subspace(model, 4, seed=1)
    with torch.no_grad():
        sub.theta.fill_(0.5)
    r = sub.flat_params().detach().clone()
    sub.load_into_model()
    torch.testing.assert_close(flat(model), r)


def test_float32_model_and_double():
    sub = Subspace(tiny(dtype=torch.float32), 6, kind="hypersphere", r0=2.0)
    assert sub.theta.dtype == torch.float32
    sub.double()
    assert sub.theta.dtype == torch.float64 and next(sub.model.parameters()).dtype == torch.float64
    x, _ = data()
    assert sub(x).dtype == torch.float64


def test_bad_inputs_named_errors():
    model = tiny()
    with pytest.raises(ValueError, match=r"^d: got 0"):
        Subspace(model, 0)
    with pytest.raises(ValueError, match=r"^d: got 42, expected at most D = 41"):
        Subspace(model, 42)
    with pytest.raises(TypeError, match=r"^d: got None"):
        Subspace(model, None, kind="hypersphere")
    with pytest.raises(ValueError, match=r"^d: got 5, expected None or D = 41"):
        Subspace(model, 5, kind="sphere")
    with pytest.raises(ValueError, match=r"^r0: got 0.0"):
        Subspace(model, 5, kind="hypersphere", r0=0.0)
    with pytest.raises(ValueError, match=r"^r0: got -1.0"):
        Subspace(model, 5, r0=-1.0)
    with pytest.raises(ValueError, match=r"^model: .*no parameters"):
        Subspace(nn.ReLU(), 1)
    with pytest.raises(TypeError, match=r"^model: got"):
        Subspace(lambda x: x, 1)
    with pytest.raises(ValueError, match=r"^kind: got 'ball'"):
        Subspace(model, 5, kind="ball")
    with pytest.raises(ValueError, match=r"^storage: got 'dense'"):
        Subspace(model, 5, storage="dense")
    with pytest.raises(TypeError, match=r"^d: got float"):
        Subspace(model, 2.5)
