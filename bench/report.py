"""Run the lscape benchmarks and print the ratio table (also `lscape bench` from the repository root).

    python bench/report.py [report options] [pytest options ...]

Runs `python -m pytest bench/test_projection.py bench/test_mlp.py bench/test_neb.py --benchmark-json=...` with any pytest
options given (e.g. `-k B1`, `-k mlp`, `--bench-budget 1`, `--bench-large`), then
bench/large_implicit.py in a fresh process (D = 10**8, d = 10**4, implicit storage: its peak RSS is its
own), and prints, per group, each contender's median time and its ratio to the group's lscape baseline
(lscape indices for the projection; for ensemble training and NEB, model- or band-steps per second and
lscape's speed-up),
then the targets.  The table goes to bench/results/report-<time>.txt and bench/results/latest.txt.

Report options (everything else goes to pytest):
  --no-large          skip the large implicit subprocess
  --large-device DEV  device for it (default cpu)
  --from-json PATH    print the table of an earlier run's benchmark JSON instead of running pytest
  --large-json PATH   with --from-json: the large-implicit JSON of that run
  --strict            exit 1 when a target is missed (default: report only)
"""
from __future__ import annotations

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
TARGET_MLP_RATE_CUDA = 5e7  # model-steps/s on a GPU
# Targets (NEB on the W_f landscape, 100 bands x 32 images, float32, CPU).
TARGET_NEB_VS_ASE = 100.0  # lscape band-steps/s at least this many times ASE NEB + FIRE's
TARGET_NEB_KERNEL = 5.0  # the fused neb_step at least this many times the torch reference
# Targets (probes, CPU): lscape at least this many times the peer (issue 6)
TARGET_PROBES = 10.0
TARGET_SUBSPACE = 1.5  # a hyperplane (indices) training step at most this many times the full-space step
SUITES = ["test_projection.py", "test_mlp.py", "test_neb.py", "test_probes_lines.py", "test_probes_walks.py",
          "test_subspace.py"]

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
CONTENDER_ORDER = ["lscape indices", "lscape implicit", "torch CSR", "scipy.sparse", "cupyx CSR",
                   "lscape torch reference", "lscape cpu", "lscape cuda", "torch.func vmap", "lscape torch ref",
                   "ASE NEB+FIRE", "ASE, trivial calculator", "lscape", "loss-landscapes", "lscape lanczos",
                   "torch dense + eigvalsh", "PyHessian", "torch nn.Sequential, 1 walker", "full space"]
MLP_GROUPS = [f"mlp-{o}-M{m}" for o in ("sgd", "adadelta", "adam") for m in (1024, 16384)]
GROUP_ORDER += MLP_GROUPS + [f"cuda-mlp-{o}-M{m}" for o in ("sgd", "adadelta", "adam") for m in (16384, 320000)]


NEB_GROUPS = ["neb-wf-B100-n32", "neb-kernel-B100-n32"]
GROUP_ORDER += NEB_GROUPS + ["cuda-neb-wf-B10000-n32", "cuda-neb-kernel-B10000-n32"]
# probe groups timed per call: (lscape's contender, its peers)
PROBE_TIMED = {"probe-interp-200": ("lscape", ["loss-landscapes"]),
               "probe-hessian-top5": ("lscape lanczos", ["torch dense + eigvalsh", "PyHessian"])}
GROUP_ORDER += list(PROBE_TIMED) + ["probe-walk-5x5", "subspace-step-B128"]
TIMED_BASE = {**{g: v[0] for g, v in PROBE_TIMED.items()}, "subspace-step-B128": "full space"}
GROUP_TITLES.update({"probe-interp-200": "loss at 200 alphas on the init -> solution line, digits FC net",
                     "probe-hessian-top5": "top-5 Hessian eigenvalues, digits FC net",
                     "subspace-step-B128": "one Adam step, 3072-200-200-10 net (D = 656,810), d = 9,000, batch 128"})


def _is_mlp(group: str) -> bool:
    return group.removeprefix("cuda-").startswith("mlp-")


def _is_neb(group: str) -> bool:
    return group.removeprefix("cuda-").startswith("neb-")


def _is_rate(group: str) -> bool:
    """Groups reported as work per second (model-, band- or walker-steps) with lscape's speed-up."""
    return _is_mlp(group) or _is_neb(group) or group == "probe-walk-5x5"


# ---- running -------------------------------------------------------------------------------------------
def _split_args(argv: list[str]) -> tuple[dict, list[str]]:
    opts = {"large": True, "large_device": "cpu", "from_json": None, "large_json": None, "strict": False}
    rest: list[str] = []
    if argv[:1] == ["--"]:  # `lscape bench -- -k B1 ...` passes its separator through
        argv = argv[1:]
    it = iter(argv)
    for a in it:
        if a == "--no-large":
            opts["large"] = False
        elif a == "--strict":
            opts["strict"] = True
        elif a in ("--large-device", "--from-json", "--large-json"):
            value = next(it, None)
            if value is None:
                raise SystemExit(f"report.py: {a} needs a value")
            opts[a[2:].replace("-", "_")] = value
        elif a.split("=", 1)[0] in ("--large-device", "--from-json", "--large-json"):
            k, v = a.split("=", 1)
            opts[k[2:].replace("-", "_")] = v
        elif a in ("-h", "--help"):
            print(__doc__)
            raise SystemExit(0)
        else:
            rest.append(a)
    return opts, rest


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


def run_large(device: str, out_path: Path) -> dict:
    """bench/large_implicit.py in its own process; its JSON, or {"error": ...}."""
    cmd = [sys.executable, str(HERE / "large_implicit.py"), "--device", device]
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
        lines.append(f"  {who:<24} {r or float('nan'):>14,.0f} {e.get('steps', '?'):>10} {b['stats']['rounds']:>6}   {rtext}")
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
        return e["bytes_per_nnz"], f"{e['nbytes']:,} bytes / {e['nnz']:,} nonzeros{extra}"
    try:  # the build group was filtered out of this run: measure it here
        import lscape

        P = lscape.SparseSignProjection(656_810, 9_000, seed=0)
        return P.nbytes / P.nnz, f"{P.nbytes:,} bytes / {P.nnz:,} nonzeros (measured by the report)"
    except Exception as exc:  # noqa: BLE001 - report, do not crash
        return None, f"could not measure: {exc}"


def targets(groups: dict, large: dict | None) -> tuple[list[str], bool]:
    lines = ["Targets"]
    all_ok = True

    def add(ok, text, details):
        nonlocal all_ok
        all_ok = all_ok and ok is not False
        lines.append(f"  [{_verdict(ok)}] {text}")
        for d in details:
            lines.append(f"         {d}")

    # 1. indices >= 4x faster than torch CSR, both directions (every batch size run)
    vals = [(g, _ratio(groups, g, "torch CSR")) for g in PRODUCT_GROUPS]
    vals = [(g, r) for g, r in vals if r is not None]
    ok = None if not vals else all(r >= TARGET_VS_TORCH for _, r in vals)
    add(ok, f"lscape indices >= {TARGET_VS_TORCH:g}x faster than torch CSR, P theta and P^T g",
        [", ".join(f"{g}: torch CSR / lscape indices = {r:.2f}x" for g, r in vals[i:i + 2])
         for i in range(0, len(vals), 2)] or ["not measured in this run"])

    # 2. bytes per nonzero of indices storage
    bpn, how = _bytes_per_nnz(groups)
    add(None if bpn is None else bpn <= TARGET_BYTES_PER_NNZ,
        f"indices storage <= {TARGET_BYTES_PER_NNZ:g} bytes per nonzero: "
        + ("n/a" if bpn is None else f"{bpn:.3f} bytes per nonzero"), [how])

    # 3. implicit at most 2x slower than indices
    vals = [(g, _ratio(groups, g, "lscape implicit")) for g in PRODUCT_GROUPS]
    vals = [(g, r) for g, r in vals if r is not None]
    ok = None if not vals else all(r <= TARGET_IMPLICIT for _, r in vals)
    add(ok, f"implicit at most {TARGET_IMPLICIT:g}x slower than indices",
        [", ".join(f"{g}: implicit / indices = {r:.2f}x" for g, r in vals[i:i + 2])
         for i in range(0, len(vals), 2)] or ["not measured in this run"])
    rb = _ratio(groups, "build", "lscape implicit")
    if rb is not None:
        lines.append(f"         (build: implicit / indices = {rb:.2f}x)")

    # 4. ensemble training: lscape cpu >= 20x torch.func vmap and >= 3e5 model-steps/s; cuda >= 5e7
    rows = []
    for g, members in groups.items():
        if not _is_mlp(g):
            continue
        cuda = g.startswith("cuda-")
        base = members.get("lscape cuda" if cuda else "lscape cpu")
        if base is None:
            continue
        vm = members.get("torch.func vmap")
        rows.append((g, cuda, _rate(base), _rate(vm) if vm else None))
    cpu_rows = [r for r in rows if not r[1]]
    ok = None if not cpu_rows else all(
        rate >= TARGET_MLP_RATE and (vm is None or rate / vm >= TARGET_MLP_VS_VMAP) for _, _, rate, vm in cpu_rows)
    add(ok, f"ensemble training (CPU) >= {TARGET_MLP_VS_VMAP:g}x torch.func vmap and >= {TARGET_MLP_RATE:,.0f} "
        "model-steps/s", [f"{g}: {rate:,.0f} model-steps/s" + (f", {rate / vm:.1f}x vmap" if vm else "")
                          for g, _, rate, vm in cpu_rows] or ["not measured in this run"])
    cuda_rows = [r for r in rows if r[1]]
    if cuda_rows:
        add(all(rate >= TARGET_MLP_RATE_CUDA for _, _, rate, _ in cuda_rows),
            f"ensemble training (CUDA) >= {TARGET_MLP_RATE_CUDA:,.0f} model-steps/s",
            [f"{g}: {rate:,.0f} model-steps/s" + (f", {rate / vm:.1f}x vmap" if vm else "")
             for g, _, rate, vm in cuda_rows])

    # 5. NEB: lscape >= 100x ASE NEB + FIRE per band-step; the fused kernel >= 5x the torch reference
    wf = groups.get("neb-wf-B100-n32", {})
    base = wf.get("lscape cpu")
    details = []
    ok = None
    if base is not None and "ASE NEB+FIRE" in wf:
        r = _rate(base) / _rate(wf["ASE NEB+FIRE"])
        ok = r >= TARGET_NEB_VS_ASE
        details.append(f"lscape cpu {_rate(base):,.0f} band-steps/s, ASE NEB+FIRE {_rate(wf['ASE NEB+FIRE']):,.1f}: "
                       f"{r:,.0f}x")
        if "ASE, trivial calculator" in wf:
            details.append(f"(ASE with a calculator that returns zeros: {_rate(wf['ASE, trivial calculator']):,.1f} "
                           f"band-steps/s, {_rate(base) / _rate(wf['ASE, trivial calculator']):,.0f}x)")
        if "lscape torch ref" in wf:
            details.append(f"(the whole driver on the torch reference: {_rate(wf['lscape torch ref']):,.0f} "
                           f"band-steps/s, {_rate(base) / _rate(wf['lscape torch ref']):.1f}x)")
    add(ok, f"NEB (W_f, 100 bands x 32 images) >= {TARGET_NEB_VS_ASE:g}x ASE NEB + FIRE per band-step",
        details or ["not measured in this run"])
    kern = groups.get("neb-kernel-B100-n32", {})
    if "lscape cpu" in kern and "lscape torch ref" in kern:
        r = _rate(kern["lscape cpu"]) / _rate(kern["lscape torch ref"])
        add(r >= TARGET_NEB_KERNEL, f"neb_step kernel >= {TARGET_NEB_KERNEL:g}x the torch reference",
            [f"lscape cpu / lscape torch ref = {r:.1f}x"])
    else:
        add(None, f"neb_step kernel >= {TARGET_NEB_KERNEL:g}x the torch reference", ["not measured in this run"])
    for g in ("cuda-neb-wf-B10000-n32", "cuda-neb-kernel-B10000-n32"):
        if "lscape cuda" in groups.get(g, {}):
            lines.append(f"  [info] {g}: {_rate(groups[g]['lscape cuda']):,.0f} band-steps/s on CUDA")

    # 6. probes: lscape >= 10x the peer (interpolation, top-5 eigenvalues, walks)
    for g, (base_name, peers) in PROBE_TIMED.items():
        members = groups.get(g, {})
        for peer in peers:
            if base_name in members and peer in members:
                r = members[peer]["stats"]["median"] / members[base_name]["stats"]["median"]
                add(r >= TARGET_PROBES, f"{g}: {base_name} >= {TARGET_PROBES:g}x {peer}", [f"{r:.1f}x"])
    walk = groups.get("probe-walk-5x5", {})
    if "lscape cpu" in walk and "torch nn.Sequential, 1 walker" in walk:
        r = _rate(walk["lscape cpu"]) / _rate(walk["torch nn.Sequential, 1 walker"])
        add(r >= TARGET_PROBES, f"probe-walk-5x5: lscape >= {TARGET_PROBES:g}x one walker at a time in torch",
            [f"{_rate(walk['lscape cpu']):,.0f} walker-steps/s, {r:.0f}x"])

    # 7. a hyperplane step at most 1.5x the full-space step (indices storage)
    sub = groups.get("subspace-step-B128", {})
    if "full space" in sub and "lscape indices" in sub:
        r = sub["lscape indices"]["stats"]["median"] / sub["full space"]["stats"]["median"]
        add(r <= TARGET_SUBSPACE, f"hyperplane step (indices) <= {TARGET_SUBSPACE:g}x the full-space step",
            [f"{r:.2f}x"])

    # 8. large implicit under 1 GB
    if large is None:
        add(None, "large implicit (D = 10**8, d = 10**4) under 1 GB peak RSS", ["skipped (--no-large)"])
    elif "error" in large:
        add(False, "large implicit (D = 10**8, d = 10**4) under 1 GB peak RSS", [f"failed: {large['error']}"])
    else:
        peak = large["peak_rss_bytes"]
        limit = large.get("limit_bytes", LIMIT_BYTES)
        add(peak < limit, f"large implicit (D = {large['D']:,}, d = {large['d']:,}, {large['nnz']:,} nonzeros) "
            f"under {limit / 1e9:g} GB: peak RSS {_mb(peak)}",
            [f"its own process on {large['device']}: build {large['build_s']:.2f} s, P theta {large['matvec_s']:.2f} s, "
             f"P^T g {large['rmatvec_s']:.2f} s; P holds {large['nbytes']:,} bytes; "
             f"RSS after imports {_mb(large['rss_after_import_bytes'])}; "
             f"adjoint check rel. error {large['adjoint_rel_err']:.1e}"])
    return lines, all_ok


def render(data: dict, large: dict | None, load: dict, skipped: list[str]) -> tuple[str, bool]:
    groups = _groups(data)
    out = header(data, load)
    for g in _ordered(groups, GROUP_ORDER):
        out.append("")
        out += group_table(g, groups[g])
    out.append("")
    t, ok = targets(groups, large)
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
    opts, extra = _split_args(sys.argv[1:] if argv is None else argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    load: dict = {}
    skipped: list[str] = []
    rc = 0
    if opts["from_json"]:
        json_path = Path(opts["from_json"])
        large = json.loads(Path(opts["large_json"]).read_text()) if opts["large_json"] else None
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
        large = run_large(opts["large_device"], RESULTS / f"large-implicit-{stamp}.json") if opts["large"] else None
    data = json.loads(json_path.read_text())
    if opts["from_json"]:
        load = data.get("report", {}).get("loadavg_1min", {})
        skipped = data.get("report", {}).get("skipped", [])
    text, ok = render(data, large, load, skipped)
    print()
    print(text, end="")
    if not opts["from_json"]:
        txt = RESULTS / f"report-{stamp}.txt"
        txt.write_text(text)
        shutil.copyfile(txt, RESULTS / "latest.txt")
        shutil.copyfile(json_path, RESULTS / "latest.json")
        print(f"\nwritten: {json_path.relative_to(ROOT) if json_path.is_relative_to(ROOT) else json_path}, "
              f"{txt.relative_to(ROOT)} (and bench/results/latest.txt, latest.json)")
    if rc not in (0, 5):
        return rc
    if large is not None and "error" in large:
        return 1
    return 1 if (opts["strict"] and not ok) else 0


if __name__ == "__main__":
    sys.exit(main())
