"""No function of lscape is over 80 lines of code (tests/function_lengths.py), and the count is of code only."""
from __future__ import annotations

import textwrap

import function_lengths as fl


def test_no_function_is_over_the_limit():
    found = fl.too_long()
    assert not found, "\n".join(found)


def test_code_lines_leave_out_docstrings_comments_and_blank_lines(tmp_path):
    path = tmp_path / "m.py"
    path.write_text(textwrap.dedent('''\
        class A:
            def f(self, x):
                """A docstring
                of three lines."""
                # a comment

                y = x + 1  # counted once
                s = """a string that is
                not a docstring"""

                def g():
                    """g's docstring."""
                    return (y,
                            s)
                return g
        '''))
    # f: def, y, the two lines of s, def g, g's two return lines, return g; g: def and its return's two lines
    assert fl.lengths(path) == {"A.f": 8, "A.f.g": 3}
    assert fl.too_long(tmp_path, limit=7) == [f"{tmp_path.name}/m.py:A.f: 8 lines of code (limit 7)"]
    assert fl.too_long(tmp_path, limit=8) == []
