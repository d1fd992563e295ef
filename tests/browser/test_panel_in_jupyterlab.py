"""What a person sees: the flow panel in JupyterLab, in Debian's Chromium, driven by Playwright.

The session's JupyterLab server (conftest.py); the test opens a notebook whose
``%flow run`` fails in one split of a foreach, checks the DAG's colours, the artifact
preview and the logs, clicks Resume, and checks the resumed run finishes. Every
step saves a screenshot under tests/browser/screenshots/.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from .conftest import SCREENSHOTS, command, dismiss_news, open_notebook, wait_in_view

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


def test_panel_shows_a_failed_run_and_resumes_it(lab, browser):
    root, scratch = lab.root, lab.scratch
    lab.write_notebook("panel.ipynb", CELLS)
    page = open_notebook(browser, lab, "panel.ipynb")
    try:
        # Not awaited: the command's promise resolves only when every cell has run.
        command(page, "notebook:run-all-cells", wait=False)
        # While the run goes: start done, the foreach body running (its tasks sleep).
        wait_in_view(page, "g#flowbook-node-body.flowbook-state-running")
        assert page.query_selector("g#flowbook-node-start.flowbook-state-done")
        assert page.query_selector("g#flowbook-node-end.flowbook-state-not-run")
        page.screenshot(path=str(SCREENSHOTS / "0-running.png"))
        # The run fails in one split: the body node turns red.
        failed = page.wait_for_selector(
            "g#flowbook-node-body.flowbook-state-failed", timeout=90_000
        )
        assert failed is not None
        page.wait_for_selector("g#flowbook-node-start.flowbook-state-done")
        fill = page.eval_on_selector("g#flowbook-node-body polygon", "e => e.getAttribute('fill')")
        assert fill == "#ffd6d6"
        title = page.inner_text(".flowbook-title")
        assert title == "BrowserFlow"
        page.locator(".flowbook-panel").first.scroll_into_view_if_needed()
        dismiss_news(page)
        page.screenshot(path=str(SCREENSHOTS / "1-failed-run.png"), full_page=False)
        status = page.inner_text(".flowbook-status")
        assert "failed" in status and "done" in status
        # The extension: the side panel follows the %flow run (body failed, end not run);
        # each cell's badge keeps its own cell's state (end ran as a cell: done).
        command(page, "flowbook:show-dag")
        page.wait_for_selector("#flowbook-dag-panel g#flowbook-dag-body.flowbook-state-failed")
        assert page.query_selector("#flowbook-dag-panel g#flowbook-dag-end.flowbook-state-not-run")
        assert "%flow run BrowserFlow/" in page.inner_text(".flowbook-dag-detail")
        assert page.get_attribute(".flowbook-badge[data-step=end]", "data-state") == "done"
        assert page.get_attribute(".flowbook-badge[data-step=body]", "data-state") == "done"
        page.screenshot(path=str(SCREENSHOTS / "1b-failed-run-side-panel.png"))
        command(page, "application:toggle-right-area")

        # Artifact browser: the first step with tasks (start) and its artifact 'items'.
        panel = page.locator(".flowbook-panel").first
        artifacts = panel.locator(".flowbook-artifacts")
        artifacts.locator("select").nth(4).select_option("items")  # flow, run, step, task, artifact
        page.wait_for_function(
            "() => document.querySelector('.flowbook-preview')?.textContent.includes('[1, 2, 3]')",
            timeout=20_000,
        )
        assert "list" in page.inner_text(".flowbook-preview")
        page.screenshot(path=str(SCREENSHOTS / "2-artifact-preview.png"))

        # Logs of the start task.
        panel.locator(".lm-TabBar-tab, .p-TabBar-tab").nth(1).click()
        logs = panel.locator(".flowbook-logs")
        start_option = logs.locator("select option", has_text="start/").first.get_attribute("value")
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
        page.close()
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
