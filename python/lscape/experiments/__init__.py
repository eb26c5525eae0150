"""One module per paper: a config at three scales (smoke / default / paper), run, figures.

    lscape reproduce gamst-walker --scale default --out runs/gw        # or, from Python:
    lscape.experiments.run("gamst-walker", scale="default", out="runs/gw")
"""
from __future__ import annotations

import importlib
from typing import Any

# name on the command line -> module under lscape.experiments (imported lazily: matplotlib etc.)
EXPERIMENTS = {"bosman": "bosman", "gamst-walker": "gamst_walker", "goodfellow": "goodfellow", "huang": "huang",
               "goldilocks": "goldilocks", "grokking": "grokking",
               "intrinsic-dimension": "intrinsic_dimension"}


def get(name: str):
    """The module of experiment `name` (it has SCALES, Config and run(...))."""
    if name not in EXPERIMENTS:
        raise ValueError(f"name: got {name!r}, expected one of the experiments {', '.join(map(repr, EXPERIMENTS))}")
    return importlib.import_module(f"{__name__}.{EXPERIMENTS[name]}")


def run(name: str, **kwargs: Any) -> dict:
    """Run experiment `name`; kwargs go to its run() (scale, out, resume, progress, ...)."""
    return get(name).run(**kwargs)
