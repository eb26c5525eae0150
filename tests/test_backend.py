"""Backend selection, forcing, the fallback without the extension, and `lscape info`."""
import os
import re
import subprocess
import sys
import textwrap

import lscape
import pytest
import torch
from lscape import _backend, cli


def test_backends_report_availability_and_reasons():
    b = lscape.backends()
    assert set(b) == {"cuda", "cpu", "torch"}
    assert b["torch"].available and b["cpu"].available
    assert any(f"{isa} kernels" in b["cpu"].reason for isa in ("avx512", "avx2", "baseline"))
    if not torch.cuda.is_available():
        assert not b["cuda"].available and b["cuda"].reason


def test_auto_picks_cpu_for_cpu_tensors():
    assert _backend.select(torch.device("cpu")) == "cpu"


def test_env_var_forces_a_backend(monkeypatch):
    monkeypatch.setenv("LSCAPE_BACKEND", "torch")
    assert _backend.select(torch.device("cpu")) == "torch"
    monkeypatch.setenv("LSCAPE_BACKEND", "bogus")
    with pytest.raises(ValueError, match="LSCAPE_BACKEND: got 'bogus'"):
        _backend.select(torch.device("cpu"))


def test_use_backend_overrides_env(monkeypatch):
    monkeypatch.setenv("LSCAPE_BACKEND", "cpu")
    with lscape.use_backend("torch"):
        assert _backend.select(torch.device("cpu")) == "torch"
    assert _backend.select(torch.device("cpu")) == "cpu"
    with pytest.raises(ValueError, match="use_backend"):
        with lscape.use_backend("gpu"):
            pass


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised where CUDA is missing")
def test_forcing_a_missing_backend_says_why(monkeypatch):
    monkeypatch.setenv("LSCAPE_BACKEND", "cuda")
    with pytest.raises(RuntimeError, match="backend 'cuda' was forced but is unavailable: "):
        lscape.SparseSignProjection(10, 2)


def test_forcing_cpu_without_the_extension_says_why(monkeypatch):
    monkeypatch.setattr(_backend, "_C", None)
    monkeypatch.setattr(_backend, "_C_ERROR", "lscape._C is not built (test)")
    with pytest.raises(RuntimeError, match=r"backend 'cpu' was forced but is unavailable: lscape._C is not built"):
        with lscape.use_backend("cpu"):
            lscape.SparseSignProjection(10, 2)
    # auto falls back to the reference, with the same results
    P = lscape.SparseSignProjection(100, 5, seed=3)
    assert _backend.select(torch.device("cpu")) == "torch"
    monkeypatch.undo()
    Q = lscape.SparseSignProjection(100, 5, seed=3)
    x = torch.randn(5)
    torch.testing.assert_close(P.matvec(x), Q.matvec(x))


def test_missing_extension_warns_once_and_still_works():
    # A fresh interpreter in which lscape._C cannot be imported.
    code = textwrap.dedent("""
        import sys, warnings, importlib.abc, importlib.machinery
        class Broken(importlib.abc.Loader):  # like an extension built for another ABI
            def create_module(self, spec):
                raise ImportError("undefined symbol: blocked for the test")
            def exec_module(self, module):
                pass
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name == "lscape._C":
                    return importlib.machinery.ModuleSpec(name, Broken())
        sys.meta_path.insert(0, Block())
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            import lscape
            import torch
            P = lscape.SparseSignProjection(300, 7, seed=1)
            y = P.matvec(torch.ones(7))
        msgs = [str(x.message) for x in w if issubclass(x.category, RuntimeWarning)]
        assert len(msgs) == 1 and "reference" in msgs[0], msgs
        assert not lscape.backends()["cpu"].available
        print(float(y.square().sum()))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONWARNINGS": ""})
    assert out.returncode == 0, out.stderr
    P = lscape.SparseSignProjection(300, 7, seed=1)
    assert abs(float(out.stdout) - float(P.matvec(torch.ones(7)).square().sum())) < 1e-4


def test_thread_count_follows_omp_then_torch(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert _backend.num_threads() == 1
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert _backend.num_threads() == torch.get_num_threads()


def test_info_command_prints_backends(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    for word in ("lscape", "cuda", "cpu", "torch", "threads"):
        assert word in out
    assert f"cpu isa: {_backend.cpu_extension().isa()} kernels run" in out


def test_console_script_runs():
    out = subprocess.run([sys.executable, "-m", "lscape.cli", "info"], capture_output=True, text=True)
    assert out.returncode == 0 and "backends:" in out.stdout


def test_demo_runs_small(capsys):
    assert cli.main(["demo", "--D", "20000", "--d", "300"]) == 0
    out = capsys.readouterr().out
    adjoint = re.search(r"adjoint check .* to (\S+) relative", out)
    assert adjoint, out
    assert float(adjoint.group(1)) < 1e-5  # float32 products of a 20,000 x 300 P: ~1e-7 in practice
    assert "torch CSR" in out


# ---- the op table and the one lookup ------------------------------------------------------------------
F32, F64 = torch.float32, torch.float64


def test_every_op_names_functions_the_cpu_extension_has():
    ext = _backend.cpu_extension()
    for op, spec in _backend.OPS.items():
        assert set(spec.dtypes) <= {"cpu", "cuda"}, op
        for fn in spec.functions:
            assert callable(getattr(ext, fn, None)), (op, fn)
        for fn in spec.cuda_only:  # kernels no CPU path calls are not built there (leaner lscape._C)
            assert not hasattr(ext, fn), (op, fn)


@pytest.mark.parametrize("op,dtype,want", [
    ("mlp", F32, "cpu"), ("mlp", F64, None), ("neb_step", F64, "cpu"), ("neb_step", F32, "cpu"),
    ("proj_product", F64, "cpu"), ("proj_build", None, "cpu"), ("proj_product", torch.float16, None),
    ("walk_step", F32, "cpu"), ("walk_step", F64, "cpu"), ("walk_step", torch.float16, None)])
def test_auto_picks_a_kernel_or_the_reference(op, dtype, want):
    k = _backend.kernel(op, torch.device("cpu"), dtype)
    assert (k and k.backend) == want
    if k is not None:
        assert k.ext is _backend.cpu_extension() and k.tail == _backend.num_threads()


def test_forced_backend_without_a_kernel_for_the_dtype_raises():
    with lscape.use_backend("cpu"):
        with pytest.raises(_backend.UnsupportedKernel, match=r"'cpu' was forced but has no mlp kernel for dtype "
                                                             r"torch.float64 \(it takes float32\)"):
            _backend.kernel("mlp", torch.device("cpu"), F64)
        assert _backend.kernel("neb_step", torch.device("cpu"), F64).backend == "cpu"
    with lscape.use_backend("torch"):
        assert _backend.kernel("mlp", torch.device("cpu"), F64) is None


def test_forced_cpu_refuses_a_float64_ensemble_end_to_end():
    spec = lscape.TinyMLP(2, 3)
    p = spec.init(4, seed=1, dtype=F64)
    x = torch.linspace(-1, 1, 7, dtype=F64)
    with lscape.use_backend("cpu"), pytest.raises(_backend.UnsupportedKernel, match="mlp"):
        lscape.mlp_loss(spec, p, x, x.sin())
    lscape.mlp_loss(spec, p, x, x.sin())  # auto: the reference runs it


def test_forced_cuda_refuses_float64_neb(monkeypatch):
    """The CUDA NEB kernel is float32 only: forced cuda + float64 is an error, not a quiet reference run
    (checked without a GPU by pretending the backend is there)."""
    monkeypatch.setattr(_backend, "_cuda_reason", lambda: (True, "pretend"))
    monkeypatch.setattr(_backend, "_CUDA", object())
    monkeypatch.setattr(_backend, "cuda_stream", lambda device: 7)
    dev = torch.device("cuda")
    with lscape.use_backend("cuda"):
        with pytest.raises(_backend.UnsupportedKernel, match=r"'cuda' was forced but has no neb_step kernel for "
                                                             r"dtype torch.float64 \(it takes float32\)"):
            _backend.kernel("neb_step", dev, F64)
        k = _backend.kernel("neb_step", dev, F32)
        assert (k.backend, k.tail, k.device) == ("cuda", 7, dev)
    assert _backend.kernel("neb_step", dev, F64) is None  # auto: float64 on a GPU runs the reference


def test_unknown_op_is_refused():
    with pytest.raises(ValueError, match="op: got 'fft'"):
        _backend.kernel("fft", torch.device("cpu"), F32)
