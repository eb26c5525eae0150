"""What lscape's written-out double backwards (_hvpops, _hvpattention, _hvpnorms, _hvpactivations, _hvploss)
share: when to run them, what a Function keeps for its backward, and how to bound the temporaries of a second
backward."""
from __future__ import annotations

import torch

CHUNK_ELEMS = 1 << 22  # entries of one chunk's temporaries in a second backward (16 MiB of float32)


def differentiating(*tensors: torch.Tensor | None) -> bool:
    """Whether autograd will record this call (grad mode on, some input needs a gradient) outside torch.func
    transforms (under vmap / jacrev the plain ops run: their batching rules are needed there)."""
    return (torch.is_grad_enabled() and not torch._C._are_functorch_transforms_active()
            and any(t is not None and t.requires_grad for t in tensors))


def row_chunks(rows: int, per_row: int, budget: int = CHUNK_ELEMS) -> list[slice]:
    """Slices of range(rows), each of at most `budget` entries at `per_row` entries a row (at least one row)."""
    step = max(1, budget // max(1, per_row))
    return [slice(i, min(i + step, rows)) for i in range(0, rows, step)]


def keep(ctx, spec, *tensors: torch.Tensor) -> None:
    """What a written-out Function's backward reads: `tensors` (saved for backward, ctx.saved_tensors) and the
    call's `spec` (ctx.spec), which the next backward passes on."""
    ctx.save_for_backward(*tensors)
    ctx.spec = spec
