"""What the browser tests share: one JupyterLab server on 127.0.0.1 per test session, one
Debian Chromium driven by Playwright, and helpers to open a notebook and wait for its kernel.

The server runs ``python -m jupyterlab`` of this interpreter, with HOME, TMPDIR and
the user settings in a scratch folder (no news toast, every cell rendered), so it
sees the extension installed in this environment (``make test`` builds and installs
it: .venv/share/jupyter/labextensions/flowbook). Screenshots go to
tests/browser/screenshots/ (gitignored).
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest

CHROMIUM = "/usr/bin/chromium"
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
SCREENSHOTS = Path(__file__).parent / "screenshots"


def _have_jupyterlab() -> bool:
    try:  # run as `python -m jupyterlab` of this interpreter (a venv need not be on PATH)
        import jupyterlab  # noqa: F401
    except ImportError:
        return False
    return True


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Lab:
    url: str
    token: str
    root: Path
    scratch: Path

    def write_notebook(self, name: str, cells: list) -> Path:
        """A notebook of code cells: each a source, or (source, tags)."""
        nb = nbformat.v4.new_notebook()
        nb.metadata["kernelspec"] = {
            "name": "python3",
            "display_name": "Python 3 (ipykernel)",
            "language": "python",
        }
        for cell in cells:
            source, tags = (cell, []) if isinstance(cell, str) else cell
            metadata = {"tags": list(tags)} if tags else {}
            nb.cells.append(nbformat.v4.new_code_cell(source, metadata=metadata))
        path = self.root / name
        nbformat.write(nb, str(path))
        return path


@pytest.fixture(scope="session")
def lab(tmp_path_factory):
    if not os.path.exists(CHROMIUM) or not _have_jupyterlab():
        pytest.skip("needs Debian's chromium and jupyterlab (make test installs both)")
    root = tmp_path_factory.mktemp("lab")
    scratch = tmp_path_factory.mktemp("home")
    port, token = _free_port(), secrets.token_hex(16)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLOWBOOK_", "METAFLOW_"))}
    settings = scratch / "lab-settings" / "@jupyterlab"
    (settings / "notebook-extension").mkdir(parents=True)
    (settings / "apputils-extension").mkdir(parents=True)
    # Render every cell (no windowing), and no news toast over the screenshots.
    (settings / "notebook-extension" / "tracker.jupyterlab-settings").write_text(
        json.dumps({"windowingMode": "none"})
    )
    (settings / "apputils-extension" / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False})
    )
    env.update(
        HOME=str(scratch),
        TMPDIR=str(scratch),
        USER="tester",
        JUPYTERLAB_SETTINGS_DIR=str(scratch / "lab-settings"),
    )
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyterlab",
            "--no-browser",
            "--allow-root",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={port}",
            f"--IdentityProvider.token={token}",
            "--LabApp.expose_app_in_browser=True",
            f"--ServerApp.root_dir={root}",
        ],
        cwd=root,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 60
        while True:
            if server.poll() is not None:
                pytest.fail("JupyterLab exited at start")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.time() > deadline:
                    pytest.fail("JupyterLab did not start")
                time.sleep(0.2)
        yield Lab(f"http://127.0.0.1:{port}", token, root, scratch)
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


@pytest.fixture(scope="session")
def browser(lab):
    from playwright.sync_api import sync_playwright

    SCREENSHOTS.mkdir(exist_ok=True)
    playwright = sync_playwright().start()
    try:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield chromium
        finally:
            chromium.close()
    finally:
        playwright.stop()


def open_notebook(browser, lab: Lab, name: str, width: int = 1400, height: int = 1000):
    """A new page on notebook ``name``, its kernel idle; close it with ``page.close()``."""
    page = browser.new_page(viewport={"width": width, "height": height})
    # ?reset: a fresh workspace, without the notebooks earlier pages opened
    page.goto(f"{lab.url}/lab/tree/{name}?reset&token={lab.token}")
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
    wait_idle(page)
    dismiss_news(page)
    return page


def wait_idle(page, timeout: float = 60_000) -> None:
    """Until the kernel says Idle in the status bar (keys pressed before are lost)."""
    page.wait_for_function(
        "() => [...document.querySelectorAll('.jp-StatusBar-TextItem')]"
        ".some(e => e.textContent.includes('Idle'))",
        timeout=timeout,
    )


def command(page, name: str, args: dict | None = None, wait: bool = True) -> None:
    """Run a JupyterLab command; ``wait=False`` for one whose promise ends late (run-all)."""
    script = f"window.jupyterapp.commands.execute({json.dumps(name)}, {json.dumps(args or {})})"
    if wait:
        page.evaluate(f"async () => {{ await {script}; }}")
    else:
        page.evaluate(f"() => {{ {script}; }}")


def wait_in_view(page, selector: str, timeout: float = 90.0) -> None:
    """Wait for ``selector`` while keeping the notebook's last cell in view."""
    deadline = time.time() + timeout
    while not page.query_selector(selector):
        if time.time() > deadline:
            page.screenshot(path=str(SCREENSHOTS / "timeout.png"))
            raise AssertionError(f"{selector} did not appear in {timeout} s")
        page.locator(".jp-Notebook .jp-Cell").last.scroll_into_view_if_needed()
        page.wait_for_timeout(100)


def dismiss_news(page) -> None:
    """JupyterLab asks about its news in a toast that would cover the screenshots."""
    button = page.get_by_role("button", name="No", exact=True)
    if button.count():
        button.first.click()
