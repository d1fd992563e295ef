"""What a person sees: the flow panel in JupyterLab, in Debian's Chromium, driven by Playwright.

One JupyterLab server on 127.0.0.1 for the module; the test opens a notebook whose
``%flow run`` fails in one split of a foreach, checks the DAG's colours, the artifact
preview and the logs, clicks Resume, and checks the resumed run finishes. Every
step saves a screenshot under tests/browser/screenshots/.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
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

try:  # JupyterLab runs as `python -m jupyterlab` of this interpreter (a venv need not be on PATH)
    import jupyterlab  # noqa: F401
except ImportError:
    jupyterlab = None
if not os.path.exists(CHROMIUM) or jupyterlab is None:
    pytest.skip(
        "needs Debian's chromium and jupyterlab (make test installs both)", allow_module_level=True
    )

CELLS = [
    "%load_ext flowbook\n%flow name BrowserFlow",
    "%%step start --next body --foreach items\nself.items = [1, 2, 3]\nprint('starting up')",
    "%%step body --next join\nimport os, time\nif os.path.exists('slow'):\n    time.sleep(3)\n"
    "if self.input == 2 and os.path.exists('broken'):\n"
    "    raise ValueError('two is broken')\nself.double = self.input * 2",
    "%%step join --join --next end\nself.total = sum(i.double for i in inputs)",
    "%%step end\nprint('total', self.total)",
    "open('broken', 'w').close()\nopen('slow', 'w').close()",
    "%flow run",
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    root = tmp_path_factory.mktemp("lab")
    scratch = tmp_path_factory.mktemp("home")
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3 (ipykernel)",
        "language": "python",
    }
    nb.cells = [nbformat.v4.new_code_cell(c) for c in CELLS]
    nbformat.write(nb, str(root / "panel.ipynb"))
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
        yield f"http://127.0.0.1:{port}", token, root, scratch
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


def _wait_in_view(page, selector: str, timeout: float = 90.0) -> None:
    """Wait for ``selector`` while keeping the notebook's last cell in view."""
    deadline = time.time() + timeout
    while not page.query_selector(selector):
        if time.time() > deadline:
            page.screenshot(path=str(SCREENSHOTS / "timeout.png"))
            raise AssertionError(f"{selector} did not appear in {timeout} s")
        page.locator(".jp-Notebook .jp-Cell").last.scroll_into_view_if_needed()
        page.wait_for_timeout(100)


def _dismiss_news(page) -> None:
    """JupyterLab asks about its news in a toast that would cover the screenshots."""
    button = page.get_by_role("button", name="No", exact=True)
    if button.count():
        button.first.click()


def test_panel_shows_a_failed_run_and_resumes_it(lab):
    from playwright.sync_api import sync_playwright

    url, token, root, scratch = lab
    SCREENSHOTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{url}/lab/tree/panel.ipynb?token={token}")
            page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
            page.wait_for_function(
                "() => [...document.querySelectorAll('.jp-StatusBar-TextItem')]"
                ".some(e => e.textContent.includes('Idle'))",
                timeout=60_000,
            )
            # Not awaited: the command's promise resolves only when every cell has run.
            page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")
            # While the run goes: start done, the foreach body running (its tasks sleep).
            _wait_in_view(page, "g#flowbook-node-body.flowbook-state-running")
            assert page.query_selector("g#flowbook-node-start.flowbook-state-done")
            assert page.query_selector("g#flowbook-node-end.flowbook-state-not-run")
            page.screenshot(path=str(SCREENSHOTS / "0-running.png"))
            # The run fails in one split: the body node turns red.
            failed = page.wait_for_selector(
                "g#flowbook-node-body.flowbook-state-failed", timeout=90_000
            )
            assert failed is not None
            page.wait_for_selector("g#flowbook-node-start.flowbook-state-done")
            fill = page.eval_on_selector(
                "g#flowbook-node-body polygon", "e => e.getAttribute('fill')"
            )
            assert fill == "#ffd6d6"
            title = page.inner_text(".flowbook-title")
            assert title == "BrowserFlow"
            page.locator(".flowbook-panel").first.scroll_into_view_if_needed()
            _dismiss_news(page)
            page.screenshot(path=str(SCREENSHOTS / "1-failed-run.png"), full_page=False)
            status = page.inner_text(".flowbook-status")
            assert "failed" in status and "done" in status

            # Artifact browser: the first step with tasks (start) and its artifact 'items'.
            panel = page.locator(".flowbook-panel").first
            artifacts = panel.locator(".flowbook-artifacts")
            artifacts.locator("select").nth(4).select_option(
                "items"
            )  # flow, run, step, task, artifact
            page.wait_for_function(
                "() => document.querySelector('.flowbook-preview')?.textContent.includes('[1, 2, 3]')",
                timeout=20_000,
            )
            assert "list" in page.inner_text(".flowbook-preview")
            page.screenshot(path=str(SCREENSHOTS / "2-artifact-preview.png"))

            # Logs of the start task.
            panel.locator(".lm-TabBar-tab, .p-TabBar-tab").nth(1).click()
            logs = panel.locator(".flowbook-logs")
            start_option = logs.locator("select option", has_text="start/").first.get_attribute(
                "value"
            )
            logs.locator("select").first.select_option(start_option)
            page.wait_for_function(
                "() => document.querySelector('.flowbook-log-text')?.textContent.includes('starting up')",
                timeout=20_000,
            )
            page.screenshot(path=str(SCREENSHOTS / "3-logs.png"))

            # Fix the cause, then Resume from the panel.
            (root / "broken").unlink()
            (root / "slow").unlink()
            panel.locator(".lm-TabBar-tab, .p-TabBar-tab").nth(2).click()
            resume = panel.locator(".flowbook-resume button", has_text="Resume")
            assert resume.is_enabled()
            assert panel.locator(".flowbook-resume select").first.input_value() == "body"
            resume.click()
            page.wait_for_selector("g#flowbook-node-end.flowbook-state-done", timeout=90_000)
            page.wait_for_function(
                "() => document.querySelector('.flowbook-title')?.parentElement.textContent.includes('successful')",
                timeout=60_000,
            )
            for step in ("start", "body", "join", "end"):
                assert page.query_selector(f"g#flowbook-node-{step}.flowbook-state-done")
            page.screenshot(path=str(SCREENSHOTS / "4-resumed.png"))
        finally:
            browser.close()
    # The resumed run is in the datastore, successful, with the right total.
    check = subprocess.run(
        [
            sys.executable,
            "-c",
            "from flowbook import Flow, namespace\nnamespace(None)\n"
            "r = Flow('BrowserFlow').latest_run\nprint(r.successful, r.data.total, r.origin_run_id is not None)",
        ],
        cwd=root,
        capture_output=True,
        text=True,
        env=dict(os.environ, HOME=str(scratch), USER="tester"),
    )
    assert check.stdout.strip() == "True 12 True", check.stderr
    print(json.dumps(sorted(p.name for p in SCREENSHOTS.glob("*.png"))))
