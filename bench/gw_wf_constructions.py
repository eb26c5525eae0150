"""Gamst-Walker: how far W_f's basin reaches and where it sits among trained minima, per construction.

Builds candidate 5 x 5 constructions of the same f (lscape.tinymlp's "v1" and "v2" and the variants tried
on the way to v2), checks each is exact at f's knots, and measures against one set of trained minima
(they depend only on f, not on the construction):

  distance   L2 distance from de-symmetrised W_f to the de-symmetrised minima (10/50/90%)
  jitter     the noise norm where a logistic fit of P(SGD returns to the global minimum) is 1/2
             (noise norms uniform in [0, 2], 10,000 steps, the default scale's SGD)
  neb        the NEB first rise (gamst_walker.basin_radius) read between the images and along the
             polyline, on bands of the default scale's NEB settings (k = 10, 12 images, fmax 1e-2)

Prints one JSON object per construction.  `python bench/gw_wf_constructions.py [--minima 96 --jitters 192
--bands 20]` (about 5 minutes on 2 cores with the defaults).
"""
from __future__ import annotations

import argparse
import json
import warnings

import numpy as np
import torch


def build(saw: str = "BBBBB", carrier: str = "x", order=(2, 3, 4, 0, 1), k0_in_acc: bool = True,
          offset: float | None = None, saw_margin: float = 0.0, x_margin: float = 0.0) -> torch.Tensor:
    """A W_f of f = sawtooth + spline (float64 (136,)).

    saw: per layer "A" (relu(t + m), relu(t - 1/2); t = 2 (u0 - m) - 4 u1, m = saw_margin) or "B"
    (relu(2 t - 1), relu(1 - 2 t); t = 1 - u0 - u1).  carrier "x": unit 2 carries x + x_margin and the
    five knots enter in `order` (unit 3 of layers 1-5); carrier "knot": unit 2 carries relu(x - 1/8) in
    layers 1-4, the other four knots enter in `order` (indices 1-4), layer 5's units 2, 3 are unused.
    k0_in_acc: the spline's slope at 0 starts the accumulator (else the output reads it off the carrier).
    offset: the accumulator's constant (None: the least that keeps it nonnegative)."""
    from lscape import tinymlp as tm

    K = N = 5
    spec = tm.TinyMLP(K, N)
    s0, k0, a, k, _ = tm._wf_spline_coefs()
    alpha = tm.WF_SAW_AMPLITUDE
    xs = np.asarray(tm.WF_SPLINE_X)
    # the knots the accumulator adds in layers 2..5 (its partial sums must stay nonnegative)
    if carrier == "x":
        adds = [[j] for j in order[:-1]]
        out_knot = order[-1]  # read by the output
        part = k0 * xs if k0_in_acc else 0 * xs
    else:
        adds = [[j] for j in order[:-1]] + [[order[-1], 0]]  # knot 0 is the carrier's
        part = k0 * xs
    low = part.min()
    for group in adds:
        part = part + sum(k[j] * np.maximum(xs - a[j], 0.0) for j in group)
        low = min(low, part.min())
    c = max(0.0, -low) if offset is None else offset
    m, mx = saw_margin, x_margin
    weights = tm._zero_hidden_layers(K, N)
    t_of = {"A": ((2.0, -4.0), -2.0 * m), "B": ((-1.0, -1.0), 1.0)}  # t from the previous layer's u0, u1
    pre = {"A": ((1.0, m), (1.0, -0.5)), "B": ((2.0, -1.0), (-2.0, 1.0))}  # units as s t + h
    for l, (W, b) in enumerate(weights):
        for u, (sc, h) in enumerate(pre[saw[l]]):
            if l == 0:
                W[u, 0], b[u] = sc, h
            else:
                (w0, w1), tb = t_of[saw[l - 1]]
                W[u, 0], W[u, 1], b[u] = sc * w0, sc * w1, sc * tb + h
        if carrier == "x":
            if l == 0:
                W[2, 0], b[2] = 1.0, mx
                W[3, 0], b[3] = 1.0, -a[order[0]]
                W[4, 0], b[4] = (k0 if k0_in_acc else 0.0), c
            else:
                W[2, 2] = 1.0
                W[3, 2], b[3] = 1.0, -mx - a[order[l]]
                W[4, 4], W[4, 3] = 1.0, k[order[l - 1]]
        else:
            tm._v2_spline_units(W, b, l, K, a, k, k0, c, order)
    (w0, w1), tb = t_of[saw[-1]]
    bias = alpha * tb + s0 - c
    if carrier == "x":
        kx = 0.0 if k0_in_acc else k0
        W = torch.tensor([[alpha * w0, alpha * w1, kx, k[out_knot], 1.0]], dtype=torch.float64)
        bias -= kx * mx
    else:
        W = torch.tensor([[alpha * w0, alpha * w1, 0.0, 0.0, 1.0]], dtype=torch.float64)
    weights.append((W, torch.tensor([bias], dtype=torch.float64)))
    return spec.flatten(weights)


CANDIDATES = {
    "v1": dict(construction="v1"),
    "v2": dict(construction="v2"),
    "BBBBB tents, knot carrier": dict(saw="BBBBB", carrier="knot", order=(3, 1, 4, 2)),
    "BBBBB tents, x carrier, offset 0": dict(saw="BBBBB"),
    "BBBBB tents, x carrier, k0 x at the output": dict(saw="BBBBB", order=(0, 1, 2, 3, 4), k0_in_acc=False),
    "AAAAA tents, x carrier, offset 0": dict(saw="AAAAA"),
    "AAAAA tents + margin 1, x carrier": dict(saw="AAAAA", saw_margin=1.0),
    "BBBBB tents, x carrier + margin 1": dict(saw="BBBBB", x_margin=1.0),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minima", type=int, default=96, help="trained models per optimizer")
    ap.add_argument("--jitters", type=int, default=192)
    ap.add_argument("--bands", type=int, default=20)
    ap.add_argument("--neb-steps", type=int, default=16_000)
    args = ap.parse_args()
    warnings.filterwarnings("ignore", category=RuntimeWarning)
    from lscape import tinymlp as tm
    from lscape.ensemble import train_ensemble
    from lscape.experiments import gamst_walker as gw
    from lscape.experiments.stats import logistic_fit
    from lscape.landscape import Landscape
    from lscape.neb import arc_length, neb
    from lscape.reference import mlp as ref

    torch.set_num_threads(1)
    # the builder spans both constructions the experiment knows (a guard on the builder itself)
    v1 = build(saw="AAAAA", order=(0, 1, 2, 3, 4), k0_in_acc=False, offset=10.0)
    v2 = build(saw="ABBBB", carrier="knot", order=tm.WF_V2_KNOT_ORDER)
    if not (torch.equal(v1, tm.wf_network("v1")[1]) and torch.allclose(v2, tm.wf_network("v2")[1], atol=1e-12)):
        raise RuntimeError("build() no longer reproduces wf_network's v1 and v2")
    cfg = gw.config("default")
    spec = tm.TinyMLP(5, 5)
    x, y = tm.wf_training_set()
    var_y = float(y.double().var(unbiased=False))
    thr = cfg.global_min_rel * var_y
    M = args.minima
    init = spec.init(2 * M, seed=cfg.seed, scheme=cfg.init_scheme)
    minima, firsts = [], []
    for j, opt in enumerate(gw.OPTIMIZERS):
        r = train_ensemble(spec, init[j * M:(j + 1) * M], x, y, optimizer=opt, steps=cfg.steps,
                           record_every=cfg.steps, **gw._opt_kwargs(cfg, opt))
        loss = r.loss.double().numpy()
        ok = ~r.diverged.numpy() & (np.abs(loss - var_y) > 1e-5 * var_y) & (loss >= thr)
        d = tm.desymmetrize(spec, r.params[ok].double())
        minima.append(d)
        firsts.append(d[:args.bands // 2])
    minima = torch.cat(minima).numpy()
    ends = torch.cat(firsts).float()
    nb = ends.shape[0]
    land = Landscape.from_mlp(spec, x, y)
    gen = np.random.default_rng([cfg.seed, 0xBA5])
    radius = gen.uniform(0.0, 2.0, args.jitters)
    z = gen.standard_normal((args.jitters, spec.dim))
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    knots = torch.from_numpy(np.concatenate([tm.wf_knots(), np.linspace(0.0, 1.0, 2001)]))
    for name, kw in CANDIDATES.items():
        p = tm.wf_network(kw["construction"])[1] if "construction" in kw else build(**kw)
        err = float((ref.forward(5, 5, p[None], knots)[0] - torch.from_numpy(tm.wf_function(knots.numpy())))
                    .abs().max())
        wd = tm.desymmetrize(spec, p)
        dist = np.linalg.norm(minima - wd.numpy()[None], axis=1)
        start = (wd.numpy()[None] + radius[:, None] * z).astype(np.float32)
        noise = np.linalg.norm(start.astype(np.float64) - wd.numpy()[None], axis=1)
        t = train_ensemble(spec, torch.from_numpy(start), x, y, optimizer="sgd", steps=cfg.basin_steps,
                           record_every=cfg.basin_steps, **gw._opt_kwargs(cfg, "sgd"))
        back = t.loss.double().numpy() < thr
        b = neb(land, wd.float()[None].expand(nb, -1).contiguous(), ends, n_images=cfg.neb_images, k=cfg.neb_k,
                fmax=cfg.neb_fmax, steps=args.neb_steps)
        im = b.images.double()
        r_img = gw.basin_radius(arc_length(im).numpy(), b.energies.double().numpy(), cfg.neb_basin_rise)
        line = gw.polyline(im, cfg.neb_polyline_points)
        e_line = land.loss(line.float().reshape(-1, spec.dim)).view(nb, -1).double().numpy()
        r_line = gw.basin_radius(arc_length(line).numpy(), e_line, cfg.neb_basin_rise)
        print(json.dumps({
            "construction": name, "max_error_on_f": err, "desym_norm": round(float(wd.norm()), 3),
            "distance_to_minima_10_50_90": np.quantile(dist, [0.1, 0.5, 0.9]).round(2).tolist(),
            "jitter_sgd_p50": round(float(logistic_fit(noise, back.astype(float), l2=1e-6).x50), 3),
            "jitter_returned": f"{int(back.sum())}/{args.jitters}",
            "neb_radius_images_median": round(float(np.nanmedian(r_img)), 3),
            "neb_radius_polyline_median": round(float(np.nanmedian(r_line)), 3),
            "neb_converged": f"{int(b.converged.sum())}/{nb}"}), flush=True)


if __name__ == "__main__":
    main()
