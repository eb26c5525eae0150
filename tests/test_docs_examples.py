"""Every Python example in README.md and docs/ runs and prints what the page says it prints (`# prints:`
comments and "prints" output blocks: tests/markdown_examples.py), the guides each have one and their
figures exist, and the documentation site builds with `mkdocs build --strict` (the CI runs both)."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time

import lscape
import pytest
import torch
from lscape import checkpoints, data, directions, executor, models, plot, probes
from markdown_examples import ROOT, Printed, images, pages, printed_mismatches, python_blocks, run_page

PUBLIC_MODULES = (checkpoints, data, directions, executor, models, plot, probes)
RUNNABLE = [p for p in pages() if python_blocks(p)]
GUIDES = sorted((ROOT / "docs" / "guides").glob("*.md"))


def test_the_extractor_finds_and_skips_the_right_blocks(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("text\n\n```python\nx = 1\n```\n\n```bash\nexit 1\n```\n\n"
                    '```python title="sketch, not run"\nraise SystemExit\n```\n\n'
                    "- a list item:\n\n    ```python\n    y = x + 1\n    ```\n", encoding="utf-8")
    blocks = python_blocks(page)
    assert [(b.line, b.code) for b in blocks] == [(3, "x = 1"), (17, "y = x + 1")]
    assert all(b.prints == () for b in blocks)


QUOTING = ("# quoting\n\n```python\nimport math\nprint(f'pi {math.pi:.4f}')  # prints: pi 3.1416\n"
           "for k in (1, 2):\n    print(k * 1000.5)  # prints (±0.1%): 1000 ...\n"
           "print('e', math.e)  # e is about 2.7\n```\n\n"
           '```text title="prints (±0.01)"\npi 3.14\n1000.5\n2001.0\ne 2.718\n```\n')


def test_quoted_prints_are_found_with_their_tolerance(tmp_path):
    page = tmp_path / "quoting.md"
    page.write_text(QUOTING, encoding="utf-8")
    (block,) = python_blocks(page)
    assert block.prints == (Printed(5, "pi 3.1416"), Printed(7, "1000 ...", rtol=1e-3),
                            Printed(3, "pi 3.14\n1000.5\n2001.0\ne 2.718", atol=0.01, whole=True))
    _, printed = run_page(page, tmp_path)
    assert printed_mismatches(page, printed) == []


@pytest.mark.parametrize(("quoted", "why"), [
    ("pi 3.1416", "pi 3.1417"),  # one digit off, no tolerance stated
    ("pi 3.1416", "tau 3.1416"),  # the words differ
    ("1000 ...", "1100 ..."),  # a number outside its ±0.1%
    ("pi 3.14\n", "pi 3.12\n"),  # the output block's number outside its ±0.01
])
def test_a_wrong_quote_names_its_file_and_line(tmp_path, quoted, why):
    page = tmp_path / "quoting.md"
    page.write_text(QUOTING.replace(quoted, why, 1), encoding="utf-8")
    _, printed = run_page(page, tmp_path)
    (wrong,) = printed_mismatches(page, printed)
    line = 3 if "\n" in quoted else 5 if "pi" in quoted else 7
    assert f"quoting.md line {line}: printed " in wrong, wrong


def test_a_failing_example_names_its_file_and_line(tmp_path):
    page = tmp_path / "probe.md"
    page.write_text("# probe\n\n```python\na = 1\nb = a / 0\n```\n", encoding="utf-8")
    with pytest.raises(ZeroDivisionError) as info:
        run_page(page, tmp_path)
    frame = info.traceback[-1]
    assert str(frame.path).endswith("probe.md:3") and frame.lineno + 1 == 5  # pytest's lineno is 0-based


def test_every_guide_has_an_example_and_its_figure():
    assert len(GUIDES) >= 7, GUIDES
    for guide in GUIDES:
        assert python_blocks(guide), f"{guide.name}: no runnable Python example"
        srcs = [s for s in images(guide) if not s.startswith("http")]
        assert srcs, f"{guide.name}: no figure"
        for src in srcs:
            assert (guide.parent / src).is_file(), f"{guide.name}: figure {src} missing (python docs/make_figures.py)"


@pytest.mark.parametrize("page", RUNNABLE, ids=[str(p.relative_to(ROOT)) for p in RUNNABLE])
def test_examples_run(page, tmp_path):
    pytest.importorskip("matplotlib", reason="the examples draw figures: pip install 'lscape[plot]'")
    threads = torch.get_num_threads()
    t0 = time.perf_counter()
    try:
        _, printed = run_page(page, tmp_path)
    finally:
        torch.set_num_threads(threads)  # an example may set its own
    print(f"{page.relative_to(ROOT)}: {time.perf_counter() - t0:.1f} s")
    wrong = printed_mismatches(page, printed)
    assert not wrong, "what the page says its examples print is not what they printed:\n" + "\n".join(wrong)


def test_docs_build_strict(tmp_path):
    pytest.importorskip("mkdocs", reason="the docs site needs mkdocs: pip install '.[docs]'")
    pytest.importorskip("mkdocstrings_handlers.python", reason="the API pages need mkdocstrings-python")
    run = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-f", str(ROOT / "mkdocs.yml"),
                          "-d", str(tmp_path / "site")], capture_output=True, text=True, cwd=ROOT, timeout=300,
                         env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert run.returncode == 0, run.stdout + run.stderr
    # every public name has an entry of its own in the site's search (its anchor on an API page)
    index = json.loads((tmp_path / "site" / "search" / "search_index.json").read_text(encoding="utf-8"))
    anchors = {doc["location"].rpartition("#")[2] for doc in index["docs"] if doc["location"].startswith("api/")}
    names = {"lscape." + n for n in lscape.__all__ if n != "__version__"}
    for module in PUBLIC_MODULES:
        names |= {f"{module.__name__}.{n}" for n in module.__all__}
    missing = sorted(n for n in names if not any(a == n or a.endswith("." + n.rpartition(".")[2]) for a in anchors))
    assert not missing, f"public names without an entry in the API reference: {missing}"
    shutil.rmtree(tmp_path / "site")


def test_every_reference_page_links_its_guide():
    for page in sorted((ROOT / "docs" / "api").glob("*.md")):
        if page.name != "index.md":
            assert re.search(r"^Guides?: \[", page.read_text(encoding="utf-8"), re.M), f"{page.name}: no guide link"


def _public_objects():
    """(name, object) for every public name the API reference shows, and the public members of its classes."""
    import inspect

    for module in (lscape, *PUBLIC_MODULES):
        for n in module.__all__:
            obj = getattr(module, n)
            if inspect.ismodule(obj) or not callable(obj):
                continue
            yield f"{module.__name__}.{n}", obj
            if inspect.isclass(obj):
                for k, v in vars(obj).items():
                    if k.startswith("_"):
                        continue
                    if isinstance(v, property):
                        yield f"{module.__name__}.{n}.{k}", v
                    elif isinstance(v, (classmethod, staticmethod)) or inspect.isfunction(v):
                        yield f"{module.__name__}.{n}.{k}", getattr(obj, k)


def test_every_public_name_has_a_docstring():
    import inspect

    objects = list(_public_objects())
    assert len(objects) > 60, len(objects)
    missing = [name for name, obj in objects if not (obj.__doc__ if isinstance(obj, property) else inspect.getdoc(obj))]
    assert not missing, f"public names without a docstring: {missing}"
