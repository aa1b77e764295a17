"""Offline headless-Chromium checks of a built HTML book (a helper for browser tests, not a test).

The pages are served from ``html_root`` by a local ``http.server`` bound to 127.0.0.1 on an
ephemeral port (stopped afterwards), so MathJax's fonts and lazily loaded components load the
way they do on a web host, and opened in Debian's ``chromium`` driven by ``chromedriver``
through selenium. The driver's path is always passed explicitly, so Selenium Manager never
runs and nothing is downloaded; host-name resolution is switched off in the browser, so a page
that still points at a CDN fails here as it would for an offline reader.

Typical use::

    from browser import BookBrowser, check_pages, screenshot

    reports = check_pages(Path("book/_build/html"), ["intro.html", "results.html"])
    assert not reports["results.html"].problems()

    with BookBrowser(html_root) as b:          # one browser and server for many calls
        r = b.check("intro.html")
        b.screenshot("intro.html", tmp_path / "intro.png", width=1280)

Install: ``.ci/install-browser`` (apt: chromium, chromium-driver) and pip ``selenium>=4.11``.
"""

from __future__ import annotations

import functools
import html.parser
import http.server
import os
import posixpath
import re
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

__all__ = [
    "BENIGN_CONSOLE_ERRORS",
    "BookBrowser",
    "BrowserUnavailable",
    "ImageReport",
    "LinkReport",
    "PageReport",
    "browser_paths",
    "check_pages",
    "chromium_available",
    "screenshot",
]

# Where Debian puts things; the real binary, not the /usr/bin/chromium shell wrapper, so the
# flags from /etc/chromium.d (extension loading and the like) stay out of the way.
_CHROMIUM_CANDIDATES = (
    "/usr/lib/chromium/chromium",
    "chromium",
    "chromium-browser",
    "google-chrome",
    "google-chrome-stable",
)
_DRIVER_CANDIDATES = ("chromedriver", "/usr/lib/chromium/chromedriver")

# Console errors that sphinx-book-theme 1.3 / pydata-sphinx-theme 0.17 / sphinx-thebe 0.3 log on
# every page of a jupyter-book 1.0.4 build; they break nothing a reader sees.
BENIGN_CONSOLE_ERRORS = (
    r"Identifier 'THEBE_JS_URL' has already been declared",
    r"Got invalid theme mode",
    r"/favicon\.ico",
)


class BrowserUnavailable(RuntimeError):
    """Chromium, chromedriver or selenium is missing (see .ci/install-browser)."""


def _find_executable(env_var: str, candidates: tuple[str, ...]) -> str | None:
    override = os.environ.get(env_var)
    if override:
        return override if os.path.isfile(override) and os.access(override, os.X_OK) else None
    for name in candidates:
        path = name if os.path.isabs(name) else shutil.which(name)
        if path and os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def browser_paths() -> tuple[str, str]:
    """(chromium binary, chromedriver) paths; $CHROMIUM_BINARY and $CHROMEDRIVER override.

    Raises BrowserUnavailable naming what is missing.
    """
    chromium = _find_executable("CHROMIUM_BINARY", _CHROMIUM_CANDIDATES)
    driver = _find_executable("CHROMEDRIVER", _DRIVER_CANDIDATES)
    missing = []
    if chromium is None:
        missing.append("chromium")
    if driver is None:
        missing.append("chromedriver (Debian package chromium-driver)")
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium pip package")
    if missing:
        raise BrowserUnavailable(
            "browser check needs " + ", ".join(missing) + "; run .ci/install-browser as root"
        )
    return chromium, driver


def chromium_available() -> tuple[bool, str]:
    """(True, "") when a browser check can run, else (False, why) for pytest.skip."""
    try:
        browser_paths()
    except BrowserUnavailable as exc:
        return False, str(exc)
    return True, ""


# --------------------------------------------------------------------------- reports


@dataclass
class ImageReport:
    src: str  # the src attribute as written
    url: str  # resolved absolute URL
    alt: str
    loaded: bool  # complete && naturalWidth > 0
    natural_width: int
    natural_height: int


@dataclass
class LinkReport:
    href: str  # the href attribute as written
    text: str
    internal: bool  # points into html_root (relative, same server, or file:// inside it)
    target: str | None  # internal target as a path relative to html_root ("math.html")
    fragment: str  # "#..." part without "#", "" if none
    exists: bool | None  # target file exists (None for external links)
    anchor_ok: bool | None  # fragment's id found in target (None: no fragment / not checked)

    @property
    def broken(self) -> bool:
        return self.internal and (not self.exists or self.anchor_ok is False)


@dataclass
class PageReport:
    page: str  # path relative to html_root, as asked
    url: str
    final_url: str  # where the browser ended up (differs after a redirect page)
    http_status: int | None  # status the local server answered for the page itself
    title: str = ""
    mathjax_src: str | None = None  # the MathJax script the page loads, if any
    mathjax_ready: bool | None = None  # MathJax.startup.promise resolved (None: no MathJax)
    math_elements: int = 0  # typeset <mjx-container> elements
    math_sources: int = 0  # Sphinx math containers (span.math / div.math)
    untypeset_math: int = 0  # Sphinx math containers with no <mjx-container> inside
    math_errors: list[str] = field(default_factory=list)  # TeX errors and undefined macros
    raw_tex: list[str] = field(default_factory=list)  # visible text still holding \( \[ $$
    images: list[ImageReport] = field(default_factory=list)
    links: list[LinkReport] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)  # SEVERE browser log entries
    failed_requests: list[tuple[str, int]] = field(default_factory=list)  # (path, status>=400)

    @property
    def broken_images(self) -> list[ImageReport]:
        return [i for i in self.images if not i.loaded]

    @property
    def broken_links(self) -> list[LinkReport]:
        return [link for link in self.links if link.broken]

    @property
    def internal_targets(self) -> set[str]:
        """Pages and files this page links to inside the book (for reachability checks)."""
        return {link.target for link in self.links if link.internal and link.target}

    def problems(self, *, console: bool = False) -> list[str]:
        """Human-readable list of everything wrong; empty when the page is fine.

        console=True also counts browser console errors, less those in BENIGN_CONSOLE_ERRORS
        (the book theme logs a few on every page).
        """
        out = []
        if self.http_status != 200:
            out.append(f"page answered HTTP {self.http_status}")
        if self.mathjax_src is not None and not self.mathjax_ready:
            out.append(f"MathJax did not finish loading/typesetting ({self.mathjax_src})")
        if self.untypeset_math:
            out.append(f"{self.untypeset_math} math element(s) not typeset")
        out += [f"TeX error: {e}" for e in self.math_errors]
        out += [f"raw TeX left in page: {t!r}" for t in self.raw_tex]
        out += [f"image not loaded: {i.src}" for i in self.broken_images]
        for link in self.broken_links:
            why = "missing target" if not link.exists else f"no id {link.fragment!r}"
            out.append(f"broken link {link.href!r} ({why})")
        out += [f"request failed: {p} ({s})" for p, s in self.failed_requests]
        if console:
            out += [f"console error: {e}" for e in self.console_errors
                    if not any(re.search(pat, e) for pat in BENIGN_CONSOLE_ERRORS)]
        return out


# --------------------------------------------------------------------------- local server


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # silence per-request stderr lines
        pass

    def log_request(self, code="-", size="-"):
        try:
            status = int(getattr(code, "value", code))
        except (TypeError, ValueError):
            status = 0
        self.server.request_log.append((self.path, status))  # type: ignore[attr-defined]


class _BookServer:
    """http.server on 127.0.0.1, ephemeral port, serving html_root from a daemon thread."""

    def __init__(self, root: Path):
        handler = functools.partial(_QuietHandler, directory=str(root))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.httpd.request_log = []  # type: ignore[attr-defined]
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def log(self) -> list[tuple[str, int]]:
        return self.httpd.request_log  # type: ignore[attr-defined]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


# --------------------------------------------------------------------------- static ids


class _IdCollector(html.parser.HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if value is not None and (name == "id" or (name == "name" and tag == "a")):
                self.ids.add(value)


@functools.lru_cache(maxsize=512)
def _ids_in(path: str, mtime: float) -> frozenset[str]:
    parser = _IdCollector()
    parser.feed(Path(path).read_text(encoding="utf-8", errors="replace"))
    return frozenset(parser.ids)


# --------------------------------------------------------------------------- in-page scripts

# Waits for MathJax (when the page loads it) to finish its first typeset, for every <img> to
# settle (lazy images are switched to eager first) and for web fonts; answers what it saw.
_MATHJAX_GRACE_MS = 3000

_WAIT_JS = r"""
const done = arguments[arguments.length - 1];
const timeoutMs = arguments[0];
const graceMs = arguments[1];
const t0 = Date.now();
const sleep = ms => new Promise(r => setTimeout(r, ms));
(async () => {
  const mjScript = Array.from(document.scripts).find(
      s => /mathjax|tex-(mml-)?(chtml|svg)/i.test(s.getAttribute('src') || ''));
  let mathjaxReady = null;
  if (mjScript) {
    mathjaxReady = false;
    // The load event (which driver.get waited for) comes after async/defer scripts ran, so a
    // MathJax that has not started a short grace after it never will (blocked or missing).
    let completeSince = null;
    while (Date.now() - t0 < timeoutMs) {
      const mj = window.MathJax;
      if (mj && mj.startup && mj.startup.promise) {
        // startup.promise resolves after the first typeset of the page.
        const left = Math.max(0, timeoutMs - (Date.now() - t0));
        try {
          mathjaxReady = await Promise.race([mj.startup.promise.then(() => true),
                                             sleep(left).then(() => false)]);
        } catch (e) { mathjaxReady = false; }
        break;
      }
      if (document.readyState === 'complete') {
        if (completeSince === null) completeSince = Date.now();
        else if (Date.now() - completeSince > graceMs) break;
      }
      await sleep(50);
    }
  }
  for (const img of document.images) { if (img.loading === 'lazy') img.loading = 'eager'; }
  while (Date.now() - t0 < timeoutMs && !Array.from(document.images).every(i => i.complete)) {
    await sleep(50);
  }
  const left = Math.max(0, timeoutMs - (Date.now() - t0));
  try { await Promise.race([document.fonts.ready, sleep(left)]); } catch (e) {}
  done({mathjaxSrc: mjScript ? mjScript.src : null, mathjaxReady: mathjaxReady,
        refresh: !!document.querySelector('meta[http-equiv="refresh" i]')});
})();
"""

_INSPECT_JS = r"""
const rawTex = /\\\(|\\\)|\\\[|\\\]|\$\$/;
const skip = new Set(['SCRIPT', 'STYLE', 'NOSCRIPT', 'TEXTAREA', 'CODE', 'PRE', 'KBD', 'SAMP',
                      'MJX-ASSISTIVE-MML', 'TITLE']);
const raw = [];
const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT, {
  acceptNode(node) {
    for (let el = node.parentElement; el; el = el.parentElement) {
      if (skip.has(el.tagName) || el.tagName.startsWith('MJX-')) return NodeFilter.FILTER_REJECT;
    }
    return rawTex.test(node.nodeValue) ? NodeFilter.FILTER_ACCEPT : NodeFilter.FILTER_REJECT;
  }
});
while (walker.nextNode() && raw.length < 50) {
  raw.push(walker.currentNode.nodeValue.trim().slice(0, 200));
}
// TeX errors (<merror>) and undefined macros, which MathJax's noundefined package shows as red
// text instead of an error; read from MathJax's internal trees, else from the DOM.
function mathErrors() {
  const out = [];
  try {
    for (const item of window.MathJax.startup.document.math) {
      item.root.walkTree(node => {
        if (node.isKind('merror')) {
          out.push(`${node.attributes.get('data-mjx-error') || 'TeX error'} in ${item.math}`);
        } else if (node.isKind('mtext') && node.attributes.get('mathcolor') === 'red') {
          const text = node.childNodes.map(c => (c.getText ? c.getText() : '')).join('');
          if (text.startsWith('\\')) out.push(`Undefined control sequence ${text} in ${item.math}`);
        }
      });
    }
    return out.map(e => e.slice(0, 300));
  } catch (e) {
    return Array.from(document.querySelectorAll('mjx-merror')).map(
        e => (e.getAttribute('data-mjx-error') || 'TeX error').slice(0, 300));
  }
}
const mathSources = Array.from(document.querySelectorAll('span.math, div.math'));
return {
  title: document.title,
  mathElements: document.querySelectorAll('mjx-container').length,
  mathSources: mathSources.length,
  untypeset: mathSources.filter(e => !e.querySelector('mjx-container')).length,
  mathErrors: mathErrors(),
  rawTex: raw,
  images: Array.from(document.images).map(i => ({
      src: i.getAttribute('src') || '', url: i.currentSrc || i.src, alt: i.alt || '',
      loaded: i.complete && i.naturalWidth > 0,
      w: i.naturalWidth, h: i.naturalHeight})),
  links: Array.from(document.querySelectorAll('a[href]')).map(a => ({
      href: a.getAttribute('href'), url: a.href,
      text: (a.textContent || '').trim().slice(0, 120)})),
  ids: Array.from(document.querySelectorAll('[id]')).map(e => e.id),
};
"""


# --------------------------------------------------------------------------- the browser


class BookBrowser:
    """One headless Chromium and one local server over ``html_root``; use as a context manager.

    width/height: the viewport (CSS pixels) pages are checked at; timeout: seconds allowed
    per page for loading and for MathJax.
    """

    def __init__(self, html_root: Path | str, *, width: int = 1280, height: int = 900,
                 timeout: float = 30.0):
        self.root = Path(html_root).resolve()
        if not self.root.is_dir():
            raise FileNotFoundError(f"no built HTML at {self.root}")
        self.width, self.height, self.timeout = width, height, timeout
        self._server: _BookServer | None = None
        self._driver = None
        self._profile: str | None = None

    # -- lifecycle
    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> None:
        chromium, driver_path = browser_paths()
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        self._server = _BookServer(self.root)
        self._profile = tempfile.mkdtemp(prefix="book-chromium-")
        opts = webdriver.ChromeOptions()
        opts.binary_location = chromium
        for arg in (
            "--headless=new",
            "--no-sandbox",  # CI runs as root
            "--disable-dev-shm-usage",
            "--disable-gpu",
            "--hide-scrollbars",
            "--force-device-scale-factor=1",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-default-apps",
            "--mute-audio",
            # Offline for real: every host name fails to resolve; the server is an IP literal.
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            f"--user-data-dir={self._profile}",
            f"--window-size={self.width},{self.height}",
        ):
            opts.add_argument(arg)
        opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        # Explicit driver path: Selenium Manager (which would download a driver) never runs.
        service = Service(executable_path=driver_path, log_output=subprocess.DEVNULL)
        try:
            self._driver = webdriver.Chrome(service=service, options=opts)
        except Exception:
            self.close()
            raise
        self._driver.set_page_load_timeout(self.timeout)
        self._driver.set_script_timeout(self.timeout + 5)
        self._set_viewport(self.width, self.height)

    def close(self) -> None:
        if self._driver is not None:
            try:
                self._driver.quit()
            finally:
                self._driver = None
        if self._server is not None:
            self._server.close()
            self._server = None
        if self._profile is not None:
            shutil.rmtree(self._profile, ignore_errors=True)
            self._profile = None

    # -- helpers
    @property
    def base_url(self) -> str:
        assert self._server is not None, "BookBrowser not started"
        return self._server.base

    def url(self, page: str) -> str:
        return urljoin(self.base_url, page.lstrip("/"))

    def _set_viewport(self, width: int, height: int) -> None:
        self._driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
            "width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})

    def _open(self, page: str) -> tuple[dict, int | None, list[tuple[str, int]]]:
        """Load a page and wait until it settled; returns (wait info, page status, requests)."""
        from selenium.common.exceptions import WebDriverException

        assert self._driver is not None and self._server is not None, "BookBrowser not started"
        self._driver.get_log("browser")  # drop entries left by the previous page
        start = len(self._server.log)
        self._driver.get(self.url(page))
        for attempt in range(4):
            before = self._driver.current_url
            try:
                info = self._driver.execute_async_script(
                    _WAIT_JS, int(self.timeout * 1000), _MATHJAX_GRACE_MS)
            except WebDriverException:
                # The page navigated away mid-script (a redirect): wait on the page it went to.
                time.sleep(0.5)
                if attempt == 3 or self._driver.current_url == before:
                    raise
                continue
            if not info["refresh"]:
                break
            # A <meta http-equiv="refresh"> page (jupyter-book's index.html): follow it.
            deadline = time.monotonic() + 5
            while self._driver.current_url == before and time.monotonic() < deadline:
                time.sleep(0.1)
            if self._driver.current_url == before:
                break
        requests = self._server.log[start:]
        wanted = urlsplit(self.url(page)).path
        status = next((s for p, s in requests if urlsplit(p).path == wanted), None)
        return info, status, requests

    def _resolve(self, url: str) -> tuple[bool, str | None, str]:
        """(internal, target relative to root, fragment) for an absolute link URL."""
        parts = urlsplit(url)
        fragment = unquote(parts.fragment)
        if parts.scheme in ("http", "https"):
            if f"{parts.scheme}://{parts.netloc}/" != self.base_url:
                return False, None, fragment
            rel = posixpath.normpath(unquote(parts.path)).lstrip("/")
        elif parts.scheme == "file":
            path = Path(unquote(parts.path)).resolve()
            try:
                rel = path.relative_to(self.root).as_posix()
            except ValueError:
                return False, None, fragment
        else:  # mailto:, javascript:, data:, ...
            return False, None, fragment
        return True, "" if rel == "." else rel, fragment

    def _target_file(self, rel: str) -> Path | None:
        path = (self.root / rel) if rel else self.root
        if path.is_dir():
            path = path / "index.html"
        return path if path.is_file() else None

    # -- public
    def check(self, page: str) -> PageReport:
        """Open ``page`` (path relative to html_root) and report math, images and links."""
        info, status, requests = self._open(page)
        data = self._driver.execute_script(_INSPECT_JS)
        report = PageReport(
            page=page,
            url=self.url(page),
            http_status=status,
            title=data["title"],
            mathjax_src=info["mathjaxSrc"],
            mathjax_ready=info["mathjaxReady"],
            math_elements=data["mathElements"],
            math_sources=data["mathSources"],
            untypeset_math=data["untypeset"],
            math_errors=list(data["mathErrors"]),
            raw_tex=list(data["rawTex"]),
            images=[ImageReport(i["src"], i["url"], i["alt"], bool(i["loaded"]), int(i["w"]),
                                int(i["h"])) for i in data["images"]],
            final_url=self._driver.current_url,
            # favicon.ico: the browser asks for it by itself whether or not a page names one.
            failed_requests=[(p, s) for p, s in requests
                             if s >= 400 and urlsplit(p).path != "/favicon.ico"],
        )
        page_rel = self._resolve(self.url(page))[1]
        live_ids = set(data["ids"])
        for a in data["links"]:
            internal, target, fragment = self._resolve(a["url"])
            exists = anchor_ok = None
            if internal:
                f = self._target_file(target)
                exists = f is not None
                if fragment and f is not None:
                    if target == page_rel:
                        anchor_ok = fragment in live_ids
                    elif f.suffix in (".html", ".htm"):
                        anchor_ok = fragment in _ids_in(str(f), f.stat().st_mtime)
            report.links.append(LinkReport(
                href=a["href"], text=a["text"], internal=internal, target=target,
                fragment=fragment, exists=exists, anchor_ok=anchor_ok))
        report.console_errors = [e.get("message", "") for e in self._driver.get_log("browser")
                                 if e.get("level") == "SEVERE"]
        return report

    def screenshot(self, page: str, out: Path | str, *, width: int = 1280,
                   height: int = 900, full_page: bool = True, max_height: int = 20000) -> Path:
        """Save a PNG of ``page`` rendered at ``width`` CSS pixels (the whole page by default)."""
        import base64

        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        self._set_viewport(width, height)
        try:
            self._open(page)
            if full_page:
                full = self._driver.execute_script(
                    "return Math.max(document.documentElement.scrollHeight,"
                    " document.body ? document.body.scrollHeight : 0)")
                self._set_viewport(width, max(height, min(int(full), max_height)))
                time.sleep(0.2)  # let layout settle at the new height
            shot = self._driver.execute_cdp_cmd(
                "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": False})
            out.write_bytes(base64.b64decode(shot["data"]))
        finally:
            self._set_viewport(self.width, self.height)
        return out


def check_pages(html_root: Path | str, pages: list[str], **kwargs) -> dict[str, PageReport]:
    """Check each page (paths relative to html_root) in one browser session; see BookBrowser."""
    with BookBrowser(html_root, **kwargs) as b:
        return {page: b.check(page) for page in pages}


def screenshot(html_root: Path | str, page: str, out: Path | str, *, width: int = 1280,
               full_page: bool = True) -> Path:
    """One-off PNG screenshot of ``page`` at ``width`` CSS pixels."""
    with BookBrowser(html_root, width=width) as b:
        return b.screenshot(page, out, width=width, full_page=full_page)
