"""The batched loss landscape every method in lscape evaluates: loss and gradient at B points at once.

    L = Landscape.from_mlp(TinyMLP(5, 5), x, y)          # the fused ensemble kernel
    L = Landscape.from_function(fn, dim=2)               # any torch function of a flat vector
    L = Landscape.from_module(model, loss_fn, (X, Y))    # any nn.Module, torch.func (vmap or point by point)
    loss = L.loss(thetas)                                # (B, D) -> (B,)
    loss, grad = L.loss_and_grad(thetas)                 # (B, D) -> (B,), (B, D)

`torch_loss(thetas)` is the same loss as a differentiable torch function (for Hessians and
Hessian-vector products); `loss` and `loss_and_grad` may run on faster non-differentiable kernels.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from . import _checks
from .tinymlp import TinyMLP

# Landscape.from_module on the CPU evaluates points one by one from this much work per point (samples x D)
PER_POINT_WORK = 1 << 22

__all__ = ["Landscape"]


class Landscape:
    """A loss over flat parameter vectors of length `dim`, evaluated in batches."""

    def __init__(self, dim: int, torch_loss: Callable[[torch.Tensor], torch.Tensor], *,
                 loss_and_grad: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
                 loss: Callable[[torch.Tensor], torch.Tensor] | None = None, chunk: int | None = None,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
                 description: str = "",
                 point_loss: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        """torch_loss: differentiable (B, D) -> (B,).  loss / loss_and_grad: faster versions of it (default:
        torch_loss, and autograd through it).  chunk: most points evaluated per call (bounds memory).
        point_loss: the same loss of one point, differentiable (D,) -> scalar, when there is an unbatched
        form: Hessian-vector products backpropagate through its graph, which is leaner than a vmapped
        one (default: torch_loss of a batch of one)."""
        self.dim = _checks.int_arg("dim", dim, low=1)
        if not callable(torch_loss):
            raise TypeError(f"torch_loss: got {_checks.describe(torch_loss)}, expected a callable (B, D) -> (B,)")
        self._torch_loss = torch_loss
        self._point_loss = point_loss
        self._loss = loss
        self._loss_and_grad = loss_and_grad
        self.chunk = None if chunk is None else _checks.int_arg("chunk", chunk, low=1)
        self.dtype = dtype
        self.device = torch.device(device)
        self.description = description

    def __repr__(self) -> str:
        return f"Landscape(dim={self.dim}, {self.description or 'custom'})"

    # ---- evaluation -----------------------------------------------------------------------------------
    def check_points(self, thetas, name: str = "thetas") -> torch.Tensor:
        """thetas as a (B, D) tensor of this landscape's dtype and device ((D,) is refused: say (1, D))."""
        t = _checks.as_tensor(name, thetas)
        if t.ndim != 2 or t.shape[1] != self.dim or not t.is_floating_point():
            raise ValueError(f"{name}: got {_checks.describe(t)}, expected a floating tensor of shape "
                             f"(B, {self.dim})")
        return t.detach().to(dtype=self.dtype, device=self.device).contiguous()

    def loss(self, thetas: torch.Tensor) -> torch.Tensor:
        """(B, D) -> loss (B,)."""
        t = self.check_points(thetas)
        if t.shape[0] == 0:  # no points: nothing to evaluate (vmap and loss functions may refuse it)
            return t.new_zeros(0)
        fn = self._loss or (lambda u: self._torch_loss(u).detach())
        return self._chunked(t, lambda u: (fn(u),))[0]

    def loss_and_grad(self, thetas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, D) -> loss (B,), gradient (B, D)."""
        t = self.check_points(thetas)
        if t.shape[0] == 0:
            return t.new_zeros(0), t.new_zeros(0, self.dim)
        fn = self._loss_and_grad or self._autograd_loss_and_grad
        return self._chunked(t, fn)

    def torch_loss(self, thetas: torch.Tensor) -> torch.Tensor:
        """The loss as a differentiable torch function (B, D) -> (B,) (no checks, no chunking)."""
        return self._torch_loss(thetas)

    def point_loss(self, theta: torch.Tensor) -> torch.Tensor:
        """The loss of one point as a differentiable torch function (D,) -> () (no checks)."""
        if self._point_loss is not None:
            return self._point_loss(theta)
        return self._torch_loss(theta[None])[0]

    def _autograd_loss_and_grad(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.enable_grad():
            u = t.detach().requires_grad_(True)
            loss = self._torch_loss(u)
            (grad,) = torch.autograd.grad(loss.sum(), u)
        return loss.detach(), grad.detach()

    def _chunked(self, t: torch.Tensor, fn) -> Any:
        if self.chunk is None or t.shape[0] <= self.chunk:
            return fn(t)
        parts = [fn(t[i:i + self.chunk]) for i in range(0, t.shape[0], self.chunk)]
        return tuple(torch.cat(ps) for ps in zip(*parts, strict=False))

    # ---- constructors ---------------------------------------------------------------------------------
    @classmethod
    def from_mlp(cls, spec: TinyMLP, x, y, *, dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu") -> Landscape:
        """MSE of the K x N network `spec` on data x, y (P,): the fused ensemble kernel (float32 on the
        CPU/CUDA extensions, the reference otherwise)."""
        from . import ensemble
        from .reference import mlp as ref

        if not isinstance(spec, TinyMLP):
            raise TypeError(f"spec: got {_checks.describe(spec)}, expected a lscape.TinyMLP")
        like = torch.empty(0, spec.dim, dtype=dtype, device=device)
        x, y = ensemble._data_arg(x, y, like)
        K, N = spec.spec
        return cls(spec.dim, lambda th: ref.loss_grad(K, N, th, x, y, want_grad=False)[0],
                   loss=lambda th: ensemble.mlp_loss(spec, th, x, y),
                   loss_and_grad=lambda th: ensemble.mlp_loss_grad(spec, th, x, y),
                   dtype=dtype, device=device, description=f"{spec.depth}x{spec.width} MLP, P={x.shape[0]}")

    @classmethod
    def from_function(cls, fn: Callable[[torch.Tensor], torch.Tensor], dim: int, *, batched: bool = False,
                      dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu",
                      chunk: int | None = None) -> Landscape:
        """Any torch function of a flat vector: fn(theta (D,)) -> scalar (vectorised with torch.func.vmap),
        or with batched=True fn(thetas (B, D)) -> (B,) directly.  Gradients by autograd."""
        if not callable(fn):
            raise TypeError(f"fn: got {_checks.describe(fn)}, expected a callable")
        batch_fn = fn if batched else torch.func.vmap(fn)
        return cls(dim, batch_fn, dtype=dtype, device=device, chunk=chunk,
                   description=f"function {getattr(fn, '__name__', type(fn).__name__)}",
                   point_loss=None if batched else fn)

    @classmethod
    def from_module(cls, model: nn.Module, loss_fn: Callable | None, data, *, chunk: int = 16, bn: str = "eval",
                    bn_data=None, max_batches: int | None = None,
                    metrics: dict[str, Callable] | None = None) -> Landscape:
        """Mean loss of `model` with its parameters replaced by each theta, over `data`.

        data: one batch, a sequence of batches, or any re-iterable of them (a torch DataLoader); a batch is
        (inputs, targets), inputs a tensor, a tuple (model(*inputs)) or a mapping (model(**inputs)), or a
        mapping alone whose "labels" are the targets (lscape._modelio, docs: "Transformers and Hugging Face
        models").  Batches are streamed, never concatenated, and weighted by the targets they count (integer
        targets other than -100; rows otherwise), so loss_fn must average over what it counts.
        loss_fn(outputs, targets): outputs as the model returns them (a tensor, a tuple, a ModelOutput);
        None: the model's own loss (outputs.loss, labels passed into the call).  max_batches: only the
        first that many batches (a quick look).  Parameters are flattened in model.named_parameters() order
        (lscape._flat; tied weights once).

        metrics: {name: fn(outputs, targets) -> scalar mean over the batch} evaluated on the same outputs
        as the loss (no second forward pass) while `L.recording_metrics()` is entered: it yields a list
        that each evaluation extends with its points' (B, len(metrics)) weighted means, in evaluation
        order (torch.cat(rec) after a call: one row per point, columns in `L.metric_names`).

        bn="eval": buffers are used as they are (call model.eval() for inference-mode BatchNorm).
        bn="recompute": at every point, BatchNorm's running mean and variance are first re-estimated
        with one pass over `bn_data` (default: data) in train mode, exactly as
        torch.optim.swa_utils.update_bn does, then the loss is evaluated in eval mode: one more pass over
        the data per point (about twice the cost), points one by one.  Without it a BatchNorm net's
        surface away from its trained point reflects stale statistics.
        torch.func.functional_call + vmap over at most `chunk` points at a time, so memory stays
        bounded; on the CPU, points whose work (samples x D) reaches PER_POINT_WORK run one after
        another instead, which is faster there, as do models that torch.func.vmap cannot run."""
        from ._modelio import Batches
        from ._moduleloss import BN_MODES, ModuleLoss

        _checks.choice_arg("bn", bn, BN_MODES)
        own = loss_fn is None
        batches = Batches(data, "data", max_batches, own_loss=own)
        bn_batches = batches if bn_data is None else Batches(bn_data, "bn_data", max_batches, own_loss=own)
        metrics = dict(metrics or {})
        for name, fn in metrics.items():
            if not isinstance(name, str) or not callable(fn):
                raise TypeError(f"metrics: got {name!r}: {_checks.describe(fn)}, expected {{name: fn(outputs, "
                                "targets)}}")
        ml = ModuleLoss(model, loss_fn, batches, bn, bn_batches, metrics)
        ml.objective.check(model, batches)
        first = next(model.parameters())
        # Large points one after another: vmap's batched matmuls and the elementwise passes over
        # (chunk, samples, width) tensors that no longer fit in cache cost more than batching saves
        # (digits 64-100-100-10, 200 points on this 2-core CPU: 211 ms vmapped, 138 ms one by one).
        # BatchNorm re-estimation updates buffers in place, which vmap cannot batch.
        per_point = bn == "recompute" or (first.device.type == "cpu" and
                                          batches.samples() * ml.layout.dim >= PER_POINT_WORK)
        state = {"per_point": per_point}

        def batch_fn(thetas: torch.Tensor) -> torch.Tensor:
            if not state["per_point"]:
                try:
                    with warnings.catch_warnings(record=True) as caught:
                        warnings.simplefilter("always")
                        out = ml.vmapped(thetas)
                    if any("batching rule" in str(w.message) for w in caught):
                        state["per_point"] = True  # an op vmap runs in a slow loop (SDPA): one by one from now
                    for w in caught:
                        if "batching rule" not in str(w.message):
                            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
                    return out
                except (RuntimeError, NotImplementedError):  # an op vmap cannot batch: one by one from now
                    state["per_point"] = True
            return torch.stack([ml.one(t) for t in thetas])

        def no_grad_loss(thetas: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():  # no gradient asked: no graph built
                return batch_fn(thetas)

        L = cls(ml.layout.dim, batch_fn, loss=no_grad_loss, chunk=chunk, dtype=first.dtype, device=first.device,
                description=f"module {type(model).__name__}", point_loss=ml.one,
                loss_and_grad=ml.loss_and_grad_one_by_one if per_point else None)
        # for probes that use the model (lscape._affine's lines and planes, spectrum's streamed products)
        L.module, L.loss_fn, L.data, L.bn, L.per_point = model, ml.objective.loss_fn, batches, bn, per_point
        L.objective, L.fast_forward, L.module_loss = ml.objective, ml.fast, ml
        # Hessian-vector products differentiate the gradient's graph again, and that double backward of the
        # CPU's convolutions prefers NCHW on wide ones: a product on ResNet-20 (32 images, one thread,
        # alternated) took 0.229 / 0.256 s channels-last / NCHW at width x1 (16-64 channels), 0.73 / 0.75 s
        # at x2 (up to 128), 2.44 / 2.25 s at x4 (up to 256)
        wide = max((m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)), default=0) >= 128
        cl = False if wide else None
        L.hvp_point_loss = (lambda theta: ml.hvp_loss(theta, cl)) if bn == "eval" else \
            (lambda theta: ml.one(theta, False)) if wide else ml.one
        L.metric_names, L.recording_metrics = tuple(metrics), ml.recording
        return L
