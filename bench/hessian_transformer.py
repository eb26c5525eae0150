"""Hessian-vector products of transformers (float32, CPU): lscape's (attention through
F.scaled_dot_product_attention, its double backward and LayerNorm's, GELU's, embeddings' and cross-entropy's
written out: lscape._hvpops.hvp_mode) against one gradient and against torch's own double backward on the
same model with attention written by hand (the only way torch has one), each case alone in its own process
so that its peak memory (ru_maxrss) is its own.

    # nanoGPT-style (4 blocks, d_model 128, 4 heads, context 64, vocab 65, tied head; 64 sequences of 64)
    PYTHONPATH=python nice -n 19 python bench/hessian_transformer.py compare --threads 1
    PYTHONPATH=python nice -n 19 python bench/hessian_transformer.py compare --threads 2
    # GPT-2 small (transformers.GPT2Config(): 124 M parameters; 8 sequences of 128 tokens)
    PYTHONPATH=python nice -n 19 python bench/hessian_transformer.py compare --model gpt2 --threads 2 --reps 3
    # one case in this process (what `compare` runs in each subprocess); prints one JSON line
    PYTHONPATH=python python bench/hessian_transformer.py one --case lscape

Cases:
  grad       one gradient of the mean cross-entropy (F.scaled_dot_product_attention, the backend torch picks)
  lscape     the gradient's graph built inside hvp_mode (create_graph), then Hessian-vector products through it
             (the graph held, retain_graph): what lscape.probes.spectrum's products do
  torch      the same on the twin with attention by hand (softmax(QK^T / sqrt(d) + causal mask) V; for GPT-2,
             transformers' attn_implementation="eager"), torch's own double backward everywhere
Each prints the median wall and CPU seconds (of --reps) of a gradient / a product, the graph build's, and
the process's peak resident memory (GB; imports, model and data included, the same in every case; and
build_peak_gb, the peak once the graph is built, before any product);
`compare` adds the ratios to the gradient.  --profile: one more call under torch.profiler, whose matrix
products' own time (mm, addmm, bmm, baddbmm, linear's) is printed beside the gradient's whole time: the
floor any product pays, whatever is written around them.
"""
from __future__ import annotations

import argparse
import statistics
import time
import warnings

import _isolated
import torch
from torch.nn import functional as F


def _model(name: str, twin: bool):
    """(model, its logits function, token batch): the twin has attention written by hand."""
    gen = torch.Generator().manual_seed(1)
    torch.manual_seed(0)
    if name == "nanogpt":
        from lscape.models import nanogpt  # the reference model; its twin, the same weights

        model = nanogpt(attention="math" if twin else "sdpa")
        idx = torch.randint(0, 65, (64, 65), generator=gen)
        return model.eval(), (lambda x: model(x)), idx
    import transformers

    transformers.logging.set_verbosity_error()
    cfg = transformers.GPT2Config(attn_implementation="eager" if twin else "sdpa")
    model = transformers.GPT2LMHeadModel(cfg).eval()
    idx = torch.randint(0, cfg.vocab_size, (8, 129), generator=gen)
    return model, (lambda x: model(x).logits), idx


def _timed(fn, keep: bool = False):
    """(fn's output if keep else None, wall seconds, CPU seconds): an output not kept is dropped before the
    next call, so the peak memory counts one call's."""
    t0, c0 = time.perf_counter(), _isolated.cpu_seconds()
    out = fn()
    wall, cpu = time.perf_counter() - t0, _isolated.cpu_seconds() - c0
    return (out if keep else None), wall, cpu


MATMULS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::addbmm")


def _matmul_seconds(fn) -> float:
    """The seconds fn() spends inside matrix products (their own CPU time, torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return sum(e.self_cpu_time_total for e in prof.key_averages() if e.key in MATMULS) / 1e6


def one(a: argparse.Namespace) -> dict:
    from lscape import _hvpops

    torch.set_num_threads(a.threads)
    model, logits, idx = _model(a.model, twin=a.case == "torch")
    params = [p for p in model.parameters() if p.requires_grad]
    x, y = idx[:, :-1], idx[:, 1:]

    def loss():
        z = logits(x)
        return F.cross_entropy(z.reshape(-1, z.shape[-1]), y.reshape(-1))
    walls, cpus, build, build_peak, mm = [], [], (0.0, 0.0), 0.0, None
    if a.case == "grad":
        for _ in range(a.reps + 1):  # the first is a warm-up
            _, w, c = _timed(lambda: torch.autograd.grad(loss(), params))
            walls.append(w)
            cpus.append(c)
        if a.profile:
            mm = _matmul_seconds(lambda: torch.autograd.grad(loss(), params))
    else:
        def graph():
            with _hvpops.hvp_mode(model) if a.case == "lscape" else torch.enable_grad():
                return torch.autograd.grad(loss(), params, create_graph=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            g, *build = _timed(graph, keep=True)
            build_peak = _isolated.peak_gb()
            gen = torch.Generator().manual_seed(2)
            for _ in range(a.reps + 1):
                vs = None  # one set of vectors at a time
                vs = [torch.randn(p.shape, generator=gen) for p in params]
                _, w, c = _timed(lambda vs=vs: torch.autograd.grad(g, params, vs, retain_graph=True))
                walls.append(w)
                cpus.append(c)
            if a.profile:
                mm = _matmul_seconds(lambda vs=vs: torch.autograd.grad(g, params, vs, retain_graph=True))
    peak = _isolated.peak_gb()
    return {"model": a.model, "case": a.case, "threads": a.threads, "D": sum(p.numel() for p in params),
            "wall": statistics.median(walls[1:]), "cpu": statistics.median(cpus[1:]), "first_wall": walls[0],
            "build_wall": build[0], "build_cpu": build[1], "build_peak_gb": build_peak, "peak_gb": peak,
            "reps": a.reps, "matmul_s": mm}


def compare(a: argparse.Namespace) -> None:
    rows = {}
    for case in a.cases:
        rows[case] = _isolated.one_in_a_process(__file__, ["--case", case, "--model", a.model, "--threads",
                                                            str(a.threads), "--reps", str(a.reps)]
                                                + (["--profile"] if a.profile else []))
    g = rows.get("grad")
    print(f"\n{a.model} (D = {next(iter(rows.values()))['D']:,}), float32, CPU, {a.threads} thread(s), "
          f"median of {a.reps}")
    print("| case | wall s | CPU s | / gradient (wall) | / gradient (CPU) | graph build wall s | peak GB |"
          " peak / gradient's |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows.values():
        rel = (f"{r['wall'] / g['wall']:.2f}x | {r['cpu'] / g['cpu']:.2f}x" if g else "— | —")
        mem = f"{r['peak_gb'] / g['peak_gb']:.2f}" if g else "—"
        build = f"{r['build_wall']:.3f}" if r["case"] != "grad" else "—"
        print(f"| {r['case']} | {r['wall']:.3f} | {r['cpu']:.3f} | {rel} | {build} | {r['peak_gb']:.2f} | {mem} |")
    if a.profile:  # one call each under the profiler: the wall seconds of its matrix products' calls
        print("\n| case | matrix products s (profiled call, wall) | / the gradient's median wall s |")
        print("| --- | --- | --- |")
        for r in rows.values():
            rel = f"{r['matmul_s'] / g['wall']:.2f}x" if g else "—"
            print(f"| {r['case']} | {r['matmul_s']:.3f} | {rel} |")


def main() -> None:
    ap = _isolated.parser(__doc__)
    ap.add_argument("--case", choices=("grad", "lscape", "torch"), default="lscape")
    ap.add_argument("--cases", nargs="+", default=["grad", "lscape", "torch"])
    ap.add_argument("--model", choices=("nanogpt", "gpt2"), default="nanogpt")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=5, help="timed repetitions (after one warm-up); the median")
    ap.add_argument("--profile", action="store_true", help="one more call profiled: its matrix products' time")
    _isolated.main(ap, one, compare)


if __name__ == "__main__":
    main()
