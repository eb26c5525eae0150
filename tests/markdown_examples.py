"""The Python examples of README.md and docs/*.md, run as a reader would run them.

Every ```python block runs; the blocks of one page share one namespace, in order, as a reader pasting
them one after another would.  A block that is not meant to run says so in its fence, in words a reader
also sees (```python title="sketch, not run"``): the fence's text contains "not run".  Other languages
(bash, text) never run.

Used by tests/test_docs_examples.py and by docs/make_figures.py (which runs the same blocks to draw the
figures the pages show, so a figure is always what its example makes).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# a fence at any indent; the closing fence has the same indent and backtick count
_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<ticks>`{3,})(?P<info>[^\n`]*)\n(?P<body>.*?)^(?P=indent)(?P=ticks)[ \t]*$",
                    re.M | re.S)


@dataclass(frozen=True)
class Block:
    """One fenced code block: the file it is in, the line of its opening fence (1-based), its code."""

    path: Path
    line: int
    code: str


def python_blocks(path: Path) -> list[Block]:
    """The Python blocks of the markdown file `path` that are meant to run, in order."""
    text = path.read_text(encoding="utf-8")
    blocks = []
    for m in _FENCE.finditer(text):
        info = m.group("info").strip()
        lang = info.split()[0].strip("{}.") if info else ""
        if lang != "python" or "not run" in info:
            continue
        indent = len(m.group("indent"))
        code = "\n".join(line[indent:] for line in m.group("body").splitlines())
        blocks.append(Block(path, text.count("\n", 0, m.start()) + 1, code))
    return blocks


def pages() -> list[Path]:
    """README.md and every markdown page under docs/, in a stable order."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def run_page(path: Path, workdir: Path) -> dict:
    """Run the page's Python blocks in order in one namespace, with `workdir` as the current directory.

    A failing block raises with its file and line in the traceback (the code is compiled under the name
    "FILE:LINE").  Returns the namespace the blocks left.
    """
    import matplotlib

    matplotlib.use("Agg")  # no display in CI; figures are saved, never shown
    import matplotlib.pyplot as plt

    blocks = python_blocks(Path(path).resolve())
    namespace: dict = {"__name__": "__main__"}
    old = os.getcwd()
    os.chdir(workdir)
    try:
        for block in blocks:
            where = block.path.relative_to(ROOT) if block.path.is_relative_to(ROOT) else block.path
            name = f"{where}:{block.line}"
            # the fence's line is `line`, so code line k sits at file line `line + k`: pad to match
            exec(compile("\n" * block.line + block.code, name, "exec"), namespace)  # noqa: S102
    finally:
        os.chdir(old)
        plt.close("all")
    return namespace


_IMAGE = re.compile(r"!\[[^\]]*\]\((?P<src>[^)\s]+)")


def images(path: Path) -> list[str]:
    """The image paths the page links to, as written (relative to the page)."""
    return [m.group("src") for m in _IMAGE.finditer(path.read_text(encoding="utf-8"))]
