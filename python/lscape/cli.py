"""The `lscape` command: `lscape info`, `lscape demo`, `lscape bench`, `lscape reproduce`."""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import warnings

import numpy as np
import torch

from . import __version__, _backend


def info() -> str:
    """Versions, backends (and why one is missing) and thread counts, as text."""
    lines = [f"lscape {__version__}  (python {platform.python_version()}, torch {torch.__version__}, "
             f"numpy {np.__version__}, {platform.machine()})"]
    lines.extend(_backend.provenance())
    lines.append("backends:")
    for b in _backend.backends().values():
        lines.append(f"  {b.name:<6} {'yes' if b.available else 'no ':<4} {b.reason}")
    lines.append(f"selected now: cpu tensors -> {_backend.select(torch.device('cpu'))}"
                 f"  (LSCAPE_BACKEND={os.environ.get('LSCAPE_BACKEND', 'auto')})")
    ext = _backend.cpu_extension()
    if ext is not None:
        try:
            isa = f"{ext.isa()} kernels run"
        except RuntimeError as exc:  # LSCAPE_CPU_ISA forces one this CPU cannot run
            isa = f"refused: {exc}"
        lines.append(f"cpu isa: {isa}  (LSCAPE_CPU_ISA={os.environ.get('LSCAPE_CPU_ISA', 'auto')}); "
                     f"ISA paths: {_isa_paths(ext)}")
    omp = ext.omp_max_threads() if ext is not None else "n/a"
    lines.append(f"threads: lscape kernels {_backend.num_threads()} (OMP_NUM_THREADS="
                 f"{os.environ.get('OMP_NUM_THREADS', 'unset')}, torch {torch.get_num_threads()}, "
                 f"OpenMP default {omp}), cores {os.cpu_count()}")
    return "\n".join(lines)


def _isa_paths(ext) -> str:
    """Each ISA build in lscape._C and whether this CPU runs it (probed with set_isa, then restored)."""
    try:
        current = ext.isa()
    except RuntimeError:
        return "not probed (LSCAPE_CPU_ISA is refused)"
    info = _backend._build_info()
    out = []
    try:
        for name in getattr(info, "cpu_isas", ("baseline", "avx2", "avx512")):
            try:
                ext.set_isa(name)
                out.append(f"{name} runs")
            except RuntimeError:
                out.append(f"{name} not on this CPU")
    finally:
        ext.set_isa(current)
    return ", ".join(out)


def _time(fn, repeat: int = 5) -> float:
    fn()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def demo(D: int = 656_810, d: int = 9_000, seed: int = 0) -> None:
    """The paper's projection (Chang, §III.D: D = 656,810, d = 9,000): build it, check it, time it."""
    from .projection import SparseSignProjection

    backend = _backend.select(torch.device("cpu"))
    print(f"Sparse +-1 projection P, D = {D:,}, d = {d:,}, density 1/sqrt(D)  [{backend} backend]")
    t0 = time.perf_counter()
    P = SparseSignProjection(D, d, seed=seed)
    t_build = time.perf_counter() - t0
    Pi = SparseSignProjection(D, d, seed=seed, storage="implicit")
    print(f"  nnz {P.nnz:,} (expected {D * d / np.sqrt(D):,.0f}), built in {t_build:.3f} s, "
          f"{P.nbytes / P.nnz:.2f} bytes per nonzero; implicit storage holds {Pi.nbytes:,} bytes")
    gen = torch.Generator().manual_seed(seed)
    theta = torch.randn(d, generator=gen)
    g = torch.randn(D, generator=gen)
    Ptheta, Ptg = P.matvec(theta), P.rmatvec(g)
    lhs, rhs = float(Ptheta.double() @ g.double()), float(theta.double() @ Ptg.double())
    adj = abs(lhs - rhs) / max(abs(lhs), 1e-30)
    same = float((Pi.matvec(theta) - Ptheta).abs().max())
    print(f"  adjoint check <P theta, g> = <theta, P^T g> to {adj:.1e} relative;  "
          f"implicit vs indices max diff {same:.1e}")
    cols = P.matvec(torch.eye(d)[:4]).norm(dim=1)
    print(f"  first column norms {', '.join(f'{c:.6f}' for c in cols.tolist())}")
    with warnings.catch_warnings():  # torch calls its sparse CSR support beta; the peer is still fair
        warnings.simplefilter("ignore", UserWarning)
        csr = torch.sparse_csr_tensor(*_csr_parts(P), size=(D, d))
        csr_t = csr.t().to_sparse_csr()
    rows = [("lscape indices", lambda: P.matvec(theta), lambda: P.rmatvec(g)),
            ("lscape implicit", lambda: Pi.matvec(theta), lambda: Pi.rmatvec(g)),
            ("torch CSR", lambda: csr @ theta, lambda: csr_t @ g)]
    print(f"  {'':<16} {'P theta (ms)':>13} {'P^T g (ms)':>12}")
    for name, mv, rmv in rows:
        print(f"  {name:<16} {_time(mv) * 1e3:13.2f} {_time(rmv) * 1e3:12.2f}")
    print("  (best of 5; `lscape bench` runs the full benchmark with ratios)")


def _csr_parts(P):
    A = P.to_scipy()
    return (torch.from_numpy(A.indptr.astype(np.int64)), torch.from_numpy(A.indices.astype(np.int64)),
            torch.from_numpy(A.data))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lscape", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("info", help="versions, backends and threads")
    p_demo = sub.add_parser("demo", help="build, check and time the paper-size projection")
    p_demo.add_argument("--D", type=int, default=656_810)
    p_demo.add_argument("--d", type=int, default=9_000)
    sub.add_parser("bench", help="run bench/ and print the ratio table (other arguments go to bench/report.py)")
    from .experiments import EXPERIMENTS
    from .experiments.common import SCALES

    p_rep = sub.add_parser("reproduce", help="run a paper's experiment (results.npz, summary.json, figures)")
    p_rep.add_argument("name", choices=sorted(EXPERIMENTS))
    p_rep.add_argument("--scale", choices=SCALES, default="default",
                       help="smoke: seconds; default: minutes on a laptop CPU; paper: the paper's sizes (GPU); "
                            "paper-capped (bosman): the paper's sizes with fewer MNIST walks")
    p_rep.add_argument("--out", required=True, help="output folder")
    p_rep.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p_rep.add_argument("--data-dir", default=None,
                       help="folder with MNIST / CIFAR-10 files, for experiments that read them at paper scale")
    p_rep.add_argument("--executor", choices=("local", "ray"), default="local",
                       help="local: chunks one after another in this process; ray: chunks as Ray tasks")
    p_rep.add_argument("--ray-address", default=None,
                       help="with --executor ray: a cluster to join (an address, or 'auto'); default "
                            "$RAY_ADDRESS, else a local Ray")
    p_rep.add_argument("--num-cpus", type=int, default=None,
                       help="with --executor ray: CPUs (and threads) per task; default: the threads a local run uses, "
                            "which keeps the results bit-identical to local")
    p_rep.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", dest="overrides",
                       help="replace a field of the scale's config (repeatable; tuples comma-separated), e.g. "
                            "--set fc_epochs=100 --set fc_dims=500,750,1000; the fields are the module's Config")
    p_rep.add_argument("--chunk", type=int, default=None,
                       help="chunk size of experiments whose chunks can be resized (gamst-walker: models per "
                            "ensemble chunk)")
    p_plot = sub.add_parser("plot", help="redraw a saved surface (.h5 or .npz) as PNGs, or as interactive pages")
    p_plot.add_argument("file", help="a surface file written by lscape.Surface.save")
    p_plot.add_argument("--out", default=None, help="output folder (default: next to FILE, <stem>_plots)")
    p_plot.add_argument("--quantity", action="append", default=None,
                        help="a quantity to draw (repeatable; default: all in the file)")
    p_plot.add_argument("--log", action="store_true", help="log10 colour scale (non-positive cells masked)")
    p_plot.add_argument("--html", action="store_true",
                        help="write one self-contained interactive page per quantity (<quantity>.html, plotly) "
                             "instead of the PNGs")
    ns, extra = parser.parse_known_args(argv)
    if extra and ns.cmd != "bench":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if ns.cmd == "info":
        print(info())
    elif ns.cmd == "demo":
        demo(ns.D, ns.d)
    elif ns.cmd == "bench":
        return _bench(extra)
    elif ns.cmd == "reproduce":
        return _reproduce(ns)
    elif ns.cmd == "plot":
        return _plot(ns)
    return 0


def _plot(ns: argparse.Namespace) -> int:
    """`lscape plot FILE`: load a saved surface and write plot_all's PNGs (or, with --html, interactive pages)."""
    from pathlib import Path

    import lscape

    from . import plot

    path = Path(ns.file)
    if not path.is_file():
        print(f"lscape plot: FILE: got {ns.file!r}, expected an existing .h5 or .npz surface file", file=sys.stderr)
        return 2
    surface = lscape.Surface.load(path)  # looked up here: the surface module may be absent from old installs
    out = Path(ns.out) if ns.out is not None else path.with_name(path.stem + "_plots")
    if ns.html:
        return _plot_html(surface, out, ns.quantity, ns.log)
    for p in plot.plot_all(surface, out, quantities=ns.quantity, scale="log" if ns.log else "linear"):
        print(p)
    return 0


def _plot_html(surface, out, quantities: list[str] | None, log: bool) -> int:
    """`lscape plot FILE --html`: one page per quantity (default all), checked before any is written."""
    from . import plot

    try:
        import plotly  # noqa: F401
    except ImportError:
        print("lscape plot: --html needs plotly: pip install 'lscape[plot]' (or pip install plotly)", file=sys.stderr)
        return 2
    names = sorted(surface.values) if quantities is None else list(quantities)
    unknown = [n for n in names if n not in surface.values]
    if unknown:
        print(f"lscape plot: --quantity: got {unknown}, expected some of {sorted(surface.values)}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    for n in names:
        page = out / f"{n}{'_log' if log else ''}.html"
        plot.interactive(surface, n, log=log, path=page)
        print(page)
    return 0


def _reproduce(ns: argparse.Namespace) -> int:
    """`lscape reproduce`: the arguments are checked and the executor is reached before any work starts."""
    import inspect

    from . import experiments
    from .executor import get_executor
    from .experiments.common import RunInterrupted, RunStopped

    name, scale, out = ns.name, ns.scale, ns.out
    module = experiments.get(name)
    kwargs = {}
    if ns.data_dir is not None:
        if "data_dir" not in inspect.signature(module.run).parameters:
            print(f"lscape reproduce: --data-dir: {name} reads no data files (got {ns.data_dir!r})", file=sys.stderr)
            return 2
        kwargs["data_dir"] = ns.data_dir
    if ns.chunk is not None:
        field = getattr(module, "CHUNK_FIELD", None)
        if field is None or ns.chunk < 1:
            why = "expected a positive integer" if field else f"{name}'s chunks are fixed (one cell each)"
            print(f"lscape reproduce: --chunk: got {ns.chunk}; {why}", file=sys.stderr)
            return 2
        kwargs[field] = ns.chunk
    if ns.overrides:
        from .experiments.common import parse_overrides

        try:
            kwargs.update(parse_overrides(module, ns.overrides))
        except ValueError as exc:
            print(f"lscape reproduce: {exc}", file=sys.stderr)
            return 2
    if ns.executor != "ray" and (ns.ray_address is not None or ns.num_cpus is not None):
        print("lscape reproduce: --ray-address and --num-cpus go with --executor ray", file=sys.stderr)
        return 2
    sets = "".join(f" --set {o}" for o in ns.overrides)
    again = f"`lscape reproduce {name} --scale {scale}{sets} --out {out} --resume`"
    try:
        executor = get_executor(ns.executor, ray_address=ns.ray_address, num_cpus=ns.num_cpus)
        summary = module.run(scale=scale, out=out, resume=ns.resume, progress=True, executor=executor, **kwargs)
    except (KeyboardInterrupt, RunInterrupted):
        print(f"\nlscape reproduce: interrupted; the checkpoints in {out} are kept, continue with {again}",
              file=sys.stderr)
        return 130
    except RunStopped as exc:
        from .executor import ExecutorLost

        where = (" (locally, or add --executor ray once the cluster is back: both give the same results)"
                 if isinstance(exc.__cause__, ExecutorLost) else "")
        print(f"\nlscape reproduce: {exc}.\nContinue with {again}{where}", file=sys.stderr)
        return 75  # EX_TEMPFAIL: the machine failed, not the input; the run can continue
    except (ImportError, OSError, ValueError, ConnectionError) as exc:
        msg = str(exc)
        msg = f"--{msg}" if msg.startswith(("out:", "out ")) else msg  # run()'s argument `out` is --out here
        print(f"lscape reproduce: {msg}", file=sys.stderr)
        return 2
    print(f"{name} ({scale}): results in {out}: results.npz, summary.json, {', '.join(summary['figures'])}")
    return 0


def _bench(extra: list[str]) -> int:
    """Run the pytest-benchmark suites in ./bench (from a source checkout) and print the ratio table."""
    here = os.path.join(os.getcwd(), "bench")
    if not os.path.isfile(os.path.join(here, "report.py")):
        print("lscape bench: run it from a source checkout (no ./bench/report.py here)", file=sys.stderr)
        return 2
    import subprocess

    return subprocess.call([sys.executable, os.path.join(here, "report.py"), *extra])


def run() -> None:
    """The `lscape` program: main() with its status as the process's.  A run stopped with status 75 ends
    the process at once (its output flushed, its run locks released): on a lost cluster Ray's own shutdown
    at exit takes about half a second, during which Ray's core worker ends a driver whose node died with
    status 1 as soon as it touches that node's object store, after lscape has reported the stop."""
    code = main()
    if code == 75:
        from . import _runlock

        _runlock.release_all()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    run()
