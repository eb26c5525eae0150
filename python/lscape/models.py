"""Reference networks that the benchmarks, tests and examples share: the models researchers study.

Plain torch modules, nothing lscape-specific, so a peer tool (PyHessian, loss-landscapes) runs on
exactly the same network in a side-by-side benchmark.

    resnet20()   # the CIFAR ResNet-20 of He et al.
    nanogpt()    # a nanoGPT-style decoder (Karpathy's nanoGPT; with layer_norm=False, tied=False and ReLU
                 # the one-layer grokking transformer of Nanda et al. 2023)
    vit()        # a small Vision Transformer for MNIST-sized images (flat (N, 784) inputs accepted)
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from . import _checks

__all__ = ["GPT", "ResNet", "ViT", "nanogpt", "resnet20", "vit"]

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "gelu": nn.GELU, "gelu_tanh": lambda: nn.GELU(approximate="tanh"), "relu": nn.ReLU, "silu": nn.SiLU}
ATTENTIONS = ("sdpa", "math")


def _seeded(seed: int | None, build: Callable[[], nn.Module]) -> nn.Module:
    """build() with torch's global generator seeded by `seed` (None: as it stands), restored afterwards."""
    if seed is not None:
        seed = _checks.int_arg("seed", seed)
    with torch.random.fork_rng(enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        return build()


class _BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus the shortcut (a 1x1 conv + BN where the shape changes), then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """The CIFAR ResNet of He et al. (2016, section 4.2): 3 stages of n basic blocks, 16/32/64 channels
    times `width`, global average pooling, one linear layer."""

    def __init__(self, n: int = 3, width: int = 1, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        c = [16 * width, 32 * width, 64 * width]
        self.conv = nn.Conv2d(in_channels, c[0], 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c[0])
        blocks, cin = [], c[0]
        for stage, cout in enumerate(c):
            for i in range(n):
                blocks.append(_BasicBlock(cin, cout, 2 if (stage > 0 and i == 0) else 1))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.blocks(torch.relu(self.bn(self.conv(x))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(out, 1), 1))


def resnet20(width: int = 1, num_classes: int = 10, in_channels: int = 3, *, seed: int | None = 0,
             eval_mode: bool = True) -> ResNet:
    """ResNet-20 for 32x32 inputs (x: (N, in_channels, 32, 32) -> logits (N, num_classes)).

    D = 272,474 parameters at width 1, 1.09 M at width 2, 4.33 M at width 4, 27 M at width 10.
    `seed` fixes the initial weights (None: torch's global generator). With `eval_mode` the module is
    returned in eval mode with non-trivial BatchNorm running statistics (drawn from the same seed), as a
    trained network's would be, so BatchNorm is a real per-channel affine map and not the identity.
    """
    if not isinstance(width, int) or width < 1:
        raise ValueError(f"width: expected a positive int, got {width!r}")
    model = _seeded(seed, lambda: ResNet(3, width, num_classes, in_channels))  # checks seed
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    if eval_mode:
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=gen))
                    m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=gen))
                    m.weight.copy_(1.0 + 0.1 * torch.randn(m.num_features, generator=gen))
                    m.bias.copy_(0.1 * torch.randn(m.num_features, generator=gen))
        model.eval()
    return model


# ---- transformers -----------------------------------------------------------------------------------------
def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool, how: str) -> torch.Tensor:
    """softmax(q k^T / sqrt(d_head) [+ causal -inf mask]) v over (N, heads, T, d_head) tensors.  how="sdpa":
    torch's fused F.scaled_dot_product_attention; "math": the same function in plain ops (matmul, masked_fill,
    softmax), which every autograd tool can differentiate twice."""
    if how == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    att = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
    if causal:
        T = q.shape[-2]
        mask = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1)
        att = att.masked_fill(mask, float("-inf"))
    return torch.softmax(att, dim=-1) @ v


class _SelfAttention(nn.Module):
    """Multi-head self-attention: one fused qkv Linear (c_attn), attention per head, output projection
    (c_proj)."""

    def __init__(self, d_model: int, n_heads: int, *, causal: bool, attention: str, bias: bool):
        super().__init__()
        self.n_heads, self.causal, self.attention = n_heads, causal, attention
        self.c_attn = nn.Linear(d_model, 3 * d_model, bias=bias)
        self.c_proj = nn.Linear(d_model, d_model, bias=bias)

    def forward(self, x: torch.Tensor, last: bool = False) -> torch.Tensor:
        """x (N, T, C) -> (N, T, C); last=True: the last position's output only, (N, 1, C)."""
        N, T, C = x.shape
        if last:  # keys and values of every position, the query of the last one alone
            w, b = self.c_attn.weight, self.c_attn.bias
            q = F.linear(x[:, -1:], w[:C], None if b is None else b[:C])
            k, v = F.linear(x, w[C:], None if b is None else b[C:]).split(C, dim=2)
        else:
            q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(N, t.shape[1], self.n_heads, C // self.n_heads).transpose(1, 2) for t in (q, k, v))
        # the last query sees every key, so its causal mask is no mask
        y = attention(q, k, v, causal=self.causal and not last, how=self.attention)
        return self.c_proj(y.transpose(1, 2).reshape(N, q.shape[2], C))


class _Block(nn.Module):
    """A pre-LN transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x)), the MLP Linear d -> mlp_ratio*d
    (c_fc), activation, Linear back (c_proj).  Without layer_norm the two LayerNorms are identities."""

    def __init__(self, d_model: int, n_heads: int, mlp_ratio: int, *, activation: str, layer_norm: bool,
                 causal: bool, attention: str, bias: bool):
        super().__init__()
        norm = (lambda: nn.LayerNorm(d_model, bias=bias)) if layer_norm else nn.Identity
        self.ln_1 = norm()
        self.attn = _SelfAttention(d_model, n_heads, causal=causal, attention=attention, bias=bias)
        self.ln_2 = norm()
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(d_model, mlp_ratio * d_model, bias=bias))
        self.mlp.add_module("act", ACTIVATIONS[activation]())
        self.mlp.add_module("c_proj", nn.Linear(mlp_ratio * d_model, d_model, bias=bias))

    def forward(self, x: torch.Tensor, last: bool = False) -> torch.Tensor:
        """x (N, T, C) -> (N, T, C); last=True: the last position only, (N, 1, C)."""
        x = (x[:, -1:] if last else x) + self.attn(self.ln_1(x), last)
        return x + self.mlp(self.ln_2(x))


def _blocks(d_model: int, n_layers: int, n_heads: int, mlp_ratio: int, **kw) -> nn.ModuleList:
    return nn.ModuleList(_Block(d_model, n_heads, mlp_ratio, **kw) for _ in range(n_layers))


def _init_like_nanogpt(model: nn.Module, n_layers: int) -> None:
    """nanoGPT's initialisation: Linear and Embedding weights normal(0, 0.02), biases zero, the residual
    projections (every c_proj.weight) normal(0, 0.02 / sqrt(2 n_layers)); LayerNorms stay (1, 0)."""
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)
    for name, p in model.named_parameters():
        if name.endswith("c_proj.weight"):
            nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * n_layers))


def _transformer_args(d_model, n_layers, n_heads, mlp_ratio, attention) -> tuple[int, int, int, int, str]:
    """The arguments both transformers share, checked by name."""
    d_model = _checks.int_arg("d_model", d_model, low=1)
    n_layers = _checks.int_arg("n_layers", n_layers, low=1)
    n_heads = _checks.int_arg("n_heads", n_heads, low=1)
    mlp_ratio = _checks.int_arg("mlp_ratio", mlp_ratio, low=1)
    if d_model % n_heads:
        raise ValueError(f"d_model: got {d_model}, expected a multiple of n_heads = {n_heads}")
    return d_model, n_layers, n_heads, mlp_ratio, _checks.choice_arg("attention", attention, ATTENTIONS)


class GPT(nn.Module):
    """A nanoGPT-style decoder: token (wte) + learned position (wpe) embeddings, pre-LN blocks of causal
    self-attention and an MLP, final LayerNorm (ln_f), LM head (tied to wte when `tied`).
    forward(idx (N, T) int64, T <= context) -> logits (N, T, vocab_size); forward(idx, last=True) -> the
    last position's logits (N, vocab_size), forward(idx)[:, -1] without the other positions' work in the
    last block (its queries, MLP and head run for the last position alone)."""

    def __init__(self, vocab_size: int, context: int, d_model: int, n_layers: int, n_heads: int,
                 mlp_ratio: int, *, activation: str, layer_norm: bool, tied: bool, bias: bool,
                 attention: str):
        super().__init__()
        self.vocab_size, self.context = vocab_size, context
        self.wte = nn.Embedding(vocab_size, d_model)
        self.wpe = nn.Embedding(context, d_model)
        self.blocks = _blocks(d_model, n_layers, n_heads, mlp_ratio, activation=activation,
                              layer_norm=layer_norm, causal=True, attention=attention, bias=bias)
        self.ln_f = nn.LayerNorm(d_model, bias=bias) if layer_norm else nn.Identity()
        self.lm_head = nn.Linear(d_model, vocab_size, bias=False)
        if tied:
            self.lm_head.weight = self.wte.weight
        _init_like_nanogpt(self, n_layers)

    def forward(self, idx: torch.Tensor, last: bool = False) -> torch.Tensor:
        if idx.ndim != 2 or idx.dtype != torch.int64 or not 1 <= idx.shape[1] <= self.context:
            raise ValueError(f"idx: got {_checks.describe(idx)}, expected int64 token ids of shape (N, T) "
                             f"with 1 <= T <= context = {self.context}")
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for i, block in enumerate(self.blocks):
            x = block(x, last and i == len(self.blocks) - 1)
        logits = self.lm_head(self.ln_f(x))
        return logits[:, -1] if last else logits


def nanogpt(vocab_size: int = 65, context: int = 64, d_model: int = 128, n_layers: int = 4, n_heads: int = 4,
            mlp_ratio: int = 4, *, activation: str = "gelu", layer_norm: bool = True, tied: bool = True,
            bias: bool = True, attention: str = "sdpa", seed: int | None = 0) -> GPT:
    """A nanoGPT-style decoder-only transformer (Karpathy's nanoGPT), in eval mode.

    idx (N, T) int64 token ids, T <= context -> logits (N, T, vocab_size).  Token and learned position
    embeddings; n_layers pre-LN blocks, each causal self-attention (n_heads heads of d_model / n_heads, one
    fused qkv Linear, an output projection) and an MLP (Linear d_model -> mlp_ratio * d_model, `activation`,
    Linear back); a final LayerNorm; the LM head (no bias) tied to the token embedding when `tied`.

    activation: "gelu" (exact, nanoGPT's), "gelu_tanh", "relu" or "silu".  layer_norm=False: no LayerNorm
    anywhere.  bias: biases in every Linear and LayerNorm but the LM head.  attention="sdpa" runs
    F.scaled_dot_product_attention; "math" writes out the same function in plain ops (for tools that need a
    double backward through them, such as PyHessian).  Initialised as nanoGPT does (normal std 0.02, residual
    projections 0.02 / sqrt(2 n_layers)) from `seed` (None: torch's global generator).

    D = 809,856 parameters with the defaults (the tied head counted once; 818,176 untied).  Nanda et al.'s
    (2023) grokking transformer for p = 113: nanogpt(114, context=3, d_model=128, n_layers=1, n_heads=4,
    activation="relu", layer_norm=False, tied=False), D = 227,328 (their original has no attention biases
    and unembeds to p = 113 classes: 226,688).
    """
    vocab_size = _checks.int_arg("vocab_size", vocab_size, low=1)
    context = _checks.int_arg("context", context, low=1)
    d_model, n_layers, n_heads, mlp_ratio, attention = _transformer_args(d_model, n_layers, n_heads, mlp_ratio,
                                                                         attention)
    activation = _checks.choice_arg("activation", activation, tuple(ACTIVATIONS))
    layer_norm, tied, bias = (_checks.bool_arg(n, v) for n, v in (("layer_norm", layer_norm), ("tied", tied),
                                                                   ("bias", bias)))
    model = _seeded(seed, lambda: GPT(vocab_size, context, d_model, n_layers, n_heads, mlp_ratio,
                                      activation=activation, layer_norm=layer_norm, tied=tied, bias=bias,
                                      attention=attention))
    return model.eval()


class ViT(nn.Module):
    """A small Vision Transformer: patches embedded by a Conv2d of stride patch_size, a learned class token
    and position embeddings, pre-LN encoder blocks (non-causal attention), final LayerNorm, a linear head on
    the class token.  forward(x (N, C, H, W) or flat (N, C*H*W)) -> logits (N, num_classes)."""

    def __init__(self, image_size: int, patch_size: int, channels: int, num_classes: int, d_model: int,
                 n_layers: int, n_heads: int, mlp_ratio: int, *, attention: str):
        super().__init__()
        self.image_size, self.channels = image_size, channels
        n_patches = (image_size // patch_size) ** 2
        self.patch_embed = nn.Conv2d(channels, d_model, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d_model))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + n_patches, d_model))
        self.blocks = _blocks(d_model, n_layers, n_heads, mlp_ratio, activation="gelu", layer_norm=True,
                              causal=False, attention=attention, bias=True)
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, num_classes)
        _init_like_nanogpt(self, n_layers)
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.pos_embed, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        C, S = self.channels, self.image_size
        if x.ndim == 2 and x.shape[1] == C * S * S:
            x = x.view(len(x), C, S, S)
        if x.ndim != 4 or tuple(x.shape[1:]) != (C, S, S):
            raise ValueError(f"x: got {_checks.describe(x)}, expected images of shape (N, {C}, {S}, {S}) "
                             f"or flat (N, {C * S * S})")
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # (N, patches, d_model)
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x[:, 0]))


def vit(image_size: int = 28, patch_size: int = 7, channels: int = 1, num_classes: int = 10, d_model: int = 64,
        n_layers: int = 4, n_heads: int = 4, mlp_ratio: int = 4, *, attention: str = "sdpa",
        seed: int | None = 0) -> ViT:
    """A small Vision Transformer (Dosovitskiy et al. 2021), in eval mode, sized for MNIST by default.

    x (N, channels, image_size, image_size), or flat (N, channels * image_size^2) as lscape.data.mnist()
    gives it -> logits (N, num_classes).  (image_size / patch_size)^2 patches embedded by a Conv2d with
    stride patch_size, a learned class token and position embeddings, n_layers pre-LN encoder blocks
    (non-causal self-attention of n_heads heads, a GELU MLP of mlp_ratio * d_model), a final LayerNorm and a
    linear head on the class token.  attention: "sdpa" or "math", as for nanogpt().  Linear weights
    normal(0, 0.02) (residual projections 0.02 / sqrt(2 n_layers)), biases zero, from `seed`.

    D = 205,066 parameters with the defaults (16 patches of 7x7 on 28x28x1).
    """
    image_size = _checks.int_arg("image_size", image_size, low=1)
    patch_size = _checks.int_arg("patch_size", patch_size, low=1, high=image_size)
    if image_size % patch_size:
        raise ValueError(f"patch_size: got {patch_size}, expected a divisor of image_size = {image_size}")
    channels = _checks.int_arg("channels", channels, low=1)
    num_classes = _checks.int_arg("num_classes", num_classes, low=1)
    d_model, n_layers, n_heads, mlp_ratio, attention = _transformer_args(d_model, n_layers, n_heads, mlp_ratio,
                                                                         attention)
    model = _seeded(seed, lambda: ViT(image_size, patch_size, channels, num_classes, d_model, n_layers, n_heads,
                                      mlp_ratio, attention=attention))
    return model.eval()
