"""Widgets: the run state model, the DAG rendering, and panels built from real runs."""

from __future__ import annotations

import subprocess
import sys

import nbformat
import pytest
from nbclient import NotebookClient

from flowbook.graph import FlowGraph, StepNode
from flowbook.widgets import dag as dag_module
from flowbook.widgets.dag import dag_html, dag_svg, dag_text
from flowbook.widgets.state import DONE, FAILED, NOT_RUN, RUNNING, STALE, RunState


def foreach_graph() -> FlowGraph:
    return FlowGraph(
        "Demo",
        [
            StepNode("start", ["body"], foreach="items", doc="Make the items", lineno=1),
            StepNode("body", ["join"], lineno=2),
            StepNode("join", ["end"], is_join=True, lineno=3),
            StepNode("end", [], lineno=4),
        ],
    )


# ---------------------------------------------------------------------- state
def test_every_step_state_transition():
    state = RunState(["start", "body", "join", "end"])
    assert state.steps["start"].state == NOT_RUN
    state.apply("task_started", {"step": "start", "task_id": "1"})
    assert state.steps["start"].state == RUNNING
    state.apply("task_finished", {"step": "start", "task_id": "1"})
    assert state.steps["start"].state == DONE
    for task_id in ("2", "3", "4"):
        state.apply("task_started", {"step": "body", "task_id": task_id})
    state.apply("task_finished", {"step": "body", "task_id": "2"})
    body = state.steps["body"]
    assert (body.state, body.done, body.total) == (RUNNING, 1, 3)
    state.apply("task_failed", {"step": "body", "task_id": "3"})
    assert body.state == RUNNING  # task 4 still runs
    state.apply("task_finished", {"step": "body", "task_id": "4"})
    assert body.state == FAILED
    assert state.failed_steps() == ["body"]
    # a retry of task 3: a new attempt of the same task
    state.apply("task_started", {"step": "body", "task_id": "3"})
    assert body.tasks["3"].attempts == 2 and body.state == RUNNING
    state.apply("task_finished", {"step": "body", "task_id": "3"})
    assert (body.state, body.done, body.attempts) == (DONE, 3, 2)
    state.apply("task_cloned", {"step": "join", "task_id": "5"})
    assert state.steps["join"].state == DONE
    state.mark_stale({"join", "end"})
    assert state.steps["join"].state == STALE and state.steps["end"].state == STALE
    state.finish(False)
    assert "failed" in state.summary().splitlines()[0]
    assert "body                 done 3/3" in state.summary()


# ---------------------------------------------------------------------- DAG
def test_dag_svg_has_shapes_states_ids_and_tooltips():
    state = RunState(["start", "body", "join", "end"])
    state.apply("task_finished", {"step": "start", "task_id": "1"})
    state.apply("task_started", {"step": "body", "task_id": "2"})
    state.apply("task_failed", {"step": "body", "task_id": "2"})
    svg = dag_svg(foreach_graph(), state)
    assert svg.startswith("<svg")
    assert 'id="flowbook-node-start"' in svg and "flowbook-state-done" in svg
    assert 'id="flowbook-node-body"' in svg and "flowbook-state-failed" in svg
    assert "flowbook-state-not-run" in svg
    assert "Make the items" in svg  # the docstring, as the node's tooltip
    assert "#ffd6d6" in svg  # failed in red


def test_dag_falls_back_to_text_without_dot(monkeypatch):
    monkeypatch.setattr(dag_module, "has_dot", lambda: False)
    html = dag_html(foreach_graph())
    assert "<svg" not in html
    assert "start -&gt; body (foreach items)" in html
    assert "apt-get install graphviz" in html
    assert dag_text(foreach_graph()).splitlines()[0].startswith("[not-run ] start")


# ---------------------------------------------------------------------- panels
FLOW = """
import os
import numpy as np
from flowbook import FlowSpec, step

class PanelFlow(FlowSpec):
    @step
    def start(self):
        self.items = [1, 2, 3]
        self.matrix = np.arange(12).reshape(3, 4)
        print("starting up")
        self.next(self.body, foreach="items")

    @step
    def body(self):
        if self.input == 2 and os.path.exists("broken"):
            raise ValueError("two is broken")
        self.double = self.input * 2
        self.next(self.join)

    @step
    def join(self, inputs):
        self.total = sum(i.double for i in inputs)
        self.next(self.end)

    @step
    def end(self):
        pass

if __name__ == "__main__":
    PanelFlow()
"""


@pytest.fixture
def failed_run(run_flow, client):
    (run_flow.workdir / "broken").write_text("x")
    result = run_flow(FLOW, "run")
    assert result.returncode == 1
    return client.Flow("PanelFlow").latest_run


def test_panel_of_a_failed_run_shows_it_and_resumes_it(failed_run, run_flow, client):
    from flowbook.runner import Runner
    from flowbook.widgets import panel_for_run, ui

    resumed = []

    def on_resume(step, origin):
        (run_flow.workdir / "broken").unlink()
        runner = Runner(str(run_flow.workdir / "flow.py"), show_output=False, env=run_flow.env)
        with runner.resume(origin_run_id=origin, step=step) as running:
            resumed.append((step, origin, running.status))
            return running.run

    panel = panel_for_run(failed_run, on_resume=on_resume)
    assert panel.state.steps["body"].state == FAILED
    assert "flowbook-state-failed" in panel.dag.value
    assert "flowbook-row flowbook-state-failed' data-step='body'" in panel.status.value
    assert panel.resume_step.value == "body"
    assert panel.resume_origin.value == failed_run.id
    assert not panel.resume_button.disabled
    assert "failed" in repr(panel).splitlines()[0]
    # artifacts: a NumPy array shows its shape and dtype
    panel.step_picker.value = "start"
    panel.artifact_picker.value = "matrix"
    assert "shape (3, 4), dtype int64" in panel.preview.value
    assert "numpy.ndarray" in panel.preview.value
    # logs of a task
    panel.log_task_picker.value = next(o for o in panel.log_task_picker.options if "start/" in o)
    assert "starting up" in panel.log_text.value
    panel.log_stream.value = "stderr"
    assert panel.log_text.value == "<pre></pre>"
    # the Resume button
    outcome = panel.resume()
    assert resumed == [("body", failed_run.id, "successful")]
    assert outcome.successful and outcome.data.total == 12
    # ui() finds the same run by name
    assert ui("PanelFlow", datastore=str(run_flow.datastore)).state.pathspec.startswith(
        "PanelFlow/"
    )


def test_load_into_kernel_needs_a_name_and_a_kernel(failed_run):
    from flowbook.widgets import panel_for_run

    panel = panel_for_run(failed_run)
    panel.step_picker.value = "start"
    panel.artifact_picker.value = "items"
    panel.load_name.value = "not a name"
    assert panel.load_into_kernel() is None
    assert "not a valid Python name" in panel.load_message.value
    panel.load_name.value = "items_copy"
    assert panel.load_into_kernel() is None  # plain Python: no kernel here
    assert "No kernel" in panel.load_message.value
    assert panel.resume_button.disabled  # no resume callback bound


def test_flow_run_shows_a_live_panel_in_a_real_kernel(tmp_path, monkeypatch):
    monkeypatch.setenv("FLOWBOOK_DATASTORE", str(tmp_path / ".flowbook"))
    cells = [
        "%load_ext flowbook\n%flow name KernelPanelFlow",
        "%%step start --next body --foreach items\nself.items = [1, 2, 3]",
        "%%step body --next join\nself.v = self.input * 2",
        "%%step join --join --next end\nself.total = sum(i.v for i in inputs)",
        "%%step end\npass",
        "%flow run",
        "%flow ui last",
        "from flowbook.widgets import ui\npanel = ui('KernelPanelFlow')\n"
        "panel.step_picker.value = 'join'\npanel.artifact_picker.value = 'total'\n"
        "panel.load_name.value = 'my_total'\npanel.load_into_kernel()\nprint(my_total)",
        "%flow run --quiet",
    ]
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(c) for c in cells]
    NotebookClient(nb, kernel_name="python3", timeout=120).execute(cwd=str(tmp_path))

    def bundles(cell):
        return [o["data"] for o in cell.outputs if o.output_type in ("display_data",)]

    run_cell = nb.cells[5]
    shown = bundles(run_cell)
    assert shown and "application/vnd.jupyter.widget-view+json" in shown[0]
    # the text form (papermill, plain IPython) was refreshed when the run ended
    updates = [o for o in run_cell.outputs if o.output_type == "update_display_data"]
    final_text = (updates[-1]["data"] if updates else shown[0])["text/plain"]
    assert "successful" in final_text.splitlines()[0]
    assert "body                 done 3/3" in final_text
    ui_text = bundles(nb.cells[6])[0]["text/plain"]
    assert ui_text.startswith("KernelPanelFlow/") and "successful" in ui_text
    assert "".join(o.get("text", "") for o in nb.cells[7].outputs).strip() == "12"
    assert not bundles(nb.cells[8])  # --quiet: no panel


def test_flowbook_ui_for_a_flow_run_from_the_command_line(run_flow, client):
    result = run_flow(FLOW, "run")
    assert result.returncode == 0, result
    script = (
        "from flowbook.widgets import ui\n"
        "import flowbook.client as c\nc.namespace(None)\n"
        "panel = ui('PanelFlow')\nprint(repr(panel))"
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=run_flow.workdir,
        env=run_flow.env,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert "successful" in out.stdout.splitlines()[0]
    assert "join                 done" in out.stdout


def test_flow_and_run_pickers_switch_the_panel_to_another_run(failed_run, run_flow, client):
    from flowbook.widgets import panel_for_run

    (run_flow.workdir / "broken").unlink()
    assert run_flow(None, "run").returncode == 0
    newest = client.Flow("PanelFlow").latest_run
    panel = panel_for_run(failed_run)
    assert panel.flow_picker.value == "PanelFlow"
    assert list(panel.run_picker.options) == [newest.id, failed_run.id]
    assert panel.run_picker.value == failed_run.id
    panel.run_picker.value = newest.id
    assert panel.state.pathspec == newest.pathspec
    assert panel.state.successful and "flowbook-state-failed" not in panel.dag.value


def test_flow_ui_follows_the_notebooks_step_cells_live(tmp_path, monkeypatch):
    monkeypatch.setenv("FLOWBOOK_DATASTORE", str(tmp_path / ".flowbook"))
    cells = [
        "%load_ext flowbook\n%flow name LivePanelFlow",
        "%%step start --next body --foreach items\nself.items = [1, 2]",
        "%flow ui",
        "panel = get_ipython()._flowbook_session.live_panel\n"
        "print(panel.state.steps['start'].state, 'body' in panel.state.steps)",
        "%%step body --next end\nself.v = self.input",
        "print(panel.state.steps['body'].state, panel.state.steps['body'].done,"
        " 'flowbook-node-body' in panel.dag.value)",
        "%%step start --next body --foreach items\nself.items = [1, 2, 3]",
        "print(panel.state.steps['start'].state, panel.state.steps['body'].state)",
    ]
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(c) for c in cells]
    NotebookClient(nb, kernel_name="python3", timeout=120).execute(cwd=str(tmp_path))

    def printed(index: int) -> str:
        return "".join(o.get("text", "") for o in nb.cells[index].outputs).strip()

    assert any(o.output_type == "display_data" for o in nb.cells[2].outputs)
    assert printed(3) == "done False"  # a step shows once its cell has run
    assert printed(5) == "done 2 True"
    assert printed(7) == "done stale"


# ---------------------------------------------------------------------- panel fixes
def test_status_is_a_table_with_chips_and_tasks_by_split_index_and_input(failed_run):
    import re

    from flowbook.widgets import panel_for_run

    panel = panel_for_run(failed_run)
    html = panel.status.value
    # one column per header, widths given; the step cell holds only the step's name
    assert "<colgroup>" in html and "<th" in html and "width:" in html
    body_row = re.search(r"<tr class='flowbook-row [^']*' data-step='body'>(.*?)</tr>", html).group(
        1
    )
    assert "<ul>" not in body_row and "<details>" not in body_row
    assert "flowbook-chip-failed" in body_row
    # the foreach's tasks: a table of their own, ordered by split index, with the input value
    tasks = re.search(r"<table class='flowbook-task-table'.*?</table>", html).group(0)
    rows = re.findall(r"<tr class='flowbook-task-row' data-task='(\d+)'>(.*?)</tr>", tasks)
    cells = [re.findall(r"<td[^>]*>(.*?)</td>", row) for _, row in rows]
    assert [(c[0], c[1]) for c in cells] == [
        ("0", "<code>1</code>"),
        ("1", "<code>2</code>"),
        ("2", "<code>3</code>"),
    ]
    assert "flowbook-chip-failed" in cells[1][3] and "flowbook-chip-done" in cells[0][3]


def test_title_names_the_flow_once_with_the_runs_state(failed_run):
    from flowbook.widgets import panel_for_run

    panel = panel_for_run(failed_run)
    assert panel.title.value.count("PanelFlow") == 1
    assert failed_run.id in panel.title.value and ">failed<" in panel.title.value


def test_load_name_follows_the_selection_unless_typed(failed_run):
    from flowbook.widgets import panel_for_run

    panel = panel_for_run(failed_run)
    panel.step_picker.value = "start"
    panel.artifact_picker.value = "items"
    assert panel.load_name.value == "items"
    panel.artifact_picker.value = "matrix"
    assert panel.load_name.value == "matrix"
    panel.load_name.value = "mine"
    panel.artifact_picker.value = "items"
    assert panel.load_name.value == "mine"


def test_resume_leaves_nothing_of_the_failed_run(failed_run, run_flow):
    from flowbook.runner import Runner
    from flowbook.widgets import panel_for_run

    def on_resume(step, origin):
        (run_flow.workdir / "broken").unlink()
        runner = Runner(str(run_flow.workdir / "flow.py"), show_output=False, env=run_flow.env)
        with runner.resume(origin_run_id=origin, step=step) as running:
            return running.run

    panel = panel_for_run(failed_run, on_resume=on_resume)
    assert [panel.tabs.get_title(i) for i in range(len(panel.tabs.children))] == [
        "Artifacts",
        "Logs",
        "Resume",
    ]
    panel.log_task_picker.value = next(o for o in panel.log_task_picker.options if "body/" in o)
    panel.log_stream.value = "stderr"
    failed_task = next(t for t, s in panel.state.steps["body"].tasks.items() if s.state == FAILED)
    panel.log_task_picker.value = f"body/{failed_task}"
    assert "two is broken" in panel.log_text.value
    outcome = panel.resume()
    assert outcome.successful and panel.state.pathspec == outcome.pathspec
    assert ">successful<" in panel.title.value
    assert "two is broken" not in panel.log_text.value
    # a successful run is nobody's origin: no Resume tab, no origin, no active button
    assert len(panel.tabs.children) == 2
    assert panel.resume_origin.value == "" and panel.resume_button.disabled


def test_a_live_run_shows_its_state_and_run_from_its_first_event(run_flow, client):
    import re

    from flowbook.widgets import FlowPanel, RunState
    from flowbook.widgets.panel import graph_of_run

    assert run_flow(FLOW, "run").returncode == 0
    run = client.Flow("PanelFlow").latest_run
    panel = FlowPanel(graph_of_run(run), RunState([s["name"] for s in run.graph]), run.datastore)
    panel.on_event("run_seeded", {"pathspec": run.pathspec, "queued": 1})
    assert panel.run_picker.value == run.id and panel.flow_picker.value == "PanelFlow"
    assert ">running<" in panel.title.value
    panel.on_event("task_started", {"step": "start", "task_id": "1"})
    assert re.search(
        r'id="flowbook-node-start" class="[^"]*flowbook-state-running', panel.dag.value
    )


def test_a_run_on_a_cluster_links_its_dashboard(run_flow, client):
    from flowbook.widgets import FlowPanel, RunState
    from flowbook.widgets.panel import graph_of_run

    assert run_flow(FLOW, "run").returncode == 0
    run = client.Flow("PanelFlow").latest_run
    panel = FlowPanel(graph_of_run(run), RunState([s["name"] for s in run.graph]), run.datastore)
    assert "dashboard" not in panel.title.value
    link = "http://127.0.0.1:8787/status?a=1&b=2"
    panel.on_event("run_seeded", {"pathspec": run.pathspec, "queued": 1, "dashboard": link})
    assert "href='http://127.0.0.1:8787/status?a=1&amp;b=2'" in panel.title.value
    assert ">Dask dashboard</a>" in panel.title.value


def test_flow_ui_at_the_top_opens_empty_and_follows_the_cells(tmp_path, monkeypatch):
    monkeypatch.setenv("FLOWBOOK_DATASTORE", str(tmp_path / ".flowbook"))
    cells = [
        "%load_ext flowbook\n%flow name TopUiFlow",
        "%flow ui",  # the flow has never run
        "panel = get_ipython()._flowbook_session.live_panel\nsess = get_ipython()._flowbook_session\n"
        "seen = []\nsess.listeners.append(lambda k, i: seen.append(('start' in panel.graph, "
        "'flowbook-node-start' in panel.dag.value)) if k == 'task_started' else None)\n"
        "print(panel.state.outcome(), list(panel.state.steps))",
        "%%step start --next end\nself.x = 1",
        "print(seen, panel.state.steps['start'].state, panel.title.value.count('TopUiFlow'))",
        "%%step end\npass",
        "%flow run --quiet",
        "%reload_ext flowbook\n%flow name TopUiFlow",
        "%flow ui",  # an older run exists: still this notebook's cells, not that run
        "p2 = get_ipython()._flowbook_session.live_panel\n"
        "print(p2 is not panel, p2.state.outcome(), [s for s, v in p2.state.steps.items() if v.tasks])",
    ]
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(c) for c in cells]
    NotebookClient(nb, kernel_name="python3", timeout=120).execute(cwd=str(tmp_path))

    def printed(index: int) -> str:
        return "".join(o.get("text", "") for o in nb.cells[index].outputs).strip()

    assert any(o.output_type == "display_data" for o in nb.cells[1].outputs)
    assert printed(2) == "not started []"
    # the step's first run was drawn in the DAG while it ran, not only after it ended
    assert printed(4) == "[(True, True)] done 1"
    assert any(o.output_type == "display_data" for o in nb.cells[8].outputs)
    assert printed(9) == "True not started []"


def test_reused_steps_are_drawn_apart_with_their_reasons_live_and_from_records(run_flow, client):
    import re

    from flowbook.widgets import FlowPanel, RunState
    from flowbook.widgets.panel import graph_of_run, status_html

    assert run_flow(FLOW, "run", "--reuse").returncode == 0
    second = run_flow(None, "run", "--reuse")
    assert second.returncode == 0, second
    run = client.Flow("PanelFlow").latest_run
    graph = graph_of_run(run)
    # from the records (a finished run, or a panel opened later)
    state = RunState.from_run(run)
    assert state.steps["body"].reused and state.steps["join"].reused
    assert state.steps["body"].reason.startswith("reused from ")
    assert state.steps["body"].reason.endswith("; 3 of 3 reused")
    svg = dag_svg(graph, state)
    assert re.search(r'id="flowbook-node-join" class="[^"]*flowbook-reused', svg)
    assert "(reused)" in svg
    table = status_html(state)
    assert "<i>reused</i>" in table
    assert "same code, inputs and parameters" in table
    assert "reused from" in state.summary().splitlines()[1]
    # live: the scheduler's events, as a run with some steps reused and one running
    panel = FlowPanel(graph, RunState([s["name"] for s in run.graph]), run.datastore)
    panel.on_event("run_seeded", {"pathspec": run.pathspec, "queued": 1})
    reused = run["start"].task
    panel.on_event(
        "task_reused",
        {
            "step": "start",
            "task_id": "1",
            "reused_from": reused.reused_from,
            "reason": reused.run_reason,
        },
    )
    panel.on_event(
        "task_reason", {"step": "body", "task_id": "2", "reason": "runs (its code changed)"}
    )
    panel.on_event("task_started", {"step": "body", "task_id": "2"})
    panel.refresh(force=True)
    assert re.search(r'id="flowbook-node-start" class="[^"]*flowbook-reused', panel.dag.value)
    assert not re.search(r'id="flowbook-node-body" class="[^"]*flowbook-reused', panel.dag.value)
    assert "runs (its code changed)" in panel.status.value
    assert panel.state.steps["body"].tasks["2"].reason == "runs (its code changed)"
