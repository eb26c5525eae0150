"""How lscape calls a model on a batch and reads what it returns: the one place every entry point that
takes a module goes through (DESIGN.md, "Transformers").

A batch is one of
- ``(inputs, targets)``: inputs a tensor (``model(x)``), a tuple or list (``model(*x)``) or a mapping such
  as a Hugging Face ``BatchEncoding`` (``model(**x)``); targets a tensor;
- a mapping alone (``{"input_ids": ..., "attention_mask": ..., "labels": ...}``): the model is called with
  it and its ``labels`` are the targets.

Outputs may be a tensor, a tuple or list, or a mapping / ``ModelOutput`` (``.logits``, ``.loss``).
``loss_fn(outputs, targets)`` receives the outputs exactly as the model returns them; ``loss_fn=None``
means the model's own loss (``outputs.loss``, the Hugging Face convention: ``labels`` go into the call).
With a ``loss_fn`` given, ``labels`` are taken out of the call and passed to it as the targets.

Batches are weighted by the targets they count: integer targets other than the ignore index (-100, or the
loss's own ``ignore_index``), shifted by one position where the model's own loss is a causal LM's; rows
otherwise.  So a loss streamed batch by batch equals the loss over all tokens at once.  Accuracy of
(N, ..., C) logits against (N, ...) integer targets is token accuracy over the counted targets.

    obj = Objective(loss_fn)                          # loss_fn or None
    batches = Batches(data, "data", max_batches)      # re-iterable of Batch
    obj.check(model, batches)                         # named errors before any work
    for b in batches:
        out = b.call(model)                           # model(x) / model(*x) / model(**x)
        loss, n = obj.loss(out, b), obj.count(b)      # the batch's mean loss and its weight
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn import functional as F

from . import _checks

__all__ = ["IGNORE_INDEX", "Batch", "Batches", "Objective", "as_batch", "logits_of", "token_cross_entropy"]

IGNORE_INDEX = -100  # torch's and Hugging Face's default ignore_index: targets never counted or scored
LABELS = "labels"


def _first_tensor(x) -> torch.Tensor | None:
    if isinstance(x, torch.Tensor):
        return x
    values = x.values() if isinstance(x, Mapping) else x if isinstance(x, (tuple, list)) else ()
    for v in values:
        t = _first_tensor(v)
        if t is not None:
            return t
    return None


def _take(x, rows: int, sel):
    """x with every tensor whose leading size is `rows` indexed by sel (a slice or an index tensor) along it
    (others, such as a shared position table, kept whole); tuples, lists and mappings rebuilt."""
    if isinstance(x, torch.Tensor):
        return x[sel] if x.dim() > 0 and x.shape[0] == rows else x
    if isinstance(x, Mapping):
        return {k: _take(v, rows, sel) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return (list if isinstance(x, list) else tuple)(_take(v, rows, sel) for v in x)
    return x


@dataclass(frozen=True)
class Batch:
    """One batch: `inputs` as the model is called with (a tensor, a tuple, a mapping), `targets` (a tensor,
    or None where the model's own loss reads them from the inputs), `rows` its samples (the leading size)."""
    inputs: Any
    targets: torch.Tensor | None
    rows: int
    labels_kw: bool = False  # the targets also go into the call as labels= (the model's own loss)

    @property
    def form(self) -> str:
        """How the model is called, for error messages."""
        if isinstance(self.inputs, Mapping):
            return "model(**inputs)"
        return "model(*inputs)" if isinstance(self.inputs, (tuple, list)) else "model(inputs)"

    @property
    def tensor(self) -> torch.Tensor | None:
        """The inputs when they are one tensor (what the CNN/MLP fast paths take), else None."""
        return self.inputs if isinstance(self.inputs, torch.Tensor) else None

    def args(self) -> tuple[tuple, dict]:
        """(positional, keyword) arguments of the call."""
        extra = {LABELS: self.targets} if self.labels_kw else {}
        if isinstance(self.inputs, Mapping):
            return (), {**self.inputs, **extra}
        if isinstance(self.inputs, (tuple, list)):
            return tuple(self.inputs), extra
        return (self.inputs,), extra

    def call(self, fn: Callable) -> Any:
        """fn called with the inputs: fn(x), fn(*x) or fn(**x)."""
        args, kwargs = self.args()
        return fn(*args, **kwargs)

    def take(self, start: int, stop: int) -> Batch:
        """Rows [start, stop) of the batch."""
        stop = min(stop, self.rows)
        return self.select(slice(start, stop), stop - start)

    def select(self, sel, rows: int) -> Batch:
        """The `rows` rows that sel (a slice or an index tensor) picks."""
        return Batch(_take(self.inputs, self.rows, sel),
                     None if self.targets is None else _take(self.targets, self.rows, sel), rows, self.labels_kw)

    def describe(self) -> str:
        return f"inputs {brief(self.inputs)} and targets {brief(self.targets)}"


def brief(x) -> str:
    """A short description of a batch's part: tensors by shape and dtype, containers by their parts."""
    if isinstance(x, Mapping):
        return "{" + ", ".join(f"{k!r}: {brief(v)}" for k, v in x.items()) + "}"
    if isinstance(x, (tuple, list)):
        return "(" + ", ".join(brief(v) for v in x) + ")"
    if isinstance(x, torch.Tensor):
        return f"tensor {tuple(x.shape)} {str(x.dtype).replace('torch.', '')}"
    return "None" if x is None else type(x).__name__


def as_batch(item, own_loss: bool, name: str = "data", index: int = 0) -> Batch:
    """One item of `data` as a Batch (module docstring).  own_loss: the model's own loss is asked for
    (loss_fn=None), so labels go into the call."""
    if isinstance(item, Mapping):
        inputs = dict(item)
        targets = inputs.get(LABELS)
        if not own_loss:
            if targets is None:
                raise ValueError(f"{name}: batch {index} is a mapping without {LABELS!r} ({list(inputs)}), expected "
                                 f"{LABELS!r} in it or an (inputs, targets) pair, since a loss_fn is given")
            del inputs[LABELS]
    else:
        try:
            inputs, targets = item
        except (TypeError, ValueError):
            raise TypeError(f"{name}: batch {index} is {brief(item)}, expected an (inputs, targets) "
                            "pair or a mapping of model inputs (with 'labels')") from None
    if targets is not None and not isinstance(targets, torch.Tensor):
        raise TypeError(f"{name}: batch {index} has targets {brief(targets)}, expected a tensor")
    lead = _first_tensor(inputs)
    if lead is None or lead.dim() == 0:
        raise TypeError(f"{name}: batch {index} has inputs {brief(inputs)}, expected a tensor, a tuple "
                        "or a mapping holding at least one tensor with a leading batch dimension")
    rows = lead.shape[0]
    # the model's own loss reads its labels from the call
    labels_kw = own_loss and targets is not None and not isinstance(item, Mapping)
    if rows == 0 or targets is not None and (targets.dim() == 0 or targets.shape[0] != rows):
        got = "no" if targets is None or targets.dim() == 0 else targets.shape[0]
        raise ValueError(f"{name}: batch {index} has {rows} inputs and {got} targets, expected as many targets "
                         "as inputs, at least one")
    return Batch(inputs, targets, rows, labels_kw)


class Batches:
    """A re-iterable of Batch: one batch (a pair or a mapping), a sequence of them or any re-iterable (a
    DataLoader), streamed on every pass (never concatenated), at most max_batches of them."""

    def __init__(self, data, name: str, max_batches: int | None = None, own_loss: bool = False) -> None:
        if one_batch(data):
            data = [data if isinstance(data, Mapping) else tuple(data)]
        if isinstance(data, torch.Tensor) or not hasattr(data, "__iter__") or iter(data) is data:
            raise TypeError(f"{name}: got {_checks.describe(data)}, expected (inputs, targets), a mapping of model "
                            "inputs, a sequence of such batches or a re-iterable of them (a DataLoader; not a "
                            "one-shot iterator: every evaluation streams the data again)")
        self.data, self.name, self.own_loss = data, name, own_loss
        self.max = None if max_batches is None else _checks.int_arg("max_batches", max_batches, low=1)
        self._samples: int | None = None

    def __iter__(self) -> Iterator[Batch]:
        n = 0
        for k, item in enumerate(self.data):
            if self.max is not None and k >= self.max:
                break
            n += 1
            yield as_batch(item, self.own_loss, self.name, k)
        if n == 0:
            raise ValueError(f"{self.name}: yielded no batch, expected at least one (inputs, targets) batch")

    def known_length(self) -> int | None:
        """How many batches a pass yields, where the data says so without a pass (None for a loader
        without len)."""
        n = len(self.data) if hasattr(self.data, "__len__") else None
        return n if n is None or self.max is None else min(n, self.max)

    def single(self) -> Batch | None:
        """The one batch when the data was given as one pair or mapping (not a loader), else None."""
        d = self.data
        return as_batch(d[0], self.own_loss, self.name) if isinstance(d, list) and len(d) == 1 and \
            isinstance(d[0], (tuple, Mapping)) else None

    def samples(self) -> int:
        """How many rows one pass yields (counted once, by streaming a pass)."""
        if self._samples is None:
            self._samples = sum(b.rows for b in self)
        return self._samples


def one_batch(data) -> bool:
    """Whether data is one batch (an (inputs, targets) pair or a mapping of inputs), not a sequence of them."""
    if isinstance(data, Mapping):
        return True
    if not (isinstance(data, (tuple, list)) and len(data) == 2):
        return False
    inputs, targets = data
    return isinstance(targets, torch.Tensor) and (isinstance(inputs, (torch.Tensor, Mapping)) or (
        isinstance(inputs, (tuple, list)) and any(isinstance(t, torch.Tensor) for t in inputs)
        and all(t is None or isinstance(t, torch.Tensor) for t in inputs)))


# ---- outputs ------------------------------------------------------------------------------------------
def _field(out, key: str):
    if isinstance(out, Mapping):
        return out.get(key)
    return getattr(out, key, None)


def logits_of(out) -> torch.Tensor | None:
    """The logits (or predictions) in a model's outputs: the tensor itself, `.logits` / ["logits"] of a
    ModelOutput or mapping, or the first tensor of at least one dimension in a tuple (a Hugging Face tuple
    starts with the 0-d loss when labels were given).  None when there is none."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, Mapping) or hasattr(out, "logits"):
        t = _field(out, "logits")
        return t if isinstance(t, torch.Tensor) else None
    if isinstance(out, (tuple, list)):
        return next((t for t in out if isinstance(t, torch.Tensor) and t.dim() > 0), None)
    return None


def own_loss_of(out) -> torch.Tensor | None:
    """The model's own loss in its outputs: `.loss` / ["loss"], a 0-d tensor first in a tuple, or a 0-d
    tensor returned alone; None when there is none."""
    if isinstance(out, torch.Tensor):
        return out if out.dim() == 0 else None
    if isinstance(out, Mapping) or hasattr(out, "loss"):
        t = _field(out, "loss")
        return t if isinstance(t, torch.Tensor) and t.dim() == 0 else None
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor) and out[0].dim() == 0:
        return out[0]
    return None


def token_cross_entropy(outputs, targets: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Mean cross-entropy of (N, ..., C) logits (any outputs logits_of reads) against (N, ...) class
    indices, over the targets other than ignore_index: the loss of a language model whose targets are
    already shifted (nanoGPT's x, y), of a masked LM (labels -100 where not masked), or of a classifier."""
    z = logits_of(outputs)
    if z is None or z.dim() < 2 or not z.is_floating_point():
        raise TypeError(f"outputs: got {brief(outputs)}, expected (N, ..., C) floating logits or outputs holding them")
    if not isinstance(targets, torch.Tensor) or targets.is_floating_point() or targets.is_complex():
        raise TypeError(f"targets: got {brief(targets)}, expected an integer tensor of class indices")
    ignore_index = _checks.int_arg("ignore_index", ignore_index)
    if z.shape[:-1] != targets.shape:
        raise ValueError(f"targets: got {_checks.describe(targets)}, expected shape {tuple(z.shape[:-1])} to match "
                         f"logits {tuple(z.shape)}")
    return F.cross_entropy(z.reshape(-1, z.shape[-1]), targets.reshape(-1), ignore_index=ignore_index)


# ---- what a loss counts -------------------------------------------------------------------------------
class Objective:
    """The loss, weight and accuracy of batches for one loss_fn (None: the model's own loss).

    check(model, batches) runs the model on the first batch's first rows before any work: a batch the
    model cannot be called with, outputs with no logits or loss, loss_fn=None with a model that returns no
    loss, integer targets whose shape fits no output, are named errors.  For the model's own loss it also
    finds whether the loss is a causal LM's (its value equals the token cross-entropy of the logits shifted
    by one against the labels), which shifts the counted targets and the accuracy the same way."""

    def __init__(self, loss_fn: Callable | None, shift: bool = False) -> None:
        if loss_fn is not None and not callable(loss_fn):
            raise TypeError(f"loss_fn: got {_checks.describe(loss_fn)}, expected fn(outputs, targets) -> scalar, "
                            "or None for the model's own loss")
        self.loss_fn = loss_fn
        self.own = loss_fn is None
        ignore = getattr(loss_fn, "ignore_index", IGNORE_INDEX)
        self.ignore_index = ignore if isinstance(ignore, int) else IGNORE_INDEX
        self.shift = shift  # the model's own loss is a causal LM's (found by check, or given by a worker's driver)

    def loss(self, out, batch: Batch) -> torch.Tensor:
        """The batch's loss (its mean over what it counts)."""
        if not self.own:
            return self.loss_fn(out, batch.targets)
        loss = own_loss_of(out)
        if loss is None:
            raise ValueError(f"loss_fn: got None (the model's own loss) but the model returned "
                             f"{type(out).__name__} without a loss, expected outputs with .loss (labels in the "
                             "batch) or a loss_fn")
        return loss

    def _counted(self, targets: torch.Tensor) -> torch.Tensor | None:
        """The integer targets that count (a bool mask), None for targets counted by rows."""
        if targets is None or targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
            return None
        t = targets[:, 1:] if self.shift and targets.dim() >= 2 else targets
        return t != self.ignore_index

    def count(self, batch: Batch) -> int:
        """The batch's weight: its counted targets (integer targets other than the ignore index), its rows
        for other targets."""
        mask = self._counted(batch.targets)
        if mask is None:
            return batch.rows
        return int(mask.sum())

    def accuracy(self, out, targets: torch.Tensor | None) -> torch.Tensor | None:
        """Fraction of counted targets the logits' argmax hits (classification: (N, C) with (N,); tokens:
        (N, ..., C) with (N, ...)), or None where the outputs and targets are not of that kind."""
        z = logits_of(out)
        mask = None if z is None or targets is None else self._counted(targets)
        if mask is None or z.dim() < 2:
            return None
        if self.shift and targets.dim() >= 2:
            z, targets = z[:, :-1], targets[:, 1:]
        if z.shape[:-1] != targets.shape:
            return None
        hit = (z.argmax(-1) == targets) & mask
        return hit.sum().to(z.dtype) / mask.sum().clamp_min(1).to(z.dtype)

    def check(self, model, batches: Batches, rows: int = 2) -> None:
        """Named errors before any work (class docstring); settles `shift` for the model's own loss."""
        first = next(iter(batches))
        was_training = model.training
        model.eval()  # a BatchNorm in training mode would move its running statistics
        try:
            with torch.no_grad():
                try:  # two rows show a shape or dtype error as well as all of them, at a fraction of the cost
                    b = first.take(0, rows)
                    out = b.call(model)
                    self._check_outputs(out, b, batches.name)
                except (RuntimeError, ValueError, TypeError, IndexError, KeyError):
                    b = first
                    out = b.call(model)  # a model or loss that needs the whole batch: the error is the batch's
                    self._check_outputs(out, b, batches.name)
        except (RuntimeError, ValueError, TypeError, IndexError, KeyError) as exc:
            raise ValueError(f"{batches.name}: got a batch of {first.describe()} that the model, called as "
                             f"{first.form}, and loss_fn cannot evaluate ({exc}); expected batches of the form "
                             "the model takes") from None
        finally:
            model.train(was_training)
        for k, b in enumerate(batches):
            if self._counted(b.targets) is not None and self.count(b) == 0:
                raise ValueError(f"{batches.name}: batch {k} has no counted target (every target is the ignore "
                                 f"index {self.ignore_index}), expected at least one")
            if batches.known_length() is None:
                break  # a loader: the first batch only (a pass would cost as much as an evaluation)

    def _check_outputs(self, out, batch: Batch, name: str) -> None:
        loss = self.loss(out, batch)
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise ValueError(f"the loss is {_checks.describe(loss)}, expected a scalar tensor")
        z, t = logits_of(out), batch.targets
        if not self.own:
            return
        if z is None:
            raise ValueError(f"the model returned {type(out).__name__} without logits")
        if t is not None and self._counted(t) is not None and z.dim() >= 3 and z.shape[:-1] == t.shape:
            self.shift = _causal(z, t, loss, self.ignore_index)


def _causal(z: torch.Tensor, t: torch.Tensor, loss: torch.Tensor, ignore: int) -> bool:
    """Whether `loss` is the token cross-entropy of logits z (N, T, C) at position i against labels
    t[:, i + 1] (a causal LM's, which shifts inside) rather than against t[:, i]."""
    def ce(a, b):
        return F.cross_entropy(a.reshape(-1, a.shape[-1]).double(), b.reshape(-1), ignore_index=ignore)
    shifted, plain = ce(z[:, :-1], t[:, 1:]), ce(z, t)
    target = loss.double()
    return bool(abs(shifted - target) < abs(plain - target))

