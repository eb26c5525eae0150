"""Issue 39's two speed lines on the digits-size problems, side by side in one process, with where the time
goes.  Every row is the least over `--rounds` rounds of bench/timing.py's least_interleaved (all contenders
of a line timed in turn, the order alternating), repeated `--repeats` times, with the load average printed
beside it: on a shared machine compare the ratios within a row, not times across rows.

interp   200 alphas on the line between the digits 64-100-100-10 net's initialisation and its trained
         weights (bench/test_probes_lines.py's case and contenders: lscape, loss-landscapes, a plain
         model(X) loop), and two floors:
           "forward"  200 plain forward passes of the net at one point (model(X) and the loss, no_grad):
                      what any evaluation by forward passes pays per alpha;
           "rest"     200 times what lscape computes per alpha once the first layer is cached,
                      (1 - a) A + a B, then the layers after it and the loss in lscape._fastops' forms,
                      at one fixed set of weights: lscape's per-point cost without building and loading
                      each point.
proj     P theta and P^T g of one vector at the paper's size (D = 656,810, d = 9,000): lscape `indices`
         (its column-band copy, built before timing) against torch's CSR product, and a STREAM-like read of
         256 MB (x.sum()): the bytes a product streams (the band copy, plus the (D,) vector it writes or
         reads) over that bandwidth is its memory-bandwidth floor.

    PYTHONPATH=python python bench/speed_lines.py --threads 1            # both lines, 3 repeats
    PYTHONPATH=python python bench/speed_lines.py --lines interp --threads 2 --repeats 5
"""
from __future__ import annotations

import argparse
import copy
import os
from collections.abc import Callable

import numpy as np
import torch
from timing import least_interleaved


def _load() -> str:
    return "load {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def _row(names: list[str], times: list[float], base: str) -> str:
    ref = times[names.index(base)]
    return " | ".join(f"{n} {t * 1e3:.2f} ms ({t / ref:.2f}x)" for n, t in zip(names, times, strict=True))


def interp_contenders() -> dict[str, Callable[[], object]]:
    """The interpolation line's contenders and floors (module docstring), checked to agree first."""
    import test_probes_lines as tpl
    from lscape._fastops import fast_loss, narrow_linears

    widths, kind = tpl.INTERP_NETS["digits-64-100-100-10"]
    X, Y = tpl._interp_data(kind)
    start = tpl._mlp(widths, seed=0)
    end = tpl._train(copy.deepcopy(start), X, Y, steps=100)
    alphas = np.arange(1, tpl.N_ALPHAS + 1) / tpl.N_ALPHAS
    fns: dict[str, Callable[[], object]] = {k: make(X, Y, start, end, alphas) for k, make in tpl.INTERP.items()}
    want = np.asarray(fns["plain model(X) loop"]())
    for k in ("lscape", "loss-landscapes"):
        got = np.asarray(fns[k](), dtype=np.float64)
        err = float(np.max(np.abs(got - want) / np.maximum(1.0, np.abs(want))))
        assert err < 1e-5, f"{k}: losses differ from the plain loop's by {err:.1e}"
    model = copy.deepcopy(end)
    tail = model[1:]
    with torch.no_grad():
        A, B = start[0](X), end[0](X)  # the first layer's outputs at both ends: lscape's cached products

    def forward() -> None:
        with torch.no_grad():
            for _ in alphas:
                float(tpl.CE(model(X), Y))

    ce = fast_loss(tpl.CE)

    def rest() -> None:
        with torch.no_grad(), narrow_linears(tail):
            for a in alphas:
                float(ce(tail(torch.mul(A, 1.0 - a).add_(B, alpha=float(a))), Y))

    fns["forward"], fns["rest"] = forward, rest
    return fns


def proj_contenders() -> tuple[dict[str, Callable[[], object]], int, int]:
    """({name: product}, bytes a one-vector product streams, bytes the read test reads)."""
    import lscape
    from conftest import D_PAPER, SEED, _scipy_pair, _torch_csr, check_close, d_PAPER, make_inputs

    P = lscape.SparseSignProjection(D_PAPER, d_PAPER, seed=SEED, storage="indices")
    sell = P.nbytes
    P.matvec(torch.zeros(d_PAPER))  # builds the column-band copy that one-vector products run on
    streamed = P.nbytes - sell + 4 * D_PAPER
    x = make_inputs(D_PAPER, d_PAPER)
    th, g = x[(False, 1)], x[(True, 1)]
    A, AT = (_torch_csr(M, "cpu") for M in _scipy_pair(P))
    check_close(A @ th, P.matvec(th), "torch CSR P theta")
    check_close(AT @ g, P.rmatvec(g), "torch CSR P^T g")
    big = torch.ones(1 << 26)  # 256 MB of float32, far beyond the caches
    fns = {"lscape P theta": lambda: P.matvec(th), "torch CSR P theta": lambda: A @ th,
           "lscape P^T g": lambda: P.rmatvec(g), "torch CSR P^T g": lambda: AT @ g, "read 256 MB": big.sum}
    return fns, streamed, big.numel() * 4


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lines", nargs="+", choices=("interp", "proj"), default=["interp", "proj"])
    p.add_argument("--threads", type=int, default=1, help="torch's and lscape's threads (default 1)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--rounds", type=int, default=7)
    args = p.parse_args()
    if args.threads < 1 or args.repeats < 1 or args.rounds < 1:
        p.error(f"--threads, --repeats, --rounds: got {args.threads}, {args.repeats}, {args.rounds}; expected >= 1")
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # lscape's kernels read it (lscape._backend.num_threads)
    torch.set_num_threads(args.threads)
    print(f"threads {args.threads}; {_load()}", flush=True)
    if "interp" in args.lines:
        fns = interp_contenders()
        names = list(fns)
        for _ in range(args.repeats):
            t = least_interleaved([fns[n] for n in names], rounds=args.rounds)
            print(f"interp: {_row(names, t, 'lscape')}; {_load()}", flush=True)
    if "proj" in args.lines:
        fns, streamed, read = proj_contenders()
        names = list(fns)
        for _ in range(args.repeats):
            t = dict(zip(names, least_interleaved([fns[n] for n in names], rounds=args.rounds, calls=5),
                         strict=True))
            bw = read / t["read 256 MB"]
            parts = [f"read {bw / 1e9:.1f} GB/s, floor {streamed / bw * 1e3:.2f} ms ({streamed / 1e6:.1f} MB)"]
            for prod in ("P theta", "P^T g"):
                ls, tc = t[f"lscape {prod}"], t[f"torch CSR {prod}"]
                parts.append(f"{prod}: lscape {ls * 1e3:.2f} ms ({ls * bw / streamed:.1f}x the floor), "
                             f"torch CSR {tc * 1e3:.2f} ms = {tc / ls:.2f}x")
            print(f"proj: {' | '.join(parts)}; {_load()}", flush=True)


if __name__ == "__main__":
    main()
