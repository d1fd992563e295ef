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
from .state import FAILED, RunState, foreach_frame

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


CHIP_STYLE = "display:inline-block;padding:0 8px;border-radius:9px;border:1px solid {};background:{};font-size:90%"
TABLE_STYLE = "border-collapse:collapse;table-layout:fixed;min-width:520px"
CELL_STYLE = "padding:2px 8px;text-align:left;vertical-align:top;border-bottom:1px solid #e0e0e0"
STATUS_COLUMNS = (
    ("step", 160),
    ("state", 90),
    ("tasks", 150),
    ("attempts", 70),
    ("duration", 80),
    ("why", 320),
)
TASK_COLUMNS = (
    ("split", 50),
    ("input", 170),
    ("task", 120),
    ("state", 90),
    ("attempts", 70),
    ("duration", 80),
    ("why", 300),
)


def state_chip(state: str) -> str:
    """A step's or task's state as a coloured chip (the DAG's colours)."""
    from .dag import COLORS

    fill, line = COLORS.get(state, ("#ffffff", "#9e9e9e"))
    return (
        f"<span class='flowbook-chip flowbook-chip-{state}' "
        f"style='{CHIP_STYLE.format(line, fill)}'>{escape(state)}</span>"
    )


def outcome_chip(outcome: str) -> str:
    """A run's outcome (not started, running, successful, failed) as a chip."""
    from .dag import COLORS
    from .state import DONE, NOT_RUN, RUNNING

    state = {"running": RUNNING, "successful": DONE, "failed": FAILED, "interactive": DONE}.get(
        outcome, NOT_RUN
    )
    fill, line = COLORS[state]
    return (
        f"<span class='flowbook-outcome flowbook-chip' "
        f"style='{CHIP_STYLE.format(line, fill)}'>{escape(outcome)}</span>"
    )


def _table(columns: tuple, rows: list[str], css: str) -> str:
    cols = "".join(f"<col style='width:{width}px'>" for _, width in columns)
    head = "".join(f"<th style='{CELL_STYLE}'>{escape(name)}</th>" for name, _ in columns)
    return (
        f"<table class='{css}' style='{TABLE_STYLE}'><colgroup>{cols}</colgroup>"
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def _td(text: str, css: str = "") -> str:
    return f"<td class='{css}' style='{CELL_STYLE}'>{text}</td>"


def _seconds(value: float | None) -> str:
    return f"{value:.2f} s" if value is not None else ""


def status_html(state: RunState, input_of: Callable[[Any], str] | None = None) -> str:
    """A table of the steps; a step of several tasks expands into a table of its tasks,
    one row per task with its split index and input value (``input_of(task)``)."""
    rows = []
    for name, step in state.steps.items():
        progress = ""
        if step.total > 1:
            progress = (
                f"<progress value='{step.done}' max='{step.total}' style='width:80px'>"
                f"</progress> {step.done}/{step.total}"
            )
        elif step.tasks:
            progress = "1"
        rows.append(
            f"<tr class='flowbook-row flowbook-state-{step.state}' data-step='{escape(name)}'>"
            + _td(f"<b>{escape(name)}</b>", "flowbook-step-name")
            + _td(state_chip(step.state) + (" <i>reused</i>" if step.reused else ""))
            + _td(progress)
            + _td(str(step.attempts or ""))
            + _td(_seconds(step.duration))
            + _td(escape(step.reason or ""), "flowbook-reason")
            + "</tr>"
        )
        if len(step.tasks) > 1:
            tasks = sorted(
                step.tasks.values(),
                key=lambda t: (t.index is None, t.index or 0, _task_order(t.task_id)),
            )
            task_rows = [
                f"<tr class='flowbook-task-row' data-task='{escape(t.task_id)}'>"
                + _td("" if t.index is None else str(t.index))
                + _td(f"<code>{escape(input_of(t) if input_of else '')}</code>", "flowbook-input")
                + _td(escape(t.task_id))
                + _td(state_chip(t.state))
                + _td(str(t.attempts))
                + _td(_seconds(t.duration))
                + _td(escape(t.reason or ""), "flowbook-reason")
                + "</tr>"
                for t in tasks
            ]
            inner = _table(TASK_COLUMNS, task_rows, "flowbook-task-table")
            rows.append(
                f"<tr class='flowbook-tasks' data-step='{escape(name)}'>"
                f"<td colspan='{len(STATUS_COLUMNS)}' style='padding:0 0 4px 24px'>"
                f"<details><summary>{len(step.tasks)} tasks of {escape(name)}</summary>"
                f"{inner}</details></td></tr>"
            )
    return _table(STATUS_COLUMNS, rows, "flowbook-status-table")


def _task_order(task_id: str) -> tuple:
    return (0, int(task_id), "") if task_id.isdigit() else (1, 0, task_id)


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
        self._foreach_values: dict[str, Any] = {}  # foreach artifacts, by blob name
        self._frames_read: set[tuple[str | None, str, str]] = set()
        self._auto_load_name = ""  # the name the Load box was given for the last selection
        self.title = widgets.HTML()
        self.dashboard: str | None = None  # the cluster's, while a run on one is shown
        self.dag = widgets.HTML()
        self.dag.add_class("flowbook-dag")
        self.status = widgets.HTML()
        self.status.add_class("flowbook-status")
        self.artifacts = self._artifact_browser()
        self.logs = self._log_viewer()
        self.resume_box = self._resume_controls()
        self.tabs = widgets.Tab()
        self._set_tabs(resume=False)
        super().__init__([self.title, widgets.HBox([self.dag, self.status]), self.tabs])
        self.add_class("flowbook-panel")
        self.refresh(force=True)

    # ------------------------------------------------------------ rendering
    def refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_refresh < REFRESH_INTERVAL:
            return
        self._last_refresh = now
        flow, _, run_id = (self.state.pathspec or "").partition("/")
        run = f" run <code class='flowbook-run-id'>{escape(run_id)}</code>" if run_id else ""
        dashboard = ""
        if self.dashboard:
            link = escape(self.dashboard, quote=True)
            dashboard = (
                f" <a class='flowbook-dashboard' href='{link}' target='_blank'>Dask dashboard</a>"
            )
        self.title.value = (
            f"<b class='flowbook-title'>{escape(flow or self.graph.name)}</b>{run} "
            + outcome_chip(self.state.outcome())
            + dashboard
        )
        self.dag.value = dag_html(self.graph, self.state)
        self._read_frames()
        self.status.value = status_html(self.state, self._input_of)
        if force:
            self._refresh_runs()
        self._refresh_choices()
        self._refresh_log()
        self._refresh_resume()

    def on_event(self, kind: str, info: dict) -> None:
        """A scheduler event: update the state and re-render (at most every 0.2 s)."""
        if kind == "run_seeded":  # the run exists now: the title and run picker show it
            if info.get("pathspec") and not self.state.pathspec:
                self.state.pathspec = info["pathspec"]
            self.dashboard = info.get("dashboard") or self.dashboard
            self.state.started = True
            self.refresh(force=True)
            return
        if kind == "tick":  # time passed: durations grow, logs of running tasks grow
            self.refresh()
            return
        step = info.get("step")
        before = self.state.steps[step].state if step in self.state.steps else None
        self.state.apply(kind, info)
        after = self.state.steps[step].state if step in self.state.steps else None
        # a step whose state changed is drawn at once; other events at most every 0.2 s
        self.refresh(force=kind == "task_failed" or before != after)

    def _read_frames(self, limit: int = 50) -> None:
        """Split indexes of finished tasks the live events did not carry (from their records)."""
        flow, _, run_id = (self.state.pathspec or "").partition("/")
        if self.datastore is None or not run_id:
            return
        for name, step in self.state.steps.items():
            if len(step.tasks) < 2:
                continue
            for task in step.tasks.values():
                key = (self.state.pathspec, name, task.task_id)
                if task.frame is not None or task.state == "running" or key in self._frames_read:
                    continue
                if limit <= 0:
                    return
                limit -= 1
                self._frames_read.add(key)
                try:
                    _, record = self.datastore.latest_attempt(flow, run_id, name, task.task_id)
                except Exception:
                    continue
                task.frame = foreach_frame(record or {})

    def _input_of(self, task: Any) -> str:
        """A short repr of a foreach task's input value, or ''."""
        frame = task.frame
        if not frame or not frame.get("sha") or self.datastore is None:
            return ""
        sha = frame["sha"]
        if sha not in self._foreach_values:
            try:
                self._foreach_values[sha] = self.datastore.blobs.get(
                    sha, what=f"Foreach artifact '{frame.get('var')}'"
                )
            except Exception:
                self._foreach_values[sha] = None
        try:
            text = repr(self._foreach_values[sha][frame["index"]])
        except Exception:
            return ""
        return text if len(text) <= 40 else text[:37] + "..."

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
        # The name follows the selection, unless the user typed a name of their own.
        if self.load_name.value in ("", self._auto_load_name):
            self.load_name.value = name
            self._auto_load_name = name

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

    def _set_tabs(self, resume: bool) -> None:
        """Artifacts and Logs; Resume only while a failed run is shown."""
        children = [self.artifacts, self.logs] + ([self.resume_box] if resume else [])
        if list(self.tabs.children) == children:
            return
        self.tabs.children = children
        for index, title in enumerate(("Artifacts", "Logs", "Resume")[: len(children)]):
            self.tabs.set_title(index, title)

    def _refresh_resume(self) -> None:
        failed_run = self.state.finished and self.state.successful is False
        self._set_tabs(resume=failed_run)
        _set_options(self.resume_step, list(self.state.steps))
        failed = [n for n, s in self.state.steps.items() if s.state == FAILED]
        if failed:
            self.resume_step.value = failed[0]
        # The origin is the failed run shown; a successful run is no one's origin.
        self.resume_origin.value = (
            self.state.pathspec.split("/")[-1] if failed_run and self.state.pathspec else ""
        )
        self.resume_button.disabled = not (self.on_resume is not None and failed_run)

    def resume(self) -> Any:
        """Resume the shown (failed) run from the chosen step; the new run shows here."""
        if self.on_resume is None:
            self.resume_message.value = "Resume is not available here."
            return None
        step, origin = self.resume_step.value, self.resume_origin.value or None
        self.state = RunState(list(self.state.steps))
        self.log_text.value = ""  # the failed run's traceback does not belong to the new run
        self.load_message.value = ""
        self.resume_message.value = (
            f"Resuming run {escape(origin or '')} from {escape(step or '')}..."
        )
        self.refresh(force=True)
        outcome = self.on_resume(step, origin)
        pathspec = getattr(outcome, "pathspec", "") or ""
        if pathspec and self.state.pathspec != pathspec:
            self.attach_run(pathspec, getattr(outcome, "successful", None))
        self.resume_message.value = f"Resumed run {escape(origin or '')} as {escape(pathspec)}."
        self._refresh_log()
        return outcome
