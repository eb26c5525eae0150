"""`lscape info` says where lscape came from and how it was built, and why lscape._cuda cannot run where a
GPU is too old for its kernels or the driver too old for its CUDA runtime (tried with stand-ins: the CI has
no GPU)."""
from __future__ import annotations

import pytest
import torch
from lscape import _backend, cli


@pytest.mark.parametrize("cap,archs,runs", [
    ((9, 0), "80-real;90-real;90-virtual", True),
    ((8, 9), "80-real;90-real;90-virtual", True),    # sm_80 machine code runs on 8.x with x >= 0
    ((7, 5), "80-real;90-real;90-virtual", False),   # Turing: older than every build
    ((12, 0), "80-real;90-real;90-virtual", True),   # PTX of 9.0, compiled by the driver
    ((12, 0), "80-real;90-real", False),             # machine code only: 9.0 cubins do not run on 12.0
    ((7, 5), "75-real;80-real;86-real;89-real;90-real;100-real;120-real;120-virtual", True),
    ((10, 3), "75-real;80-real;86-real;89-real;90-real;100-real;120-real;120-virtual", True),
    ((12, 1), "75-real;80-real;86-real;89-real;90-real;100-real;120-real;120-virtual", True),
    ((13, 0), "75-real;100-real;120-real", False),
    ((8, 6), "80", True),                            # a bare number is both
    ((7, 0), "75-real;80-real;120-virtual", False),  # PTX never runs on an older GPU
])
def test_arch_runs(cap, archs, runs):
    assert _backend.arch_runs(cap, archs) is runs


class _FakeCuda:
    """Stands in for lscape._cuda: the runtime it was built with, and what that runtime sees."""

    def __init__(self, runtime=13000, devices=1, driver=13000, error=""):
        self._r, self._n, self._d, self._e = runtime, devices, driver, error

    def runtime_version(self):
        return self._r

    def device_count(self):
        return self._n

    def driver_version(self):
        return self._d

    def device_error(self):
        return self._e


@pytest.fixture
def gpu_seen_by_torch(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))


def test_old_driver_is_named_and_the_reference_runs(monkeypatch, gpu_seen_by_torch):
    monkeypatch.setattr(_backend, "_CUDA", _FakeCuda(devices=0, driver=12040,
                                                     error="cudaErrorInsufficientDriver: driver too old"))
    ok, why = _backend._cuda_reason()
    assert not ok
    assert "driver supports CUDA 12.4 but lscape._cuda carries the CUDA 13.0 runtime" in why, why
    assert "torch reference" in why
    assert _backend.select(torch.device("cuda")) == "torch"
    assert "update the driver" in cli.info()


def test_runtime_seeing_no_device_says_why(monkeypatch, gpu_seen_by_torch):
    monkeypatch.setattr(_backend, "_CUDA", _FakeCuda(devices=0, driver=13000, error="cudaErrorNoDevice: none"))
    ok, why = _backend._cuda_reason()
    assert not ok and "cudaErrorNoDevice" in why, why


def test_gpu_older_than_the_kernels_is_named(monkeypatch, gpu_seen_by_torch):
    monkeypatch.setattr(_backend, "_CUDA", _FakeCuda())
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (7, 0))
    monkeypatch.setattr(_backend, "_build_info", lambda: type("BI", (), {"cuda_architectures": "80-real;90-real"}))
    ok, why = _backend._cuda_reason()
    assert not ok and "no kernels for this GPU (sm_70; built for 80-real;90-real)" in why, why


def test_a_fitting_gpu_runs_the_kernels(monkeypatch, gpu_seen_by_torch):
    monkeypatch.setattr(_backend, "_CUDA", _FakeCuda())
    monkeypatch.setattr(_backend, "_build_info", lambda: type("BI", (), {"cuda_architectures": "80-real;90-real"}))
    ok, why = _backend._cuda_reason()
    assert ok and "CUDA runtime 13000 (static)" in why, why


def test_info_says_where_lscape_came_from_and_its_isa_paths():
    text = cli.info()
    lines = text.splitlines()
    installed = [ln for ln in lines if ln.startswith("installed: ")]
    assert len(installed) == 1, text
    assert any(k in installed[0] for k in ("binary wheel", "local build", "from the sdist", "source folder")), text
    build = [ln for ln in lines if ln.startswith("build: ")]
    assert len(build) == 1, text
    if _backend.cpu_extension() is not None:
        assert "ISA builds baseline" in build[0] and "OpenMP" in build[0], text
        assert "ISA paths: baseline runs" in text, text
        # probing the paths leaves the kernels on the ISA they ran before
        assert _backend.cpu_extension().isa() == text.split("cpu isa: ")[1].split()[0]
    if _backend.cuda_extension() is None:
        assert "no lscape._cuda: " in build[0], text
    else:
        assert "lscape._cuda by " in build[0] and "static runtime" in build[0], text
