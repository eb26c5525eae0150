"""Every CPU kernel build the run-time dispatch can pick: the kernel test files run again in a subprocess
with LSCAPE_CPU_ISA forcing each ISA path this CPU can run (the default one runs in the main session), so
the portable, AVX2 and AVX-512 builds are all proven against the reference."""
import os
import subprocess
import sys
from pathlib import Path

import lscape
import pytest

TESTS = Path(__file__).parent
KERNEL_TESTS = ["test_projection_kernels.py", "test_projection_sell.py", "test_mlp_kernels_cpu.py",
                "test_walk_kernel.py", "test_fastfood.py"]


def _isa_under(env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "import lscape._C as c; print(c.isa())"], env=env,
                          capture_output=True, text=True)


@pytest.mark.parametrize("isa", ["baseline", "avx2", "avx512"])
def test_kernel_tests_pass_on_every_isa(isa):
    if not lscape.backends()["cpu"].available:
        pytest.skip(f"the C++ extension is not built here: {lscape.backends()['cpu'].reason}")
    default = _isa_under(dict(os.environ, LSCAPE_CPU_ISA="auto")).stdout.strip()
    if isa == default:
        pytest.skip(f"{isa} is this CPU's default: the main test session already ran its kernels")
    env = dict(os.environ, LSCAPE_CPU_ISA=isa)
    probe = _isa_under(env)
    if probe.returncode != 0:
        assert "LSCAPE_CPU_ISA: got" in probe.stderr and "expected one it can run" in probe.stderr, probe.stderr[-2000:]
        pytest.skip(f"this CPU cannot run the {isa} build: {probe.stderr.strip().splitlines()[-1]}")
    assert probe.stdout.strip() == isa
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                          *[str(TESTS / f) for f in KERNEL_TESTS]],
                         env=env, cwd=TESTS.parent, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert " passed" in run.stdout.splitlines()[-1]
