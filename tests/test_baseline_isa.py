"""The portable (non-AVX2) CPU kernels, which the run-time dispatch never picks on an AVX2 machine:
LSCAPE_CPU_ISA=baseline forces them, and the kernel test files run again in a subprocess under it."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

import lscape

TESTS = Path(__file__).parent
KERNEL_TESTS = ["test_projection_kernels.py", "test_mlp_kernels_cpu.py"]


@pytest.mark.skipif(os.environ.get("LSCAPE_CPU_ISA") == "baseline", reason="already running on the baseline kernels")
def test_kernel_tests_pass_on_the_baseline_isa():
    if not lscape.backends()["cpu"].available:
        pytest.skip(f"the C++ extension is not built here: {lscape.backends()['cpu'].reason}")
    env = dict(os.environ, LSCAPE_CPU_ISA="baseline")
    isa = subprocess.run([sys.executable, "-c", "import lscape._C as c; print(c.isa())"], env=env,
                         capture_output=True, text=True, check=True).stdout.strip()
    assert isa == "baseline"
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                          *[str(TESTS / f) for f in KERNEL_TESTS]],
                         env=env, cwd=TESTS.parent, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert " passed" in run.stdout.splitlines()[-1]
