"""The C++ tiny-MLP ensemble kernels (lscape._C.mlp_loss_grad / mlp_train) against the torch reference
(lscape.reference.mlp), through the raw bindings.  The kernels contract into FMA and sum in their own
order, so they match the reference to rounding (mlp.h), while every model stays bit-independent of
the others."""
import pytest
import torch
from lscape import _backend
from lscape.reference import mlp as ref
from lscape.tinymlp import TinyMLP

C = _backend.cpu_extension()
pytestmark = [pytest.mark.skipif(C is None, reason="lscape._C is not built"),
              pytest.mark.usefixtures("one_torch_thread")]


def ptr(t):
    return 0 if t is None else t.data_ptr()


def data(P, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return 2 * torch.rand(P, generator=gen) - 1, torch.randn(P, generator=gen)


def models(K, N, M, seed=1):
    """Initial params with random biases too (he init leaves them 0)."""
    return TinyMLP(K, N).init(M, seed=seed, scheme="torch")


def kernel_loss_grad(K, N, params, x, y, want_grad=True, nt=2):
    M, P = params.shape[0], x.shape[0]
    loss = torch.full((M,), -1.0)
    grad = torch.full_like(params, -1.0) if want_grad else None
    C.mlp_loss_grad(K, N, M, P, params.data_ptr(), x.data_ptr(), y.data_ptr(), loss.data_ptr(), ptr(grad), nt)
    return loss, grad


class Run:
    """Buffers of one training run (params, state, diverged, history), kernel or reference."""

    def __init__(self, K, N, opt, params, record_every=1):
        self.K, self.N, self.opt = K, N, opt
        self.params = params.clone()
        self.s0 = torch.zeros_like(params)
        self.s1 = torch.zeros_like(params) if opt.n_state == 2 else None
        self.div = torch.zeros(params.shape[0], dtype=torch.uint8)
        self.record_every = record_every

    def kernel(self, x, y, step0, steps, nt=2, history=True):
        M = self.params.shape[0]
        h = torch.full((M, steps // self.record_every), -1.0) if history else None
        C.mlp_train(self.K, self.N, self.opt.as_tuple(), M, x.shape[0], self.params.data_ptr(),
                    self.s0.data_ptr(), ptr(self.s1), self.div.data_ptr(), x.data_ptr(), y.data_ptr(), step0,
                    steps, self.record_every, ptr(h), nt)
        return h

    def reference(self, x, y, step0, steps):
        h = torch.full((self.params.shape[0], steps // self.record_every), -1.0)
        div = self.div.bool()
        ref.train(self.K, self.N, self.opt, self.params, self.s0, self.s1, div, x, y, step0, steps,
                  self.record_every, h)
        self.div.copy_(div)
        return h


def assert_rel(got, want, rtol):
    """|got - want| <= rtol * (|want| + the largest |want| of its row): relative, per model."""
    assert got.shape == want.shape
    if want.ndim == 1:
        scale = want.abs()
    else:
        scale = want.abs() + want.abs().amax(dim=1, keepdim=True)
    assert torch.equal(got.isnan(), want.isnan())
    ok = want.isnan() | ((got - want).abs() <= rtol * scale)
    assert bool(ok.all()), f"max error {float(((got - want).abs() / scale)[~ok].max())} > {rtol}"


def assert_same_run(a: Run, b: Run):
    for name in ("params", "s0", "s1", "div"):
        u, v = getattr(a, name), getattr(b, name)
        assert (u is None and v is None) or torch.equal(u, v), name


# (K, N, P, M): one model, odd M, M not a multiple of 4 or 8 lanes, one point, P below, at and past a
# multiple of the kernel's 16-point chunks, the smallest and the largest nets.
SHAPES = [(5, 5, 321, 33), (5, 5, 64, 1), (1, 1, 1, 1), (1, 1, 7, 9), (8, 16, 50, 7), (3, 7, 17, 12),
          (2, 3, 1, 8), (4, 16, 33, 17), (6, 2, 32, 16), (2, 11, 100, 3)]


@pytest.mark.parametrize("K,N,P,M", SHAPES)
def test_loss_grad_matches_reference(K, N, P, M):
    x, y = data(P, seed=K * 100 + N)
    params = models(K, N, M)
    loss, grad = kernel_loss_grad(K, N, params, x, y)
    want_loss, want_grad = ref.loss_grad(K, N, params, x, y)
    assert_rel(loss, want_loss, 1e-5)
    assert_rel(grad, want_grad, 1e-5)
    loss_only, none = kernel_loss_grad(K, N, params, x, y, want_grad=False)
    assert none is None and torch.equal(loss_only, loss)


def test_relu_derivative_at_zero_is_zero():
    # Zero biases and x = 0 make every pre-activation exactly 0 at that point: no gradient through it.
    K, N = 3, 4
    params = TinyMLP(K, N).init(5, seed=3, scheme="he")
    x, y = torch.zeros(1), torch.ones(1)
    _, grad = kernel_loss_grad(K, N, params, x, y)
    _, want = ref.loss_grad(K, N, params, x, y)
    assert torch.equal(grad, want)


def test_threads_and_m0():
    K, N, P, M = 5, 5, 40, 37
    x, y = data(P)
    params = models(K, N, M)
    one = kernel_loss_grad(K, N, params, x, y, nt=1)
    for nt in (2, 3, 0):
        two = kernel_loss_grad(K, N, params, x, y, nt=nt)
        assert torch.equal(one[0], two[0]) and torch.equal(one[1], two[1])
    C.mlp_loss_grad(K, N, 0, P, 0, x.data_ptr(), y.data_ptr(), 0, 0, 2)
    run = Run(K, N, ref.OptConfig(ref.ADAM), params[:0])
    run.kernel(x, y, 0, 5)


OPTS = [ref.OptConfig(ref.SGD, lr=0.05, momentum=0.9), ref.OptConfig(ref.ADADELTA, lr=0.1, rho=0.9),
        ref.OptConfig(ref.ADAM, lr=0.001)]
SGD_SLOW = ref.OptConfig(ref.SGD, lr=0.01, momentum=0.9)

# Training runs compared with the reference after 200 steps.  ReLU kinks make training sensitive at
# this level: where a pre-activation crosses 0 at a data point one step earlier or later, runs part by
# up to 1e-2, and the float32 reference parts from a float64 one just as often as the kernel does.
# These runs have no such event (kernel, float32 and float64 references all agree to ~1e-6).
TRAIN_RUNS = [(OPTS[0], 3, 4, 16, 8, 7), (SGD_SLOW, 5, 5, 64, 19, 7), (OPTS[1], 3, 4, 16, 8, 7),
              (OPTS[1], 5, 5, 64, 19, 8), (OPTS[2], 3, 4, 16, 8, 7), (OPTS[2], 2, 3, 10, 4, 7),
              (OPTS[2], 1, 1, 5, 1, 7)]


@pytest.mark.parametrize("opt,K,N,P,M,seed", TRAIN_RUNS, ids=lambda v: getattr(v, "kind", None))
def test_train_matches_reference(opt, K, N, P, M, seed):
    x, y = data(P, seed=seed)
    y = torch.sin(3 * x) + 0.1 * y
    params = models(K, N, M, seed=seed)
    got, want = Run(K, N, opt, params, record_every=7), Run(K, N, opt, params, record_every=7)
    h = got.kernel(x, y, 0, 200)
    h_want = want.reference(x, y, 0, 200)
    assert h.shape == (M, 28)
    assert not got.div.any() and not want.div.any()
    assert_rel(got.params, want.params, 1e-4)
    assert_rel(h, h_want, 1e-4)
    # Optimizer state is gradient-like (sgd's momentum shrinks with the gradient and keeps only its
    # absolute precision): 1e-3, which the float32 reference also needs against a float64 one.
    assert_rel(got.s0, want.s0, 1e-3)
    if opt.kind != ref.SGD:
        assert_rel(got.s1, want.s1, 1e-4)
    assert float(h[:, -1].mean()) < 0.9 * float(h[:, 0].mean())  # it trains


@pytest.mark.parametrize("opt", OPTS, ids=lambda o: o.kind)
def test_history_records_the_loss_before_each_recorded_step(opt):
    K, N, P, M = 3, 4, 30, 10
    x, y = data(P, seed=2)
    run = Run(K, N, opt, models(K, N, M), record_every=3)
    losses = []
    for i in range(10):  # one step at a time: history of step i is the loss at the params before it
        losses.append(kernel_loss_grad(K, N, run.params, x, y)[0])
        run.kernel(x, y, i, 1, history=False)
    whole = Run(K, N, opt, models(K, N, M), record_every=3)
    h = whole.kernel(x, y, 0, 10)
    assert h.shape == (M, 3)
    assert torch.equal(h, torch.stack([losses[2], losses[5], losses[8]], dim=1))
    assert_same_run(run, whole)


@pytest.mark.parametrize("opt", OPTS, ids=lambda o: o.kind)
def test_step0_continues_a_run(opt):
    K, N, P, M = 5, 5, 50, 11
    x, y = data(P, seed=4)
    params = models(K, N, M)
    whole, parts = Run(K, N, opt, params, record_every=5), Run(K, N, opt, params, record_every=5)
    h = whole.kernel(x, y, 0, 200)
    h1 = parts.kernel(x, y, 0, 100)
    h2 = parts.kernel(x, y, 100, 100)
    assert_same_run(whole, parts)
    assert torch.equal(h, torch.cat([h1, h2], dim=1))


@pytest.mark.parametrize("opt", OPTS, ids=lambda o: o.kind)
def test_diverged_model_is_frozen_and_isolated(opt):
    K, N, P, M, bad, gone = 4, 6, 40, 13, 3, 9
    x, y = data(P, seed=5)
    params = models(K, N, M)
    params[bad] *= 1e30  # loss overflows at the first step
    with_bad = Run(K, N, opt, params, record_every=2)
    with_bad.div[gone] = 1  # diverged on entry: never touched
    h = with_bad.kernel(x, y, 0, 20)

    keep = [m for m in range(M) if m not in (bad, gone)]
    clean = Run(K, N, opt, params[keep], record_every=2)  # the others alone, in other lanes and blocks
    h_clean = clean.kernel(x, y, 0, 20)
    assert torch.equal(with_bad.params[keep], clean.params) and torch.equal(with_bad.s0[keep], clean.s0)
    if opt.kind != ref.SGD:
        assert torch.equal(with_bad.s1[keep], clean.s1)
    assert torch.equal(h[keep], h_clean) and h_clean.isfinite().all()
    assert with_bad.div.tolist() == [int(m in (bad, gone)) for m in range(M)]
    for m in (bad, gone):
        assert torch.equal(with_bad.params[m], params[m]) and not with_bad.s0[m].any()
        assert h[m].isnan().all()


def test_divergence_mid_run():
    # Large weights and a large step: some models blow up after a few steps, others never.
    K, N, P, M = 3, 5, 20, 16
    x, y = data(P, seed=6)
    params = models(K, N, M) * torch.linspace(0.5, 8.0, M)[:, None]
    opt = ref.OptConfig(ref.SGD, lr=0.05, momentum=0.9)
    run = Run(K, N, opt, params)
    h = run.kernel(x, y, 0, 30)
    d = run.div.bool()
    assert 0 < int(d.sum()) < M
    assert h[~d].isfinite().all()
    first = h.isnan().int().argmax(dim=1)  # the step that diverged
    for m in torch.nonzero(d).flatten().tolist():
        assert h[m, first[m]:].isnan().all() and h[m, :first[m]].isfinite().all()
        # frozen at the params and state from before that step
        part = Run(K, N, opt, params[m:m + 1])
        part.kernel(x, y, 0, int(first[m]))
        assert not part.div.any()
        assert torch.equal(part.params[0], run.params[m]) and torch.equal(part.s0[0], run.s0[m])


def test_sgd_needs_no_state1_and_threads_agree():
    K, N, P, M = 5, 5, 30, 21
    x, y = data(P)
    opt = ref.OptConfig(ref.SGD)
    a, b = Run(K, N, opt, models(K, N, M)), Run(K, N, opt, models(K, N, M))
    assert a.s1 is None
    assert torch.equal(a.kernel(x, y, 0, 15, nt=1), b.kernel(x, y, 0, 15, nt=2))
    assert_same_run(a, b)


def test_steps_zero_is_a_no_op():
    K, N, P, M = 2, 3, 10, 5
    x, y = data(P)
    params = models(K, N, M)
    run = Run(K, N, ref.OptConfig(ref.ADAM), params)
    assert run.kernel(x, y, 0, 0).shape == (M, 0)
    assert torch.equal(run.params, params) and not run.div.any()


def test_bad_arguments_are_refused():
    x, y = data(4)
    params = models(2, 3, 2)
    loss = torch.empty(2)

    def lg(K=2, N=3, M=2, P=4):
        C.mlp_loss_grad(K, N, M, P, params.data_ptr(), x.data_ptr(), y.data_ptr(), loss.data_ptr(), 0, 1)

    adam = ref.OptConfig(ref.ADAM).as_tuple()

    def tr(K=2, N=3, opt=adam, M=2, P=4, steps=1, record_every=1):
        s0, s1 = torch.zeros_like(params), torch.zeros_like(params)
        div = torch.zeros(2, dtype=torch.uint8)
        C.mlp_train(K, N, opt, M, P, params.data_ptr(), s0.data_ptr(), s1.data_ptr(), div.data_ptr(),
                    x.data_ptr(), y.data_ptr(), 0, steps, record_every, 0, 1)

    # each refusal names the argument the kernel got wrong and the range it expects
    for kw, msg in ((dict(K=0), r"K must be in \[1, 8\]"), (dict(K=9), r"K must be in \[1, 8\]"),
                    (dict(N=0), r"N must be in \[1, 16\]"), (dict(N=17), r"N must be in \[1, 16\]"),
                    (dict(M=-1), "M must be >= 0"), (dict(P=0), "P must be >= 1")):
        with pytest.raises(ValueError, match=msg):
            lg(**kw)
        with pytest.raises(ValueError, match=msg):
            tr(**kw)
    bad_opt = (3,) + ref.OptConfig(ref.ADAM).as_tuple()[1:]
    for kw, msg in ((dict(steps=-1), "steps must be >= 0"), (dict(record_every=0), "record_every must be >= 1"),
                    (dict(opt=bad_opt), r"optimizer kind must be 0 \(sgd\), 1 \(adadelta\) or 2 \(adam\)")):
        with pytest.raises(ValueError, match=msg):
            tr(**kw)
    before = params.clone()
    tr()
    lg()
    assert not torch.equal(before, params)  # the good calls above do run
