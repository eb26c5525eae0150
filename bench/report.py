"""Run the lscape benchmarks and print the ratio table (also `lscape bench` from the repository root).

    python bench/report.py [report options] [pytest options ...]

Runs `python -m pytest bench/test_*.py --benchmark-json=...` (the suites in SUITES) with any pytest
options given (e.g. `-k B1`, `-k mlp`, `--bench-budget 1`, `--bench-large`), then
bench/large_implicit.py in a fresh process (D = 10**8, d = 10**4, implicit storage: its peak RSS is its
own), and prints, per group, each contender's median time and its ratio to the group's lscape baseline
(lscape indices for the projection; for ensemble training and NEB, model- or band-steps per second and
lscape's speed-up),
then the targets.  The table goes to bench/results/report-<time>.txt and bench/results/latest.txt.

Report options: `python bench/report.py --help`; everything else goes to pytest.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
BASELINE = "lscape indices"
LIMIT_BYTES = 10**9

# Targets (the paper-size projection, float32, CPU).
TARGET_VS_TORCH = 4.0  # lscape indices at least this many times faster than torch CSR
TARGET_BYTES_PER_NNZ = 4.5
TARGET_IMPLICIT = 2.0  # implicit at most this many times slower than indices
# Targets (5x5 ensemble training on the W_f set, float32).
TARGET_MLP_VS_VMAP = 20.0  # lscape cpu at least this many times torch.func vmap's model-steps/s
TARGET_MLP_RATE = 3e5  # model-steps/s on the CPU
TARGET_MLP_ISA = {"avx512": 30.0, "avx2": 20.0}  # each ISA build against torch.func vmap (issue 17)
TARGET_MLP_RATE_CUDA = 5e7  # model-steps/s on a GPU
# Targets (NEB on the W_f landscape, 100 bands x 32 images, float32, CPU).
TARGET_NEB_VS_ASE = 100.0  # lscape band-steps/s at least this many times ASE NEB + FIRE's
TARGET_NEB_KERNEL = 5.0  # the fused neb_step at least this many times the torch reference
# Targets (probes, CPU): lscape at least this many times the peer (issue 6)
TARGET_PROBES = 10.0  # the walk against one torch walker at a time
TARGET_SUBSPACE = 1.5  # a hyperplane (indices) training step at most this many times the full-space step
# Targets (issue 25): one MNIST FC epoch of an intrinsic-dimension run, hyperplane of d against the full space,
# held to the projection intrinsic_dimension's storage="auto" picks at that d (the other printed beside it)
TARGET_INTRINSIC = {750: 1.3, 10_000: 1.6}
INTRINSIC_D = 199_210  # the benchmark's MNIST FC net
INTRINSIC_ROWS = [f"d={d:,} {kind}" for d in TARGET_INTRINSIC for kind in ("sparse", "fastfood")]
SUITES = ["test_projection.py", "test_mlp.py", "test_neb.py", "test_probes_lines.py", "test_probes_walks.py",
          "test_subspace.py", "test_surface.py", "test_intrinsic.py"]

GROUP_TITLES = {
    "build": "generate P (D = 656,810, d = 9,000)",
    "matvec-B1": "P theta, one vector: (d,) -> (D,)",
    "rmatvec-B1": "P^T g, one vector: (D,) -> (d,)",
    "matvec-B8": "P theta, batch of 8: (8, d) -> (8, D)",
    "rmatvec-B8": "P^T g, batch of 8: (8, D) -> (8, d)",
    "implicit-large": "D = 10**8, d = 10**4, implicit storage, in the pytest process",
}
PRODUCT_GROUPS = ["matvec-B1", "rmatvec-B1", "matvec-B8", "rmatvec-B8"]
GROUP_ORDER = ["build", *PRODUCT_GROUPS]
GROUP_ORDER += ["cuda-" + g for g in GROUP_ORDER] + ["implicit-large"]
CONTENDER_ORDER = ["lscape walk", "loss_and_grad",
                   "lscape indices", "lscape implicit", "torch CSR", "scipy.sparse", "cupyx CSR",
                   "lscape torch reference", "lscape cpu", "lscape cpu avx512", "lscape cpu avx2",
                   "lscape cuda", "torch.func vmap", "lscape torch ref",
                   "ASE NEB+FIRE", "ASE, trivial calculator", "lscape", "loss-landscapes", "lscape lanczos",
                    "plain model(X) loop", "plain image loop", "PyHessian", "PyHessian tol 1e-6",
                    "torch nn.Sequential, 1 walker", "full space", *INTRINSIC_ROWS]
MLP_GROUPS = [f"mlp-{o}-M{m}" for o in ("sgd", "adadelta", "adam") for m in (1024, 16384)]
GROUP_ORDER += MLP_GROUPS + [f"cuda-mlp-{o}-M{m}" for o in ("sgd", "adadelta", "adam") for m in (16384, 320000)]


NEB_GROUPS = ["neb-wf-B100-n32", "neb-kernel-B100-n32"]
GROUP_ORDER += NEB_GROUPS + ["cuda-neb-wf-B10000-n32", "cuda-neb-kernel-B10000-n32"]
# probe groups timed per call: (lscape's contender, {peer: the least speed-up over it, issue 17})
INTERP_NETS = ("digits-64-100-100-10", "mnist-784-200-200-10")
PROBE_TIMED = {f"probe-interp-200-{net}": ("lscape", {"loss-landscapes": least, "plain model(X) loop": 1.0})
               for net, least in zip(INTERP_NETS, (1.2, 2.0), strict=True)}
PROBE_TIMED.update({
    "probe-hessian-top5": ("lscape lanczos", {"PyHessian": 3.0, "PyHessian tol 1e-6": 6.0}),
    "probe-hessian-resnet20-top5": ("lscape lanczos", {"PyHessian tol 1e-6": 3.0}),  # issue 26, matched accuracy
    "surface-41x41": ("lscape", {"loss-landscapes": 1.5}),  # issue 26
    "surface-resnet20-2x2": ("lscape", {"loss-landscapes": 1.7, "plain model(X) loop": 1.7}),
    # a walk step at most 1.3x the loss_and_grad of its points (issue 26): the floor's speed over lscape's
    "walk-step-mnist-784-100x3": ("lscape walk", {"loss_and_grad": 1 / 1.3}),
    "resnet20-neb-n16": ("lscape", {"plain image loop": 1.0})})  # issue 26: no slower than by hand
GROUP_ORDER += list(PROBE_TIMED) + ["probe-walk-5x5", "subspace-step-B128", "intrinsic-epoch-mnist"]
TIMED_BASE = {**{g: v[0] for g, v in PROBE_TIMED.items()}, "subspace-step-B128": "full space",
              "intrinsic-epoch-mnist": "full space"}
GROUP_TITLES.update({**{f"probe-interp-200-{n}": f"loss at 200 alphas on the init -> solution line, {n} net"
                        for n in INTERP_NETS},
                     "surface-41x41": "41 x 41 loss surface of a Conv-BN-ReLU-Linear net on the digits",
                     "walk-step-mnist-784-100x3": "16 gradient walks x 5 steps, 784-100-100-100-10 ELU, batch 100",
                     "surface-resnet20-2x2": "2 x 2 loss surface of ResNet-20 (BatchNorm, eval) on 512 3x32x32 images",
                     "resnet20-neb-n16": "2 NEB steps of a 16-image band of ResNet-20 (BatchNorm, eval) on 64 "
                                         "3x32x32 images, then its energies",
                     "probe-hessian-top5": "top-5 Hessian eigenvalues, digits FC net",
                     "probe-hessian-resnet20-top5": "top-5 Hessian eigenvalues at tol 1e-6, ResNet-20 (BatchNorm, "
                                                    "eval) on 16 3x32x32 images",
                     "subspace-step-B128": "one Adam step, 3072-200-200-10 net (D = 656,810), d = 9,000, batch 128",
                     "intrinsic-epoch-mnist": "intrinsic_dimension's training loop, MNIST 784-200-200-10 (D = "
                                              "199,210), 50 steps of batch 128 (a partial epoch), Adam + L2"})


def _is_mlp(group: str) -> bool:
    return group.removeprefix("cuda-").startswith("mlp-")


def _is_neb(group: str) -> bool:
    return group.removeprefix("cuda-").startswith("neb-")


def _is_rate(group: str) -> bool:
    """Groups reported as work per second (model-, band- or walker-steps) with lscape's speed-up."""
    return _is_mlp(group) or _is_neb(group) or group == "probe-walk-5x5"


# ---- running -------------------------------------------------------------------------------------------
def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """The report's own options; everything else goes to pytest."""
    if argv[:1] == ["--"]:  # `lscape bench -- -k B1 ...` passes its separator through
        argv = argv[1:]
    p = argparse.ArgumentParser(prog="report.py", description=__doc__.split("\n\n")[0], add_help=True,
                                epilog="Any other argument goes to pytest (e.g. -k B1, --bench-budget 1).")
    p.add_argument("--no-large", dest="large", action="store_false", help="skip the large implicit subprocess")
    p.add_argument("--large-device", default="cpu", help="device for it (default cpu)")
    p.add_argument("--no-executor", dest="executor", action="store_false",
                   help="skip the executor-overhead subprocess (local vs Ray on gamst-walker's ensemble stage)")
    p.add_argument("--from-json", default=None, help="print the table of an earlier run's benchmark JSON")
    p.add_argument("--large-json", default=None, help="with --from-json: the large-implicit JSON of that run")
    p.add_argument("--strict", action="store_true", help="exit 1 when a target is missed (default: report only)")
    return p.parse_known_args(argv)


def run_pytest(extra: list[str], json_path: Path) -> tuple[int, list[str], Path]:
    """Run the suite, echoing its output; (return code, its output lines, the JSON it wrote)."""
    for a in extra:  # the caller's own --benchmark-json wins
        if a.startswith("--benchmark-json="):
            json_path = Path(a.split("=", 1)[1])
    cmd = [sys.executable, "-m", "pytest", *(str(HERE / f) for f in SUITES), f"--benchmark-json={json_path}",
           *extra]
    print("$", " ".join(cmd), flush=True)
    lines: list[str] = []
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            bufsize=1)
    assert proc.stdout is not None
    for line in proc.stdout:
        sys.stdout.write(line)
        lines.append(line.rstrip("\n"))
    return proc.wait(), lines, json_path


def run_script(script: str, args: list[str], out_path: Path) -> dict:
    """bench/<script> in its own process (its peak RSS and threads are its own); the JSON object its last
    line prints, or {"error": ...}."""
    cmd = [sys.executable, str(HERE / script), *args]
    print("$", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired:
        return {"error": "timed out after 900 s"}
    wall = time.perf_counter() - t0
    result = None
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            try:
                result = json.loads(line)
            except json.JSONDecodeError:
                pass
            break
    if proc.returncode != 0 or result is None:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-6:])
        result = {"error": f"exit status {proc.returncode}: {tail}"}
    result["wall_s"] = wall
    out_path.write_text(json.dumps(result, indent=2) + "\n")
    return result


# ---- the table -----------------------------------------------------------------------------------------
def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:,.2f}" if seconds < 100 else f"{seconds * 1e3:,.0f}"


def _mb(n: float) -> str:
    return f"{n / 1e6:,.0f} MB"


def _groups(data: dict) -> dict[str, dict[str, dict]]:
    groups: dict[str, dict[str, dict]] = {}
    for b in data.get("benchmarks", []):
        who = b.get("extra_info", {}).get("contender") or b.get("param") or b["name"]
        groups.setdefault(b["group"] or "(none)", {})[who] = b
    return groups


def _ordered(names, order):
    return sorted(names, key=lambda n: (order.index(n) if n in order else len(order), n))


def _ratio(groups, group, who, base=BASELINE):
    g = groups.get(group, {})
    if who in g and base in g:
        return g[who]["stats"]["median"] / g[base]["stats"]["median"]
    return None


def _verdict(ok) -> str:
    return "n/a " if ok is None else ("PASS" if ok else "FAIL")


def header(data: dict, load: dict) -> list[str]:
    mi = data.get("machine_info", {})
    ls = mi.get("lscape", {})
    cpu = mi.get("cpu", {}).get("brand_raw") or mi.get("processor") or "?"
    lines = [f"lscape benchmark report, {data.get('datetime', _dt.datetime.now().isoformat())[:19]}"]
    lines.append(f"  lscape {ls.get('version', '?')}, torch {ls.get('torch', '?')}, scipy {ls.get('scipy', '?')}, "
                 f"numpy {ls.get('numpy', '?')}, python {ls.get('python', mi.get('python_version', '?'))}")
    lines.append(f"  {cpu}; {ls.get('cpu_count', '?')} cores; threads: lscape {ls.get('lscape_threads', '?')}, "
                 f"torch {ls.get('torch_threads', '?')} (OMP_NUM_THREADS={ls.get('omp_num_threads') or 'unset'}); "
                 f"scipy.sparse is single-threaded")
    if ls.get("extension"):
        lines.append(f"  lscape._C: {ls['extension']}")
    if ls.get("cuda_device"):
        lines.append(f"  CUDA device: {ls['cuda_device']}")
    for name, b in ls.get("backends", {}).items():
        lines.append(f"  backend {name:<5} {'yes' if b['available'] else 'no ':<4} {b['reason']}")
    if load:
        lines.append("  load average (1 min) before / after the suite: "
                     f"{load.get('before', float('nan')):.2f} / {load.get('after', float('nan')):.2f}")
        cores = ls.get("cpu_count") or os.cpu_count() or 1
        if max(load.values()) > cores:
            lines.append(f"  WARNING: load above {cores} cores: other processes competed for the CPU, so times are "
                         "inflated and noisy (see IQR); ratios of medians and of mins are both shown")
    lines.append(f"  times: median of N rounds (one call each, after 2 warm-up calls), float32; ratio = "
                 f"contender median / {BASELINE} median (> 1: {BASELINE} is faster)")
    return lines


def _rate(b: dict) -> float | None:
    steps = b.get("extra_info", {}).get("model_steps")
    return steps / b["stats"]["median"] if steps else None


def rate_table(group: str, members: dict[str, dict]) -> list[str]:
    """Ensemble training (model-steps/s) and NEB (band-steps/s) groups: rates and lscape's speed-up."""
    base_name = "lscape cuda" if group.startswith("cuda-") else "lscape cpu"
    info = next(iter(members.values())).get("extra_info", {})
    on = ", on CUDA" if group.startswith("cuda-") else ""
    if group == "probe-walk-5x5":
        unit = "walker-steps/s"
        lines = [f"[{group}] progressive gradient walks on the 5x5 W_f landscape "
                 f"({info.get('walkers', '?')} walkers for lscape)"]
    elif _is_neb(group):
        unit = "band-steps/s"
        what = "the neb_step kernel alone on random" if "kernel" in group else "NEB on the W_f landscape,"
        lines = [f"[{group}] {what} bands of {info.get('n', '?')} images, D = {info.get('D', '?')} "
                 f"(lscape: {info.get('B', '?'):,} bands per call){on}"]
    else:
        unit = "model-steps/s"
        lines = [f"[{group}] train M = {info.get('M', '?'):,} 5x5 networks ({info.get('optimizer', '?')}, "
                 f"P = {info.get('P', '?')} points, full batch){on}"]
    lines.append(f"  {'contender':<24} {unit:>14} {'steps/call':>10} {'rounds':>6}   speed-up of {base_name}")
    base = members.get(base_name)
    for who in _ordered(members, CONTENDER_ORDER):
        b, r = members[who], _rate(members[who])
        e = b.get("extra_info", {})
        if who == base_name:
            rtext = "baseline"
        elif base is not None and r:
            rtext = f"{base_name} / {who} = {_rate(base) / r:.1f}x"
        else:
            rtext = ""
        rate = r or float("nan")
        lines.append(f"  {who:<24} {rate:>14,.0f} {e.get('steps', '?'):>10} {b['stats']['rounds']:>6}   {rtext}")
    return lines


def group_table(group: str, members: dict[str, dict]) -> list[str]:
    if _is_rate(group):
        return rate_table(group, members)
    base_name = TIMED_BASE.get(group, BASELINE)
    title = GROUP_TITLES.get(group) or GROUP_TITLES.get(group.removeprefix("cuda-"), "")
    if group.startswith("cuda-"):
        title = f"{title}, on CUDA"
    lines = [f"[{group}] {title}"]
    lines.append(f"  {'contender':<24} {'median ms':>11} {'IQR ms':>9} {'min ms':>10} {'rounds':>6}   "
                 f"ratio to {base_name}")
    base = members.get(base_name)
    for who in _ordered(members, CONTENDER_ORDER):
        s = members[who]["stats"]
        if who == base_name:
            rtext = "baseline"
        elif base is not None:
            rtext = (f"{who} / {base_name} = {s['median'] / base['stats']['median']:.2f}x"
                     f"  (mins {s['min'] / base['stats']['min']:.2f}x)")
        else:
            rtext = ""
        lines.append(f"  {who:<24} {_ms(s['median']):>11} {_ms(s['iqr']):>9} {_ms(s['min']):>10} "
                     f"{s['rounds']:>6}   {rtext}")
        info = members[who].get("extra_info", {})
        if "peak_rss_bytes" in info:
            lines.append(f"  {'':<24} peak RSS {_mb(info['peak_rss_bytes'])} ({info.get('rss_note', '')})")
    return lines


def _bytes_per_nnz(groups) -> tuple[float | None, str]:
    b = groups.get("build", {}).get(BASELINE)
    if b and "bytes_per_nnz" in b.get("extra_info", {}):
        e = b["extra_info"]
        imp = groups["build"].get("lscape implicit", {}).get("extra_info", {})
        extra = f"; implicit storage holds {imp['nbytes']:,} bytes" if "nbytes" in imp else ""
        if "bytes_per_nnz_after_matvec" in e:
            extra += (f"; {e['bytes_per_nnz_after_matvec']:.3f} per nonzero once the first one-vector P theta "
                      f"has built its column-band copy ({e['first_matvec_s'] * 1e3:.0f} ms)")
        return e["bytes_per_nnz"], f"{e['nbytes']:,} bytes / {e['nnz']:,} nonzeros{extra}"
    try:  # the build group was filtered out of this run: measure it here
        import lscape
        import torch

        P = lscape.SparseSignProjection(656_810, 9_000, seed=0)
        nbytes = P.nbytes
        P.matvec(torch.zeros(9_000))
        return nbytes / P.nnz, (f"{nbytes:,} bytes / {P.nnz:,} nonzeros (measured by the report); "
                                f"{P.nbytes / P.nnz:.3f} per nonzero once the first one-vector P theta has "
                                "built its column-band copy")
    except Exception as exc:  # noqa: BLE001 - report, do not crash
        return None, f"could not measure: {exc}"


# ---- targets: one small function each, listed once in TARGETS ------------------------------------------------
# Each takes (groups, extras) and returns [(ok, text, details)] rows: ok True / False / None (not measured);
# extras holds the subprocess results ("large", "executor").
def _rows_ratio(vals, fmt):
    rows = [", ".join(fmt(g, r) for g, r in vals[i:i + 2]) for i in range(0, len(vals), 2)]
    return rows or ["not measured in this run"]


def t_vs_torch(groups, extras):
    vals = [(g, r) for g in PRODUCT_GROUPS if (r := _ratio(groups, g, "torch CSR")) is not None]
    ok = None if not vals else all(r >= TARGET_VS_TORCH for _, r in vals)
    return [(ok, f"lscape indices >= {TARGET_VS_TORCH:g}x faster than torch CSR, P theta and P^T g",
             _rows_ratio(vals, lambda g, r: f"{g}: torch CSR / lscape indices = {r:.2f}x"))]


def t_bytes(groups, extras):
    bpn, how = _bytes_per_nnz(groups)
    return [(None if bpn is None else bpn <= TARGET_BYTES_PER_NNZ,
             f"indices storage <= {TARGET_BYTES_PER_NNZ:g} bytes per nonzero: "
             + ("n/a" if bpn is None else f"{bpn:.3f} bytes per nonzero"), [how])]


def t_implicit(groups, extras):
    vals = [(g, r) for g in PRODUCT_GROUPS if (r := _ratio(groups, g, "lscape implicit")) is not None]
    ok = None if not vals else all(r <= TARGET_IMPLICIT for _, r in vals)
    details = _rows_ratio(vals, lambda g, r: f"{g}: implicit / indices = {r:.2f}x")
    if (rb := _ratio(groups, "build", "lscape implicit")) is not None:
        details.append(f"(build: implicit / indices = {rb:.2f}x)")
    return [(ok, f"implicit at most {TARGET_IMPLICIT:g}x slower than indices", details)]


def _mlp_rows(groups):
    for g, members in groups.items():
        if not _is_mlp(g):
            continue
        cuda = g.startswith("cuda-")
        base = members.get("lscape cuda" if cuda else "lscape cpu")
        if base is not None:
            vm = members.get("torch.func vmap")
            yield g, cuda, _rate(base), _rate(vm) if vm else None


def t_mlp(groups, extras):
    rows = list(_mlp_rows(groups))
    fmt = lambda g, rate, vm: f"{g}: {rate:,.0f} model-steps/s" + (f", {rate / vm:.1f}x vmap" if vm else "")  # noqa: E731
    cpu = [r for r in rows if not r[1]]
    ok = None if not cpu else all(rate >= TARGET_MLP_RATE and (vm is None or rate / vm >= TARGET_MLP_VS_VMAP)
                                  for _, _, rate, vm in cpu)
    out = [(ok, f"ensemble training (CPU) >= {TARGET_MLP_VS_VMAP:g}x torch.func vmap and >= "
                f"{TARGET_MLP_RATE:,.0f} model-steps/s",
            [fmt(g, r, v) for g, _, r, v in cpu] or ["not measured in this run"])]
    cuda = [r for r in rows if r[1]]
    if cuda:
        out.append((all(rate >= TARGET_MLP_RATE_CUDA for _, _, rate, _ in cuda),
                    f"ensemble training (CUDA) >= {TARGET_MLP_RATE_CUDA:,.0f} model-steps/s",
                    [fmt(g, r, v) for g, _, r, v in cuda]))
    for isa, least in TARGET_MLP_ISA.items():
        isa_rows = [(g, _rate(m[f"lscape cpu {isa}"]), _rate(m["torch.func vmap"])) for g, m in groups.items()
                    if _is_mlp(g) and not g.startswith("cuda-") and f"lscape cpu {isa}" in m
                    and "torch.func vmap" in m]
        if isa_rows:
            out.append((all(r / v >= least for _, r, v in isa_rows),
                        f"ensemble training forced to {isa} (M = 1024) >= {least:g}x torch.func vmap",
                        [fmt(g, r, v) for g, r, v in isa_rows]))
    return out


def t_neb(groups, extras):
    wf = groups.get("neb-wf-B100-n32", {})
    base, details, ok = wf.get("lscape cpu"), [], None
    if base is not None and "ASE NEB+FIRE" in wf:
        r = _rate(base) / _rate(wf["ASE NEB+FIRE"])
        ok = r >= TARGET_NEB_VS_ASE
        details.append(f"lscape cpu {_rate(base):,.0f} band-steps/s, ASE NEB+FIRE {_rate(wf['ASE NEB+FIRE']):,.1f}: "
                       f"{r:,.0f}x")
        for peer, what in (("ASE, trivial calculator", "ASE with a calculator that returns zeros"),
                           ("lscape torch ref", "the whole driver on the torch reference")):
            if peer in wf:
                details.append(f"({what}: {_rate(wf[peer]):,.1f} band-steps/s, {_rate(base) / _rate(wf[peer]):,.1f}x)")
    out = [(ok, f"NEB (W_f, 100 bands x 32 images) >= {TARGET_NEB_VS_ASE:g}x ASE NEB + FIRE per band-step",
            details or ["not measured in this run"])]
    kern = groups.get("neb-kernel-B100-n32", {})
    text = f"neb_step kernel >= {TARGET_NEB_KERNEL:g}x the torch reference"
    if "lscape cpu" in kern and "lscape torch ref" in kern:
        r = _rate(kern["lscape cpu"]) / _rate(kern["lscape torch ref"])
        out.append((r >= TARGET_NEB_KERNEL, text, [f"lscape cpu / lscape torch ref = {r:.1f}x"]))
    else:
        out.append((None, text, ["not measured in this run"]))
    return out


def t_probes(groups, extras):
    out = []
    for g, (base_name, peers) in PROBE_TIMED.items():
        members = groups.get(g, {})
        for peer, least in peers.items():
            if base_name in members and peer in members:
                r = members[peer]["stats"]["median"] / members[base_name]["stats"]["median"]
                out.append((r >= least, f"{g}: {base_name} >= {least:.2g}x {peer}", [f"{r:.2f}x"]))
    walk = groups.get("probe-walk-5x5", {})
    if "lscape cpu" in walk and "torch nn.Sequential, 1 walker" in walk:
        r = _rate(walk["lscape cpu"]) / _rate(walk["torch nn.Sequential, 1 walker"])
        out.append((r >= TARGET_PROBES, f"probe-walk-5x5: lscape >= {TARGET_PROBES:g}x one walker at a time in torch",
                    [f"{_rate(walk['lscape cpu']):,.0f} walker-steps/s, {r:.0f}x"]))
    return out


def t_subspace(groups, extras):
    sub = groups.get("subspace-step-B128", {})
    if "full space" not in sub or "lscape indices" not in sub:
        return []
    r = sub["lscape indices"]["stats"]["median"] / sub["full space"]["stats"]["median"]
    return [(r <= TARGET_SUBSPACE, f"hyperplane step (indices) <= {TARGET_SUBSPACE:g}x the full-space step",
             [f"{r:.2f}x"])]


def t_intrinsic(groups, extras):
    """A whole epoch (the timed partial epoch scaled to its steps, plus building P once) of a hyperplane run
    against the full space's, the way intrinsic_dimension trains them, held to the target for the
    projection its storage="auto" picks at that d."""
    from lscape import intrinsic  # the report runs with PYTHONPATH=python, as the suites do

    g = groups.get("intrinsic-epoch-mnist", {})
    base = g.get("full space")

    def epoch(b):
        e = b["extra_info"]
        return b["stats"]["median"] * e["epoch_steps"] / e["steps"] + e.get("build_s", 0.0)

    out = []
    for d, limit in TARGET_INTRINSIC.items():
        auto = "fastfood" if intrinsic._storage("auto", INTRINSIC_D, d) == "fastfood" else "sparse"
        who = f"d={d:,} {auto}"
        text = (f"MNIST FC epoch in a d = {d:,} hyperplane (storage='auto': {auto} P) <= {limit:g}x the full-space "
                "epoch (intrinsic_dimension's loop)")
        if base is None or who not in g:
            out.append((None, text, ["not measured in this run"]))
            continue
        lines = []
        for row in (who, *(r for r in INTRINSIC_ROWS if r.startswith(f"d={d:,} ") and r != who)):
            if row not in g:
                continue
            r = epoch(g[row]) / epoch(base)
            step = g[row]["stats"]["median"] / base["stats"]["median"]
            lines.append(f"{row}: {r:.2f}x a whole epoch ({epoch(g[row]):.2f} s against {epoch(base):.2f} s; P built "
                         f"once in {g[row]['extra_info'].get('build_s', 0) * 1e3:.0f} ms); {step:.2f}x per step"
                         + ("" if row == who else " (not what auto picks here)"))
        out.append((epoch(g[who]) / epoch(base) <= limit, text, lines))
    return out


def _subprocess_missing(result: dict | None, text: str, flag: str):
    """The row of a subprocess target that did not run (skipped by flag) or failed; None when it ran."""
    if result is None:
        return [(None, text, [f"skipped ({flag})"])]
    if "error" in result:
        return [(False, text, [f"failed: {result['error']}"])]
    return None


def t_large(groups, extras):
    large = extras.get("large")
    missing = _subprocess_missing(large, "large implicit (D = 10**8, d = 10**4) under 1 GB peak RSS", "--no-large")
    if missing:
        return missing
    peak, limit = large["peak_rss_bytes"], large.get("limit_bytes", LIMIT_BYTES)
    return [(peak < limit, f"large implicit (D = {large['D']:,}, d = {large['d']:,}, {large['nnz']:,} nonzeros) "
             f"under {limit / 1e9:g} GB: peak RSS {_mb(peak)}",
             [f"its own process on {large['device']}: build {large['build_s']:.2f} s, "
              f"P theta {large['matvec_s']:.2f} s, "
              f"P^T g {large['rmatvec_s']:.2f} s; P holds {large['nbytes']:,} bytes; "
              f"RSS after imports {_mb(large['rss_after_import_bytes'])}; "
              f"adjoint check rel. error {large['adjoint_rel_err']:.1e}"])]


def t_executor(groups, extras):
    ex = extras.get("executor")
    text = "Ray's overhead on gamst-walker's ensemble stage <= 15% of the local run's wall time"
    missing = _subprocess_missing(ex, text, "--no-executor")
    if missing:
        return missing
    return [(ex["pass"], text, [f"{ex['models']} models x {ex['steps']} steps in {ex['chunks']} chunks of "
                                f"{ex['one_chunk_s']:.1f} s: local {min(ex['local_s']):.1f} s, "
                                f"ray {min(ex['ray_s']):.1f} s ({100 * ex['ray_overhead']:+.1f}%), "
                                f"Ray's one-time start {ex['ray_startup_s']:.1f} s"])]


TARGETS = [t_vs_torch, t_bytes, t_implicit, t_mlp, t_neb, t_probes, t_subspace, t_intrinsic, t_large,
           t_executor]


def targets(groups: dict, extras: dict) -> tuple[list[str], bool]:
    """Every target of TARGETS as [PASS] / [MISS] / [n/a] lines; (lines, whether none was missed)."""
    lines, all_ok = ["Targets"], True
    for target in TARGETS:
        for ok, text, details in target(groups, extras):
            all_ok = all_ok and ok is not False
            lines.append(f"  [{_verdict(ok)}] {text}")
            lines.extend(f"         {d}" for d in details)
    return lines, all_ok


def render(data: dict, extras: dict, load: dict, skipped: list[str]) -> tuple[str, bool]:
    groups = _groups(data)
    out = header(data, load)
    for g in _ordered(groups, GROUP_ORDER):
        out.append("")
        out += group_table(g, groups[g])
    out.append("")
    t, ok = targets(groups, extras)
    out += t
    if skipped:
        out.append("")
        out.append("Skipped in this run")
        out += [f"  {s}" for s in skipped]
    return "\n".join(out) + "\n", ok


def _skips(lines: list[str]) -> list[str]:
    """pytest's `SKIPPED [n] file:line: reason` summary lines, shortened."""
    counts: dict[str, int] = {}
    for line in lines:
        if line.startswith("SKIPPED"):
            head, _, reason = line.partition(": ")
            count = head.split("[", 1)[1].split("]", 1)[0] if "[" in head else "1"
            counts[reason.strip()] = counts.get(reason.strip(), 0) + (int(count) if count.isdigit() else 1)
    return [f"{n} tests: {reason}" for reason, n in counts.items()]


def main(argv: list[str] | None = None) -> int:
    opts, extra = parse_args(sys.argv[1:] if argv is None else argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    load: dict = {}
    skipped: list[str] = []
    rc = 0
    if opts.from_json:
        json_path = Path(opts.from_json)
        large = json.loads(Path(opts.large_json).read_text()) if opts.large_json else None
        executor = None
    else:
        load["before"] = os.getloadavg()[0]
        rc, lines, json_path = run_pytest(extra, RESULTS / f"benchmark-{stamp}.json")
        load["after"] = os.getloadavg()[0]
        skipped = _skips(lines)
        if rc not in (0, 5) or not json_path.is_file():
            print(f"report.py: pytest exited with status {rc}", file=sys.stderr)
            if not json_path.is_file():
                return rc or 1
        data = json.loads(json_path.read_text())  # keep what the table needs with the numbers
        data["report"] = {"loadavg_1min": load, "skipped": skipped, "pytest_args": extra, "pytest_rc": rc}
        json_path.write_text(json.dumps(data, indent=2))
        large = (run_script("large_implicit.py", ["--device", opts.large_device],
                            RESULTS / f"large-implicit-{stamp}.json") if opts.large else None)
        executor = (run_script("executor_overhead.py", [], RESULTS / f"executor-{stamp}.json")
                    if opts.executor else None)
    data = json.loads(json_path.read_text())
    if opts.from_json:
        load = data.get("report", {}).get("loadavg_1min", {})
        skipped = data.get("report", {}).get("skipped", [])
    text, ok = render(data, {"large": large, "executor": executor}, load, skipped)
    print()
    print(text, end="")
    if not opts.from_json:
        txt = RESULTS / f"report-{stamp}.txt"
        txt.write_text(text)
        shutil.copyfile(txt, RESULTS / "latest.txt")
        shutil.copyfile(json_path, RESULTS / "latest.json")
        print(f"\nwritten: {json_path.relative_to(ROOT) if json_path.is_relative_to(ROOT) else json_path}, "
              f"{txt.relative_to(ROOT)} (and bench/results/latest.txt, latest.json)")
    if rc not in (0, 5):
        return rc
    if any(x is not None and "error" in x for x in (large, executor)):
        return 1
    return 1 if (opts.strict and not ok) else 0


if __name__ == "__main__":
    sys.exit(main())
