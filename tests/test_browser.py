"""End to end in a real browser: JupyterLab + headless Chromium run notebook 08 and drive
the patch explorer as a reader does.

The test starts JupyterLab on 127.0.0.1 (a free port, a random token, a temporary HOME and
Jupyter config/runtime folders, a temporary copy of the notebook: nothing is written into
notebooks/), opens ``08_patch_explorer.ipynb`` in Debian's Chromium driven by Playwright
(``executable_path``; Playwright never downloads a browser here), runs every cell through the
application's command registry, then moves the query slider and clicks a patch button and
checks from the page that the explorer's images changed and no error appeared. Screenshots
go to ``build/browser/``. Every process it started is stopped in the fixture's teardown.

Needs ``chromium`` (``apt-get install chromium``) and the ``playwright`` Python package
(``pip install playwright``; never ``playwright install``): ``make browser-deps`` installs
both. Run alone with ``python -m pytest -m browser tests/test_browser.py``.
Set ``PAULKIT_BROWSER_TIMEOUT`` (seconds, default 1200) for the notebook's run; it trains
the tutorial models first when no checkpoint exists (a few minutes on a CPU).
``PAULKIT_SCREENSHOT_DOCS=1`` also refreshes the README's screenshot, docs/explorer.png.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = Path(
    os.environ.get("PAULKIT_BROWSER_NOTEBOOK", ROOT / "notebooks" / "08_patch_explorer.ipynb")
)
SHOTS = ROOT / "build" / "browser"
CHROMIUM = os.environ.get("PAULKIT_CHROMIUM", "/usr/bin/chromium")
RUN_TIMEOUT = float(os.environ.get("PAULKIT_BROWSER_TIMEOUT", "1200"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
HOW_TO_INSTALL = (
    "run `make browser-deps` (it runs `apt-get install -y chromium` where chromium is missing "
    "and `pip install playwright`; never `playwright install`: the test drives Debian's "
    "Chromium through its executable_path)"
)


def _require_browser() -> None:
    chromium = Path(CHROMIUM)
    if not chromium.exists():
        found = shutil.which("chromium")
        pytest.fail(
            f"Chromium not found at {CHROMIUM}"
            + (f" (there is one at {found}: set PAULKIT_CHROMIUM)" if found else "")
            + f"; {HOW_TO_INSTALL}",
            pytrace=False,
        )
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.fail(
            f"the Python package playwright is not installed; {HOW_TO_INSTALL}", pytrace=False
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _log_tail(path: Path, n: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return "(no log)"


class Lab:
    def __init__(self, url: str, token: str, proc: subprocess.Popen, log: Path) -> None:
        self.url, self.token, self.proc, self.log = url, token, proc, log
        self.children: set[int] = set()

    def api(self, path: str, method: str = "GET", timeout: float = 5.0) -> bytes:
        req = urllib.request.Request(
            f"{self.url}{path}", method=method, headers={"Authorization": f"token {self.token}"}
        )
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.read()


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Linux /proc): the server's kernels run in sessions of
    their own, so the server's process group does not reach them."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie waiting for its parent counts as gone
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _stop(proc: subprocess.Popen, lab: Lab | None) -> None:
    """Stop the server and everything it started: a clean shutdown first (the server stops
    its kernels), then SIGTERM and SIGKILL by process id."""
    started = sorted(set(_descendants(proc.pid)) | (lab.children if lab is not None else set()))
    if proc.poll() is None and lab is not None:
        try:
            lab.api("/api/shutdown", method="POST")
            proc.wait(timeout=20)
        except (OSError, urllib.error.URLError, subprocess.TimeoutExpired):
            pass
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                pass
        left = [p for p in started if _alive(p)]
        for p in left:
            try:
                os.kill(p, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        while left and time.monotonic() < deadline:
            time.sleep(0.2)
            left = [p for p in left if _alive(p)]
        if proc.poll() is not None and not left:
            return
    raise RuntimeError(f"processes started by the test are still running: {left}")


def _track_kernels(lab: Lab) -> None:
    lab.children.update(_descendants(lab.proc.pid))


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    _require_browser()
    if not NOTEBOOK.exists():
        pytest.fail(f"{NOTEBOOK} is missing", pytrace=False)
    tmp = tmp_path_factory.mktemp("lab")
    root = tmp / "notebooks"
    root.mkdir()
    shutil.copy(NOTEBOOK, root / NOTEBOOK.name)
    config = tmp / "config"
    # Every cell stays in the page (no windowing), so the test can find the explorer; no news
    # or update toasts (nothing is fetched from the internet).
    user = config / "lab" / "user-settings" / "@jupyterlab"
    for rel, value in (
        ("notebook-extension/tracker", {"windowingMode": "none"}),
        ("apputils-extension/notification", {"fetchNews": "false", "checkForUpdates": False}),
    ):
        path = user / f"{rel}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value))
    env = dict(os.environ)
    env.update(
        HOME=str(tmp / "home"),
        JUPYTER_CONFIG_DIR=str(config),
        JUPYTER_RUNTIME_DIR=str(tmp / "runtime"),
        IPYTHONDIR=str(tmp / "ipython"),
        MPLCONFIGDIR=str(tmp / "mpl"),
        JUPYTER_PLATFORM_DIRS="1",
        PYDEVD_DISABLE_FILE_VALIDATION="1",
    )
    (tmp / "home").mkdir()
    port, token = _free_port(), secrets.token_hex(24)
    log = tmp / "jupyterlab.log"
    cmd = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        "--ip=127.0.0.1",
        f"--port={port}",
        "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root}",
        "--LabApp.expose_app_in_browser=True",
        "--LabApp.news_url=None",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        "--LabApp.extension_manager=readonly",
        "--ServerApp.terminals_enabled=False",
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # containers and CI often run as root
        cmd.append("--allow-root")
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    server = Lab(f"http://127.0.0.1:{port}", token, proc, log)
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"JupyterLab exited ({proc.returncode}):\n{_log_tail(log)}")
            try:
                server.api("/api/status")
                break
            except (OSError, urllib.error.URLError):
                if time.monotonic() > deadline:
                    pytest.fail(f"JupyterLab did not answer in 120 s:\n{_log_tail(log)}")
                time.sleep(0.5)
        yield server
    finally:
        _stop(proc, server)


# JavaScript run in the page ------------------------------------------------------------------

PANEL = "window.jupyterapp && window.jupyterapp.shell.currentWidget"

NOTEBOOK_STATE = """() => {
  const panel = window.jupyterapp.shell.currentWidget;
  if (!panel || !panel.content || !panel.sessionContext) return null;
  const cells = panel.content.widgets.filter(c => c.model.type === 'code');
  const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;
  return {
    path: panel.context.path,
    status: kernel ? kernel.status : 'none',
    cells: cells.length,
    done: cells.filter(c => c.model.executionCount !== null).length,
    running: cells.filter(c => (c.promptNode && c.promptNode.textContent || '').includes('*')).length,
  };
}"""

ERRORS = """() => {
  const found = [];
  for (const el of document.querySelectorAll(
      '[data-mime-type="application/vnd.jupyter.error"], .jp-RenderedText[data-mime-type*="error"]'))
    found.push('error output: ' + el.textContent.slice(0, 800));
  for (const el of document.querySelectorAll(
      '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]'))
    if (el.textContent.includes('Traceback')) found.push('stderr: ' + el.textContent.slice(0, 800));
  for (const el of document.querySelectorAll('.paulkit-error'))
    found.push('explorer: ' + el.textContent.slice(0, 800));
  for (const el of document.querySelectorAll('.jp-OutputArea-output'))
    if (el.textContent.includes('Error displaying widget')) found.push('widget: ' + el.textContent);
  return found;
}"""

VIEW_IMAGE = """async (view) => {
  const el = document.querySelector('.paulkit-view.paulkit-' + view);
  if (!el) return null;
  const img = el.tagName === 'IMG' ? el : el.querySelector('img');
  if (!img || !img.src) return null;
  const bytes = new Uint8Array(await (await fetch(img.src)).arrayBuffer());
  let h = 2166136261;
  for (let i = 0; i < bytes.length; i++) { h ^= bytes[i]; h = Math.imul(h, 16777619) >>> 0; }
  return {src: img.src, hash: h, size: bytes.length, width: img.naturalWidth};
}"""


def _to_docs(shot: Path, dest: Path) -> None:
    """The README's screenshot: 256 colours (a third of the size), written on request only
    (``PAULKIT_SCREENSHOT_DOCS=1``) so that a test run never changes a tracked file."""
    from PIL import Image

    with Image.open(shot) as im:
        small = im.convert("RGB").quantize(
            256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE
        )
    small.save(dest, optimize=True)


def _wait(predicate, timeout: float, what: str, page=None, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        if page is not None:
            errors = page.evaluate(ERRORS)
            if errors:
                pytest.fail(
                    f"while waiting for {what}, the page shows errors:\n" + "\n".join(errors)
                )
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what} (last state: {last})")


def test_patch_explorer_in_jupyterlab(lab):
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    console: list[str] = []
    t0 = time.monotonic()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
            page.on(
                "console",
                lambda m: console.append(f"{m.type}: {m.text}") if m.type == "error" else None,
            )
            page.goto(
                f"{lab.url}/lab/tree/{NOTEBOOK.name}?token={lab.token}",
                wait_until="domcontentloaded",
            )
            page.wait_for_function(f"() => {PANEL} && {PANEL}.context", timeout=120_000)
            state = _wait(
                lambda: (s := page.evaluate(NOTEBOOK_STATE)) and s["status"] == "idle" and s,
                180,
                "the notebook and its kernel",
            )
            assert state["path"] == NOTEBOOK.name, state
            # The committed notebook carries outputs: clear them so that every execution
            # count seen below comes from this run.
            page.evaluate(
                "() => window.jupyterapp.commands.execute('notebook:clear-all-cell-outputs')"
            )
            _wait(lambda: page.evaluate(NOTEBOOK_STATE)["done"] == 0, 30, "cleared outputs")
            page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")

            def finished():
                s = page.evaluate(NOTEBOOK_STATE)
                return s["done"] == s["cells"] and s["running"] == 0 and s["status"] == "idle" and s

            state = _wait(finished, RUN_TIMEOUT, "every cell to run", page=page, interval=1.0)
            _track_kernels(lab)
            t_run = time.monotonic() - t0
            page.wait_for_selector(".paulkit-explorer", timeout=60_000)
            before = _wait(lambda: page.evaluate(VIEW_IMAGE, "patches"), 60, "the explorer's image")
            neighbours = page.evaluate(VIEW_IMAGE, "neighbours")
            status = page.inner_text(".paulkit-explorer .paulkit-status")
            page.locator(".paulkit-explorer").scroll_into_view_if_needed()
            page.screenshot(path=str(SHOTS / "notebook_after_run.png"))

            # Move the query slider one step (keyboard on its handle, as a reader would).
            handle = page.locator(".paulkit-query .noUi-handle")
            handle.focus()
            handle.press("ArrowRight")
            after = _wait(
                lambda: (
                    (r := page.evaluate(VIEW_IMAGE, "patches"))
                    and r["hash"] != before["hash"]
                    and r
                ),
                60,
                "the patches view to change after moving the query slider",
                page=page,
            )
            assert after["src"] != before["src"]
            _wait(
                lambda: page.inner_text(".paulkit-explorer .paulkit-status") != status,
                30,
                "the status line to name the new query",
                page=page,
            )

            # Click patch 4: the neighbours view now shows patch 4's neighbours.
            neighbours = page.evaluate(VIEW_IMAGE, "neighbours")
            page.locator(".paulkit-patch button", has_text="4").click()
            _wait(
                lambda: (
                    (r := page.evaluate(VIEW_IMAGE, "neighbours"))
                    and r["hash"] != neighbours["hash"]
                ),
                60,
                "the neighbours view to change after clicking patch 4",
                page=page,
            )
            _wait(
                lambda: "patch 4" in page.inner_text(".paulkit-explorer .paulkit-status"),
                30,
                "the status line to name patch 4",
                page=page,
            )
            errors = page.evaluate(ERRORS)
            assert not errors, "\n".join(errors)
            # Tall enough for the whole explorer: JupyterLab paints only what its panel shows.
            page.set_viewport_size({"width": 1400, "height": 2200})
            page.locator(".paulkit-explorer").scroll_into_view_if_needed()
            page.wait_for_timeout(500)
            page.locator(".paulkit-explorer").screenshot(path=str(SHOTS / "explorer.png"))
            if os.environ.get("PAULKIT_SCREENSHOT_DOCS") == "1":
                _to_docs(SHOTS / "explorer.png", ROOT / "docs" / "explorer.png")
            page.set_viewport_size({"width": 1280, "height": 1000})
            page.screenshot(path=str(SHOTS / "notebook_after_interaction.png"), full_page=False)
        except BaseException:
            try:
                page.screenshot(path=str(SHOTS / "failure.png"))
            except Exception:
                pass
            print("browser console errors:\n" + "\n".join(console[-30:]))
            print("JupyterLab log:\n" + _log_tail(lab.log))
            raise
        finally:
            browser.close()
    print(
        f"notebook ran in {t_run:.0f} s; whole browser session {time.monotonic() - t0:.0f} s; "
        f"{state['cells']} code cells; screenshots in {SHOTS}"
    )
