"""flowbook's JupyterLab extension in a real JupyterLab and Debian's Chromium.

The extension is the one built into flowbook/labextension and installed in this
environment (``make test`` does both). Each test opens its own notebook in the
session's server (conftest.py) and saves screenshots under tests/browser/screenshots/.
"""

from __future__ import annotations

import time

import nbformat

from .conftest import SCREENSHOTS, command, open_notebook, wait_idle

T = "flowbook:"
#: The kernel's colours (flowbook/widgets/dag.py), which the side panel uses too.
FILL = {"not-run": "#ffffff", "running": "#fff3c4", "done": "#d7f5dd", "failed": "#ffd6d6"}

TAGGED = [
    "%load_ext flowbook\n%flow name TaggedLabFlow",
    ("import time", [f"{T}setup"]),
    ("self.items = [1, 2, 3, 4]", [f"{T}step=start", f"{T}next=body", f"{T}foreach=items"]),
    # the splits end one after the other, so that the progress is seen to move
    (
        "time.sleep(0.7 * self.input)\nself.double = 2 * self.input",
        [f"{T}step=body", f"{T}next=join"],
    ),
    ("self.total = sum(i.double for i in inputs)", [f"{T}step=join", f"{T}join", f"{T}next=end"]),
    ("print('total is', self.total)", [f"{T}step=end"]),
]


def badges(page) -> dict[str, dict]:
    """Each step badge on the page: its state, roles and text, by step name."""
    return page.evaluate(
        """() => Object.fromEntries([...document.querySelectorAll('.flowbook-badge-step')].map(
            b => [b.dataset.step, {state: b.dataset.state, roles: b.dataset.roles,
                                   progress: b.dataset.progress, text: b.innerText,
                                   visible: b.offsetHeight > 0}]))"""
    )


def dag_node(page, step: str) -> dict | None:
    """The side panel's node of ``step``: its state class and fill colour."""
    return page.evaluate(
        """step => {
            const g = document.querySelector(`#flowbook-dag-panel g#flowbook-dag-${step}`);
            if (!g) return null;
            const state = [...g.classList].find(c => c.startsWith('flowbook-state-'));
            const shape = g.querySelector('polygon, ellipse, path');
            return {state: state && state.slice('flowbook-state-'.length),
                    fill: shape && shape.getAttribute('fill'), label: g.textContent.trim()};
        }""",
        step,
    )


def show_dag(page) -> None:
    command(page, "flowbook:show-dag")
    page.wait_for_selector("#flowbook-dag-panel", state="visible")


def notebook_text(page) -> str:
    return page.inner_text(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook")


def notebook_text_with(page, expected: str, timeout: float = 30) -> str:
    """The notebook's text once it shows ``expected`` (or at the deadline).

    A badge can turn done a moment before the cell's output is on the page: the
    states come on the comm, the output as the cell's own messages.
    """
    text, deadline = notebook_text(page), time.time() + timeout
    while expected not in text and time.time() < deadline:
        page.wait_for_timeout(100)
        text = notebook_text(page)
    return text


def test_a_tagged_notebook_run_all_with_live_badges_and_dag(lab, browser):
    lab.write_notebook("tagged.ipynb", TAGGED)
    page = open_notebook(browser, lab, "tagged.ipynb")
    try:
        show_dag(page)
        # Before any run: the cells' tags alone give the badges and the DAG.
        page.wait_for_selector("#flowbook-dag-panel g#flowbook-dag-end")
        before = badges(page)
        assert set(before) == {"start", "body", "join", "end"}
        assert {b["state"] for b in before.values()} == {"not-run"}
        assert all(b["visible"] for b in before.values())
        assert before["start"]["roles"] == "start foreach"
        assert before["join"]["roles"] == "join"
        assert page.locator(".flowbook-badge-setup").count() == 1
        assert dag_node(page, "body")["fill"] == FILL["not-run"]
        page.screenshot(path=str(SCREENSHOTS / "ext-0-tagged-before-run.png"))

        command(page, "notebook:run-all-cells", wait=False)
        seen_badge, seen_node = [], []
        mid_shot = False
        deadline = time.time() + 120
        while time.time() < deadline:
            badge = badges(page).get("body", {})
            node = dag_node(page, "body") or {}
            seen_badge.append((badge.get("state"), badge.get("progress")))
            seen_node.append((node.get("state"), node.get("fill"), node.get("label")))
            if badge.get("progress") == "2/4" and not mid_shot:
                page.screenshot(path=str(SCREENSHOTS / "ext-1-tagged-foreach-running.png"))
                mid_shot = True
                # the cell's own progress bar is hidden: the badge shows the progress
                bar = page.locator(".flowbook-progress")
                assert bar.count() >= 1 and not bar.first.is_visible()
            if badges(page).get("end", {}).get("state") == "done":
                break
            page.wait_for_timeout(100)
        final = badges(page)
        assert {n: b["state"] for n, b in final.items()} == dict.fromkeys(final, "done"), final
        assert final["body"]["progress"] == "4/4"
        assert mid_shot, seen_badge
        # the badge went through the foreach's progress, live
        progress = {count for state, count in seen_badge if state == "running"}
        assert {"0/4", "1/4", "2/4", "3/4"} & progress and len(progress) >= 2, seen_badge
        # and the DAG node with it: running (amber) while the splits ran, then done (green)
        running = [n for n in seen_node if n[0] == "running"]
        assert running and {n[1] for n in running} == {FILL["running"]}, seen_node
        assert len({n[2] for n in running}) >= 2, running  # its label counted the splits
        for step in ("start", "body", "join", "end"):
            node = dag_node(page, step)
            assert (node["state"], node["fill"]) == ("done", FILL["done"]), (step, node)
        text = notebook_text_with(page, "total is 20")
        assert "total is 20" in text and "Traceback" not in text and "Error" not in text
        assert page.inner_text(".flowbook-dag-title") == "TaggedLabFlow"
        page.screenshot(path=str(SCREENSHOTS / "ext-2-tagged-done.png"))
    finally:
        page.close()


def test_a_reloaded_page_finds_the_states_and_a_click_on_a_node_scrolls_to_its_cell(lab, browser):
    cells = [
        "%load_ext flowbook\n%flow name ReloadLabFlow",
        "%%step start --next middle\nself.x = 1",
        "%%step middle --next end\nself.x += 1",
    ]
    # many exploration cells, so that the end step's cell is far below
    cells += [f"# exploration {i}\n{i} * {i}" for i in range(25)]
    cells += ["%%step end\nprint('x is', self.x)"]
    lab.write_notebook("reload.ipynb", cells)
    page = open_notebook(browser, lab, "reload.ipynb", height=700)
    try:
        command(page, "notebook:run-all-cells", wait=False)
        page.wait_for_selector(".flowbook-badge[data-step=end][data-state=done]", timeout=90_000)
        wait_idle(page)
        # Edit and rerun start: what follows it is stale.
        page.evaluate(
            """async () => { const nb = window.jupyterapp.shell.currentWidget.content;
            nb.widgets[1].model.sharedModel.setSource('%%step start --next middle\\nself.x = 2');
            nb.activeCellIndex = 1;
            await window.jupyterapp.commands.execute('notebook:run-cell'); }"""
        )
        # the states come on iopub, the execute reply on shell: either can be first
        page.wait_for_selector(
            ".flowbook-badge[data-step=middle][data-state=stale]", state="attached", timeout=30_000
        )
    finally:
        page.close()
    # A new page on the same notebook joins the running kernel: the comm is found again.
    page = open_notebook(browser, lab, "reload.ipynb", height=700)
    try:
        show_dag(page)
        page.wait_for_selector(
            "#flowbook-dag-panel g#flowbook-dag-start.flowbook-state-done", timeout=30_000
        )
        states = {n: b["state"] for n, b in badges(page).items()}
        assert states == {"start": "done", "middle": "stale", "end": "stale"}, states
        assert dag_node(page, "middle")["state"] == "stale"
        end_cell = page.locator(".jp-Notebook .jp-Cell").last
        assert not end_cell.is_visible() or not _in_viewport(page, len(cells) - 1)
        page.click("#flowbook-dag-panel g#flowbook-dag-end")
        page.wait_for_function(
            f"() => window.jupyterapp.shell.currentWidget.content.activeCellIndex === {len(cells) - 1}"
        )
        page.wait_for_function(
            "i => { const r = document.querySelectorAll('.jp-Notebook .jp-Cell')[i]"
            ".getBoundingClientRect(); return r.top >= 0 && r.top < window.innerHeight; }",
            arg=len(cells) - 1,
        )
        page.screenshot(path=str(SCREENSHOTS / "ext-3-reloaded-clicked-end.png"))
        # a row of the step table does the same
        page.click("#flowbook-dag-panel tr[data-step=start]")
        page.wait_for_function(
            "() => window.jupyterapp.shell.currentWidget.content.activeCellIndex === 1"
        )
    finally:
        page.close()


def _in_viewport(page, index: int) -> bool:
    return page.evaluate(
        "i => { const r = document.querySelectorAll('.jp-Notebook .jp-Cell')[i]"
        ".getBoundingClientRect(); return r.top >= 0 && r.top < window.innerHeight; }",
        index,
    )


def _tags(page, index: int) -> list[str]:
    return page.evaluate(
        "i => window.jupyterapp.shell.currentWidget.content.widgets[i].model"
        ".getMetadata('tags') || []",
        index,
    )


def _make_step(
    page, index: int, name: str, next_steps: str = "", join: bool = False, shot: str = ""
) -> None:
    """Right-click the cell, "Make this cell a step", fill the form, OK."""
    page.locator(".jp-Notebook .jp-Cell").nth(index).locator(".jp-InputArea-editor").click(
        button="right"
    )
    page.locator(".lm-Menu-item", has_text="Make this cell a step").click()
    dialog = page.locator(".jp-Dialog")
    dialog.locator(".flowbook-step-name").fill(name)
    dialog.locator(".flowbook-step-next").fill(next_steps)
    if join:
        dialog.locator(".flowbook-step-join").check()
    if shot:
        page.screenshot(path=str(SCREENSHOTS / shot))
    dialog.locator("button", has_text="Make step").click()
    dialog.wait_for(state="detached")


def test_make_this_cell_a_step_adds_tags_that_run_as_the_step(lab, browser):
    lab.write_notebook(
        "make_step.ipynb",
        [
            "%load_ext flowbook\n%flow name MadeLabFlow",
            ("self.greeting = 'hi'", ["keep-me"]),
            "print(self.greeting, 'there')",
        ],
    )
    page = open_notebook(browser, lab, "make_step.ipynb")
    try:
        assert badges(page) == {}
        _make_step(page, 1, "start", "end", shot="ext-4-make-step-dialog.png")
        assert _tags(page, 1) == ["keep-me", f"{T}step=start", f"{T}next=end"]
        _make_step(page, 2, "end")
        assert _tags(page, 2) == [f"{T}step=end"]
        page.wait_for_selector(".flowbook-badge[data-step=end]")
        assert {n: b["state"] for n, b in badges(page).items()} == {
            "start": "not-run",
            "end": "not-run",
        }
        # JupyterLab sends the new tags with the cells: they run as the steps
        command(page, "notebook:run-all-cells", wait=False)
        page.wait_for_selector(".flowbook-badge[data-step=end][data-state=done]", timeout=90_000)
        assert "hi there" in notebook_text_with(page, "hi there")
        # An invalid name is refused, the cell stays as it was.
        _make_step(page, 2, "not a name")
        page.get_by_text("is not a valid step name").first.wait_for(timeout=10_000)
        assert _tags(page, 2) == [f"{T}step=end"]
        page.screenshot(path=str(SCREENSHOTS / "ext-5-made-steps-ran.png"))
    finally:
        page.close()


MAGICS = [
    "%load_ext flowbook",
    "%%setup\nimport math",
    "%%parameters\nalpha = 0.5",
    "%%step start --next a b\nself.x = 1",
    "%%step a --next join --no-reuse\nself.y = 2",
    "%%step b --next join --retry 2\nself.y = 3",
    "%%step join --join --next end\nself.z = max(i.y for i in inputs)",
    "%%step end\nprint(self.z)",
    ("print('exploring')", ["keep-me"]),
]


def _cells(path) -> list[tuple[str, list[str]]]:
    nb = nbformat.read(str(path), as_version=4)
    return [(c.source, list(c.metadata.get("tags", []))) for c in nb.cells]


def test_convert_between_tags_and_magics_as_flowbook_tag_does(lab, browser, tmp_path):
    from flowbook.notebook.tagging import convert_notebook

    path = lab.write_notebook("convert.ipynb", MAGICS)
    convert_notebook(str(path), "tags", str(tmp_path / "tags.ipynb"))
    convert_notebook(str(tmp_path / "tags.ipynb"), "magics", str(tmp_path / "magics.ipynb"))
    page = open_notebook(browser, lab, "convert.ipynb")
    try:
        show_dag(page)
        page.wait_for_selector("#flowbook-dag-panel g#flowbook-dag-join")
        page.click("#flowbook-dag-panel .flowbook-convert-tags")
        command(page, "docmanager:save")
        assert _cells(path) == _cells(tmp_path / "tags.ipynb")
        # the badges and the DAG read the tags as they read the magics
        assert set(badges(page)) == {"start", "a", "b", "join", "end"}
        page.wait_for_selector("#flowbook-dag-panel g#flowbook-dag-b")
        page.screenshot(path=str(SCREENSHOTS / "ext-6-converted-to-tags.png"))
        page.click("#flowbook-dag-panel .flowbook-convert-magics")
        command(page, "docmanager:save")
        assert _cells(path) == _cells(tmp_path / "magics.ipynb")
        assert "%%step b --next join --retry 2" in _cells(path)[5][0]
        assert "%%step a --next join --no-reuse" in _cells(path)[4][0]
    finally:
        page.close()


def test_flow_ui_at_the_top_follows_the_cells_and_load_names_the_selection(lab, browser):
    lab.write_notebook(
        "ui_top.ipynb",
        [
            "%load_ext flowbook\n%flow name UiTopLabFlow\n%flow ui",
            "%%step start --next end\nself.test_data = [1, 2, 3]\nself.model = {'kind': 'svc'}",
            "%%step end\nprint('ok')",
            "print('loaded', repr(globals().get('model')), 'test_data' in globals())",
        ],
    )
    page = open_notebook(browser, lab, "ui_top.ipynb")
    try:
        # Run All: `%flow ui` of a flow that never ran opens an empty panel, and goes on.
        command(page, "notebook:run-all-cells", wait=False)
        page.wait_for_function(
            "() => document.body.textContent.includes('loaded None False')", timeout=90_000
        )
        # The panel opened before any run, then drew each step as its cell ran.
        panel = page.locator(".flowbook-panel").first
        page.wait_for_selector("g#flowbook-node-end.flowbook-state-done", timeout=60_000)
        assert page.query_selector("g#flowbook-node-start.flowbook-state-done")
        assert "Error" not in notebook_text(page)
        panel.scroll_into_view_if_needed()
        page.screenshot(path=str(SCREENSHOTS / "ext-7-flow-ui-at-top.png"))
        # Artifact browser: the Load name follows the chosen artifact.
        selects = panel.locator(".flowbook-artifacts select")  # flow, run, step, task, artifact
        selects.nth(2).select_option("start")
        selects.nth(4).select_option("test_data")
        name_box = panel.locator(".flowbook-artifacts input[type=text]")
        page.wait_for_function(
            "() => document.querySelector('.flowbook-artifacts input[type=text]').value === 'test_data'"
        )
        selects.nth(4).select_option("model")
        page.wait_for_function(
            "() => document.querySelector('.flowbook-artifacts input[type=text]').value === 'model'"
        )
        assert name_box.input_value() == "model"
        panel.locator(".flowbook-artifacts button", has_text="Load").click()
        page.wait_for_selector(".flowbook-artifacts >> text=Loaded as")
        page.screenshot(path=str(SCREENSHOTS / "ext-8-load-name.png"))
        page.evaluate(
            """async () => { const nb = window.jupyterapp.shell.currentWidget.content;
            nb.activeCellIndex = 3; await window.jupyterapp.commands.execute('notebook:run-cell'); }"""
        )
        page.wait_for_function(
            "() => document.body.textContent.includes(\"loaded {'kind': 'svc'} False\")",
            timeout=30_000,
        )
    finally:
        page.close()
