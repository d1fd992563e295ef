"""The IPython face of flowbook: ``%%step``, ``%%setup``, ``%%parameters`` and ``%flow``.

Magics stay thin: parse the line, call the session, display. Errors flowbook raises
on purpose fail the cell with their one-line message (no traceback from inside
flowbook); a failing step shows the user's own traceback, printed by its task.
"""

from __future__ import annotations

import shlex
import sys
import time
from typing import TYPE_CHECKING, Any

from IPython.core.magic import Magics, cell_magic, line_magic, magics_class

from ..exceptions import FlowbookError
from ..names import check_name, check_run_id
from ..options import RESUME, RESUME_STEP, RUN, TOP, by_name, defaults
from .cellmeta import REFUSAL
from .cells import StepCell, _ArgumentParser, _tag_values, parse_step_line, step_from_tags
from .console import NotebookConsole
from .results import FlowResults
from .session import NotebookSession

if TYPE_CHECKING:
    from IPython.core.interactiveshell import InteractiveShell

FLOW_HELP = """\
%flow run [--name value ...] [--max-workers N] [--max-num-splits N] [--tag T ...] [--quiet]
%flow run MyFlow [--name value ...]   run a FlowSpec class defined in this notebook
%flow resume [STEP] [--origin-run-id ID] [the options of %flow run]
%flow run --reuse ...               reuse earlier identical tasks, say why each step runs
%flow show | status | name NAME     (status: which steps are stale, and why)
%flow reuse on|off                  re-running an unchanged step cell reuses its result
%flow explain [RUN]                 for each task of a run: reused or ran, and why
%flow ui [RUN | last]               a live panel of this notebook's cells, or of a run
%flow logs PATHSPEC [--stderr]
%flow export --to flow|metaflow PATH
%flow deploy argo-workflows [--only-json] [--force] [--datastore URL] (docs/argo.md)
%flow deploy step-functions [--only-json] [--force] [--datastore URL] (docs/step_functions.md)
"""


@magics_class
class FlowbookMagics(Magics):
    shell: InteractiveShell  # (Magics allows None; these are always made with a shell)

    def __init__(self, shell: Any, session: NotebookSession) -> None:
        super().__init__(shell)
        self.session = session
        #: True while the body of a %%setup/%%parameters cell is transformed.
        self.in_body = False

    # ------------------------------------------------------------ cell magics
    @cell_magic
    def step(self, line: str, cell: str) -> None:
        """%%step NAME [--next A B] [--foreach X] [--join] [--retry N] [--catch V] [--timeout S]"""
        where = f"In[{self.shell.execution_count}]"
        self._run_step_cell(parse_step_line(line, cell, where=where, first_line=2))

    def _run_step_cell(self, step_cell: StepCell) -> None:
        for warning in self.session.exploration_warnings(step_cell):
            print(f"flowbook warning: {warning}", file=sys.stderr)
        console = NotebookConsole(plain=True, label=step_cell.name)
        started = time.perf_counter()
        records = self.session.run_step(step_cell, console)
        elapsed = time.perf_counter() - started
        artifacts = sorted(
            {name for r in records for name in r.get("artifacts", {})}
            - set(self.session.parameter_names)
        )
        tasks = f"{len(records)} tasks" if len(records) != 1 else "1 task"
        reused = sum(1 for r in records if r.get("reused_from"))
        if reused:
            tasks += ", reused" if reused == len(records) else f", {reused} reused"
        print(
            f"✓ step '{step_cell.name}' done in {elapsed:.2f} s ({tasks}); "
            f"flow.{step_cell.name}: {', '.join(artifacts) or 'no artifacts'}"
        )
        stale = sorted(self.session.stale)
        if stale:
            print(f"  stale now: {', '.join(stale)} (run their cells again to refresh)")

    def tagged_cell(self, kind: str, tags: list[str], code: str) -> None:
        """A cell marked with tags, as its magic would run it (see notebook/cellmeta.py)."""
        where = f"In[{self.shell.execution_count}]"
        if kind == "refuse":
            raise FlowbookError(REFUSAL.format(where=where))
        # IPython types @cell_magic's result as "the method, or a decorator of one"
        if kind == "setup":
            return self.setup("", code)  # type: ignore[misc, call-arg, return-value]
        if kind == "parameters":
            return self.parameters("", code)  # type: ignore[misc, call-arg, return-value]
        values = _tag_values(tags)
        if not values.get("step"):
            raise FlowbookError(f"{where}: the tag flowbook:step needs =NAME.")
        step_cell = step_from_tags(values, code, f"{where} (tagged flowbook:step={values['step']})")
        return self._run_step_cell(step_cell)

    @cell_magic
    def setup(self, line: str, cell: str) -> None:
        """%%setup: imports, functions and classes every step can use."""
        self._execute(cell, "<setup>")
        self.session.register_setup(cell)

    @cell_magic
    def parameters(self, line: str, cell: str) -> None:
        """%%parameters: plain assignments that become the flow's Parameters."""
        self.session.register_parameters(cell)
        self._execute(cell, "<parameters>")

    def _execute(self, cell: str, filename: str) -> None:
        self.in_body = True  # the cell's tags must not turn its body into the magic again
        try:
            code = self.shell.transform_cell(cell)
        finally:
            self.in_body = False
        exec(compile(code, filename, "exec"), self.shell.user_ns)

    # ------------------------------------------------------------ %flow
    @line_magic
    def flow(self, line: str) -> Any:
        """%flow run|resume|show|status|logs|export|name ... (see %flow help)"""
        words = shlex.split(line)
        if not words or words[0] in ("help", "-h", "--help"):
            print(FLOW_HELP, end="")
            return None
        command, rest = words[0], words[1:]
        handler = getattr(self, f"_flow_{command}", None)
        if handler is None:
            raise FlowbookError(f"%flow {command}: unknown command.\n{FLOW_HELP}")
        return handler(rest)

    def _flow_name(self, rest: list[str]) -> None:
        if len(rest) != 1 or not rest[0].isidentifier():
            raise FlowbookError("%flow name NAME: give one Python identifier.")
        self.session.flow_name_override = rest[0]
        print(f"This notebook's flow is now named {rest[0]}.")

    def _flow_run(self, rest: list[str]) -> Any:
        flow_class = rest.pop(0) if rest and not rest[0].startswith("-") else None
        settings = read_flow_line(RUN, rest)
        if flow_class:
            return self._run_class(flow_class, settings)
        console = NotebookConsole(quiet=settings["quiet"])
        executor_keys = (
            "executor",
            "dask_scheduler",
            "dask_scheduler_file",
            "allow_local_datastore",
        )
        run = lambda: self.session.run_flow(  # noqa: E731
            settings["parameters"],
            console,
            max_workers=settings["max_workers"],
            max_num_splits=settings["max_num_splits"],
            tags=settings["tags"],
            executor_settings={key: settings.get(key) for key in executor_keys},
            reuse=settings["reuse"],
        )
        if settings["quiet"]:
            return self._finish(run())
        panel = self._live_panel(self.session.full_graph())
        return self._finish(self._with_panel(panel, run))

    def _live_panel(self, graph: Any):
        from IPython.display import display

        from ..widgets import FlowPanel, RunState

        panel = FlowPanel(
            graph,
            RunState([node.name for node in graph]),
            self.session.datastore,
            on_resume=lambda step, origin: self._with_panel(
                panel,
                lambda: self.session.run_flow(
                    {},
                    NotebookConsole(quiet=True),
                    resume=True,
                    origin_run_id=origin,
                    resume_step=step,
                ),
            ),
        )
        panel.display_handle = display(panel, display_id=True)
        return panel

    def _with_panel(self, panel: Any, run: Any) -> Any:
        """Run with ``panel`` following the scheduler's events; attach the outcome to it."""
        self.session.listeners.append(panel.on_event)
        try:
            outcome = run()
        finally:
            self.session.listeners.remove(panel.on_event)
        panel.attach_run(outcome.pathspec, outcome.successful)
        handle = getattr(panel, "display_handle", None)
        if handle is not None:  # refresh the text form that front-end-less readers see
            handle.update(panel)
        return outcome

    def _flow_resume(self, rest: list[str]) -> Any:
        settings = read_flow_line(RESUME, rest)
        outcome = self.session.run_flow(
            settings["parameters"],
            NotebookConsole(quiet=settings["quiet"]),
            max_workers=settings["max_workers"],
            max_num_splits=settings["max_num_splits"],
            resume=True,
            origin_run_id=settings["origin_run_id"],
            resume_step=settings[RESUME_STEP],
            tags=settings["tags"],
            reuse=settings["reuse"],
        )
        return self._finish(outcome)

    def _finish(self, outcome: Any) -> Any:
        if not outcome.successful:
            raise FlowbookError(
                f"Run {outcome.pathspec} failed: "
                + "; ".join(outcome.failures)
                + f"\nFix the step and resume it with: %flow resume --origin-run-id {outcome.run_id}"
            )
        print(f"✓ run {outcome.pathspec} finished; its results: flow.last_run")
        return None

    def _run_class(self, name: str, settings: dict[str, Any]) -> Any:
        from ..flowspec import FlowSpec
        from ..runner import NBRunner

        flow_cls = self.shell.user_ns.get(name)
        if not (isinstance(flow_cls, type) and issubclass(flow_cls, FlowSpec)):
            raise FlowbookError(f"%flow run {name}: no FlowSpec class named {name} here.")
        from ..graph import FlowGraph

        FlowGraph.from_flow_class(flow_cls)  # a graph error is one line, at this cell
        runner = NBRunner(flow_cls, show_output=not settings["quiet"])
        try:
            running = runner.runner.run(
                max_workers=settings["max_workers"],
                max_num_splits=settings["max_num_splits"],
                tags=settings["tags"],
                **settings["parameters"],
            )
            run, status, stderr = running.run, running.status, running.stderr
        finally:
            runner.cleanup()
        if status != "successful":
            raise FlowbookError(f"Flow {name} failed:\n{stderr.strip()[-2000:]}")
        print(f"✓ run {run.pathspec} finished")
        return run

    def _flow_ui(self, rest: list[str]) -> Any:
        """%flow ui [RUN|last]: a panel that follows this notebook's step cells, or of a run."""
        from IPython.display import display

        from ..client import Flow, Run
        from ..widgets import panel_for_run

        datastore = self.session.datastore
        if not rest:  # even before any step ran: the panel fills as the cells run
            display(self._session_panel())
            return None
        if rest == ["last"]:
            rest = []
        run: Run | None
        if rest:
            pathspec = rest[0] if "/" in rest[0] else f"{self.session.flow_name}/{rest[0]}"
            run = Run(pathspec, datastore=datastore, namespace=None)
        elif self.session.last_run_pathspec:
            run = Run(self.session.last_run_pathspec, datastore=datastore, namespace=None)
        else:
            run = Flow(self.session.flow_name, datastore=datastore).latest_run
            if run is None:
                raise FlowbookError(f"Flow {self.session.flow_name} has no run to show yet.")
        panel = None

        def resume(step: str | None, origin: str | None) -> Any:
            return self._with_panel(
                panel,
                lambda: self.session.run_flow(
                    {},
                    NotebookConsole(quiet=True),
                    resume=True,
                    origin_run_id=origin,
                    resume_step=step,
                ),
            )

        own_flow = run.flow_name == self.session.flow_name and bool(self.session.steps)
        panel = panel_for_run(run, on_resume=resume if own_flow else None)
        display(panel)
        return None

    def _session_panel(self) -> Any:
        """A panel that follows this notebook's %%step cells as they run."""
        from ..widgets import FlowPanel, RunState

        session = self.session

        def current_state() -> RunState:
            graph = session.partial_graph()
            run = f"{session.flow_name}/{session.run_id}" if session.run_id else None
            return RunState.from_records(
                [node.name for node in graph], session.latest, session.stale, run
            )

        panel = FlowPanel(session.partial_graph(), current_state(), session.datastore)

        def follow(kind: str, info: dict) -> None:
            if kind == "step_done":
                panel.graph = session.partial_graph()
                panel.state = current_state()
                panel.refresh(force=True)
            elif session.running_step is not None:  # events of a %%step cell
                if kind == "run_seeded":  # the step's old tasks make way for the new
                    if session.running_step not in panel.graph:  # its first run: draw it now
                        panel.graph = session.partial_graph()
                    panel.state.step(session.running_step).tasks.clear()
                panel.on_event(kind, info)

        session.listeners.append(follow)
        session.live_panel = panel
        return panel

    def _flow_show(self, rest: list[str]) -> None:
        graph = self.session.partial_graph()
        for node in graph:
            state = _state(self.session, node.name)
            print(f"Step {node.name} [{state}]")
            if node.doc:
                print("    " + node.doc.replace("\n", "\n    "))
            if node.foreach:
                print(f"    => {node.out_funcs[0]} (foreach over '{node.foreach}')")
            elif node.out_funcs:
                print("    => " + ", ".join(node.out_funcs))
        try:
            self.session.full_graph()
        except FlowbookError as exc:
            print(f"\n(not a complete flow yet: {exc})")

    def _flow_status(self, rest: list[str]) -> None:
        print(repr(FlowResults(self.session)))
        reasons = {name: why for name, why in self.session.staleness().items() if why}
        if reasons:
            print("stale (running the cell again would not reuse its result):")
            for name, why in reasons.items():
                print(f"  {name}: {why}")
        elif self.session.latest:
            print("up to date: every step that ran would be reused as it is")
        if self.session.run_id:
            print(f"interactive run: {self.session.flow_name}/{self.session.run_id}")
        if self.session.last_run_pathspec:
            print(f"latest %flow run: {self.session.last_run_pathspec}")

    def _flow_reuse(self, rest: list[str]) -> None:
        """%flow reuse on|off: whether re-running an unchanged step cell reuses its result."""
        if rest not in (["on"], ["off"]):
            state = "on" if self.session.reuse_cells else "off"
            raise FlowbookError(f"%flow reuse on|off (now {state}).")
        self.session.reuse_cells = rest == ["on"]
        print(f"Reuse of unchanged step cells is {rest[0]}.")

    def _flow_explain(self, rest: list[str]) -> None:
        """%flow explain [RUN]: each task of a run (default: the latest %flow run, else
        the interactive run), reused or run, and why."""
        from ..client import Run

        if len(rest) > 1:
            raise FlowbookError("%flow explain [RUN_ID]")
        if rest:
            check_run_id(rest[0])
            pathspec = f"{self.session.flow_name}/{rest[0]}"
        elif self.session.last_run_pathspec:
            pathspec = self.session.last_run_pathspec
        elif self.session.run_id:
            pathspec = f"{self.session.flow_name}/{self.session.run_id}"
        else:
            raise FlowbookError(f"Flow {self.session.flow_name} has no run to explain yet.")
        run = Run(pathspec, datastore=self.session.datastore, namespace=None)
        print(f"Run {run.pathspec}:")
        for line in run.explain():
            print(f"  {line}")

    def _flow_logs(self, rest: list[str]) -> None:
        from ..client import Task

        parser = _ArgumentParser(prog="%flow logs", add_help=False)
        parser.add_argument("pathspec")
        parser.add_argument("--stderr", action="store_true")
        args = parser.parse_args(rest)
        parts = args.pathspec.strip("/").split("/")
        if len(parts) == 3:
            parts = [self.session.flow_name, *parts]
        task = Task("/".join(parts), datastore=self.session.datastore, namespace=None)
        print(task.stderr if args.stderr else task.stdout, end="")

    def _flow_deploy(self, rest: list[str]) -> None:
        from ..cli.deploy_cmds import deploy_from_session

        deploy_from_session(self.session, rest)

    def _flow_export(self, rest: list[str]) -> None:
        from ..export.flowfile import export_flow_file

        parser = _ArgumentParser(prog="%flow export", add_help=False)
        parser.add_argument("--to", choices=["flow", "metaflow"], default="flow")
        parser.add_argument("path")
        args = parser.parse_args(rest)
        target = "metaflow" if args.to == "metaflow" else "flowbook"
        export_flow_file(self.session.source(), args.path, target)
        print(f"Wrote flow {self.session.flow_name} to {args.path}")


def read_flow_line(command: str, words: list[str]) -> dict[str, Any]:
    """The settings of ``%flow run|resume WORDS`` (after a flow class name, if any).

    The same settings as ``python flow.py COMMAND`` gives for the same words; the
    options are those of :mod:`flowbook.options` marked for notebooks, anything else
    ``--name value`` is a parameter. FlowbookError naming what is wrong.
    """
    where = f"%flow {command}"
    table = {**by_name(TOP), **by_name(command)}
    settings = defaults(command)
    parameters: dict[str, str] = {}
    args = list(words)
    while args:
        word = args.pop(0)
        if not word.startswith("--"):
            if command == RESUME and settings[RESUME_STEP] is None:
                settings[RESUME_STEP] = word
                continue
            raise FlowbookError(f"{where}: expected --name value pairs, got {word!r}.")
        name, has_value, value = word.partition("=")
        option = table.get(name)
        if option is not None and not option.notebook:
            raise FlowbookError(f"{where}: {name} is not available in a notebook.")
        if option is not None and option.is_flag:
            if has_value:
                raise FlowbookError(f"{where}: {name} takes no value.")
            settings[option.key] = name == option.name
            continue
        if not has_value:
            if not args:
                raise FlowbookError(f"{where}: {name} needs a value.")
            value = args.pop(0)
        if option is None:
            if name[2:] in parameters:
                raise FlowbookError(f"{where}: parameter {name} is given twice.")
            parameters[name[2:]] = value
            continue
        try:
            value = option.convert(value)
        except FlowbookError as exc:
            raise FlowbookError(f"{where}: {exc}") from None
        if option.repeatable:
            settings[option.key].append(value)
        else:
            settings[option.key] = value
    if settings.get("origin_run_id") is not None:
        check_run_id(settings["origin_run_id"])
    if settings.get(RESUME_STEP) is not None:
        check_name(settings[RESUME_STEP], "step name")
    settings["parameters"] = parameters
    return settings


def _state(session: NotebookSession, step: str) -> str:
    if step not in session.latest:
        return "not run"
    return "stale" if step in session.stale else "done"


def load_ipython_extension(shell: Any) -> None:
    from . import cellmeta, labcomm

    session = NotebookSession(shell)
    magics = FlowbookMagics(shell, session)
    shell.register_magics(magics)
    shell._flowbook_magics = magics
    cellmeta.install(magics)
    shell.user_ns["flow"] = FlowResults(session)
    shell._flowbook_session = session
    labcomm.install(session)  # the comm of the JupyterLab extension (extension/)


def unload_ipython_extension(shell: Any) -> None:
    from . import labcomm

    labcomm.uninstall(shell)
    session = getattr(shell, "_flowbook_session", None)
    if session is not None:
        session.close()
        del shell._flowbook_session
    from . import cellmeta

    cellmeta.uninstall(shell)
    if hasattr(shell, "_flowbook_magics"):
        del shell._flowbook_magics
    for kind, names in (("cell", ("step", "setup", "parameters")), ("line", ("flow",))):
        for name in names:
            shell.magics_manager.magics[kind].pop(name, None)
    if isinstance(shell.user_ns.get("flow"), FlowResults):
        del shell.user_ns["flow"]
