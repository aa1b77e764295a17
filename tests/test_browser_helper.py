"""The headless-Chromium page checker (tests/browser.py) against a throwaway three-page book.

The book is built with jupyter-book (strict, -W) in a temporary folder: a page with inline and
display math, a page with a matplotlib PNG and links, and a page with a broken link, a broken
anchor, a broken image and a TeX error written as raw HTML/MathJax input (so the strict build
passes and only the browser sees them). Skipped when Chromium, chromedriver, selenium or
jupyter-book are missing; .ci/install-browser and the book extra provide them.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from browser import BookBrowser, chromium_available, screenshot

_OK, _WHY = chromium_available()
if os.environ.get("FMSTUDY_REQUIRE_BROWSER") and not _OK:  # CI installs it: a skip there would hide a failure
    raise RuntimeError(f"FMSTUDY_REQUIRE_BROWSER is set but there is no headless browser: {_WHY}")
_JUPYTER_BOOK = Path(sys.executable).with_name("jupyter-book")
if not _JUPYTER_BOOK.exists():
    _JUPYTER_BOOK = Path(shutil.which("jupyter-book") or _JUPYTER_BOOK)

pytestmark = [
    pytest.mark.skipif(not _OK, reason=f"no headless browser: {_WHY}"),
    pytest.mark.skipif(not _JUPYTER_BOOK.exists(),
                       reason="jupyter-book not installed (pip install -e '.[book]')"),
]

MINIBOOK_FILES = {
    # The extension's name has hyphens: "sphinx_mathjax_offline" does not import.
    "_config.yml": """\
        title: Mini book
        author: Test
        only_build_toc_files: true
        execute:
          execute_notebooks: "off"
        sphinx:
          extra_extensions:
            - sphinx-mathjax-offline
        """,
    "_toc.yml": """\
        format: jb-book
        root: intro
        chapters:
          - file: math
          - file: broken
        """,
    "intro.md": """\
        # Intro

        See [the math page](math.md) and {ref}`the section on sums <sums>`.

        ```{figure} plot.png
        :name: fig-plot
        :width: 300px

        A plot.
        ```
        """,
    "math.md": r"""
        # Math

        Inline $a^2 + b^2 = c^2$ and {math}`\alpha`.

        $$
        \int_0^1 x\,dx = \frac{1}{2}
        $$

        (sums)=
        ## Sums

        $$\sum_{k=1}^n k = \frac{n(n+1)}{2}$$
        """,
    "broken.md": r"""
        # Broken

        <a href="missing.html">a broken link</a> and
        <a href="math.html#no-such-anchor">a broken anchor</a>.

        <img src="no-such-image.png" alt="broken image">

        A TeX error: $\frac{1}$, an undefined macro: $\notamacro{x}$, and fine: $x$.
        """,
}


def write_minibook(root: Path) -> Path:
    """Write the three-page book's sources (and its matplotlib PNG) into root."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    root.mkdir(parents=True, exist_ok=True)
    for name, text in MINIBOOK_FILES.items():
        (root / name).write_text(textwrap.dedent(text).lstrip("\n"))
    fig, ax = plt.subplots(figsize=(3, 2), dpi=80)
    ax.plot([0, 1, 2], [0, 1, 4])
    fig.savefig(root / "plot.png")
    plt.close(fig)
    return root


def build_minibook(root: Path) -> Path:
    """Build the book strictly; returns the HTML folder."""
    proc = subprocess.run(
        [str(_JUPYTER_BOOK), "build", str(root), "-W", "--keep-going"],
        check=False, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return root / "_build" / "html"


@pytest.fixture(scope="module")
def html_root(tmp_path_factory) -> Path:
    return build_minibook(write_minibook(tmp_path_factory.mktemp("minibook")))


@pytest.fixture(scope="module")
def book(html_root):
    with BookBrowser(html_root, timeout=20) as b:
        yield b


def test_mathjax_is_the_offline_copy(html_root):
    page = (html_root / "math.html").read_text()
    srcs = re.findall(r'<script[^>]*src="([^"]*(?:mathjax|tex-chtml)[^"]*)"', page)
    assert srcs == ["_static/mathjax/tex-chtml.js"]
    assert (html_root / "_static/mathjax/tex-chtml.js").is_file()


def test_math_is_typeset(book):
    r = book.check("math.html")
    assert r.http_status == 200
    assert r.mathjax_ready is True
    assert r.math_sources == 4 and r.math_elements == 4  # two inline, two display
    assert r.untypeset_math == 0 and r.raw_tex == [] and r.math_errors == []
    assert r.problems() == []


def test_image_loads_and_links_resolve(book):
    r = book.check("intro.html")
    assert [(i.src, i.loaded) for i in r.images] == [("_images/plot.png", True)]
    assert r.images[0].natural_width == 240
    assert {"math.html", "broken.html"} <= r.internal_targets
    sums = [link for link in r.links if link.target == "math.html" and link.fragment == "sums"]
    assert sums and all(link.exists and link.anchor_ok for link in sums)
    assert r.broken_links == [] and r.problems() == []


def test_redirect_page_is_followed(book):
    r = book.check("index.html")  # jupyter-book's <meta http-equiv="refresh"> to the root page
    assert r.http_status == 200 and r.final_url.endswith("/intro.html")
    assert r.title.startswith("Intro") and [i.loaded for i in r.images] == [True]


def test_broken_things_are_reported(book):
    r = book.check("broken.html")
    assert [i.src for i in r.broken_images] == ["no-such-image.png"]
    broken = {link.href: link for link in r.broken_links}
    assert set(broken) == {"missing.html", "math.html#no-such-anchor"}
    assert broken["missing.html"].exists is False
    anchor = broken["math.html#no-such-anchor"]
    assert anchor.exists and anchor.anchor_ok is False
    assert ("/no-such-image.png", 404) in r.failed_requests
    assert r.math_elements == 3
    assert r.math_errors == ["Missing argument for \\frac in \\frac{1}",
                             "Undefined control sequence \\notamacro in \\notamacro{x}"]
    # the image, two links, two TeX errors and the image's 404
    assert len(r.problems()) == 6


def test_math_not_typeset_is_reported(book, html_root):
    # A copy of the math page that loads MathJax from a CDN, which the offline browser can't reach.
    page = (html_root / "math.html").read_text()
    cdn = page.replace("_static/mathjax/tex-chtml.js",
                       "https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-chtml.js")
    (html_root / "math_cdn.html").write_text(cdn)
    r = book.check("math_cdn.html")
    assert r.mathjax_ready is False and r.math_elements == 0
    assert r.untypeset_math == 4
    assert any("a^2" in t for t in r.raw_tex)
    assert any("MathJax" in p for p in r.problems())


def test_screenshot_png(html_root, tmp_path):
    out = screenshot(html_root, "math.html", tmp_path / "math.png", width=800)
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert width == 800 and height >= 600
