"""The Python examples of README.md and docs/*.md, run as a reader would run them.

Every ```python block runs; the blocks of one page share one namespace, in order, as a reader pasting
them one after another would.  A block that is not meant to run says so in its fence, in words a reader
also sees (```python title="sketch, not run"``): the fence's text contains "not run".  Other languages
(bash, text) never run.

What an example says it prints is compared with what it printed (Printed, printed_mismatches):
    print(x)  # prints: TEXT             what that line prints, its numbers equal
    print(x)  # prints (±2%): TEXT       ... its numbers each within 2% (relative) of TEXT's
    print(x)  # what x is; prints (±0.01): TEXT    ... within 0.01 (absolute), after a word on x
and a ```text block with "prints" in its fence (```text title="prints (±2%)"``), right after a Python
block, quotes everything that block printed.  In TEXT, "..." stands for any text (the rest of a long
line, a value that differs between machines); apart from it and the numbers, the text is compared as
written, runs of whitespace as one (and optional at the ends of words).  A comment without "prints:"
(or "prints (±TOL):") at its start or after a ";" is prose, never compared.

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
class Printed:
    """What an example says it prints: at file line `line` (a print call's line, or the opening fence of
    the Python block a "prints" output block quotes, whole=True), its text, and the tolerance of its
    numbers (|got - want| <= rtol |want| + atol)."""

    line: int
    text: str
    rtol: float = 0.0
    atol: float = 0.0
    whole: bool = False


@dataclass(frozen=True)
class Block:
    """One fenced code block: the file it is in, the line of its opening fence (1-based), its code, and
    what it says it prints."""

    path: Path
    line: int
    code: str
    prints: tuple[Printed, ...] = ()

    @property
    def name(self) -> str:
        """The file name its code is compiled under (tracebacks show it): FILE:LINE, FILE from ROOT."""
        where = self.path.relative_to(ROOT) if self.path.is_relative_to(ROOT) else self.path
        return f"{where}:{self.line}"


# `# prints: TEXT` or `# prints (±2%): TEXT` ending a line of code; the same "prints (±TOL)" in an output
# block's fence
_PRINTS = re.compile(r"#(?:[^#\n]*?;)?\s*prints(?:\s*\(±\s*(?P<tol>[0-9.eE+-]+)(?P<pct>%?)\))?:\s?(?P<text>.*?)\s*$")
_PRINTS_FENCE = re.compile(r"\bprints(?:\s*\(±\s*(?P<tol>[0-9.eE+-]+)(?P<pct>%?)\))?")
# a number as printed: 4,810 / -0.25 / 1e-08 / 3. (a comma only between groups of three digits)
_NUMBER = r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?(?:[eE][-+]?\d+)?"
_QUOTED = re.compile(rf"(\.\.\.|{_NUMBER})")


def _printed(line: int, text: str, m: re.Match, whole: bool = False) -> Printed:
    tol = float(m.group("tol")) if m.group("tol") else 0.0
    if m.group("pct"):
        return Printed(line, text, rtol=tol / 100, whole=whole)
    return Printed(line, text, atol=tol, whole=whole)


def python_blocks(path: Path) -> list[Block]:
    """The Python blocks of the markdown file `path` that are meant to run, in order."""
    text = path.read_text(encoding="utf-8")
    blocks: list[Block] = []
    last_end = None  # where the last Python block ended: an output block right after it quotes it
    for m in _FENCE.finditer(text):
        info = m.group("info").strip()
        lang = info.split()[0].strip("{}.") if info else ""
        indent = len(m.group("indent"))
        body = "\n".join(line[indent:] for line in m.group("body").splitlines())
        quote = _PRINTS_FENCE.search(info)
        if lang != "python" and quote and last_end is not None and not text[last_end:m.start()].strip():
            prev = blocks[-1]
            blocks[-1] = Block(prev.path, prev.line, prev.code,
                               (*prev.prints, _printed(prev.line, body, quote, whole=True)))
        last_end = None
        if lang != "python" or "not run" in info:
            continue
        line = text.count("\n", 0, m.start()) + 1
        prints = tuple(_printed(line + k, q.group("text"), q) for k, code in enumerate(body.splitlines(), 1)
                       if (q := _PRINTS.search(code)))
        blocks.append(Block(path, line, body, prints))
        last_end = m.end()
    return blocks


def _words(text: str) -> str:
    """A regular expression for quoted text: its words as written, any run of whitespace as one."""
    return r"\s*" + r"\s+".join(map(re.escape, text.split())) + r"\s*"


def mismatch(want: Printed, got: str) -> str | None:
    """Why `got` (what was printed) is not what `want` quotes, or None when it is (module docstring)."""
    parts = _QUOTED.split(want.text.strip())  # text, then a number or "...", text, ...
    pattern = "".join(_words(p) if k % 2 == 0 else ".*?" if p == "..." else f"({_NUMBER})"
                      for k, p in enumerate(parts))
    said = f"printed {got.strip()!r}, the page says {want.text.strip()!r}"
    m = re.fullmatch(pattern, got.strip(), re.S)
    if m is None:
        return f"line {want.line}: {said}"
    quoted = [p for k, p in enumerate(parts) if k % 2 and p != "..."]
    for q, g in zip(quoted, m.groups(), strict=True):
        q_, g_ = float(q.replace(",", "")), float(g.replace(",", ""))
        if abs(g_ - q_) > want.rtol * abs(q_) + want.atol:
            tol = f"{want.rtol * 100:g}%" if want.rtol else f"{want.atol:g}"
            return f"line {want.line}: {said}: {g} is not {q} within ±{tol}"
    return None


def printed_mismatches(path: Path, printed: list[tuple[str, int, str]]) -> list[str]:
    """Every place where the page `path` says what it prints and its run (run_page's `printed`) printed
    something else, named by file and line."""
    out = []
    for block in python_blocks(Path(path).resolve()):
        for want in block.prints:
            got = "".join(t for name, line, t in printed
                          if name == block.name and (want.whole or line == want.line))
            why = mismatch(want, got)
            if why:
                out.append(f"{block.name.rpartition(':')[0]} {why}")
    return out


def pages() -> list[Path]:
    """README.md and every markdown page under docs/, in a stable order."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def run_page(path: Path, workdir: Path) -> tuple[dict, list[tuple[str, int, str]]]:
    """Run the page's Python blocks in order in one namespace, with `workdir` as the current directory.

    A failing block raises with its file and line in the traceback (the code is compiled under the name
    "FILE:LINE").  Returns the namespace the blocks left, and what the blocks' print calls printed (each
    still prints): (block's name, line of the call in the file, its text) in order, for printed_mismatches.
    """
    import builtins
    import io
    import sys

    import matplotlib

    matplotlib.use("Agg")  # no display in CI; figures are saved, never shown
    import matplotlib.pyplot as plt

    blocks = python_blocks(Path(path).resolve())
    printed: list[tuple[str, int, str]] = []

    def recorded_print(*args, file=None, **kw):
        """print, also recording what a call from the page's code printed to stdout, and from where."""
        if file is None or file is sys.stdout:
            text = io.StringIO()
            builtins.print(*args, file=text, **kw)
            caller = sys._getframe(1)
            printed.append((caller.f_code.co_filename, caller.f_lineno, text.getvalue()))
        builtins.print(*args, file=file, **kw)

    namespace: dict = {"__name__": "__main__", "print": recorded_print}
    old = os.getcwd()
    os.chdir(workdir)
    try:
        for block in blocks:
            # the fence's line is `line`, so code line k sits at file line `line + k`: pad to match
            exec(compile("\n" * block.line + block.code, block.name, "exec"), namespace)  # noqa: S102
    finally:
        os.chdir(old)
        plt.close("all")
    return namespace, printed


_IMAGE = re.compile(r"!\[[^\]]*\]\((?P<src>[^)\s]+)")


def images(path: Path) -> list[str]:
    """The image paths the page links to, as written (relative to the page)."""
    return [m.group("src") for m in _IMAGE.finditer(path.read_text(encoding="utf-8"))]
