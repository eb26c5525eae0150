"""lscape's import graph has no cycle and no import from a lower layer up to a higher one (tests/import_layers.py);
and the checker finds both, and unplaced modules, in a small package written here."""
from __future__ import annotations

import fnmatch
import textwrap

import import_layers as il


def test_the_package_has_no_cycle_and_no_upward_import():
    found = il.problems(il.graph())
    assert not found, "\n".join(found)


def test_every_layer_name_covers_a_module():
    """A name left in LAYERS after its module is gone would hide nothing but mislead the reader."""
    names = il.modules()
    stale = [p for layer in il.LAYERS for p in layer
             if not any(fnmatch.fnmatchcase(n, p) or fnmatch.fnmatchcase(n, p + ".*") for n in names)]
    assert stale == []


def _package(root, files: dict[str, str]):
    """A package lscape under root with files {relative path: source}."""
    pkg = root / "lscape"
    for rel, text in files.items():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_text(textwrap.dedent(text))
    return pkg


def test_the_graph_reads_every_kind_of_import(tmp_path):
    pkg = _package(tmp_path, {
        "__init__.py": "from . import probes\n",
        "_checks.py": "",
        "probes/__init__.py": "from .walks import walk\n",
        "probes/walks.py": "from .. import _checks\nfrom ..landscape import Landscape\n",
        "landscape.py": "def f():\n    import lscape.probes.walks\n    from lscape import _checks\n",
    })
    assert il.graph(pkg) == {"": {"probes"}, "_checks": set(), "probes": {"probes.walks"},
                             "probes.walks": {"_checks", "landscape"}, "landscape": {"probes.walks", "_checks"}}


def test_the_checker_finds_upward_imports_cycles_and_unplaced_modules(tmp_path):
    pkg = _package(tmp_path, {
        "__init__.py": "",
        "_checks.py": "def f():\n    from .experiments.io import load\n",  # lazy, still upward
        "experiments/__init__.py": "",
        "experiments/io.py": "from .. import _checks\n",
        "plot.py": "from ._interactive import page\n",
        "_interactive.py": "from .plot import _scaled\n",
        "newthing.py": "",
    })
    assert il.problems(il.graph(pkg)) == [
        "lscape.newthing: in no layer of LAYERS (or in more than one); place it",
        f"lscape._checks (layer 0) imports lscape.experiments.io (layer {il.layer('experiments.io')}): "
        "an upward import",
        "import cycle: lscape._checks <-> lscape.experiments.io",
        "import cycle: lscape._interactive <-> lscape.plot",
    ]
