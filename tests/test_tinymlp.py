"""TinyMLP layout and init, the hand-built W_f, and de-symmetrisation."""
import math

import numpy as np
import pytest
import torch
from lscape import tinymlp as tm
from lscape.reference import mlp as ref
from lscape.tinymlp import TinyMLP

SPECS = [(1, 1), (1, 4), (2, 3), (5, 5), (8, 16)]


def forward(spec, params, x):
    """Network outputs (M, P) (float64 reference)."""
    return ref.forward(spec.depth, spec.width, params.double(), x.double())


def rand_params(spec, M, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(M, spec.dim, generator=g, dtype=torch.float64)


# ---- layout -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("K,N", SPECS)
def test_dim_and_layer_offsets(K, N):
    spec = TinyMLP(K, N)
    assert spec.dim == 2 * N + (K - 1) * (N * N + N) + N + 1
    assert spec.layers[0].w == 0 and spec.layers[-1].end == spec.dim
    assert all(a.end == b.w for a, b in zip(spec.layers[:-1], spec.layers[1:], strict=False))
    assert spec.spec == (K, N)


def test_5x5_has_136_parameters():
    assert TinyMLP(5, 5).dim == 136 and TinyMLP().dim == 136


@pytest.mark.parametrize("K,N", SPECS)
def test_unflatten_flatten_round_trip(K, N):
    spec = TinyMLP(K, N)
    p = rand_params(spec, 3)
    layers = spec.unflatten(p)
    assert [tuple(W.shape) for W, _ in layers] == [(3, L.out, L.inp) for L in spec.layers]
    assert [tuple(b.shape) for _, b in layers] == [(3, L.out) for L in spec.layers]
    assert torch.equal(spec.flatten(layers), p)
    single = spec.unflatten(p[1])  # unbatched views of the same memory
    assert torch.equal(spec.flatten(single), p[1])
    single[0][0][0, 0] = 42.0
    assert p[1, 0] == 42.0


@pytest.mark.parametrize("K,N", SPECS)
def test_to_module_from_module_round_trip(K, N):
    spec = TinyMLP(K, N)
    p = rand_params(spec, 1)[0]
    mod = spec.to_module(p)
    assert torch.equal(spec.from_module(mod), p)
    x = torch.linspace(-2, 2, 37, dtype=torch.float64)
    with torch.no_grad():
        out = mod(x[:, None])[:, 0]
    torch.testing.assert_close(out, forward(spec, p[None], x)[0], rtol=1e-12, atol=1e-12)
    # the module's parameter order is the flat layout
    assert torch.equal(torch.cat([q.detach().reshape(-1) for q in mod.parameters()]), p)


def test_layout_bad_inputs_name_the_argument():
    spec = TinyMLP(2, 3)
    with pytest.raises(ValueError, match="depth"):
        TinyMLP(0, 3)
    with pytest.raises(ValueError, match="depth"):
        TinyMLP(9, 3)
    with pytest.raises(ValueError, match="width"):
        TinyMLP(2, 17)
    with pytest.raises(TypeError, match="width"):
        TinyMLP(2, 2.5)
    with pytest.raises(ValueError, match="params"):
        spec.unflatten(torch.zeros(3, spec.dim + 1))
    with pytest.raises(ValueError, match="params"):
        spec.check_params(torch.zeros(spec.dim, dtype=torch.int64))
    with pytest.raises(ValueError, match="params"):
        spec.to_module(torch.zeros(2, spec.dim))  # to_module takes one vector
    with pytest.raises(ValueError, match="weights"):
        spec.flatten(spec.unflatten(torch.zeros(spec.dim))[:-1])
    with pytest.raises(ValueError, match=r"weights\[0\]"):
        spec.flatten([(torch.zeros(3, 2), torch.zeros(3))] + spec.unflatten(torch.zeros(spec.dim))[1:])
    with pytest.raises(ValueError, match="module"):
        spec.from_module(TinyMLP(2, 4).to_module(torch.zeros(TinyMLP(2, 4).dim)))


# ---- init ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("scheme", tm.INIT_SCHEMES)
def test_init_deterministic_and_prefix_stable(scheme):
    spec = TinyMLP(5, 5)
    a = spec.init(50, seed=7, scheme=scheme)
    assert a.shape == (50, 136) and a.dtype == torch.float32
    assert torch.equal(a, spec.init(50, seed=7, scheme=scheme))
    assert torch.equal(a[:13], spec.init(13, seed=7, scheme=scheme))
    assert not torch.equal(a, spec.init(50, seed=8, scheme=scheme))
    assert torch.equal(spec.init(3, seed=7, scheme=scheme, dtype=torch.float64).float(), a[:3])
    assert spec.init(0).shape == (0, 136)


@pytest.mark.parametrize("scheme", tm.INIT_SCHEMES)
def test_init_statistics(scheme):
    spec = TinyMLP(3, 8)
    p = spec.init(4000, seed=1, scheme=scheme).double()
    for W, b in spec.unflatten(p):
        fan_in, fan_out = W.shape[-1], W.shape[-2]
        w = W.reshape(-1)
        if scheme == "torch":
            bound = 1 / math.sqrt(fan_in)
            for t in (w, b.reshape(-1)):
                assert t.abs().max() <= bound
                assert abs(float(t.var()) - bound ** 2 / 3) < 0.05 * bound ** 2 / 3
            continue
        std = math.sqrt(2 / fan_in) if scheme == "he" else math.sqrt(2 / (fan_in + fan_out))
        assert torch.all(b == 0)
        assert abs(float(w.mean())) < 4 * std / math.sqrt(w.numel())
        assert abs(float(w.std()) / std - 1) < 0.03
        # Gaussian tails: about 4.55% beyond 2 sd
        assert abs(float((w.abs() > 2 * std).double().mean()) - 0.0455) < 0.01


def test_init_bad_inputs():
    spec = TinyMLP(2, 2)
    with pytest.raises(ValueError, match="scheme"):
        spec.init(4, scheme="lecun")
    with pytest.raises(ValueError, match="M"):
        spec.init(-1)
    with pytest.raises(TypeError, match="M"):
        spec.init(2.0)
    with pytest.raises(ValueError, match="seed"):
        spec.init(2, seed=-3)


# ---- W_f ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("construction", tm.WF_CONSTRUCTIONS)
def test_wf_network_is_the_analytic_f_at_knots_and_between(construction):
    spec, wf = tm.wf_network(construction)
    assert spec == TinyMLP(5, 5) and wf.shape == (136,) and wf.dtype == torch.float64
    knots = tm.wf_knots()
    mids = (knots[:-1] + knots[1:]) / 2
    fine = np.linspace(0.0, 1.0, 20_001)
    rng = np.random.default_rng(0)
    for x in (knots, mids, fine, rng.uniform(0, 1, 5000)):
        out = forward(spec, wf[None], torch.from_numpy(x))[0].numpy()
        np.testing.assert_allclose(out, tm.wf_function(x), rtol=0, atol=1e-12)


def test_wf_parts():
    knots = tm.wf_knots()
    assert knots.shape == (33,) and knots[0] == 0.0 and knots[-1] == 1.0
    assert np.all(np.diff(knots) > 0)
    assert set(tm.WF_SPLINE_X) <= set(knots.tolist())
    a = tm.WF_SAW_AMPLITUDE
    peaks = (2 * np.arange(16) + 1) / 32
    np.testing.assert_allclose(tm.wf_sawtooth(peaks), a, atol=1e-15)
    np.testing.assert_allclose(tm.wf_sawtooth(np.arange(17) / 16), 0.0, atol=1e-15)
    np.testing.assert_allclose(tm.wf_spline(np.array(tm.WF_SPLINE_X)), tm.WF_SPLINE_Y, atol=1e-15)
    # f is linear between adjacent knots: the midpoint is the mean of the ends
    f = tm.wf_function
    np.testing.assert_allclose(f((knots[:-1] + knots[1:]) / 2), (f(knots[:-1]) + f(knots[1:])) / 2, atol=1e-14)
    with pytest.raises(ValueError, match="x"):
        tm.wf_function(np.array([0.5, 1.5]))


def test_wf_every_hidden_unit_is_used():
    spec, wf = tm.wf_network("v1")
    A, B = tm._unit_norms(spec, wf[None])
    assert torch.all(A > 0) and torch.all(B > 0)


def test_wf_v1_is_still_the_first_construction():
    """Runs made with the first W_f stay reproducible: wf_network() and wf_network("v1") are it, bit for
    bit (the SHA-256 of its float64 parameters as first committed), tent maps 2 relu(t) - 4 relu(t - 1/2)
    and an accumulator offset of 10."""
    import hashlib

    spec, wf = tm.wf_network("v1")
    assert torch.equal(wf, tm.wf_network()[1])
    assert hashlib.sha256(wf.numpy().tobytes()).hexdigest() == (
        "2da6569b054b02afe96f1eb168d5d92bf16fde0ec23ccfdcf9c9b2011cc2a863")
    layers = spec.unflatten(wf)
    assert layers[1][0][0, :2].tolist() == [2.0, -4.0] and layers[1][1][1] == -0.5
    assert layers[0][1][4] == 10.0 and layers[-1][1][0] == tm.WF_SPLINE_Y[0] - 10.0


@pytest.mark.parametrize("construction", tm.WF_CONSTRUCTIONS)
def test_wf_is_a_sawtooth_on_the_left_two_and_a_spline_on_the_right_three(construction):
    """No weight joins the two halves; the left 2 units alone give alpha T^5 (the sawtooth), the right
    3 alone the spline (the output bias shared: each half is checked with the other's output weights
    zeroed and the other half's part of the bias removed)."""
    spec, wf = tm.wf_network(construction)
    layers = spec.unflatten(wf)
    for W, _ in layers[1:-1]:
        assert torch.all(W[:2, 2:] == 0) and torch.all(W[2:, :2] == 0)
    x = np.concatenate([tm.wf_knots(), np.linspace(0.0, 1.0, 2001)])
    left = forward(spec, wf[None], torch.from_numpy(x))[0].numpy()
    Wo = layers[-1][0].clone()
    Wo[0, :2] = 0
    right = [(W, b) for W, b in layers[:-1]] + [(Wo, layers[-1][1])]
    spline_part = forward(spec, spec.flatten(right)[None], torch.from_numpy(x))[0].numpy()
    np.testing.assert_allclose(left - spline_part, tm.wf_sawtooth(x) + (left - spline_part)[0], atol=1e-12)
    np.testing.assert_allclose(spline_part - spline_part[0], tm.wf_spline(x) - tm.wf_spline(x)[0], atol=1e-12)


def test_wf_v2_is_smaller_than_v1_and_its_spline_offset_is_the_least_that_works():
    """v2's accumulator stays nonnegative on [0, 1] with its offset, and goes negative with any less;
    its de-symmetrised norm is below v1's (no offset of 10 carried through the layers)."""
    spec, v2 = tm.wf_network("v2")
    x = torch.linspace(0.0, 1.0, 4001, dtype=torch.float64)
    layers = spec.unflatten(v2)
    c = float(layers[0][1][4])
    assert c >= 0

    def accumulators(p):  # pre-activations of unit 4 of every hidden layer
        h, pre = x[:, None], []
        for W, b in spec.unflatten(p)[:-1]:
            z = h @ W.T + b
            pre.append(z[:, 4])
            h = torch.relu(z)
        return torch.stack(pre)

    assert float(accumulators(v2).min()) >= -1e-12
    less = [(W.clone(), b.clone()) for W, b in layers]
    less[0][1][4] -= 0.01
    assert float(accumulators(spec.flatten(less)).min()) < 0
    norm = lambda p: float(tm.desymmetrize(spec, p).norm())  # noqa: E731
    assert norm(v2) < norm(tm.wf_network("v1")[1])


def test_wf_network_checks_the_construction():
    with pytest.raises(ValueError, match="construction"):
        tm.wf_network("v3")


def test_wf_training_set():
    x, y = tm.wf_training_set()
    assert x.dtype == y.dtype == torch.float32 and x.shape == y.shape == (33 + 32 * 9,)
    assert torch.all(x[1:] > x[:-1]) and x[0] == 0 and x[-1] == 1
    knots = torch.from_numpy(tm.wf_knots()).float()
    assert torch.equal(x[::10], knots)
    gaps = torch.diff(x.double()).reshape(32, 10)
    torch.testing.assert_close(gaps, gaps[:, :1].expand(-1, 10), rtol=0, atol=1e-7)
    np.testing.assert_allclose(y.numpy(), tm.wf_function(x.double().numpy()), rtol=1e-6, atol=1e-7)
    spec, wf = tm.wf_network()
    loss = ref.loss_grad(5, 5, wf[None], x.double(), y.double(), want_grad=False)[0]
    assert float(loss) < 1e-14  # W_f is an exact fit: the global minimum
    assert tm.wf_training_set(between=0)[0].shape == (33,)


# ---- de-symmetrisation ---------------------------------------------------------------------------------------
def permute_and_rescale(spec, p, seed):
    """A random member of p's symmetry class: each hidden layer's units permuted and rescaled (c > 0)."""
    g = np.random.default_rng(seed)
    M, K, N = p.shape[0], spec.depth, spec.width
    layers = [(W.clone(), b.clone()) for W, b in spec.unflatten(p.clone())]
    for m in range(M):
        prev_perm, prev_c = np.arange(1), np.ones(1)
        for l in range(K + 1):
            W, b = layers[l]
            perm = g.permutation(N) if l < K else np.arange(1)
            c = np.exp(g.uniform(-1.5, 1.5, N)) if l < K else np.ones(1)
            Wm = W[m].numpy()[perm][:, prev_perm] * c[:, None] / prev_c[None, :]
            W[m] = torch.from_numpy(Wm)
            b[m] = torch.from_numpy(b[m].numpy()[perm] * c)
            prev_perm, prev_c = perm, c
    return spec.flatten(layers)


@pytest.fixture(scope="module")
def trained_like():
    """He-init models with random biases, and W_f: generic points with every kind of structure."""
    spec = TinyMLP(5, 5)
    p = spec.init(40, seed=3).double()
    mask = torch.rand(40, 136, generator=torch.Generator().manual_seed(5)) < 0.5
    p += 0.3 * rand_params(spec, 40, seed=4) * mask
    return spec, torch.cat([p, tm.wf_network()[1][None]])


def test_desymmetrize_keeps_the_function_and_never_grows_the_norm(trained_like):
    spec, p = trained_like
    d = tm.desymmetrize(spec, p)
    assert d.shape == p.shape and d.dtype == p.dtype
    x = torch.linspace(-1.0, 2.0, 601, dtype=torch.float64)
    torch.testing.assert_close(forward(spec, d, x), forward(spec, p, x), rtol=1e-10, atol=1e-10)
    assert torch.all(d.norm(dim=1) <= p.norm(dim=1) * (1 + 1e-12))
    # optimality: every unit balanced (|in|^2 = |out|^2), units in increasing norm order
    A, B = tm._unit_norms(spec, d)
    torch.testing.assert_close(A, B, rtol=1e-10, atol=1e-12)
    assert torch.all(torch.diff(A + B, dim=2) >= 0)


def test_desymmetrize_is_idempotent(trained_like):
    spec, p = trained_like
    d = tm.desymmetrize(spec, p)
    torch.testing.assert_close(tm.desymmetrize(spec, d), d, rtol=1e-10, atol=1e-12)


def test_desymmetrize_maps_a_symmetric_copy_to_the_same_representative(trained_like):
    spec, p = trained_like
    q = permute_and_rescale(spec, p, seed=11)
    assert not torch.allclose(q, p)
    x = torch.linspace(-1.0, 2.0, 101, dtype=torch.float64)
    torch.testing.assert_close(forward(spec, q, x), forward(spec, p, x), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(tm.desymmetrize(spec, q), tm.desymmetrize(spec, p), rtol=1e-9, atol=1e-10)


def test_desymmetrize_single_vector_float32_and_other_shapes():
    spec = TinyMLP(3, 4)
    p = rand_params(spec, 6, seed=2)
    d = tm.desymmetrize(spec, p)
    torch.testing.assert_close(tm.desymmetrize(spec, p[2]), d[2])
    d32 = tm.desymmetrize(spec, p.float())
    assert d32.dtype == torch.float32
    torch.testing.assert_close(d32, d.float())
    assert tm.desymmetrize(spec, p[:0]).shape == (0, spec.dim)


def test_desymmetrize_zeroes_units_nobody_reads_or_that_read_nothing():
    spec = TinyMLP(2, 3)
    p = rand_params(spec, 1, seed=9)[0]
    layers = spec.unflatten(p)
    layers[0][0][1] = 0.0  # unit 1 of layer 1 reads nothing (no weight from x, no bias): it outputs 0
    layers[0][1][1] = 0.0
    layers[2][0][0, 2] = 0.0  # unit 2 of layer 2 feeds nothing
    d = tm.desymmetrize(spec, p)
    x = torch.linspace(-3, 3, 301, dtype=torch.float64)
    torch.testing.assert_close(forward(spec, d[None], x), forward(spec, p[None], x), rtol=1e-10, atol=1e-10)
    A, B = tm._unit_norms(spec, d[None])
    dead = (A == 0) | (B == 0)
    assert int(dead.sum()) == 2 and torch.all(A[dead] == 0) and torch.all(B[dead] == 0)
    assert d.norm() < p.norm()
    assert torch.all(dead[0, :, 0])  # an all-zero unit has norm 0: sorted first


def test_desymmetrize_bad_inputs():
    spec = TinyMLP(2, 2)
    with pytest.raises(ValueError, match="params"):
        tm.desymmetrize(spec, torch.zeros(3, spec.dim + 1))
    with pytest.raises(ValueError, match="params"):
        tm.desymmetrize(spec, torch.zeros(2, 3, spec.dim))
    bad = torch.zeros(2, spec.dim)
    bad[1, 0] = math.nan
    with pytest.raises(ValueError, match="NaN"):
        tm.desymmetrize(spec, bad)
