"""The grokking transformer's epoch with the last position alone (GPT.forward(last=True)) against all three
positions computed and the last read (Nanda et al.'s way): one full-batch AdamW step on (a + b) mod 113,
30% of the pairs, both timed in turn in one process, the least of --rounds rounds of --steps steps.

    PYTHONPATH=python python bench/grokking_last_position.py [--threads 2 --rounds 5 --steps 20]
"""
from __future__ import annotations

import argparse

import torch
from lscape import data
from lscape.experiments import grokking as gk
from lscape.experiments import grokking_train as gt
from timing import least_interleaved
from torch.nn import functional as F


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    cfg = gk.config("paper")
    split = data.modular_arithmetic(cfg.p, "+", cfg.train_fraction, cfg.seed)
    x, y = split.x_train, split.y_train
    model = gt.transformer(cfg, cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, cfg.beta2))

    def step(last: bool) -> None:
        opt.zero_grad(set_to_none=True)
        logits = model.gpt(x, last=True) if last else model.gpt(x)[:, -1]
        F.cross_entropy(logits[:, :cfg.p], y).backward()
        opt.step()

    every, last = least_interleaved([lambda: step(False), lambda: step(True)], rounds=a.rounds, calls=a.steps)
    print(f"p = {cfg.p}, {len(y):,} pairs, {a.threads} thread(s): an epoch {every * 1e3:.1f} ms with every "
          f"position, {last * 1e3:.1f} ms with the last alone: {every / last:.2f}x")


if __name__ == "__main__":
    main()
