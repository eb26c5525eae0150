"""Every instruction-set build of the CPU kernels (baseline, avx2, avx512), of which the run-time dispatch
picks only one per machine: LSCAPE_CPU_ISA forces each, and the kernel test files run again in a
subprocess under it (skipped, saying why, where the CPU cannot run that ISA)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

import lscape

TESTS = Path(__file__).parent
KERNEL_TESTS = ["test_projection_kernels.py", "test_mlp_kernels_cpu.py"]


def _isa_under(name: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, LSCAPE_CPU_ISA=name)
    return subprocess.run([sys.executable, "-c", "import lscape._C as c; print(c.isa())"], env=env,
                          capture_output=True, text=True)


@pytest.mark.parametrize("isa", ["baseline", "avx2", "avx512"])
def test_kernel_tests_pass_on_every_isa(isa):
    if not lscape.backends()["cpu"].available:
        pytest.skip(f"the C++ extension is not built here: {lscape.backends()['cpu'].reason}")
    if os.environ.get("LSCAPE_CPU_ISA") == isa:
        pytest.skip(f"this run already uses the {isa} kernels")
    probe = _isa_under(isa)
    if probe.returncode != 0:
        assert "LSCAPE_CPU_ISA: got" in probe.stderr, probe.stderr  # a refusal that says why
        pytest.skip(f"this CPU cannot run the {isa} kernels: {probe.stderr.strip().splitlines()[-1]}")
    assert probe.stdout.strip() == isa
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                          *[str(TESTS / f) for f in KERNEL_TESTS]],
                         env=dict(os.environ, LSCAPE_CPU_ISA=isa), cwd=TESTS.parent, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert " passed" in run.stdout.splitlines()[-1]


def test_an_unknown_isa_is_refused_by_name():
    probe = _isa_under("sse9")
    assert probe.returncode != 0
    assert "LSCAPE_CPU_ISA: got 'sse9', expected avx512, avx2, baseline or auto" in probe.stderr
