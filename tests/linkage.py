"""The no-torch-linkage invariant of lscape's extensions, as a function on one shared object.

lscape._C and lscape._cuda take tensors as buffers and pointers, so one wheel serves every torch >= 2.4.
That stays true only while neither extension links libtorch: no DT_NEEDED entry on libtorch*, libc10*,
libtorch_python or a shared CUDA runtime (libcudart.so: the runtime is linked statically, so a wheel never
depends on the one torch ships), and no undefined dynamic symbol in the at::, c10:: or torch:: namespaces
(demangled with c++filt). tests/test_linkage.py checks the built extensions with it, and .ci/wheel_check
the repaired wheel's files: `python tests/linkage.py FILE.so ...` exits 1 naming every problem.

It reads the files with binutils (readelf, c++filt); `tools_missing()` says which are absent.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

TOOLS = ("readelf", "c++filt")
# DT_NEEDED names that tie an extension to one torch build (or to the CUDA runtime torch ships)
FORBIDDEN_LIBS = re.compile(r"^(libtorch\w*|libc10\w*|libcudart)\.so")
# undefined symbols in torch's C++ namespaces, demangled
FORBIDDEN_SYMBOLS = re.compile(r"(^|[^\w:])(at|c10|torch)::")
# the CUDA runtime API: defined inside the extension when cudart is static, undefined when it is shared
CUDART_API = re.compile(r"^(cuda[A-Z]\w*|__cuda(RegisterFatBinary\w*|RegisterFunction|PopCallConfiguration))$")


class LinkageError(AssertionError):
    """A shared object links torch, or the shared CUDA runtime; the message names each offender."""


def tools_missing() -> list[str]:
    """The binutils this check needs that are not on PATH."""
    return [t for t in TOOLS if shutil.which(t) is None]


def _run(args: list[str], stdin: str | None = None) -> str:
    return subprocess.run(args, input=stdin, capture_output=True, text=True, check=True).stdout


def needed(path: str | Path) -> list[str]:
    """The DT_NEEDED entries of `path` (readelf -d)."""
    out = _run(["readelf", "-d", "-W", str(path)])
    return re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", out)


def undefined_symbols(path: str | Path) -> list[tuple[str, str]]:
    """(mangled, demangled) for every undefined dynamic symbol of `path` (readelf --dyn-syms, c++filt)."""
    names = []
    for line in _run(["readelf", "--dyn-syms", "-W", str(path)]).splitlines():
        cols = line.split()
        # Num: Value Size Type Bind Vis Ndx Name [(version)]
        if len(cols) >= 8 and cols[0].endswith(":") and cols[6] == "UND":
            names.append(cols[7].split("@")[0])
    if not names:
        return []
    demangled = _run(["c++filt"], "\n".join(names) + "\n").splitlines()
    return list(zip(names, demangled, strict=True))


def problems(path: str | Path) -> list[str]:
    """Every way `path` breaks the invariant, as messages ([] when it holds)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"linkage check: {path} is not a file")
    missing = tools_missing()
    if missing:
        raise RuntimeError(f"linkage check: {', '.join(missing)} not on PATH (binutils)")
    out = [f"{path.name}: links {lib} (DT_NEEDED)" for lib in needed(path) if FORBIDDEN_LIBS.match(lib)]
    for mangled, name in undefined_symbols(path):
        if FORBIDDEN_SYMBOLS.search(name):
            out.append(f"{path.name}: needs the torch symbol {name} ({mangled})")
        elif CUDART_API.match(mangled):
            out.append(f"{path.name}: needs the shared CUDA runtime's {mangled} (link cudart statically)")
    return out


def check(path: str | Path) -> None:
    """Raise LinkageError naming every problem of `path`; return quietly when it holds."""
    found = problems(path)
    if found:
        raise LinkageError("\n".join(found))


def main(argv: list[str]) -> int:
    """Check each FILE.so, and each extension module inside each FILE.whl; 1 when any breaks the invariant."""
    if not argv:
        print("usage: python tests/linkage.py FILE.so|FILE.whl [...]", file=sys.stderr)
        return 2
    bad = checked = 0
    with tempfile.TemporaryDirectory() as tmp:
        for arg in argv:
            paths = [Path(arg)]
            if arg.endswith(".whl"):
                with zipfile.ZipFile(arg) as whl:
                    names = [n for n in whl.namelist() if re.search(r"\.so(\.|$)", Path(n).name)]  # grafted libs too
                    if not names:
                        print(f"{arg}: no extension module inside", file=sys.stderr)
                        return 1
                    paths = [Path(whl.extract(n, Path(tmp) / Path(arg).name)) for n in names]
            for path in paths:
                found = problems(path)
                bad += bool(found)
                checked += 1
                print("\n".join(found) if found else f"{path.name}: no torch linkage, no shared CUDA runtime "
                      f"(needs {', '.join(needed(path))})")
    return 1 if bad or not checked else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
