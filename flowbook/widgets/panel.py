"""The flow panel: DAG, run status, artifact browser, logs and resume controls.

A :class:`FlowPanel` renders a :class:`RunState`; live, it is fed the scheduler's
events through :meth:`FlowPanel.on_event` and re-renders in place (throttled), so
the output never grows and nothing flickers. Without a front end its text/plain
form is a readable summary.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from html import escape
from typing import Any

import ipywidgets as widgets

from ..graph import FlowGraph
from .dag import dag_html
from .preview import artifact_html
from .state import FAILED, RunState

REFRESH_INTERVAL = 0.2


def graph_of_run(run: Any) -> FlowGraph:
    """The FlowGraph recorded with a run (partial: its steps and transitions)."""
    from ..graph import StepNode

    steps = run.graph
    nodes = [
        StepNode(
            name=s["name"],
            out_funcs=list(s.get("next", [])),
            foreach=s.get("foreach"),
            is_join=bool(s.get("join")),
            doc=s.get("doc", ""),
            lineno=index,
        )
        for index, s in enumerate(steps)
    ]
    return FlowGraph(run.flow_name, nodes, partial=True)


def _set_options(picker: widgets.Dropdown, options: list[str]) -> None:
    """New options for a picker, keeping its value when it is still there."""
    if list(picker.options) == options:
        if picker.value is None and options:
            picker.value = options[0]
        return
    keep = picker.value if picker.value in options else None
    picker.options = options
    picker.value = keep if keep is not None else (options[0] if options else None)


def status_html(state: RunState) -> str:
    """One row per step; a foreach's tasks expand on demand (<details>)."""
    rows = []
    for name, step in state.steps.items():
        duration = f"{step.duration:.2f} s" if step.duration is not None else ""
        progress = ""
        if step.total > 1:
            progress = f"<progress value='{step.done}' max='{step.total}'></progress> {step.done}/{step.total}"
        cell = escape(name)
        if len(step.tasks) > 1:
            tasks = "".join(
                f"<li>{escape(t.task_id)}: {t.state}, attempt {t.attempts}"
                + (f", {t.duration:.2f} s" if t.duration is not None else "")
                + "</li>"
                for t in step.tasks.values()
            )
            cell = f"<details><summary>{escape(name)}</summary><ul>{tasks}</ul></details>"
        rows.append(
            f"<tr class='flowbook-row flowbook-state-{step.state}' data-step='{escape(name)}'>"
            f"<td>{cell}</td><td>{step.state}</td><td>{step.attempts or ''}</td>"
            f"<td>{duration}</td><td>{progress}</td></tr>"
        )
    return (
        "<table class='flowbook-status-table'><thead><tr><th>step</th><th>state</th>"
        "<th>attempts</th><th>duration</th><th>progress</th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
    )


class FlowPanel(widgets.VBox):
    """Everything about one flow's run in one widget."""

    def __init__(
        self,
        graph: FlowGraph,
        state: RunState,
        datastore: Any = None,
        on_resume: Callable[[str | None, str | None], Any] | None = None,
    ) -> None:
        self.graph = graph
        self.state = state
        self.datastore = datastore
        self.on_resume = on_resume
        self._last_refresh = 0.0
        self._syncing = False  # True while the pickers follow the shown run
        self.title = widgets.HTML()
        self.dag = widgets.HTML()
        self.dag.add_class("flowbook-dag")
        self.status = widgets.HTML()
        self.status.add_class("flowbook-status")
        self.artifacts = self._artifact_browser()
        self.logs = self._log_viewer()
        self.resume_box = self._resume_controls()
        tabs = widgets.Tab(children=[self.artifacts, self.logs, self.resume_box])
        for index, title in enumerate(("Artifacts", "Logs", "Resume")):
            tabs.set_title(index, title)
        super().__init__([self.title, widgets.HBox([self.dag, self.status]), tabs])
        self.add_class("flowbook-panel")
        self.refresh(force=True)

    # ------------------------------------------------------------ rendering
    def refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_refresh < REFRESH_INTERVAL:
            return
        self._last_refresh = now
        outcome = ""
        if self.state.finished:
            outcome = " — successful" if self.state.successful else " — failed"
        self.title.value = (
            f"<b class='flowbook-title'>{escape(self.graph.name)}</b> "
            f"{escape(self.state.pathspec or '')}{outcome}"
        )
        self.dag.value = dag_html(self.graph, self.state)
        self.status.value = status_html(self.state)
        if force:
            self._refresh_runs()
        self._refresh_choices()
        self._refresh_log()
        self._refresh_resume()

    def on_event(self, kind: str, info: dict) -> None:
        """A scheduler event: update the state and re-render (at most every 0.2 s)."""
        if kind == "run_seeded" and info.get("pathspec") and not self.state.pathspec:
            self.state.pathspec = info["pathspec"]
        if kind == "tick":  # time passed: durations grow, logs of running tasks grow
            self.refresh()
            return
        self.state.apply(kind, info)
        self.refresh(force=kind == "task_failed")

    def attach_run(self, pathspec: str, successful: bool | None = None) -> None:
        self.state.pathspec = pathspec
        if successful is not None:
            self.state.finish(successful)
        self.refresh(force=True)

    def _repr_mimebundle_(self, **kwargs: Any) -> dict:
        bundle = super()._repr_mimebundle_(**kwargs) or {}
        bundle["text/plain"] = self.state.summary()
        return bundle

    def __repr__(self) -> str:
        return self.state.summary()

    # ------------------------------------------------------------ artifacts
    def _client_run(self):
        from ..client import Run

        if not self.state.pathspec or self.datastore is None:
            return None
        try:
            return Run(self.state.pathspec, datastore=self.datastore, namespace=None)
        except Exception:
            return None

    def show_run(self, run: Any) -> None:
        """Show another run (of any flow) in this panel."""
        self.graph = graph_of_run(run)
        self.state = RunState.from_run(run)
        self.datastore = run.datastore
        self.refresh(force=True)

    def _refresh_runs(self) -> None:
        """Point the flow and run pickers at the shown run, without switching runs."""
        if self.datastore is None:
            return
        flow, _, run_id = (self.state.pathspec or f"{self.graph.name}/").partition("/")
        self._syncing = True
        try:
            flows = self.datastore.list_flows()
            if list(self.flow_picker.options) != flows:
                self.flow_picker.options = flows
            self.flow_picker.value = flow if flow in flows else None
            runs = self.datastore.list_runs(flow)[:100] if flow in flows else []
            if list(self.run_picker.options) != runs:
                self.run_picker.options = runs
            self.run_picker.value = run_id if run_id in runs else None
        finally:
            self._syncing = False

    def _on_flow(self) -> None:
        if self._syncing or self.datastore is None or not self.flow_picker.value:
            return
        _set_options(self.run_picker, self.datastore.list_runs(self.flow_picker.value)[:100])

    def _on_run(self) -> None:
        from ..client import Run

        flow, run_id = self.flow_picker.value, self.run_picker.value
        if self._syncing or not (flow and run_id) or self.state.pathspec == f"{flow}/{run_id}":
            return
        try:
            run = Run(f"{flow}/{run_id}", datastore=self.datastore, namespace=None)
        except Exception:
            return
        self.show_run(run)

    def _artifact_browser(self) -> widgets.VBox:
        self.flow_picker = widgets.Dropdown(description="flow")
        self.run_picker = widgets.Dropdown(description="run")
        self.flow_picker.observe(lambda change: self._on_flow() if change["new"] else None, "value")
        self.run_picker.observe(lambda change: self._on_run() if change["new"] else None, "value")
        self.step_picker = widgets.Dropdown(description="step")
        self.task_picker = widgets.Dropdown(description="task")
        self.artifact_picker = widgets.Dropdown(description="artifact")
        self.preview = widgets.HTML()
        self.preview.add_class("flowbook-preview")
        self.load_name = widgets.Text(placeholder="name in the kernel")
        self.load_button = widgets.Button(description="Load")
        self.load_message = widgets.HTML()
        self.step_picker.observe(lambda _: self._on_step(), "value")
        self.task_picker.observe(lambda _: self._on_task(), "value")
        self.artifact_picker.observe(lambda _: self._on_artifact(), "value")
        self.load_button.on_click(lambda _: self.load_into_kernel())
        box = widgets.VBox(
            [
                widgets.HBox([self.flow_picker, self.run_picker]),
                widgets.HBox([self.step_picker, self.task_picker, self.artifact_picker]),
                self.preview,
                widgets.HBox([self.load_name, self.load_button, self.load_message]),
            ]
        )
        box.add_class("flowbook-artifacts")
        return box

    def _refresh_choices(self) -> None:
        steps = [name for name, step in self.state.steps.items() if step.tasks]
        _set_options(self.step_picker, steps)
        self._on_step(keep=True)

    def _on_step(self, keep: bool = False) -> None:
        step = self.state.steps.get(self.step_picker.value) if self.step_picker.value else None
        _set_options(self.task_picker, list(step.tasks) if step else [])
        if self.log_task_picker is not None:
            labels = [
                f"{name}/{task_id}" for name, s in self.state.steps.items() for task_id in s.tasks
            ]
            _set_options(self.log_task_picker, labels)
        if not keep:
            self._on_task()

    def _task(self):
        from ..client import Task

        if not (self.state.pathspec and self.step_picker.value and self.task_picker.value):
            return None
        try:
            return Task(
                f"{self.state.pathspec}/{self.step_picker.value}/{self.task_picker.value}",
                datastore=self.datastore,
                namespace=None,
            )
        except Exception:
            return None

    def _on_task(self) -> None:
        task = self._task()
        names = sorted(a.id for a in task) if task is not None and task.finished else []
        _set_options(self.artifact_picker, names)
        self._on_artifact()

    def _on_artifact(self) -> None:
        task = self._task()
        name = self.artifact_picker.value
        if task is None or not name:
            self.preview.value = ""
            return
        self.preview.value = artifact_html(task[name])
        if not self.load_name.value:
            self.load_name.value = name

    def load_into_kernel(self) -> str | None:
        """Put the chosen artifact into the kernel's namespace under the typed name."""
        task = self._task()
        name = self.artifact_picker.value
        target = (self.load_name.value or name or "").strip()
        if task is None or not name:
            self.load_message.value = "Choose an artifact first."
            return None
        if not target.isidentifier():
            self.load_message.value = f"'{escape(target)}' is not a valid Python name."
            return None
        from IPython import get_ipython

        shell = get_ipython()
        if shell is None:
            self.load_message.value = "No kernel to load into."
            return None
        shell.user_ns[target] = task[name].data
        self.load_message.value = f"Loaded as <code>{escape(target)}</code>."
        return target

    # ------------------------------------------------------------ logs
    log_task_picker: widgets.Dropdown | None = None

    def _log_viewer(self) -> widgets.VBox:
        self.log_task_picker = widgets.Dropdown(description="task")
        self.log_stream = widgets.ToggleButtons(options=["stdout", "stderr"])
        self.log_text = widgets.HTML()
        self.log_text.add_class("flowbook-log-text")
        self.log_task_picker.observe(lambda _: self._refresh_log(), "value")
        self.log_stream.observe(lambda _: self._refresh_log(), "value")
        box = widgets.VBox([widgets.HBox([self.log_task_picker, self.log_stream]), self.log_text])
        box.add_class("flowbook-logs")
        return box

    def _refresh_log(self) -> None:
        if (
            self.log_task_picker is None
            or not self.log_task_picker.value
            or not self.state.pathspec
        ):
            return
        from ..client import Task

        try:
            task = Task(
                f"{self.state.pathspec}/{self.log_task_picker.value}",
                datastore=self.datastore,
                namespace=None,
            )
            text = task.stdout if self.log_stream.value == "stdout" else task.stderr
        except Exception as exc:
            text = f"({type(exc).__name__}: {exc})"
        self.log_text.value = f"<pre>{escape(text[-20000:])}</pre>"

    # ------------------------------------------------------------ resume
    def _resume_controls(self) -> widgets.VBox:
        self.resume_step = widgets.Dropdown(description="from step")
        self.resume_origin = widgets.Text(description="origin run")
        self.resume_button = widgets.Button(description="Resume", button_style="warning")
        self.resume_message = widgets.HTML()
        self.resume_button.on_click(lambda _: self.resume())
        box = widgets.VBox(
            [
                widgets.HBox([self.resume_step, self.resume_origin, self.resume_button]),
                self.resume_message,
            ]
        )
        box.add_class("flowbook-resume")
        return box

    def _refresh_resume(self) -> None:
        _set_options(self.resume_step, list(self.state.steps))
        failed = [n for n, s in self.state.steps.items() if s.state == FAILED]
        if failed:
            self.resume_step.value = failed[0]
        if self.state.pathspec:
            self.resume_origin.value = self.state.pathspec.split("/")[-1]
        can_resume = (
            self.on_resume is not None and self.state.finished and not self.state.successful
        )
        self.resume_button.disabled = not can_resume

    def resume(self) -> Any:
        """Resume the shown (failed) run from the chosen step; the new run shows here."""
        if self.on_resume is None:
            self.resume_message.value = "Resume is not available here."
            return None
        step, origin = self.resume_step.value, self.resume_origin.value or None
        self.state = RunState(list(self.state.steps))
        self.refresh(force=True)
        self.resume_message.value = (
            f"Resuming run {escape(origin or '')} from {escape(step or '')}..."
        )
        outcome = self.on_resume(step, origin)
        self.resume_message.value = f"Resumed as {escape(getattr(outcome, 'pathspec', ''))}."
        return outcome
