"""The book, built strictly from the smoke profile and opened in headless Chromium.

One module-scoped build: the smoke grid runs into a temporary copy of book/ (its run pages go
there too), then `jupyter-book build -W --keep-going` must pass. The browser then checks that
math is typeset, every figure loads, no internal link is broken, and every grid cell's page is
reachable from the chapters and shows its parameters. Skipped without Chromium, except in CI
(FMSTUDY_REQUIRE_BROWSER=1), where a missing browser is an error."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from browser import BookBrowser, chromium_available

from fmstudy.grid import load_grid, run_grid

ROOT = Path(__file__).resolve().parents[1]
OK, WHY = chromium_available()
if os.environ.get("FMSTUDY_REQUIRE_BROWSER") and not OK:
    raise RuntimeError(f"FMSTUDY_REQUIRE_BROWSER is set but there is no headless browser: {WHY}")
JUPYTER_BOOK = Path(sys.executable).with_name("jupyter-book")
pytestmark = [
    pytest.mark.skipif(not OK, reason=f"no headless browser: {WHY}"),
    pytest.mark.skipif(not JUPYTER_BOOK.exists(), reason="jupyter-book is not installed (the book extra)"),
]
CHAPTERS = sorted(p.stem for p in (ROOT / "book" / "chapters").glob("*.md"))


@pytest.fixture(scope="module")
def smoke_book(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("book")
    book = tmp / "book"
    shutil.copytree(ROOT / "book", book, ignore=shutil.ignore_patterns("_build", "smoke", "quick", "full"), symlinks=False)
    (book / "_config.yml").unlink()
    shutil.copy(ROOT / "_config.yml", book / "_config.yml")  # book/_config.yml is a link to the top-level file
    grid = load_grid(ROOT / "papermill_params" / "smoke.yaml", results=tmp / "results" / "smoke", pages=book / "runs" / "smoke")
    summary = run_grid(grid, jobs=2, progress=False)
    assert not summary.failed, summary.text(grid)
    env = {**os.environ, "FMSTUDY_PROFILE": "smoke", "FMSTUDY_RESULTS": str(tmp / "results")}
    proc = subprocess.run([str(JUPYTER_BOOK), "build", str(book), "-W", "--keep-going"], env=env, capture_output=True, text=True, timeout=1800, check=False)
    warnings = [line for line in proc.stdout.splitlines() + proc.stderr.splitlines() if "WARNING" in line and "IPKernelApp" not in line]
    assert proc.returncode == 0, "strict build failed:\n" + "\n".join(warnings[:20] or proc.stdout.splitlines()[-20:])
    return book / "_build" / "html", grid


def test_pages_render_math_images_and_links(smoke_book):
    html, grid = smoke_book
    run_pages = [f"runs/smoke/{c.id}.html" for c in grid.cells]
    pages = [f"chapters/{c}.html" for c in CHAPTERS] + ["runs/index.html", "notebooks/grid_cell.html", run_pages[0]]
    reachable: set[str] = set()
    with BookBrowser(html, width=1100) as browser:
        reps = {}
        for page in pages:
            rep = reps[page] = browser.check(page)
            assert rep.http_status == 200, page
            assert not rep.broken_images, (page, [i.src for i in rep.broken_images])
            assert not rep.broken_links, (page, [lk.href for lk in rep.broken_links])
            assert not rep.raw_tex and not rep.math_errors and not rep.untypeset_math, (page, rep.raw_tex, rep.math_errors)
            if page.startswith("chapters/"):
                reachable |= rep.internal_targets
        for page in ("chapters/02_path_and_oracle.html", "chapters/06_adaptive_allocation.html"):
            rep = reps[page]
            assert rep.mathjax_ready and rep.math_elements >= 5, (page, rep.math_elements)
        for page in ("chapters/02_path_and_oracle.html", "chapters/03_signal_across_t.html", "notebooks/grid_cell.html", run_pages[0]):
            assert reps[page].images, f"{page} shows no figure"
        # every grid cell's page is linked from a chapter, and shows its parameters at the top
        assert set(run_pages) <= reachable, sorted(set(run_pages) - reachable)
        for page in run_pages:
            text = (html / page).read_text()
            assert "Parameters:" in text and "sampler" in text and "sigma" in text, page

