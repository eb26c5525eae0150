"""The shared reference networks: parameter counts as documented, deterministic seeds, eval-mode BatchNorm
that is not the identity, and a named error for a bad width; the transformers' shapes, causality, fused
attention equal to the written-out one, the tied head, and their argument checks."""
import pytest
import torch
from lscape.models import nanogpt, resnet20, vit
from torch import nn


@pytest.mark.parametrize("width,count", [(1, 272_474), (2, 1_084_586)])
def test_resnet20_parameter_count(width, count):
    assert sum(p.numel() for p in resnet20(width).parameters()) == count


def test_resnet20_same_seed_same_weights_and_bn_is_not_identity():
    a, b, c = resnet20(seed=3), resnet20(seed=3), resnet20(seed=4)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["conv.weight"], sc["conv.weight"])
    assert not a.training
    assert not torch.allclose(a.bn.running_var, torch.ones_like(a.bn.running_var))
    x = torch.randn(2, 3, 32, 32)
    assert a(x).shape == (2, 10)


def test_resnet20_rejects_bad_width():
    with pytest.raises(ValueError, match="width: expected a positive int, got 0"):
        resnet20(0)


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


GROKKING = dict(vocab_size=114, context=3, d_model=128, n_layers=1, n_heads=4, activation="relu",
                layer_norm=False, tied=False)


def _tokens(n: int, t: int, vocab: int = 65, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, (n, t), generator=torch.Generator().manual_seed(seed))


def test_nanogpt_shape_and_eval_mode_and_seed():
    m = nanogpt()
    assert not m.training
    idx = _tokens(2, 64)
    assert m(idx).shape == (2, 64, 65) and m(idx[:, :5]).shape == (2, 5, 65)
    same, other = nanogpt(seed=0).state_dict(), nanogpt(seed=1).state_dict()
    assert all(torch.equal(v, same[k]) for k, v in m.state_dict().items())
    assert not torch.equal(m.state_dict()["wte.weight"], other["wte.weight"])
    with pytest.raises(ValueError, match="idx: got .* T <= context = 64"):
        m(_tokens(1, 65))
    with pytest.raises(ValueError, match="idx: got .*float32.*expected int64"):
        m(torch.zeros(1, 4))


@pytest.mark.parametrize("attention", ["sdpa", "math"])
def test_nanogpt_is_causal(attention):
    m = nanogpt(n_layers=2, attention=attention)
    idx = _tokens(3, 20)
    later = idx.clone()
    later[:, 12:] = (later[:, 12:] + 7) % 65
    a, b = m(idx), m(later)
    assert torch.equal(a[:, :12], b[:, :12])
    assert not torch.allclose(a[:, 12:], b[:, 12:])


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.float64, 1e-12)])
def test_sdpa_equals_written_out_attention(dtype, tol):
    idx = _tokens(3, 64)
    a, b = nanogpt().to(dtype), nanogpt(attention="math").to(dtype)
    torch.testing.assert_close(a(idx), b(idx), rtol=tol, atol=tol)
    x = torch.rand(4, 784, dtype=dtype, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(vit().to(dtype)(x), vit(attention="math").to(dtype)(x), rtol=tol, atol=tol)


def test_math_attention_is_twice_differentiable():
    m = nanogpt(n_layers=1, context=8, attention="math").double()
    idx = _tokens(2, 8)
    params = list(m.parameters())
    loss = nn.functional.cross_entropy(m(idx).flatten(0, 1), idx.flatten())
    grads = torch.autograd.grad(loss, params, create_graph=True)
    hv = torch.autograd.grad(sum(g.sum() for g in grads), params)
    assert all(torch.isfinite(h).all() for h in hv) and any(h.abs().sum() > 0 for h in hv)


@pytest.mark.parametrize("n_layers,attention", [(1, "sdpa"), (2, "sdpa"), (2, "math")])
def test_last_position_alone_equals_the_full_forward_and_its_gradients(n_layers, attention):
    m = nanogpt(n_layers=n_layers, context=8, attention=attention).double()
    idx = _tokens(4, 7)
    full, last = m(idx)[:, -1], m(idx, last=True)
    assert last.shape == (4, 65)
    torch.testing.assert_close(last, full, rtol=1e-12, atol=1e-12)
    params = list(m.parameters())
    target = idx[:, 0]
    g_full = torch.autograd.grad(nn.functional.cross_entropy(full, target), params)
    g_last = torch.autograd.grad(nn.functional.cross_entropy(last, target), params)
    for a, b in zip(g_full, g_last, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    # the other positions do matter: the last one attends to every key
    other = idx.clone()
    other[:, 0] = (other[:, 0] + 1) % 65
    assert not torch.allclose(m(other, last=True), last)


def test_nanogpt_tied_head_shares_the_embedding():
    m = nanogpt()
    assert m.lm_head.weight is m.wte.weight
    assert m.lm_head.weight.data_ptr() == m.wte.weight.data_ptr()
    names = [n for n, _ in m.named_parameters()]
    assert "wte.weight" in names and "lm_head.weight" not in names
    untied = nanogpt(tied=False)
    assert untied.lm_head.weight.data_ptr() != untied.wte.weight.data_ptr()
    assert _count(untied) - _count(m) == 65 * 128


def test_nanogpt_parameter_counts_and_init():
    assert _count(nanogpt()) == 809_856
    m = nanogpt(n_layers=8)
    std = lambda t: float(t.detach().double().std())  # noqa: E731
    assert abs(std(m.wte.weight) - 0.02) < 0.002
    assert abs(std(m.blocks[0].mlp.c_fc.weight) - 0.02) < 0.002
    assert abs(std(m.blocks[0].attn.c_proj.weight) - 0.02 / 4) < 0.0005
    assert abs(std(m.blocks[0].mlp.c_proj.weight) - 0.02 / 4) < 0.0005
    assert float(m.blocks[0].attn.c_attn.bias.detach().abs().max()) == 0.0


def test_grokking_transformer_shape():
    m = nanogpt(**GROKKING)
    assert _count(m) == 227_328
    assert not any(isinstance(x, nn.LayerNorm) for x in m.modules())
    assert tuple(m.wte.weight.shape) == (114, 128) and tuple(m.wpe.weight.shape) == (3, 128)
    assert len(m.blocks) == 1 and m.blocks[0].attn.n_heads == 4
    assert tuple(m.blocks[0].mlp.c_fc.weight.shape) == (512, 128)
    assert isinstance(m.blocks[0].mlp.act, nn.ReLU)
    assert m.lm_head.weight.data_ptr() != m.wte.weight.data_ptr()
    assert m(_tokens(5, 3, vocab=114)).shape == (5, 3, 114)
    assert any(isinstance(x, nn.LayerNorm) for x in nanogpt().modules())


@pytest.mark.parametrize("kwargs,error,match", [
    ({"d_model": 130}, ValueError, "d_model: got 130, expected a multiple of n_heads = 4"),
    ({"n_heads": 0}, ValueError, "n_heads: got 0, expected an integer in"),
    ({"n_layers": 1.5}, TypeError, "n_layers: got float 1.5, expected an integer"),
    ({"vocab_size": 0}, ValueError, "vocab_size: got 0"),
    ({"context": -1}, ValueError, "context: got -1"),
    ({"mlp_ratio": 0}, ValueError, "mlp_ratio: got 0"),
    ({"activation": "tanh"}, ValueError, "activation: got 'tanh', expected one of 'gelu'"),
    ({"attention": "flash"}, ValueError, "attention: got 'flash', expected one of 'sdpa', 'math'"),
    ({"tied": 1}, TypeError, "tied: got int 1, expected True or False"),
    ({"layer_norm": None}, TypeError, "layer_norm: got NoneType None, expected True or False"),
    ({"seed": "0"}, TypeError, "seed: got str '0', expected an integer"),
])
def test_nanogpt_refuses_bad_arguments_by_name(kwargs, error, match):
    with pytest.raises(error, match=match):
        nanogpt(**kwargs)


def test_vit_shapes_for_images_and_flat_inputs():
    m = vit()
    assert not m.training and _count(m) == 205_066
    x = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    out = m(x)
    assert out.shape == (3, 10)
    assert torch.equal(m(x.flatten(1)), out)
    rgb = vit(image_size=32, patch_size=4, channels=3, num_classes=7, d_model=32, n_layers=2, n_heads=2)
    assert rgb(torch.rand(2, 3, 32, 32)).shape == (2, 7) and rgb(torch.rand(2, 3 * 32 * 32)).shape == (2, 7)
    with pytest.raises(ValueError, match=r"x: got .*expected images of shape \(N, 1, 28, 28\) or flat \(N, 784\)"):
        m(torch.rand(2, 783))
    with pytest.raises(ValueError, match="patch_size: got 5, expected a divisor of image_size = 28"):
        vit(patch_size=5)
    with pytest.raises(ValueError, match="d_model: got 66, expected a multiple of n_heads = 4"):
        vit(d_model=66)
    with pytest.raises(ValueError, match="attention: got 'flash'"):
        vit(attention="flash")
