"""The built extensions link no torch and no shared CUDA runtime (tests/linkage.py), so one wheel serves
every torch >= 2.4; and the check fails on shared objects that do, built here with a C compiler."""
from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path

import linkage
import pytest


def _extension(name: str) -> Path:
    spec = importlib.util.find_spec(f"lscape.{name}")
    if spec is None or spec.origin is None:
        import lscape

        backend = "cuda" if name == "_cuda" else "cpu"
        pytest.skip(f"lscape.{name} is not built here: {lscape.backends()[backend].reason}")
    return Path(spec.origin)


@pytest.fixture(autouse=True)
def _binutils():
    missing = linkage.tools_missing()
    if missing:
        pytest.skip(f"the linkage check reads ELF files with binutils: {', '.join(missing)} not on PATH")


@pytest.mark.parametrize("name", ["_C", "_cuda"])
def test_extension_links_no_torch_and_no_shared_cudart(name):
    path = _extension(name)
    linkage.check(path)
    libs = linkage.needed(path)
    assert any(lib.startswith("libc.so") for lib in libs), libs  # the parse found the dynamic section
    assert any(m.startswith("Py") for m, _ in linkage.undefined_symbols(path))  # and the undefined symbols


def test_cuda_runtime_is_inside_the_extension():
    """Static cudart: the runtime API is defined in lscape._cuda, not left to a libcudart.so."""
    path = _extension("_cuda")
    assert not [m for m, _ in linkage.undefined_symbols(path) if linkage.CUDART_API.match(m)]
    # the static runtime opens the driver itself (the extension is stripped: its own name for it is the mark)
    assert b"libcuda.so.1" in path.read_bytes()


def _cc() -> str:
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        pytest.skip("no C compiler here to build the bad shared objects (the wheel check's venv has none on purpose)")
    probe = subprocess.run([cc, "--version"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"{cc} does not run here: {probe.stderr.strip()[:200]}")
    return cc


def _shared(cc: str, out: Path, source: str, *link: str) -> Path:
    src = out.with_suffix(".c")
    src.write_text(source, encoding="utf-8")
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(out), str(src), *link], check=True, capture_output=True)
    return out


def test_check_fails_on_a_torch_symbol(tmp_path):
    """A shared object that calls c10::detail::torchCheckFail (what a TORCH_CHECK in an extension compiles
    to) and at::Tensor::print() is refused, each named demangled."""
    cc = _cc()
    so = _shared(cc, tmp_path / "torch_symbol.so",
                 "void _ZN3c106detail14torchCheckFailEPKcS2_jS2_(const char*, const char*, unsigned, const char*);\n"
                 "void _ZNK2at6Tensor5printEv(void*);\n"
                 "void f(void* t) { _ZN3c106detail14torchCheckFailEPKcS2_jS2_(\"f\", \"x.c\", 1u, \"m\");"
                 " _ZNK2at6Tensor5printEv(t); }\n")
    with pytest.raises(linkage.LinkageError) as err:
        linkage.check(so)
    msg = str(err.value)
    assert "c10::detail::torchCheckFail(char const*, char const*, unsigned int, char const*)" in msg, msg
    assert "at::Tensor::print() const" in msg, msg
    assert linkage.main([str(so)]) == 1


def test_check_fails_on_a_libtorch_and_a_shared_cudart(tmp_path):
    """Linking a (fake) libtorch.so, libc10.so and libcudart.so.13 puts them in DT_NEEDED: each is named;
    a call into the shared runtime's API is named too."""
    cc = _cc()
    for lib in ("torch", "c10"):
        _shared(cc, tmp_path / f"lib{lib}.so", f"int {lib}_marker(void) {{ return 1; }}\n")
    _shared(cc, tmp_path / "libcudart.so.13", "int cudaGetDeviceCount(int* n) { *n = 0; return 0; }\n",
            "-Wl,-soname,libcudart.so.13")
    so = _shared(cc, tmp_path / "links_torch.so",
                 "int torch_marker(void); int c10_marker(void); int cudaGetDeviceCount(int*);\n"
                 "int f(void) { int n; cudaGetDeviceCount(&n); return torch_marker() + c10_marker() + n; }\n",
                 f"-L{tmp_path}", "-ltorch", "-lc10", str(tmp_path / "libcudart.so.13"), "-Wl,--no-as-needed")
    found = linkage.problems(so)
    assert any("links libtorch.so" in p for p in found), found
    assert any("links libc10.so" in p for p in found), found
    assert any("links libcudart.so.13" in p for p in found), found
    assert any("shared CUDA runtime's cudaGetDeviceCount" in p for p in found), found


def test_check_passes_a_clean_object_and_names_a_missing_file(tmp_path):
    cc = _cc()
    so = _shared(cc, tmp_path / "clean.so", "#include <stdio.h>\nvoid f(void) { puts(\"at::nothing\"); }\n")
    linkage.check(so)  # only libc: nothing to refuse
    assert linkage.main([str(so)]) == 0
    with pytest.raises(FileNotFoundError, match="is not a file"):
        linkage.problems(tmp_path / "absent.so")
