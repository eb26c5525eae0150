"""The finished runs of a (partial) intrinsic-dimension run, as a Markdown table: per network and d, the
seeds done, their mean test accuracy after the last epoch (and each seed's), the mean gain over the last
20% of the epochs and the projection storage the runs were built with.

    PYTHONPATH=python python studies/intrinsic-dimension-paper/progress.py [FOLDER]

FOLDER: a run folder or this one (default: this one); reads FOLDER/checkpoints/<network>.npz."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from lscape.experiments.intrinsic_dimension import NETWORKS, late_gain


def rows(folder: Path) -> list[str]:
    """One table row per (network, d) with at least one finished seed; d = 0 is the full space."""
    out = []
    for net in NETWORKS:
        path = folder / "checkpoints" / f"{net}.npz"
        if not path.is_file():
            continue
        with np.load(path) as z:
            table = {k: z[k] for k in z.files}
        d_all = table["run_d"]
        for d in sorted(set(d_all.tolist())):
            k = np.flatnonzero(d_all == d)
            k = k[np.argsort(table["run_seed"][k])]
            acc = table["run_score"][k]
            seeds = ", ".join(f"{s}: {a:.4f}" for s, a in zip(table["run_seed"][k].tolist(), acc, strict=True))
            storage = ", ".join(sorted(set(table["run_storage"][k].tolist())))
            out.append(f"| {net} | {'full space' if d == 0 else f'{d:,}'} | {k.size} | **{acc.mean():.4f}** "
                       f"({seeds}) | {late_gain(table['run_history'][k]):+.4f} | {storage} |")
    return out


def main(argv: list[str]) -> int:
    folder = Path(argv[0]) if argv else Path(__file__).parent
    print("| network | d | seeds done | mean test accuracy (per seed) | gain over the last 20% of epochs | P |")
    print("| --- | --- | --- | --- | --- | --- |")
    print("\n".join(rows(folder)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
