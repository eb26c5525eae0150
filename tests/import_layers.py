"""lscape's import graph and its layers, as functions on the source tree (no module is imported).

Every `import lscape.x`, `from lscape.x import y`, `from . import y` and `from ..x import y` in
python/lscape, at module level or inside a function, is an edge from the importing module to the imported
one (to the submodule y where y is one, else to the package or module x). Two rules hold on the graph:
  - no cycle: every strongly connected component is a single module;
  - no upward import: a module imports only from its own layer or lower ones (LAYERS below).
tests/test_import_layers.py checks both; `python tests/import_layers.py` prints every problem and exits 1.
"""
from __future__ import annotations

import ast
import fnmatch
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "python" / "lscape"

# DESIGN.md's layering ("Layers, and the folders that show them"), lowest first, made exact where the graph
# needs it. Names are relative to lscape; a name covers its submodules too; * is a glob. A module may import
# from its own layer or any lower one, never from a higher one, so each layer stands on the ones below it
# alone. Every module must match exactly one layer: a new module has to be placed here.
LAYERS: tuple[tuple[str, ...], ...] = (
    # kernels: dispatch, operands, their pure-torch references; and the shared small pieces
    ("_backend", "ops", "reference", "_checks", "_flat", "_records", "_progress", "_fastops", "_runlock",
     "_atomicfiles"),
    # a real network evaluated fast and exactly: batches and outputs, affine inputs, folded BatchNorm, curvature
    ("_hvp*", "_modeleval", "_modelio", "_moduleloss", "_affine", "_batched"),
    # the batched landscape, the spaces and drivers built on it, and where chunks run
    ("landscape", "tinymlp", "ensemble", "projection", "subspace", "radial", "neb", "checkpoints", "directions",
     "models", "data", "executor"),
    ("probes",),
    # a model's loss surface, its files and figures; intrinsic dimension's sweeps
    ("surface", "surface_io", "plot", "_interactive", "_plotvalues", "intrinsic"),
    # the reproductions of the papers
    ("experiments",),
    # what users call: the package's public names and the `lscape` command
    ("", "cli"),
)


def modules(root: Path = ROOT) -> dict[str, Path]:
    """Every module of the package, by dotted name relative to it ('' for lscape itself, 'probes.walks')."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _join(*names: str) -> str:
    return ".".join(n for n in names if n)


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package's modules that module `name` (at `path`) imports anywhere in its source."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".") if package else []
                base = base[:len(base) - (node.level - 1)] if node.level > 1 else base
                target = _join(*base, node.module or "")
            elif node.module == "lscape" or (node.module or "").startswith("lscape."):
                target = node.module.removeprefix("lscape").lstrip(".")
            else:
                continue
            for alias in node.names:
                sub = _join(target, alias.name)
                out.add(sub if sub in known else target)
        elif isinstance(node, ast.Import):
            out |= {a.name.removeprefix("lscape").lstrip(".") for a in node.names
                    if a.name == "lscape" or a.name.startswith("lscape.")}
    out.discard(name)
    return out


def graph(root: Path = ROOT) -> dict[str, set[str]]:
    """module -> the modules it imports, for every module of the package."""
    known = modules(root)
    return {name: imports(name, path, known) for name, path in known.items()}


def layer(name: str) -> int | None:
    """The index in LAYERS of the one layer whose names cover module `name`; None if none does."""
    hits = [i for i, names in enumerate(LAYERS) for pattern in names
            if fnmatch.fnmatchcase(name, pattern) or (pattern and fnmatch.fnmatchcase(name, pattern + ".*"))]
    return hits[0] if len(set(hits)) == 1 else None


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(g.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return sorted(found)


def _shown(name: str) -> str:
    return _join("lscape", name)


def problems(g: dict[str, set[str]]) -> list[str]:
    """One line per module without a layer, per upward import and per cycle; empty when the graph is sound."""
    out = [f"{_shown(m)}: in no layer of LAYERS (or in more than one); place it" for m in sorted(g)
           if layer(m) is None]
    for m in sorted(g):
        for t in sorted(g[m]):
            lm, lt = layer(m), layer(t)
            if lm is not None and lt is not None and lt > lm:
                out.append(f"{_shown(m)} (layer {lm}) imports {_shown(t)} (layer {lt}): an upward import")
    out += [f"import cycle: {' <-> '.join(_shown(m) for m in comp)}" for comp in cycles(g)]
    return out


if __name__ == "__main__":
    found = problems(graph())
    print("\n".join(found) or "import layers: no cycle, no upward import")
    sys.exit(1 if found else 0)
