"""The loss of an nn.Module at flat parameter points, over streamed batches: what Landscape.from_module
evaluates (its docstring says what each option means).

`ModuleLoss` holds the model, its flat layout, the Objective (lscape._modelio: loss, counted targets,
metrics' weights) and the batches, and evaluates one point (`one`), several under torch.func.vmap
(`vmapped`), point by point with gradients (`loss_and_grad_one_by_one`) and the graph that Hessian-vector
products differentiate (`hvp_loss`).  Every batch is weighted by the targets it counts, so the streamed
loss is the loss over all of them at once.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import nn

from ._fastops import fast_loss, narrow_linears
from ._flat import FlatLayout
from ._modeleval import FastForward
from ._modelio import Batch, Batches, Objective

__all__ = ["BN_MODES", "HVP_ROWS", "HVP_SLICE_ELEMS", "ModuleLoss", "recompute_bn"]

BN_MODES = ("eval", "recompute")
_BN_TYPES = (nn.modules.batchnorm._BatchNorm,)
HVP_ROWS = 32  # samples per slice of the graphs that Hessian-vector products differentiate (hvp_loss)
HVP_SLICE_ELEMS = 1 << 22  # ... where a slice still holds this many activation elements (16 MB in float32)


class ModuleLoss:
    """model's mean loss over `batches` at any flat point theta (module docstring).

    metrics: {name: fn(outputs, targets) -> scalar mean over the batch} evaluated on the same outputs as
    the loss while `recording()` is entered (it yields a list that each evaluation extends with its
    points' (B, len(metrics)) weighted means)."""

    def __init__(self, model: nn.Module, loss_fn: Callable | None, batches: Batches, bn: str, bn_batches: Batches,
                 metrics: dict[str, Callable]) -> None:
        self.model, self.bn, self.metrics = model, bn, metrics
        self.layout = FlatLayout.of(model)
        self.objective = Objective(None if loss_fn is None else fast_loss(loss_fn))
        self.batches, self.bn_batches = batches, bn_batches
        self.buffers = dict(model.named_buffers())
        self.fast = FastForward(model)  # BatchNorm folded, channels-last convolutions: the same values, faster
        self.recorded: list | None = None  # the list recording() yields, while entered
        self._rows: list[int | None] = []  # hvp_loss's slice size, decided on its first batch

    # ---- one batch ------------------------------------------------------------------------------------
    def batch_loss(self, theta: torch.Tensor, b: Batch, bufs, cl=None) -> tuple[torch.Tensor, tuple]:
        """(loss, metrics tuple: empty unless recording) of one batch at theta."""
        out = self.fast(self.layout.split(theta), b, bufs, channels_last=cl)
        loss = self.objective.loss(out, b)
        if self.recorded is None or not self.metrics:
            return loss, ()
        seen = out.detach() if isinstance(out, torch.Tensor) else out
        return loss, tuple(torch.as_tensor(fn(seen, b.targets)).detach().to(loss.dtype)
                           for fn in self.metrics.values())

    def _note(self, sums, total: int, rows: int) -> None:
        """Append the points' weighted metric means, (rows, len(metrics)), to the recording."""
        if self.recorded is not None and self.metrics:
            self.recorded.append(torch.stack([m / total for m in sums], -1).reshape(rows, len(self.metrics)))

    def _passes(self, batch_fn) -> torch.Tensor:
        """sum over batches of batch_fn(b) = (loss, metrics) weighted by the batch's count, / the total."""
        total, out, sums = 0, 0.0, None
        for b in self.batches:
            n = self.objective.count(b)
            loss, ms = batch_fn(b)
            out = out + loss * n
            sums = [m * n for m in ms] if sums is None else [a + m * n for a, m in zip(sums, ms, strict=True)]
            total += n
        return out / total, sums, total

    # ---- points ---------------------------------------------------------------------------------------
    def one(self, theta: torch.Tensor, cl: bool | None = None) -> torch.Tensor:
        """The loss at one point (D,), differentiable."""
        bufs = self.buffers if self.bn == "eval" else \
            recompute_bn(self.model, self.layout.split(theta), self.buffers, self.bn_batches)
        with narrow_linears(self.model):  # a 10-class head at twice MKL's rate (its backward graph too)
            loss, sums, total = self._passes(lambda b: self.batch_loss(theta, b, bufs, cl))
        self._note(sums, total, 1)
        return loss

    def vmapped(self, thetas: torch.Tensor) -> torch.Tensor:
        """The losses at points (B, D), vmapped over the points (the data loop stays outside vmap: a
        DataLoader draws random seeds, which vmap refuses)."""
        def batch(b: Batch):
            return torch.func.vmap(lambda t: self.batch_loss(t, b, self.buffers, False))(thetas)
        loss, sums, total = self._passes(batch)
        self._note(sums, total, thetas.shape[0])
        return loss

    def loss_and_grad_one_by_one(self, thetas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each point's forward and backward before the next's: one point's graph alive at a time, not the
        chunk's (ResNet-20 on 64 images: ~250 MB of activations a point); the same numbers."""
        losses, grads = [], []
        with torch.enable_grad():
            for theta in thetas:
                u = theta.detach().requires_grad_(True)
                loss = self.one(u)
                losses.append(loss.detach())
                grads.append(torch.autograd.grad(loss, u)[0])
        return torch.stack(losses), torch.stack(grads)

    @contextlib.contextmanager
    def recording(self):
        self.recorded = []
        try:
            yield self.recorded
        finally:
            self.recorded = None

    def hvp_loss(self, theta: torch.Tensor, cl: bool | None) -> torch.Tensor:
        """The same loss with each batch's graph built in slices of HVP_ROWS samples: the double backward of
        a width-x4 ResNet-20 on 128 images took 4.46 s a product in slices of 32 against 5.31 s in one piece
        (smaller activations stay in cache and in malloc's heap).  Only for a loss that is the mean of its
        samples' terms (checked on the outputs, else the batch in one piece) and only where a slice's
        activations are large enough that the extra calls cost nothing."""
        params = self.layout.split(theta)
        with narrow_linears(self.model):
            def batch(b: Batch):
                if not self._rows:
                    self._rows.append(_slice_rows(self.model, b))
                return _sliced_loss(lambda x: self.fast(params, x, self.buffers, channels_last=cl),
                                    self.objective, b, self._rows[0]), ()
            return self._passes(batch)[0]


def _slice_rows(model: nn.Module, b: Batch | torch.Tensor) -> int | None:
    """HVP_ROWS where slicing a batch like b (or inputs b) pays (a slice's activations, counted by
    _modeleval.forward_cost on two rows, reach HVP_SLICE_ELEMS: a ResNet-20's do, an MLP's on 8 x 8 digits
    do not), else None."""
    from ._modeleval import forward_cost

    X = b if isinstance(b, torch.Tensor) else b.tensor
    if X is None or X.shape[0] <= HVP_ROWS:
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


def _sliced_loss(forward: Callable, objective: Objective, b: Batch, rows: int | None) -> torch.Tensor:
    """The batch's loss (differentiable) as the weighted mean of its slices of at most `rows` samples (None:
    in one piece), where that is the same number: the slices' outputs, joined, must give the loss the same
    value to float rounding (a mean of per-sample terms), else the batch in one piece."""
    if rows is None or b.rows <= rows or b.tensor is None or objective.own:
        return objective.loss(forward(b), b)
    n = objective.count(b)
    parts, outs = [], []
    for i in range(0, b.rows, rows):
        s = b.take(i, i + rows)
        out = forward(s)
        if not isinstance(out, torch.Tensor):  # outputs the loss unpacks itself: left whole
            return objective.loss(forward(b), b)
        parts.append(objective.loss(out, s) * (objective.count(s) / n))
        outs.append(out.detach())
    joined = sum(parts)
    with torch.no_grad():
        whole = objective.loss(torch.cat(outs), b)
    if not torch.allclose(joined.detach(), whole, rtol=1e-4, atol=1e-30):
        return objective.loss(forward(b), b)  # not a mean over samples: the slices would change the function
    return joined


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
            state = ({k: v.detach() for k, v in params.items()}, bufs)
            for b in batches:
                args, kwargs = b.args()
                torch.func.functional_call(model, state, args, kwargs)
    finally:
        for m, mode in modes.items():
            m.train(mode)
        for m, mom in momenta.items():
            m.momentum = mom
    return bufs
