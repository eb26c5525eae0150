"""Benchmarks whose cases each run alone in a process of their own, so that each case's peak resident memory
(ru_maxrss) is its own: `SCRIPT one ...` runs one case here and prints its JSON line; `SCRIPT compare ...` runs
each case through `one` in a subprocess and prints the table.  Used by bench/hessian_*.py."""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from collections.abc import Callable


def cpu_seconds() -> float:
    """CPU seconds of this process (user + system): on a shared machine, the work done, whatever the load."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def peak_gb() -> float:
    """This process's peak resident memory in GB (ru_maxrss is in kB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def one_in_a_process(script: str, args: list[str]) -> dict:
    """`python script one *args` in a subprocess: its last stdout line as a dict, also printed."""
    out = subprocess.run([sys.executable, os.path.abspath(script), "one", *args], capture_output=True, text=True,
                         check=True)
    row = json.loads(out.stdout.strip().splitlines()[-1])
    print(json.dumps(row), flush=True)
    return row


def parser(doc: str | None) -> argparse.ArgumentParser:
    """An argument parser whose first argument is the mode, `one` or `compare`."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=("one", "compare"))
    return ap


def main(ap: argparse.ArgumentParser, one: Callable[[argparse.Namespace], dict],
         compare: Callable[[argparse.Namespace], None]) -> None:
    """Parse the command line; run one case and print its JSON line, or compare them all."""
    a = ap.parse_args()
    if a.mode == "one":
        print(json.dumps(one(a)))
    else:
        compare(a)
