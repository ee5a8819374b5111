"""The website (``make site``) built from scratch and read in a real browser.

The test builds the site into ``build/site/`` with ``docs/site/build.py --clean`` (the build
``make site`` runs; a clean build, so that every warning shows), serves it on 127.0.0.1 and
opens every page in Debian's Chromium driven by Playwright (``executable_path``: nothing
downloads a browser; see tests/test_browser.py). Every page must load without a console
error, a failed request or a request to anywhere but the local server; every image must
load (natural width > 0); every internal link must lead to a file of the site, and to an
element with that id where it names an anchor; every formula must be typeset; the
notebooks must follow each other in order; search must find "PEDAL".

Needs ``chromium`` and the ``playwright`` Python package (``make browser-deps``) and the
site's packages (sphinx, myst-nb, sphinx-book-theme, sphinx-mathjax-offline: the ``dev``
extra). Run alone with ``python -m pytest tests/test_site.py``.
"""

from __future__ import annotations

import functools
import http.server
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from test_browser import CHROMIUM, CHROMIUM_ARGS, _require_browser

ROOT = Path(__file__).resolve().parents[1]
SITE = ROOT / "build" / "site"
NOTEBOOKS = sorted(p.stem for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
DOCS = ["results", "benchmarks", "data", "scaling", "paper", "reliability"]
BUILD_TIMEOUT = 600

# Run in each page once it has loaded: make every image load now (lazy ones too), wait for
# MathJax, then report the images, the links, the ids and the formulas.
INSPECT = """async () => {
  const imgs = Array.from(document.images);
  for (const img of imgs) img.loading = 'eager';
  await Promise.all(imgs.map(img => img.decode().catch(() => null)));
  if (window.MathJax && MathJax.startup && MathJax.startup.promise)
    await MathJax.startup.promise;
  const ids = Array.from(document.querySelectorAll('[id]'), e => e.id)
    .concat(Array.from(document.querySelectorAll('a[name]'), e => e.name));
  return {
    images: imgs.map(img => ({src: img.currentSrc || img.src, width: img.naturalWidth})),
    links: Array.from(document.querySelectorAll('a[href]'), a => a.href),
    ids: ids,
    math: document.querySelectorAll('.math').length,
    typeset: document.querySelectorAll('mjx-container').length,
    math_errors: Array.from(document.querySelectorAll('mjx-merror'), e => e.textContent),
    next: (document.querySelector('a.right-next') || {}).href || null,
    prev: (document.querySelector('a.left-prev') || {}).href || null,
    text: document.body.innerText,
  };
}"""


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # the test reports what failed, not every request
        pass


@pytest.fixture(scope="module")
def site():
    """Build the site from scratch; yield its local URL while a server serves it."""
    _require_browser()
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(ROOT / "docs" / "site" / "build.py"), "--clean", "--out", str(SITE)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
    )
    seconds = time.monotonic() - t0
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"the site build failed ({proc.returncode}):\n{log[-6000:]}"
    warnings = [line for line in log.splitlines() if "WARNING" in line or "ERROR" in line]
    assert not warnings, "the site build warned:\n" + "\n".join(warnings)
    print(f"site built from scratch in {seconds:.0f} s")
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Quiet, directory=str(SITE))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def _page_name(base: str, url: str) -> str:
    """The site-relative file a local URL points at ('' for anything else)."""
    if not url.startswith(base):
        return ""
    path = unquote(urlsplit(url).path)[len(urlsplit(base).path) :]
    return path + "index.html" if path == "" or path.endswith("/") else path


@pytest.mark.browser
def test_site_in_browser(site):
    from playwright.sync_api import sync_playwright

    pages = sorted(p.relative_to(SITE).as_posix() for p in SITE.rglob("*.html"))
    pages = [p for p in pages if not p.startswith(("_static/", "_sources/"))]
    for name in ["index.html", "search.html"] + [f"notebooks/{n}.html" for n in NOTEBOOKS]:
        assert name in pages, f"{name} was not built (pages: {pages})"
    for doc in DOCS:
        assert f"docs/{doc}.html" in pages, f"docs/{doc}.md is not on the site"
    if (ROOT / "docs" / "teaching.md").exists():
        assert "docs/teaching.html" in pages, "docs/teaching.md is not on the site"

    problems: list[str] = []
    outside: list[str] = []
    seen: dict[str, dict] = {}
    t0 = time.monotonic()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900})

            def route(r):  # the site must work offline: nothing may come from elsewhere
                if r.request.url.startswith(site):
                    r.continue_()
                else:
                    outside.append(r.request.url)
                    r.abort()

            context.route("**/*", route)
            page = context.new_page()
            current = [""]
            page.on(
                "console",
                lambda m: (
                    m.type == "error" and problems.append(f"{current[0]}: console error: {m.text}")
                ),
            )
            page.on("pageerror", lambda e: problems.append(f"{current[0]}: page error: {e}"))
            page.on(
                "requestfailed",
                lambda r: (
                    r.url.startswith(site)
                    and problems.append(f"{current[0]}: request failed: {r.url} ({r.failure})")
                ),
            )
            page.on(
                "response",
                lambda r: (
                    r.status >= 400
                    and problems.append(f"{current[0]}: HTTP {r.status} for {r.url}")
                ),
            )

            for name in pages:
                current[0] = name
                page.goto(site + name, wait_until="load")
                info = page.evaluate(INSPECT)
                seen[name] = info
                for img in info["images"]:
                    if not img["width"]:
                        problems.append(f"{name}: image did not load: {img['src']}")
                if info["math_errors"] or info["typeset"] < info["math"]:
                    problems.append(
                        f"{name}: {info['math']} formulas, {info['typeset']} typeset, "
                        f"errors: {info['math_errors']}"
                    )

            current[0] = "search.html?q=PEDAL"
            page.goto(site + "search.html?q=PEDAL", wait_until="load")
            page.wait_for_selector("ul.search li a", timeout=30_000)
            hits = page.eval_on_selector_all("ul.search li a", "els => els.map(a => a.href)")
        finally:
            browser.close()
    browse_s = time.monotonic() - t0

    # Links: to a file of the site, and to an element with that id on an HTML page.
    for name, info in seen.items():
        for href in info["links"]:
            target = _page_name(site, href)
            if not target:
                continue
            if not (SITE / target).is_file():
                problems.append(f"{name}: link to a missing file: {href}")
                continue
            fragment = unquote(urlsplit(href).fragment)
            if fragment and target in seen and fragment not in seen[target]["ids"]:
                problems.append(f"{name}: link to a missing anchor: {href}")
    assert not outside, "the site fetched from outside:\n" + "\n".join(sorted(set(outside)))
    assert not problems, f"{len(problems)} problems:\n" + "\n".join(problems)

    # The notebooks in order, each page's previous/next link to its neighbour.
    chapters = [f"notebooks/{n}.html" for n in NOTEBOOKS]
    for before, after in zip(chapters, chapters[1:]):
        assert _page_name(site, seen[before]["next"] or "") == after, (before, seen[before]["next"])
        assert _page_name(site, seen[after]["prev"] or "") == before, (after, seen[after]["prev"])
    landing = {_page_name(site, h) for h in seen["index.html"]["links"]}
    assert set(chapters) <= landing, f"not linked from the landing page: {set(chapters) - landing}"

    # The landing page shows the results figure and the explorer screenshot.
    images = [Path(urlsplit(i["src"]).path).name for i in seen["index.html"]["images"]]
    assert {"results.png", "explorer.png"} <= set(images), images

    # Notebook 08's page: the note on running it live, and its static views.
    (explorer,) = [c for c in chapters if "08_" in c]
    assert "make lab" in seen[explorer]["text"], "notebook 08's page does not say how to run it"
    assert len(seen[explorer]["images"]) >= 4, seen[explorer]["images"]

    # Search finds PEDAL, the notebook that teaches it first.
    found = {_page_name(site, h) for h in hits}
    pedal = next(c for c in chapters if "pedal" in c)
    assert pedal in found, f"search for PEDAL found {sorted(found)}"
    print(f"{len(seen)} pages checked in {browse_s:.0f} s; search for PEDAL: {len(found)} pages")


def test_site_config_offline_and_pinned():
    """The configuration keeps the notebooks unexecuted and loads no widget JavaScript (it
    would come from a CDN); MathJax is the packaged copy; the dev extra and environment.yml
    name the site's packages."""
    conf: dict = {}
    code = (ROOT / "docs" / "site" / "conf.py").read_text()
    exec(compile(code, "conf.py", "exec"), conf)
    assert conf["nb_execution_mode"] == "off"
    assert conf["nb_ipywidgets_js"] == {}
    assert "sphinx-mathjax-offline" in conf["extensions"]
    # The pins name the same packages in pyproject.toml and environment.yml.
    pyproject = (ROOT / "pyproject.toml").read_text()
    env = (ROOT / "environment.yml").read_text()
    for pkg in ("sphinx", "myst-nb", "sphinx-book-theme", "sphinx-mathjax-offline"):
        assert re.search(rf'"{re.escape(pkg)}[=<>~!]', pyproject), f"{pkg} not pinned in pyproject"
        assert re.search(rf"\b{re.escape(pkg)}[=<>~!]", env), f"{pkg} not in environment.yml"
