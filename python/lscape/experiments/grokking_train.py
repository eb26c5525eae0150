"""Training for the grokking reproduction: the two networks, full-batch (transformer) and minibatch (MLP)
training in resumable segments, and the fixed-norm (LU) cells.

A segment carries its whole state in and out as flat arrays: the parameters (D,), AdamW's two moment
estimates (D,) each and its step count, so segment s + 1 continues segment s exactly (same numbers as
one uninterrupted run) wherever and whenever it runs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .. import models
from .._flat import FlatLayout
from ..subspace import Subspace


class LastToken(nn.Module):
    """Nanda et al.'s readout: the transformer's logits at the last position ('='), over the p residues.

    forward(idx (N, 3) int64) -> (N, p) logits.  The '=' token's unembedding row is never read (Nanda et
    al. unembed to p classes; nanogpt unembeds to its vocabulary of p + 1).  Only the last position's
    query, MLP and logits are computed (GPT.forward(last=True)): the same function as Nanda et al.'s, which
    computes all three positions and reads one, at 2.8x less time an epoch (46.5 against 129.3 ms at p = 113
    on 2 idle cores: bench/grokking_last_position.py)."""

    def __init__(self, gpt: nn.Module, p: int) -> None:
        super().__init__()
        self.gpt, self.p = gpt, p

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.gpt(idx, last=True)[:, :self.p]


def transformer(cfg: Any, seed: int, attention: str = "sdpa") -> LastToken:
    """Nanda et al.'s one-layer ReLU transformer without LayerNorm for (a op b) mod p (D = 227,328 at
    p = 113, d_model = 128), initialised as theirs (nanda_init_).  attention="math" is the same function
    with attention written out in plain ops (the tests check the Hessian products through SDPA against it)."""
    gpt = models.nanogpt(vocab_size=cfg.p + 1, context=3, d_model=cfg.d_model, n_layers=1, n_heads=cfg.n_heads,
                         activation="relu", layer_norm=False, tied=False, attention=attention, seed=seed)
    return LastToken(nanda_init_(gpt, seed), cfg.p)


def nanda_init_(gpt: nn.Module, seed: int) -> nn.Module:
    """Nanda et al.'s initialisation, in place: every weight normal with std 1 / sqrt(d_model) (their
    randn(...) / sqrt(d_model)), the unembedding 1 / sqrt(vocabulary) (p + 1 tokens), biases zero; drawn
    from `seed`.  Its norm is about 5x nanoGPT's std-0.02 one (42.2 against 8.6 at p = 113): from there
    the network memorises within ~200 epochs and groks later, where from nanoGPT's small initialisation
    it neither memorised nor generalised in 5,700 epochs (train accuracy 0.73, test 0.59, measured)."""
    gen = torch.Generator().manual_seed(seed)
    d_model = gpt.wte.weight.shape[1]
    with torch.no_grad():
        for name, p in gpt.named_parameters():
            if name.endswith("bias"):
                p.zero_()
                continue
            fan = gpt.vocab_size if name.startswith("lm_head") else d_model
            p.copy_(torch.randn(p.shape, generator=gen) / fan ** 0.5)
    return gpt


def mlp(n_in: int, width: int, depth: int, n_out: int, seed: int) -> nn.Sequential:
    """Omnigrok's MNIST MLP: `depth` Linear layers (depth 3: n_in -> width -> width -> n_out), ReLU between,
    torch's default initialisation from `seed`."""
    torch.manual_seed(seed)
    sizes = [n_in] + [width] * (depth - 1) + [n_out]
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:], strict=True):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def norm(model: nn.Module) -> float:
    """|theta|, the weight norm of all parameters, in float64."""
    return float(torch.sqrt(sum((p.detach().double() ** 2).sum() for p in model.parameters())))


def scale_(model: nn.Module, factor: float) -> nn.Module:
    """Every parameter times `factor`, in place (Omnigrok's initialisation scale alpha)."""
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(factor)
    return model


def cross_entropy(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(out, y)


def one_hot_mse(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Omnigrok's MNIST loss: nn.MSELoss between the outputs (N, C) and one-hot targets, mean over N x C."""
    return F.mse_loss(out, F.one_hot(y, out.shape[1]).to(out.dtype))


@torch.no_grad()
def evaluate(model: nn.Module, loss_fn, x: torch.Tensor, y: torch.Tensor, chunk: int = 4096) -> tuple[float, float]:
    """(mean loss, accuracy) of model on (x, y), in chunks of rows."""
    loss, correct = 0.0, 0
    for i in range(0, len(y), chunk):
        out = model(x[i:i + chunk])
        loss += float(loss_fn(out, y[i:i + chunk])) * len(out)
        correct += int((out.argmax(1) == y[i:i + chunk]).sum())
    return loss / len(y), correct / len(y)


# ---- resumable AdamW state -------------------------------------------------------------------------------

@dataclass
class State:
    """A training run between segments: params, exp_avg, exp_avg_sq (D,) float32 and AdamW's step."""
    params: np.ndarray
    exp_avg: np.ndarray
    exp_avg_sq: np.ndarray
    step: int

    def arrays(self) -> dict[str, np.ndarray]:
        return {"params": self.params, "exp_avg": self.exp_avg, "exp_avg_sq": self.exp_avg_sq,
                "step": np.array(self.step)}

    @classmethod
    def of(cls, arrays: dict[str, np.ndarray]) -> State:
        return cls(arrays["params"], arrays["exp_avg"], arrays["exp_avg_sq"], int(arrays["step"]))


def adamw(model: nn.Module, cfg_lr: float, wd: float, betas: tuple[float, float], state: State | None,
          dev: torch.device) -> torch.optim.AdamW:
    """AdamW on model's parameters; with `state`, the parameters and moments loaded from it (a fresh
    optimizer with the same state steps exactly as the one that wrote it)."""
    opt = torch.optim.AdamW(model.parameters(), lr=cfg_lr, weight_decay=wd, betas=betas)
    if state is None:
        return opt
    layout = FlatLayout.of(model)
    layout.load(model, torch.from_numpy(state.params).to(dev))
    m1 = layout.split(torch.from_numpy(state.exp_avg).to(dev))
    m2 = layout.split(torch.from_numpy(state.exp_avg_sq).to(dev))
    for name, p in model.named_parameters():
        opt.state[p] = {"step": torch.tensor(float(state.step)), "exp_avg": m1[name].clone(),
                        "exp_avg_sq": m2[name].clone()}
    return opt


def state_of(model: nn.Module, opt: torch.optim.AdamW, step: int) -> State:
    """The model's parameters and the optimizer's moments as a State (zeros before the first step)."""
    layout = FlatLayout.of(model)
    ps = [p for _, p in model.named_parameters()]

    def moment(key: str) -> np.ndarray:
        return layout.flatten([opt.state[p][key] if p in opt.state else torch.zeros_like(p) for p in ps]
                              ).cpu().numpy()

    return State(layout.flatten(model).cpu().numpy(), moment("exp_avg"), moment("exp_avg_sq"), step)


# ---- segments --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Run:
    """One training run cut into segments: the model builder, its loss, the data (train, test), the
    optimizer's settings, and the steps at which to record metrics and keep the parameters."""
    build: Any  # () -> nn.Module (the initialisation)
    loss_fn: Any
    data: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
    lr: float
    weight_decay: float
    betas: tuple[float, float]
    batch: int | None  # None: full batch
    seed: int
    records: tuple[int, ...]
    snapshots: tuple[int, ...]
    device: str


def batch_of(x: torch.Tensor, y: torch.Tensor, batch: int | None, seed: int, step: int
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """The minibatch of optimizer step `step` (0-based; batch None: all of x, y): rows of epoch
    step // per_epoch's seeded permutation, so a segment that starts anywhere draws what an uninterrupted
    run would."""
    if batch is None:
        return x, y
    per_epoch = -(-len(y) // batch)
    epoch, k = divmod(step, per_epoch)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    idx = order[k * batch:(k + 1) * batch].to(y.device)
    return x[idx], y[idx]


def segment(run: Run, start: int, stop: int, state: State | None) -> dict[str, np.ndarray]:
    """Steps (start, stop] of `run` from `state` (None: the initialisation, start = 0) -> the State after
    `stop` as arrays, plus the records in [start, stop] (rec_step, rec (R, 5): train loss, train acc,
    test loss, test acc, |theta|) and the snapshots' parameters (snap_step, snap (S, D))."""
    dev = torch.device(run.device)
    model = run.build().to(dev)
    model.train()
    opt = adamw(model, run.lr, run.weight_decay, run.betas, state, dev)
    x, y, xt, yt = (t.to(dev) for t in run.data)
    rec_steps, rows, snap_steps, snaps = [], [], [], []
    want_rec = {s for s in run.records if start <= s <= stop and (s > start or state is None)}
    want_snap = {s for s in run.snapshots if start <= s <= stop and (s > start or state is None)}
    layout = FlatLayout.of(model)
    for step in range(start, stop + 1):
        if step in want_rec:
            rows.append([*evaluate(model, run.loss_fn, x, y), *evaluate(model, run.loss_fn, xt, yt), norm(model)])
            rec_steps.append(step)
        if step in want_snap:
            snaps.append(layout.flatten(model).cpu().numpy())
            snap_steps.append(step)
        if step == stop:
            break
        xb, yb = batch_of(x, y, run.batch, run.seed, step)
        opt.zero_grad(set_to_none=True)
        run.loss_fn(model(xb), yb).backward()
        opt.step()
    D = layout.dim
    return {**state_of(model, opt, stop).arrays(), "rec_step": np.array(rec_steps, np.int64),
            "rec": np.array(rows, np.float64).reshape(-1, 5), "snap_step": np.array(snap_steps, np.int64),
            "snap": np.array(snaps, np.float32).reshape(-1, D)}


# ---- fixed-norm (LU) cells -------------------------------------------------------------------------------

def sphere_cell(model: nn.Module, w: float, loss_fn, data, *, lr: float, steps: int, batch: int | None,
                seed: int, evals: int, dev: torch.device) -> dict[str, Any]:
    """Train `model` (its own initialisation, scaled to |theta| = w) with Adam on the sphere |theta| = w of
    the full space (Subspace kind="sphere", d = D) for `steps` steps -> final and best (over `evals`
    evaluations spaced through training) train/test loss and accuracy, and the largest relative departure
    of |theta| from w seen at the evaluations (float rounding when the constraint holds)."""
    scale_(model, w / norm(model))
    sub = Subspace(model.to(dev), None, kind="sphere").to(dev)
    opt = torch.optim.Adam(sub.parameters(), lr=lr)
    sub.constrain(opt)
    x, y, xt, yt = (t.to(dev) for t in data)
    at = set(np.unique(np.linspace(0, steps, evals).round().astype(int)).tolist())
    rows, off = [], 0.0
    for step in range(steps + 1):
        if step in at:
            rows.append([*evaluate(sub, loss_fn, x, y), *evaluate(sub, loss_fn, xt, yt)])
            off = max(off, abs(sub.radius() - w) / w)
        if step == steps:
            break
        xb, yb = batch_of(x, y, batch, seed, step)
        opt.zero_grad(set_to_none=True)
        loss_fn(sub(xb), yb).backward()
        opt.step()
    r = np.array(rows)
    best = np.concatenate([r[:, [0, 2]].min(0), r[:, [1, 3]].max(0)])  # train/test loss min, acc max
    return {"final": r[-1], "best": best[[0, 2, 1, 3]], "norm_error": off, "curve": r}
