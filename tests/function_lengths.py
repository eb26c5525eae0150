"""How long lscape's functions are, in lines of code: not blank, not comment-only, not a docstring.

A function longer than LIMIT does several things, and gets split into named pieces. A nested function counts
toward the function around it (it is part of that one screen) and is also measured itself.
tests/test_function_lengths.py checks the package; `python tests/function_lengths.py` names every function
over the limit and exits 1.
"""
from __future__ import annotations

import ast
import io
import sys
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "python" / "lscape"
LIMIT = 80


def _code_lines(source: str) -> set[int]:
    """The line numbers that hold a token other than a comment, a newline or indentation."""
    skip = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER}
    lines: set[int] = set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type not in skip:
            lines.update(range(tok.start[0], tok.end[0] + 1))
    return lines


def _docstring_lines(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> set[int]:
    """The lines of the docstrings of fn and of every function or class inside it."""
    lines: set[int] = set()
    for node in ast.walk(fn):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and ast.get_docstring(node):
            first = node.body[0]
            lines.update(range(first.lineno, first.end_lineno + 1))
    return lines


def lengths(path: Path) -> dict[str, int]:
    """'Class.method' or 'function' (nested: 'outer.inner') -> its lines of code, for every function in path."""
    source = path.read_text()
    code = _code_lines(source)
    out: dict[str, int] = {}

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            name = getattr(child, "name", "")
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                span = set(range(child.lineno, child.end_lineno + 1))  # the def line on, decorators not
                out[prefix + name] = len((span & code) - _docstring_lines(child))
                visit(child, f"{prefix}{name}.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{name}.")
            else:
                visit(child, prefix)

    visit(ast.parse(source, str(path)), "")
    return out


def too_long(root: Path = ROOT, limit: int = LIMIT) -> list[str]:
    """'path:function: N lines of code' for every function in the tree over `limit`, longest first."""
    found = [(n, f"{path.relative_to(root.parent)}:{fn}: {n} lines of code (limit {limit})")
             for path in sorted(root.rglob("*.py")) for fn, n in lengths(path).items() if n > limit]
    return [line for _, line in sorted(found, key=lambda t: -t[0])]


if __name__ == "__main__":
    found = too_long()
    print("\n".join(found) or f"no function over {LIMIT} lines of code")
    sys.exit(1 if found else 0)
