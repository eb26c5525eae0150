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

import contextlib
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
    def from_module(cls, model: nn.Module, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                    data, *, chunk: int = 16, bn: str = "eval", bn_data=None,
                    max_batches: int | None = None,
                    metrics: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] | None = None
                    ) -> Landscape:
        """Mean loss of `model` with its parameters replaced by each theta, over `data`.

        metrics: {name: fn(outputs, targets) -> scalar mean over the batch} evaluated on the same outputs
        as the loss (no second forward pass) while `L.recording_metrics()` is entered: it yields a list
        that each evaluation extends with its points' (B, len(metrics)) batch-weighted means, in
        evaluation order (torch.cat(rec) after a call: one row per point, columns in `L.metric_names`).

        data: one (inputs, targets) pair, a sequence of such batches, or any re-iterable of them (a
        torch DataLoader): batches are streamed, never concatenated, and the loss is weighted by batch
        size (loss_fn must average over its batch); max_batches: only the first that many batches (a
        quick look).  Parameters are flattened in model.named_parameters() order (lscape._flat).
        bn="eval": buffers are used as they are (call model.eval() for inference-mode BatchNorm).
        bn="recompute": at every point, BatchNorm's running mean and variance are first re-estimated
        with one pass over `bn_data` (default: data) in train mode, exactly as
        torch.optim.swa_utils.update_bn does, then the loss is evaluated in eval mode: one more pass over
        the data per point (about twice the cost), points one by one.  Without it a BatchNorm net's
        surface away from its trained point reflects stale statistics.
        torch.func.functional_call + vmap over at most `chunk` points at a time, so memory stays
        bounded; on the CPU, points whose work (samples x D) reaches PER_POINT_WORK run one after
        another instead, which is faster there."""
        from ._fastops import fast_loss, narrow_linears
        from ._flat import FlatLayout
        from ._modeleval import FastForward

        layout = FlatLayout.of(model)
        _checks.choice_arg("bn", bn, BN_MODES)
        loss_fn = fast_loss(loss_fn)  # F.cross_entropy: the same loss, without torch's slow CPU log_softmax
        batches = _Batches(data, "data", max_batches)
        bn_batches = batches if bn_data is None else _Batches(bn_data, "bn_data", max_batches)
        first = next(model.parameters())
        buffers = dict(model.named_buffers())
        fast = FastForward(model)  # BatchNorm folded, channels-last convolutions: the same values, faster
        metrics = dict(metrics or {})
        for name, fn in metrics.items():
            if not isinstance(name, str) or not callable(fn):
                raise TypeError(f"metrics: got {name!r}: {_checks.describe(fn)}, expected {{name: fn(outputs, "
                                "targets)}}")
        rec: dict[str, list | None] = {"now": None}  # the list L.recording_metrics() yields, while entered

        def batch_loss(theta: torch.Tensor, X: torch.Tensor, Y: torch.Tensor, bufs, cl=None):
            """(loss, metrics tuple: empty unless recording) of one batch at theta."""
            out = fast(layout.split(theta), X, bufs, channels_last=cl)
            if rec["now"] is None or not metrics:
                return loss_fn(out, Y), ()
            seen = out.detach()
            return loss_fn(out, Y), tuple(torch.as_tensor(fn(seen, Y)).detach().to(seen.dtype)
                                          for fn in metrics.values())

        def note(sums, total: int, rows: int) -> None:
            """Append the points' batch-weighted metric means, (rows, len(metrics)), to the recording."""
            if rec["now"] is not None and metrics:
                rec["now"].append(torch.stack([m / total for m in sums], -1).reshape(rows, len(metrics)))

        def one(theta: torch.Tensor, cl: bool | None = None) -> torch.Tensor:
            bufs = buffers if bn == "eval" else recompute_bn(model, layout.split(theta), buffers, bn_batches)
            total, out, sums = 0, 0.0, None
            with narrow_linears(model):  # a 10-class head at twice MKL's rate (its backward graph too)
                for X, Y in batches:
                    loss, ms = batch_loss(theta, X, Y, bufs, cl)
                    out = out + loss * X.shape[0]
                    sums = [m * X.shape[0] for m in ms] if sums is None else \
                        [a + m * X.shape[0] for a, m in zip(sums, ms, strict=True)]
                    total += X.shape[0]
            note(sums, total, 1)
            return out / total

        def vmapped(thetas: torch.Tensor) -> torch.Tensor:
            # the data loop stays outside vmap: a DataLoader draws random seeds, which vmap refuses
            total, out, sums = 0, 0.0, None
            for X, Y in batches:
                loss, ms = torch.func.vmap(lambda t: batch_loss(t, X, Y, buffers, False))(thetas)  # noqa: B023
                out = out + loss * X.shape[0]
                sums = [m * X.shape[0] for m in ms] if sums is None else \
                    [a + m * X.shape[0] for a, m in zip(sums, ms, strict=True)]
                total += X.shape[0]
            note(sums, total, thetas.shape[0])
            return out / total

        @contextlib.contextmanager
        def recording_metrics():
            rec["now"] = []
            try:
                yield rec["now"]
            finally:
                rec["now"] = None

        # Large points one after another: vmap's batched matmuls and the elementwise passes over
        # (chunk, samples, width) tensors that no longer fit in cache cost more than batching saves
        # (digits 64-100-100-10, 200 points on this 2-core CPU: 211 ms vmapped, 138 ms one by one).
        # BatchNorm re-estimation updates buffers in place, which vmap cannot batch.
        per_point = bn == "recompute" or (first.device.type == "cpu"
                                          and batches.samples() * layout.dim >= PER_POINT_WORK)
        batch_fn = _one_by_one(one) if per_point else vmapped

        def no_grad_loss(thetas: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():  # no gradient asked: no graph built
                return batch_fn(thetas)

        def loss_and_grad_one_by_one(thetas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            # each point's forward and backward before the next's: one point's graph alive at a time, not
            # the chunk's (ResNet-20 on 64 images: ~250 MB of activations a point); the same numbers
            losses, grads = [], []
            with torch.enable_grad():
                for theta in thetas:
                    u = theta.detach().requires_grad_(True)
                    loss = one(u)
                    losses.append(loss.detach())
                    grads.append(torch.autograd.grad(loss, u)[0])
            return torch.stack(losses), torch.stack(grads)

        L = cls(layout.dim, batch_fn, loss=no_grad_loss, chunk=chunk, dtype=first.dtype, device=first.device,
                description=f"module {type(model).__name__}", point_loss=one,
                loss_and_grad=loss_and_grad_one_by_one if per_point else None)
        # for probes that use the model (lscape._affine's lines and planes)
        L.module, L.loss_fn, L.data, L.bn, L.per_point = model, loss_fn, batches, bn, per_point
        L.fast_forward = fast
        # Hessian-vector products differentiate the gradient's graph again, and that double backward of the
        # CPU's convolutions prefers NCHW on wide ones: a product on ResNet-20 (32 images, one thread,
        # alternated) took 0.229 / 0.256 s channels-last / NCHW at width x1 (16-64 channels), 0.73 / 0.75 s
        # at x2 (up to 128), 2.44 / 2.25 s at x4 (up to 256)
        wide = max((m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)), default=0) >= 128
        cl = False if wide else None

        rows: list[int | None] = []  # the slice size of hvp_loss, decided on its first batch

        def hvp_loss(theta: torch.Tensor) -> torch.Tensor:
            # The same loss with each batch's graph built in slices of HVP_ROWS samples: the double backward
            # of a width-x4 ResNet-20 on 128 images took 4.46 s a product in slices of 32 against 5.31 s in
            # one piece (smaller activations stay in cache and in malloc's heap).  Only for a loss that is
            # the mean of its samples' terms (checked on the outputs, else the batch in one piece) and only
            # where a slice's activations are large enough that the extra calls cost nothing.
            total, out, params = 0, 0.0, layout.split(theta)
            with narrow_linears(model):
                for X, Y in batches:
                    if not rows:
                        rows.append(_slice_rows(model, X))
                    n = X.shape[0]
                    out = out + _sliced_loss(lambda x: fast(params, x, buffers, channels_last=cl),
                                             loss_fn, X, Y, rows[0]) * n
                    total += n
            return out / total

        L.hvp_point_loss = hvp_loss if bn == "eval" else (lambda theta: one(theta, False)) if wide else one
        L.metric_names, L.recording_metrics = tuple(metrics), recording_metrics
        return L


HVP_ROWS = 32  # samples per slice of the graphs that Hessian-vector products differentiate (hvp_loss)
HVP_SLICE_ELEMS = 1 << 22  # ... where a slice still holds this many activation elements (16 MB in float32)


def _slice_rows(model: nn.Module, X) -> int | None:
    """HVP_ROWS where slicing a batch like X pays (a slice's activations, counted by _modeleval.forward_cost
    on two rows, reach HVP_SLICE_ELEMS: a ResNet-20's do, an MLP's on 8 x 8 digits do not), else None."""
    from ._modeleval import forward_cost

    if not isinstance(X, torch.Tensor) or X.shape[0] <= HVP_ROWS:
        return None
    modes = {m: m.training for m in model.modules()}
    model.eval()  # forward_cost runs the module itself: no BatchNorm statistics may move
    try:
        elems = forward_cost(model, X[:2])[1]
    except (RuntimeError, ValueError, TypeError, IndexError):  # a model that refuses two rows: left whole
        return None
    finally:
        for m, mode in modes.items():
            m.training = mode
    return HVP_ROWS if elems * HVP_ROWS >= HVP_SLICE_ELEMS else None


def _sliced_loss(forward: Callable, loss_fn: Callable, X, Y, rows: int | None) -> torch.Tensor:
    """loss_fn(forward(X), Y) (differentiable) as the weighted mean of its slices of at most `rows` samples
    (None: in one piece), where that is the same number: the slices' outputs, joined, must give loss_fn the
    same value to float rounding (a mean of per-sample terms), else the batch in one piece."""
    n = X.shape[0] if isinstance(X, torch.Tensor) else 0
    if rows is None or n <= rows or not isinstance(Y, torch.Tensor) or Y.shape[:1] != (n,):
        return loss_fn(forward(X), Y)
    parts, outs = [], []
    for i in range(0, n, rows):
        out = forward(X[i:i + rows])
        if not isinstance(out, torch.Tensor):  # outputs loss_fn unpacks itself: left whole
            return loss_fn(forward(X), Y)
        parts.append(loss_fn(out, Y[i:i + rows]) * (out.shape[0] / n))
        outs.append(out.detach())
    joined = sum(parts)
    with torch.no_grad():
        whole = loss_fn(torch.cat(outs), Y)
    if not torch.allclose(joined.detach(), whole, rtol=1e-4, atol=1e-30):
        return loss_fn(forward(X), Y)  # not a mean over samples: the slices would change the function
    return joined


BN_MODES = ("eval", "recompute")
_BN_TYPES = (nn.modules.batchnorm._BatchNorm,)


def recompute_bn(model: nn.Module, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor],
                 batches) -> dict[str, torch.Tensor]:
    """Fresh BatchNorm running statistics for `model` at `params`: reset, then one pass over `batches` in
    train mode with momentum None (a cumulative average), as torch.optim.swa_utils.update_bn does.
    Returns a new buffer dict (the model's own buffers are untouched); the model's modes and momenta are
    restored."""
    bufs = {k: v.clone() for k, v in buffers.items()}
    bns = [(name, m) for name, m in model.named_modules() if isinstance(m, _BN_TYPES)]
    if not bns:
        return bufs
    modes = {m: m.training for m in model.modules()}
    momenta = {m: m.momentum for _, m in bns}
    try:
        for name, m in bns:
            pre = f"{name}." if name else ""
            if m.track_running_stats:
                bufs[pre + "running_mean"].zero_()
                bufs[pre + "running_var"].fill_(1.0)
                bufs[pre + "num_batches_tracked"].zero_()
            m.momentum = None
        model.train()
        with torch.no_grad():
            for X, _ in batches:
                torch.func.functional_call(model, ({k: v.detach() for k, v in params.items()}, bufs), (X,))
    finally:
        for m, mode in modes.items():
            m.train(mode)
        for m, mom in momenta.items():
            m.momentum = mom
    return bufs


class _Batches:
    """A re-iterable of (inputs, targets) batches: a pair, a sequence of pairs or any re-iterable (a
    DataLoader), streamed on every pass (never concatenated), at most max_batches of them."""

    def __init__(self, data, name: str, max_batches: int | None) -> None:
        if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
            data = [tuple(data)]
        if isinstance(data, torch.Tensor) or not hasattr(data, "__iter__") or iter(data) is data:
            raise TypeError(f"{name}: got {_checks.describe(data)}, expected (inputs, targets), a sequence of "
                            "(inputs, targets) batches or a re-iterable of them (a DataLoader; not a one-shot "
                            "iterator: every evaluation streams the data again)")
        self.data, self.name = data, name
        self.max = None if max_batches is None else _checks.int_arg("max_batches", max_batches, low=1)
        self._samples: int | None = None

    def __iter__(self):
        n = 0
        for k, batch in enumerate(self.data):
            if self.max is not None and k >= self.max:
                break
            try:
                X, Y = batch
            except (TypeError, ValueError):
                raise TypeError(f"{self.name}: batch {k} is {_checks.describe(batch)}, expected an "
                                "(inputs, targets) pair") from None
            if X.shape[0] == 0 or X.shape[0] != Y.shape[0]:
                raise ValueError(f"{self.name}: batch {k} has {X.shape[0]} inputs and {Y.shape[0]} targets, "
                                 "expected as many targets as inputs, at least one")
            n += 1
            yield X, Y
        if n == 0:
            raise ValueError(f"{self.name}: yielded no batch, expected at least one (inputs, targets) batch")

    def samples(self) -> int:
        """How many samples one pass yields (counted once, by streaming a pass)."""
        if self._samples is None:
            self._samples = sum(X.shape[0] for X, _ in self)
        return self._samples


def _one_by_one(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """fn over the rows of a (B, D) batch, one row at a time: (B, D) -> (B,)."""
    return lambda thetas: torch.stack([fn(t) for t in thetas])
