"""lscape's written-out double backwards of attention, norms, activations, embeddings and cross-entropy
(_hvpattention, _hvpnorms, _hvpactivations, _hvpembedding, _hvploss, caught by _hvpops.hvp_mode), against
torch's autograd on the same model with attention written by hand (float64), and finite differences
(gradcheck / gradgradcheck)."""
import math

import lscape
import pytest
import torch
from lscape import Landscape, _hvphead, _hvpops
from lscape._hvpactivations import _ActGrad, gelu, silu
from lscape._hvpattention import HessianDropoutError, _SDPAGrad, sdpa
from lscape._hvpembedding import _EmbeddingGrad, embedding
from lscape._hvphead import _HeadGrad
from lscape._hvploss import _CEGrad, cross_entropy
from lscape._hvpnorms import _NormGrad, layer_norm, rms_norm
from lscape.probes import spectrum
from torch import nn
from torch.nn import functional as F

F64 = torch.float64
GRADS = {"attention": _SDPAGrad, "norm": _NormGrad, "activation": _ActGrad, "embedding": _EmbeddingGrad,
         "loss": _CEGrad, "head": _HeadGrad}


def _math_attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    """Attention by hand (torch's own double backward exists): the reference."""
    if enable_gqa:
        k = k.repeat_interleave(q.shape[-3] // k.shape[-3], -3)
        v = v.repeat_interleave(q.shape[-3] // v.shape[-3], -3)
    S = q @ k.transpose(-1, -2) * (1 / math.sqrt(q.shape[-1]) if scale is None else scale)
    if is_causal:
        attn_mask = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool).tril()
    if attn_mask is None:
        return torch.softmax(S, -1) @ v
    S = S.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else S + attn_mask
    dead = torch.isneginf(S).all(-1, keepdim=True)  # fully masked rows attend to nothing, as torch's kernels
    return torch.softmax(S.masked_fill(dead, 0.0), -1).masked_fill(dead, 0.0) @ v


class NewGELUActivation(nn.Module):  # transformers.activations' GELU (tanh form) from elementwise ops
    def forward(self, x):
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


class LlamaRMSNorm(nn.Module):  # transformers' RMSNorm from elementwise ops
    def __init__(self, d, eps=1e-6):
        super().__init__()
        self.weight, self.variance_epsilon = nn.Parameter(1 + 0.1 * torch.randn(d)), eps

    def forward(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))


class GemmaRMSNorm(LlamaRMSNorm):  # matched by name, but (1 + w): must be left alone
    def forward(self, x):
        return (1 + self.weight) * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))


class Block(nn.Module):
    def __init__(self, d, heads, norm, act, attention):
        super().__init__()
        self.n1, self.n2 = norm(d), norm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc, self.out, self.act = nn.Linear(d, 4 * d), nn.Linear(4 * d, d), act()
        self.heads, self.attention = heads, attention

    def forward(self, x):
        B, T, d = x.shape
        q, k, v = self.qkv(self.n1(x)).view(B, T, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        x = x + self.proj(self.attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, d))
        return x + self.out(self.act(self.fc(self.n2(x))))


class Twin(nn.Module):
    """A small GPT with every op lscape writes out: LayerNorm + GELU (erf), nn.RMSNorm + NewGELU (tanh),
    LlamaRMSNorm + SiLU, GemmaRMSNorm (left alone), tied embedding / head; attention by F.sdpa or by hand."""

    def __init__(self, attention, vocab=11, d=16, heads=4, T=8):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, d), nn.Embedding(T, d)
        kinds = [(nn.LayerNorm, nn.GELU), (lambda n: nn.RMSNorm(n, eps=1e-6), NewGELUActivation),
                 (LlamaRMSNorm, nn.SiLU), (GemmaRMSNorm, lambda: nn.GELU("tanh"))]
        self.blocks = nn.ModuleList(Block(d, heads, n, a, attention) for n, a in kinds)
        self.ln_f = nn.LayerNorm(d)

    def forward(self, idx):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
        for b in self.blocks:
            x = b(x)
        return self.ln_f(x) @ self.wte.weight.t()


def _twins():
    torch.manual_seed(0)
    new = Twin(F.scaled_dot_product_attention).double().eval()
    ref = Twin(_math_attention).double().eval()
    ref.load_state_dict(new.state_dict())
    idx = torch.randint(0, 11, (3, 8))
    y = torch.randint(0, 11, (3, 8))
    y[0, :3] = -100
    return new, ref, idx, y


def _flat_loss(model, idx, y):
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss(t):
        parts = dict(zip(names, (c.view(s) for c, s in zip(t.split([s.numel() for s in shapes]), shapes,
                                                           strict=True)), strict=True))
        z = torch.func.functional_call(model, parts, (idx,))
        z = getattr(z, "logits", z)  # a Hugging Face model's output (its own loss upcasts to float32)
        return F.cross_entropy(z.reshape(-1, z.shape[-1]), y.reshape(-1), ignore_index=-100)
    return loss, theta


def _grad_hvp(loss, theta, V, mode):
    x = theta.clone().requires_grad_(True)
    with mode:
        (g,) = torch.autograd.grad(loss(x), x, create_graph=True)
    return g.detach(), torch.stack([torch.autograd.grad(g, x, v, retain_graph=True)[0] for v in V])


@pytest.fixture
def counted(monkeypatch):
    """Calls of each written-out second backward."""
    calls = dict.fromkeys(GRADS, 0)
    for name, fn in GRADS.items():
        def counting(*a, name=name, second=fn.backward):
            calls[name] += 1
            return second(*a)
        monkeypatch.setattr(fn, "backward", staticmethod(counting))
    return calls


def test_twin_gradients_and_products_equal_torch_autograd(counted):
    new, ref, idx, y = _twins()
    loss_new, theta = _flat_loss(new, idx, y)
    loss_ref, _ = _flat_loss(ref, idx, y)
    V = torch.randn(2, theta.numel(), dtype=F64)
    g_ref, hv_ref = _grad_hvp(loss_ref, theta, V, torch.enable_grad())
    g_new, hv_new = _grad_hvp(loss_new, theta, V, _hvpops.hvp_mode(new))
    torch.testing.assert_close(g_new, g_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(hv_new, hv_ref, rtol=1e-10, atol=1e-10)
    assert float(hv_ref.abs().max()) > 1e-2
    # per product: 4 attentions, 7 norms (2 LayerNorm, 2 nn.RMSNorm, 2 LlamaRMSNorm, ln_f; Gemma's left
    # alone), 3 activations by F.* and 1 by NewGELU's swapped forward, 2 embeddings, the loss
    # (its head is a matmul, not an F.linear: the loss is not fused with it)
    assert counted == {"attention": 8, "norm": 14, "activation": 8, "embedding": 4, "loss": 2, "head": 0}
    assert not torch._C._is_torch_function_mode_enabled()
    assert not any("forward" in m.__dict__ for m in new.modules())


def test_hvp_mode_forward_values_unchanged_bit_for_bit():
    # float32, the backend torch picks (flash on the CPU): the model computes what it computes without lscape
    new, _, idx, _ = _twins()
    new = new.float()
    with torch.no_grad():
        plain = new(idx)
    with torch.nn.attention.sdpa_kernel([torch.nn.attention.SDPBackend.FLASH_ATTENTION]):
        with torch.no_grad():
            flash = new(idx)
        with _hvpops.hvp_mode(new):
            inside = new(idx)
    assert inside.requires_grad and torch.equal(inside.detach(), plain) and torch.equal(flash, plain)


def test_hvp_mode_restores_after_an_exception():
    new, _, idx, _ = _twins()
    assert not torch._C._is_torch_function_mode_enabled()
    with pytest.raises(KeyError), _hvpops.hvp_mode(new):
        assert torch._C._is_torch_function_mode_enabled()
        assert "forward" in new.blocks[1].act.__dict__ and "forward" in new.blocks[2].n1.__dict__
        raise KeyError
    assert not torch._C._is_torch_function_mode_enabled() and not _hvpops.active()
    assert not any("forward" in m.__dict__ for m in new.modules())
    with pytest.raises(RuntimeError, match="derivative for aten::_scaled_dot_product"):  # torch's own again
        x = torch.randn(1, 2, 3, 4, dtype=F64, requires_grad=True)
        (g,) = torch.autograd.grad(F.scaled_dot_product_attention(x, x, x).pow(2).sum(), x, create_graph=True)
        torch.autograd.grad(g.sum(), x)


def test_dropout_while_building_a_graph_is_a_named_error():
    x = torch.randn(1, 2, 3, 4, requires_grad=True)
    with _hvpops.hvp_mode(), pytest.raises(HessianDropoutError, match=r"model\.eval\(\)"):
        F.scaled_dot_product_attention(x, x, x, dropout_p=0.1)
    with _hvpops.hvp_mode(), torch.no_grad():  # nothing differentiated: torch's own
        F.scaled_dot_product_attention(x, x, x, dropout_p=0.1)


def _third_order(fn, ref, ins):
    """(value, gradient, product, third derivative) of sum(sin(f) f) by fn and by ref, the vectors shared."""
    g = torch.Generator().manual_seed(3)
    u = [torch.randn(t.shape, generator=g, dtype=F64) for t in ins]
    out = []
    for f in (ref, fn):
        ts = [t.clone().requires_grad_(True) for t in ins]
        o = f(*ts)
        gs = torch.autograd.grad((torch.sin(o) * o).sum(), ts, create_graph=True)
        hv = torch.autograd.grad(gs, ts, u, create_graph=True)
        hv_plain = torch.autograd.grad(gs, ts, u, retain_graph=True)  # no create_graph: the cached paths
        t3 = torch.autograd.grad(sum((h * w).sum() for h, w in zip(hv, u, strict=True)), ts)
        out.append([o.detach(), *(t.detach() for t in (*gs, *hv)), *hv_plain, *t3])
    for a, r in zip(out[1], out[0], strict=True):
        torch.testing.assert_close(a, r, rtol=1e-10, atol=1e-10)
    assert max(float(t.abs().max()) for t in out[0][1 + 2 * len(ins):]) > 1e-3


def _qkv(L=5, Lk=6, hq=4, hk=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, h, n, e, generator=g, dtype=F64) for h, n, e in ((hq, L, 3), (hk, Lk, 3), (hk, Lk, 2))]


def _masks():
    g = torch.Generator().manual_seed(1)
    boolean = torch.rand(5, 6, generator=g) > 0.4
    boolean[1] = False  # a fully masked row
    floating = torch.randn(2, 1, 5, 6, generator=g, dtype=F64)
    floating[0, 0, 2] = float("-inf")
    return {"plain": {}, "causal": {"is_causal": True}, "bool": {"attn_mask": boolean},
            "float": {"attn_mask": floating}, "scale": {"scale": 0.3, "is_causal": True}}


@pytest.mark.parametrize("kw", _masks().values(), ids=_masks().keys())
@pytest.mark.parametrize("gqa", [1, 2], ids=["mha", "gqa"])
def test_attention_three_orders_equal_torch_autograd(kw, gqa):
    ins = _qkv(hk=4 // gqa)
    extra = {"enable_gqa": True} if gqa > 1 else {}
    _third_order(lambda *t: sdpa(*t, **kw, **extra), lambda *t: _math_attention(*t, **kw, **extra), ins)


@pytest.mark.parametrize("kw", [{"is_causal": True}, {"attn_mask": _masks()["float"]["attn_mask"]}],
                         ids=["causal", "float"])
def test_attention_vector_free_terms_kept_between_products(monkeypatch, kw):
    """P, dP - D and dS are computed by the first product of a graph and reused by the next ones, with the
    same products as when every product recomputes them."""
    from lscape import _hvpattention

    calls = [0]
    probs = _hvpattention._probs

    def counting(*a):
        calls[0] += 1
        return probs(*a)
    monkeypatch.setattr(_hvpattention, "_probs", counting)
    q, k, v = (t.requires_grad_(True) for t in _qkv())
    U = [torch.randn(2, *t.shape, generator=torch.Generator().manual_seed(9), dtype=F64) for t in (q, k, v)]
    out = {}
    for elems in (0, 1 << 20):
        monkeypatch.setattr(_hvpattention, "FIXED_ELEMS", elems)
        g = torch.autograd.grad((sdpa(q, k, v, **kw) ** 2).sum(), (q, k, v), create_graph=True)
        calls[0] = 0
        out[elems] = [torch.autograd.grad(g, (q, k, v), [u[i] for u in U], retain_graph=True) for i in range(2)]
        assert calls[0] == (2 if elems == 0 else 1)
    for a, b in zip(out[0], out[1 << 20], strict=True):
        for x, y in zip(a, b, strict=True):
            torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-12)


def test_attention_chunks_of_query_rows(monkeypatch):
    from lscape import _hvpbase
    ins = _qkv(L=7, Lk=7)
    monkeypatch.setattr(_hvpbase, "CHUNK_ELEMS", 2 * 4 * 7 * 2)  # two query rows a chunk: four chunks
    monkeypatch.setattr(_hvpbase.row_chunks, "__defaults__", (_hvpbase.CHUNK_ELEMS,))
    mask = _masks()["bool"]["attn_mask"]
    _third_order(lambda *t: sdpa(*t, attn_mask=F.pad(mask, (1, 0, 1, 1), value=True)),
                 lambda *t: _math_attention(*t, attn_mask=F.pad(mask, (1, 0, 1, 1), value=True)), ins)


def _ln_ref(x, w, b, eps=1e-5):
    mu = x.mean(-1, keepdim=True)
    y = (x - mu) / torch.sqrt(((x - mu) ** 2).mean(-1, keepdim=True) + eps) * w
    return y if b is None else y + b


def _rms_ref(x, w, eps=1e-6):
    return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + eps) * w


_X = torch.randn(3, 4, 6, generator=torch.Generator().manual_seed(4), dtype=F64) * 2
_W = torch.randn(6, generator=torch.Generator().manual_seed(5), dtype=F64)
_Y = torch.tensor([1, -100, 3, 0, 5, 2, -100, 4, 0, 1, 1, 3])
ELEMENTWISE = {
    "layer_norm": (lambda x, w, b: layer_norm(x, (6,), w, b), _ln_ref, [_X, _W, _W.flip(0)]),
    "layer_norm-no-bias": (lambda x, w: layer_norm(x, (6,), w), lambda x, w: _ln_ref(x, w, None), [_X, _W]),
    "layer_norm-2d": (lambda x, w: layer_norm(x, (4, 6), w),
                      lambda x, w: _ln_ref(x.flatten(-2), w.flatten(), None).view(x.shape), [_X, _X[0] * 0.5]),
    "rms_norm": (lambda x, w: rms_norm(x, (6,), w, 1e-6), _rms_ref, [_X, _W]),
    "gelu": (gelu, lambda x: 0.5 * x * (1 + torch.erf(x / math.sqrt(2))), [_X]),
    "gelu-tanh": (lambda x: gelu(x, approximate="tanh"), NewGELUActivation(), [_X]),
    "silu": (silu, lambda x: x * torch.sigmoid(x), [_X]),
    "embedding": (lambda w: embedding(_Y.clamp(min=0).view(3, 4), w, padding_idx=2) * w[:1],
                  lambda w: F.embedding(_Y.clamp(min=0).view(3, 4), w, padding_idx=2) * w[:1], [_X.view(12, 6)[:6]]),
}
for _red in ("mean", "sum", "none"):
    ELEMENTWISE[f"cross_entropy-{_red}"] = (
        lambda z, r=_red: cross_entropy(z, _Y, reduction=r),
        lambda z, r=_red: F.cross_entropy(z, _Y, reduction=r), [_X.view(12, 6)])
    ELEMENTWISE[f"cross_entropy-3d-{_red}"] = (
        lambda z, r=_red: cross_entropy(z, _Y.view(3, 4), reduction=r),
        lambda z, r=_red: F.cross_entropy(z, _Y.view(3, 4), reduction=r), [_X.transpose(1, 2)])


@pytest.mark.parametrize("name", ELEMENTWISE)
def test_three_orders_equal_torch_autograd(name):
    fn, ref, ins = ELEMENTWISE[name]
    _third_order(fn, ref, ins)


GRADCHECKED = {
    "sdpa-causal": (lambda *t: sdpa(*t, is_causal=True), _qkv(3, 3, 2, 2)),
    "sdpa-mask-gqa": (lambda *t: sdpa(*t, attn_mask=_masks()["bool"]["attn_mask"][:3, :4], enable_gqa=True),
                      _qkv(3, 4, 2, 1)),
    **{n: (ELEMENTWISE[n][0], [t[..., :2, :].clone() if t.dim() > 2 else t for t in ELEMENTWISE[n][2]])
       for n in ("layer_norm", "rms_norm", "gelu", "gelu-tanh", "silu")},
    # without padding_idx: its row is read by the forward but gets no gradient, by design (torch's too)
    "embedding": (lambda w: embedding(_Y.clamp(min=0).view(3, 4), w) * w[:1], [_X.view(12, 6)[:6]]),
    **{n: (ELEMENTWISE[n][0], ELEMENTWISE[n][2]) for n in ("cross_entropy-mean", "cross_entropy-none")},
}


@pytest.mark.parametrize("name", GRADCHECKED)
def test_first_and_second_derivatives_match_finite_differences(name):
    fn, ins = GRADCHECKED[name]
    args = tuple(t.detach().clone().requires_grad_(True) for t in ins)
    assert torch.autograd.gradcheck(fn, args)
    assert torch.autograd.gradgradcheck(fn, args)


def test_plain_ops_where_not_covered(counted):
    z = _X.view(12, 6).clone().requires_grad_(True)
    # label smoothing, class weights: torch's op (its graph, no _CEGrad)
    for kw in ({"label_smoothing": 0.1}, {"weight": torch.rand(6, dtype=F64)}):
        with _hvpops.hvp_mode():
            (g,) = torch.autograd.grad(F.cross_entropy(z, _Y, **kw), z, create_graph=True)
        (hv,) = torch.autograd.grad(g, z, torch.ones_like(z))
        (g_ref,) = torch.autograd.grad(F.cross_entropy(z, _Y, **kw), z, create_graph=True)
        torch.testing.assert_close(hv, torch.autograd.grad(g_ref, z, torch.ones_like(z))[0], rtol=1e-12, atol=1e-12)
    assert counted["loss"] == 0
    # under torch.func transforms the plain ops run (their batching rules)
    with _hvpops.hvp_mode():
        H = torch.func.hessian(lambda t: F.layer_norm(t, (6,), _W).pow(3).sum())(_X[0, 0])
    torch.testing.assert_close(H, torch.func.hessian(lambda t: _ln_ref(t, _W, None).pow(3).sum())(_X[0, 0]))


def test_matched_module_checked_once_and_left_alone_when_it_differs(counted):
    class FastGELUActivation(nn.Module):  # a known name computing something else (QuickGELU): left alone
        def forward(self, x):
            return x * torch.sigmoid(1.702 * x)
    model = nn.Sequential(nn.Linear(4, 4), FastGELUActivation(), nn.Linear(4, 4), NewGELUActivation()).double()
    x = torch.randn(5, 4, dtype=F64)
    with _hvpops.hvp_mode(model):
        ps = list(model.parameters())
        gs = torch.autograd.grad(model(x).pow(2).sum(), ps, create_graph=True)
    torch.autograd.grad(gs, ps, [torch.ones_like(p) for p in ps])
    assert counted["activation"] == 1  # NewGELU's only


def _gpt2(attn):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, n_positions=32, vocab_size=97,
                                  attn_implementation=attn)
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(cfg).eval().double()


def _gpt2_case():
    """(the sdpa model, tokens, shifted targets, its flat loss, the eager twin's, theta, two vectors)."""
    sdpa_model, eager = _gpt2("sdpa"), _gpt2("eager")
    idx = torch.randint(0, 97, (3, 16), generator=torch.Generator().manual_seed(6))
    y = idx.roll(-1, 1)
    y[:, -1] = -100
    loss_new, theta = _flat_loss(sdpa_model, idx, y)
    loss_ref, _ = _flat_loss(eager, idx, y)
    V = torch.randn(2, theta.numel(), dtype=F64, generator=torch.Generator().manual_seed(7))
    return sdpa_model, idx, y, loss_new, loss_ref, theta, V


@pytest.mark.filterwarnings("ignore")
def test_hugging_face_gpt2_sdpa_products_equal_eager(counted):
    sdpa_model, idx, y, loss_new, loss_ref, theta, V = _gpt2_case()
    assert sdpa_model.config._attn_implementation == "sdpa"
    # through lscape.probes.hvp on a function landscape (hvp_mode without a module: F.* caught), batched
    L = Landscape.from_function(loss_new, theta.numel())
    got = spectrum.hvp(L, theta, V)
    _, ref = _grad_hvp(loss_ref, theta, V, torch.enable_grad())
    torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-10)
    assert counted["attention"] >= 2 and counted["norm"] >= 5 and counted["loss"] >= 1
    # and directly, inside hvp_mode(model): NewGELUActivation's swapped forward too
    counted["activation"] = 0
    g_new, hv_new = _grad_hvp(loss_new, theta, V[:1], _hvpops.hvp_mode(sdpa_model))
    g_ref, _ = _grad_hvp(loss_ref, theta, V[:1], torch.enable_grad())
    torch.testing.assert_close(g_new, g_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(hv_new, ref[:1], rtol=1e-9, atol=1e-10)
    assert counted["activation"] == 2


# ---- a language model's head fused with its loss (_hvphead) ---------------------------------------------
@pytest.fixture
def small_heads(monkeypatch):
    """Heads of 6 classes count as a language model's (the fused path runs on test-sized vocabularies)."""
    monkeypatch.setattr(_hvphead, "HEAD_MIN_CLASSES", 6)


_HW = torch.randn(6, 6, generator=torch.Generator().manual_seed(8), dtype=F64)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("bias", [True, False])
def test_head_fused_three_orders_equal_torch_autograd(small_heads, counted, reduction, bias):
    ins = [_X, _HW] + ([_W * 0.3] if bias else [])

    def fused(h, W, b=None):
        return _hvphead.cross_entropy(_hvphead.linear(h, W, b).view(-1, 6), _Y, reduction=reduction)

    def ref(h, W, b=None):
        return F.cross_entropy(F.linear(h, W, b).view(-1, 6), _Y, reduction=reduction)
    _third_order(fused, ref, ins)
    # plain second backwards (hv_plain) by the chunked path, third derivatives by the differentiable one
    assert counted["head"] >= 2 and counted["loss"] == 0


def test_head_fused_chunks_and_finite_differences(small_heads, monkeypatch):
    monkeypatch.setattr(_hvphead, "HEAD_CHUNK_ELEMS", 6 * 5)  # 5 rows a chunk: 12 rows in three chunks
    ins = [_X.detach().clone().requires_grad_(True), _HW.clone().requires_grad_(True),
           (_W * 0.3).requires_grad_(True)]

    def fused(h, W, b):
        return _hvphead.cross_entropy(_hvphead.linear(h, W, b).view(-1, 6), _Y)
    _third_order(fused, lambda h, W, b: F.cross_entropy(F.linear(h, W, b).view(-1, 6), _Y), [t.detach() for t in ins])
    assert torch.autograd.gradcheck(fused, tuple(ins))
    assert torch.autograd.gradgradcheck(fused, tuple(ins))


def test_head_not_fused_where_rows_do_not_line_up(small_heads, counted):
    """Logits sliced before the loss (a copy), or a head below the size of a language model's: the plain
    written-out cross-entropy, the same derivatives."""
    h, W = _X.clone().requires_grad_(True), _HW.clone().requires_grad_(True)
    with _hvpops.hvp_mode():
        z = F.linear(h, W)
        loss = F.cross_entropy(z[:, :-1].reshape(-1, 6), _Y[:9])
        (gh,) = torch.autograd.grad(loss, h, create_graph=True)
        (hv,) = torch.autograd.grad(gh, W, torch.ones_like(gh))
    z = F.linear(h, W)
    (gh_ref,) = torch.autograd.grad(F.cross_entropy(z[:, :-1].reshape(-1, 6), _Y[:9]), h, create_graph=True)
    (hv_ref,) = torch.autograd.grad(gh_ref, W, torch.ones_like(gh_ref))
    torch.testing.assert_close(hv, hv_ref, rtol=1e-10, atol=1e-12)
    assert counted["head"] == 0 and counted["loss"] == 1


@pytest.mark.filterwarnings("ignore")
def test_hugging_face_gpt2_head_fused_products_equal_eager(counted, monkeypatch):
    """GPT-2's lm_head (an nn.Linear tied to the embedding) fused with the loss, from logits and from the
    model's own loss (labels in the batch), against torch's autograd on the eager twin."""
    monkeypatch.setattr(_hvphead, "HEAD_MIN_CLASSES", 97)
    sdpa_model, idx, y, loss_new, loss_ref, theta, V = _gpt2_case()
    g_ref, hv_ref = _grad_hvp(loss_ref, theta, V, torch.enable_grad())
    g_new, hv_new = _grad_hvp(loss_new, theta, V, _hvpops.hvp_mode(sdpa_model))
    torch.testing.assert_close(g_new, g_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(hv_new, hv_ref, rtol=1e-9, atol=1e-10)
    assert counted["head"] == 2 and counted["loss"] == 0
    # through Landscape.from_module and probes.hvp, targets given apart
    L = Landscape.from_module(sdpa_model, lscape.token_cross_entropy, (idx, y))
    got = spectrum.hvp(L, theta, V[:1])
    torch.testing.assert_close(got, hv_ref[:1], rtol=1e-9, atol=1e-10)
    assert counted["head"] == 3


@pytest.mark.filterwarnings("ignore")
def test_hugging_face_gpt2_own_loss_head_fused(counted, monkeypatch):
    """The model's own causal-LM loss (labels in the batch, shifted inside; float32, where its upcast
    `.float()` is the logits themselves): fused, and the same product as unfused to float32 rounding."""
    idx = torch.randint(0, 97, (3, 16), generator=torch.Generator().manual_seed(6))
    model = _gpt2("sdpa").float()
    L = Landscape.from_module(model, None, {"input_ids": idx, "labels": idx})
    theta = torch.nn.utils.parameters_to_vector(model.parameters()).detach()
    V = torch.randn(1, theta.numel(), generator=torch.Generator().manual_seed(7))
    plain = spectrum.hvp(L, theta, V)
    assert counted["head"] == 0 and counted["loss"] == 1
    monkeypatch.setattr(_hvphead, "HEAD_MIN_CLASSES", 97)
    fused = spectrum.hvp(L, theta, V)
    assert counted["head"] == 1 and counted["loss"] == 1
    torch.testing.assert_close(fused, plain, rtol=1e-4, atol=1e-5 * float(plain.abs().max()))


def test_activation_inputs_let_go_after_the_first_product():
    """After a plain product only f'(x) and gO f''(x) are kept (x and gO are let go): further products are
    unchanged, and a third derivative through that graph is a named error instead of a wrong number."""
    x = _X.clone().requires_grad_(True)
    u = torch.randn(_X.shape, generator=torch.Generator().manual_seed(10), dtype=F64)
    (g,) = torch.autograd.grad((gelu(x) ** 3).sum(), x, create_graph=True)
    (first,) = torch.autograd.grad(g, x, u, retain_graph=True)
    (again,) = torch.autograd.grad(g, x, u, retain_graph=True)
    (g_ref,) = torch.autograd.grad((F.gelu(x) ** 3).sum(), x, create_graph=True)
    (want,) = torch.autograd.grad(g_ref, x, u)
    torch.testing.assert_close(first, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(again, want, rtol=1e-12, atol=1e-12)
    with pytest.raises(RuntimeError, match="build the graph again"):
        torch.autograd.grad(g, x, u, retain_graph=True, create_graph=True)
