"""Draw the guides' figures by running the guides' own examples: python docs/make_figures.py [PAGE ...]

Each page's Python blocks run in a scratch folder (tests/markdown_examples.run_page, as the tests run
them), and every PNG they write that the page shows as figures/NAME is copied to docs/figures/.  So a
figure is always what its example makes.  Needs matplotlib (and plotly for pages that write HTML).
"""
from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "python")]

from markdown_examples import images, run_page  # noqa: E402


def main(argv: list[str]) -> None:
    pages = [Path(a).resolve() for a in argv] or sorted((ROOT / "docs" / "guides").glob("*.md"))
    out = ROOT / "docs" / "figures"
    out.mkdir(exist_ok=True)
    for page in pages:
        wanted = [Path(s).name for s in images(page) if Path(s).parent.name == "figures"]
        with tempfile.TemporaryDirectory() as tmp:
            run_page(page, Path(tmp))
            for name in wanted:
                made = Path(tmp) / name
                if not made.is_file():
                    raise SystemExit(f"{page.name}: shows figures/{name}, but its examples did not write {name}")
                shutil.copyfile(made, out / name)
                print(f"{page.relative_to(ROOT)} -> docs/figures/{name} ({made.stat().st_size // 1024} kB)")


if __name__ == "__main__":
    main(sys.argv[1:])
