"""Under CI=true a test may not skip for lack of a dependency the test extra installs (tests/conftest.py):
pytest.importorskip and conftest.missing_dependency fail instead, naming it; other skips stay skips."""
from __future__ import annotations

import sys

import pytest
from conftest import missing_dependency


def outcome(fn, *args, **kw) -> BaseException:
    """The skip or failure fn(*args, **kw) raised, caught here: a skip must not escape and skip the test."""
    try:
        fn(*args, **kw)
    except (pytest.skip.Exception, pytest.fail.Exception) as exc:
        return exc
    raise AssertionError(f"{fn.__name__} neither skipped nor failed")


@pytest.fixture
def hidden_h5py(monkeypatch):
    """h5py made unimportable for the test (None in sys.modules: `import h5py` raises ImportError)."""
    monkeypatch.setitem(sys.modules, "h5py", None)


@pytest.mark.parametrize("ci", ["true", "1"])
def test_in_ci_a_missing_test_extra_module_fails_naming_it(hidden_h5py, monkeypatch, ci):
    monkeypatch.setenv("CI", ci)
    got = outcome(pytest.importorskip, "h5py", reason="HDF5 needs h5py")
    assert isinstance(got, pytest.fail.Exception), got
    assert str(got).startswith("CI=true: h5py is missing, but the test extra installs it"), got
    assert str(got).endswith("may not skip: HDF5 needs h5py"), got
    got = outcome(missing_dependency, "chromium", "no Chromium on PATH")
    assert isinstance(got, pytest.fail.Exception) and "CI=true: chromium is missing" in str(got), got


@pytest.mark.parametrize("ci", [None, "false"])
def test_outside_ci_a_missing_module_skips(hidden_h5py, monkeypatch, ci):
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    got = outcome(pytest.importorskip, "h5py", reason="HDF5 needs h5py")
    assert isinstance(got, pytest.skip.Exception) and str(got) == "HDF5 needs h5py", got


def test_in_ci_other_skips_stay_skips(monkeypatch):
    monkeypatch.setenv("CI", "true")
    monkeypatch.setitem(sys.modules, "cupy", None)  # the cuda extra's, not the test extra's
    got = outcome(pytest.importorskip, "cupy")
    assert isinstance(got, pytest.skip.Exception) and "could not import 'cupy'" in str(got), got
    got = outcome(missing_dependency, "cuda", "no CUDA device")
    assert isinstance(got, pytest.skip.Exception) and str(got) == "no CUDA device", got


def test_an_installed_module_is_returned(monkeypatch):
    monkeypatch.setenv("CI", "true")
    assert pytest.importorskip("json") is sys.modules["json"]
