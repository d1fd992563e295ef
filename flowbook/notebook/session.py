"""The notebook's flow inside a kernel: registered cells, the interactive run, results.

One :class:`NotebookSession` per kernel. Executing a ``%%step`` cell registers (or
replaces) the step and runs it at once, as task(s) of the session's *interactive
run*, against the latest results of its parent steps in that run. Re-running a step
adds new tasks (nothing stored is overwritten) and marks the steps after it stale.
``%flow run`` runs the whole notebook flow as a new, ordinary run.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

from ..datastore import Datastore
from ..decorators import step_settings
from ..exceptions import FlowbookError, StepFailed
from ..graph import FlowGraph
from ..identity import current_user, system_tags
from ..options import DEFAULT_MAX_NUM_SPLITS, DEFAULT_MAX_WORKERS, flag_value
from ..runtime.fingerprint import code_fingerprints
from ..runtime.frames import parent_info
from ..runtime.launch import store_parameters
from ..runtime.reuse import ReusePlan
from ..runtime.scheduler import Scheduler
from .builder import build_flow, global_names_used, names_defined, step_node
from .cells import NotebookSource, StepCell, flow_name_from_path, parse_parameters
from .console import NotebookConsole

if TYPE_CHECKING:
    from ..datastore.schema import ArtifactEntry, ParentInfo, TaskRecord


class NotebookSession:
    def __init__(self, shell: Any) -> None:
        self.shell = shell
        self.flow_name_override: str | None = None
        self.setup: dict[str, str] = {}
        self.parameter_names: dict[str, Any] = {}
        self.steps: dict[str, StepCell] = {}
        self.latest: dict[str, list[TaskRecord]] = {}
        self.stale: set[str] = set()
        #: pathspec -> what the task made (artifact names and SHAs), for staleness
        self._made: dict[str, frozenset] = {}
        #: setup name -> id() of the value its setup cell made
        self._setup_values: dict[str, int] = {}
        self.run_id: str | None = None
        self.last_task_id = 0
        self.last_run_pathspec: str | None = None
        self._executor = None
        self._datastore: Datastore | None = None
        self.listeners: list = []
        #: The step whose cell is running now (None outside a %%step cell).
        self.running_step: str | None = None
        #: The panel `%flow ui` opened last for this notebook's cells (it follows them).
        self.live_panel: Any = None
        #: Whether re-running a step cell whose code and inputs did not change reuses
        #: its result (`%flow reuse on|off`; FLOWBOOK_RUN_REUSE=0 turns it off).
        reuse = os.environ.get("FLOWBOOK_RUN_REUSE")
        self.reuse_cells = flag_value("FLOWBOOK_RUN_REUSE", reuse) if reuse else True

    # ------------------------------------------------------------ naming, resources
    @property
    def flow_name(self) -> str:
        if self.flow_name_override:
            return self.flow_name_override
        path = self.shell.user_ns.get("__session__") or os.environ.get("JPY_SESSION_NAME")
        if path and str(path).endswith(".ipynb"):
            return flow_name_from_path(str(path))
        return "NotebookFlow"

    @property
    def datastore(self) -> Datastore:
        if self._datastore is None:
            self._datastore = Datastore()
        return self._datastore

    @property
    def executor(self):
        from .executor import NotebookExecutor

        if self._executor is None or not self._executor.alive():
            self._executor = NotebookExecutor()
        return self._executor

    def close(self) -> None:
        if self._executor is not None:
            self._executor.close()
            self._executor = None

    # ------------------------------------------------------------ registration
    def _cell_key(self) -> str:
        try:
            parent = self.shell.kernel.get_parent()
            cell_id = (parent.get("metadata") or {}).get("cellId")
        except Exception:
            cell_id = None
        return cell_id or f"exec-{self.shell.execution_count}"

    def register_setup(self, code: str) -> None:
        self.setup[self._cell_key()] = code
        user_ns = self.shell.user_ns
        for name in names_defined(code):  # the values this cell made (see source())
            if name in user_ns:
                self._setup_values[name] = id(user_ns[name])

    def _rebound(self) -> set[str]:
        """Setup names the kernel now holds another value for than their cell made (an
        exploration cell assigned them): the tasks see that value, not the code's."""
        user_ns = self.shell.user_ns
        return {
            name
            for name, ident in self._setup_values.items()
            if name in user_ns and id(user_ns[name]) != ident
        }

    def _stale_steps(self, graph: FlowGraph) -> set[str]:
        """Steps whose latest tasks consumed other results than their parent steps'
        latest ones (by content), and every step after one of those."""
        stale: set[str] = set()
        for node in graph.sorted_nodes():
            name = node.name
            if name not in self.latest:
                continue
            if any(parent in stale for parent in node.in_funcs):
                stale.add(name)
                continue
            for parent in node.in_funcs:
                if parent not in self.latest:
                    continue
                current = {
                    self._made.get(_pathspec(self.flow_name, r)) for r in self.latest[parent]
                }
                consumed = {
                    self._made.get(pathspec)
                    for record in self.latest[name]
                    for pathspec in record.get("parents", [])
                    if pathspec.split("/")[2] == parent
                }
                if None in consumed or consumed != current:
                    stale.add(name)
                    break
        return stale

    def register_parameters(self, code: str) -> None:
        self.parameter_names.update(parse_parameters(code, "the %%parameters cell").values)

    def source(self) -> NotebookSource:
        return NotebookSource(
            flow_name=self.flow_name,
            setup=list(self.setup.values()),
            parameters={name: self._parameter_value(name) for name in self.parameter_names},
            steps=dict(self.steps),
            rebound=self._rebound(),
        )

    def _parameter_value(self, name: str) -> Any:
        # The kernel's current value wins: papermill injects new values as assignments.
        return self.shell.user_ns.get(name, self.parameter_names[name])

    def _setup_names(self) -> set[str]:
        names: set[str] = set()
        for code in self.setup.values():
            names |= names_defined(code)
        return names

    def _globals(self) -> dict:
        """What step code sees: the setup cells' names, taken from the kernel."""
        user_ns = self.shell.user_ns
        snapshot = {name: user_ns[name] for name in self._setup_names() if name in user_ns}
        snapshot["__name__"] = "__main__"
        snapshot["__builtins__"] = __builtins__
        return snapshot

    def exploration_warnings(self, cell: StepCell) -> list[str]:
        """Global names the step uses that only exploration cells define."""
        _, tree = step_node(cell, self.flow_name)
        setup = self._setup_names()
        warnings = []
        for name in sorted(global_names_used(tree)):
            if name in setup:
                continue
            where = self._defining_input(name)
            if name in self.shell.user_ns or where:
                warnings.append(
                    f"step '{cell.name}' uses '{name}', which only an exploration cell "
                    f"defines{f' ({where})' if where else ''}: the headless run and the "
                    "export will not see it. Define it in a %%setup cell."
                )
            else:
                warnings.append(f"step '{cell.name}' uses '{name}', which no %%setup cell defines.")
        return warnings

    def _defining_input(self, name: str) -> str | None:
        history = self.shell.user_ns.get("In") or []
        for number in range(len(history) - 1, 0, -1):
            if name in names_defined(_python_only(history[number])):
                return f"In[{number}]"
        return None

    # ------------------------------------------------------------ running one step
    def run_step(self, cell: StepCell, console: NotebookConsole) -> list[TaskRecord]:
        """Register ``cell`` and run its task(s); returns their records."""
        _, tree = step_node(cell, self.flow_name)  # refuse a broken cell before replacing
        where = f"Flow {self.flow_name}, step '{cell.name}' ({cell.where or 'its cell'})"
        join_hint = f"%%step {cell.name} --join (tag flowbook:join)"
        if not cell.join and "inputs" in _names_read(tree):
            raise FlowbookError(
                f"{where}: the body reads `inputs`, which only a join step has; write {join_hint}."
            )
        previous = self.steps.get(cell.name)
        self.steps[cell.name] = cell
        try:
            flow_cls, graph = build_flow(self.source(), self._globals(), partial=True)
            parents_of = graph[cell.name].in_funcs
            if not cell.join and len(parents_of) > 1:
                raise FlowbookError(
                    f"{where}: it has several parents ({', '.join(parents_of)}), so it joins "
                    f"them; write {join_hint} and read their results from `inputs`."
                )
            parents = self._parent_records(graph, cell.name)
        except FlowbookError:
            if previous is None:
                del self.steps[cell.name]
            else:
                self.steps[cell.name] = previous
            raise
        run_id = self._interactive_run(graph)
        executor = self.executor
        executor.define(flow_cls, graph, _sources())
        parameters = self._parameter_index()
        try:
            code, reuse_plan = self._reuse_plan(flow_cls, graph, run_id, parameters, {cell.name})
        except Exception as exc:  # reuse only saves time: the cell still runs
            code, reuse_plan = {}, None
            console.error(f"Reuse is off for this cell: {type(exc).__name__}: {exc}")

        def on_event(kind: str, info: dict) -> None:
            console.event(kind, info)
            self._notify(kind, info)

        scheduler = Scheduler(
            graph,
            self.datastore,
            run_id,
            executor,
            console,
            parameters,
            max_workers=DEFAULT_MAX_WORKERS,
            max_num_splits=10_000,
            user=current_user(),
            only_steps={cell.name},
            on_event=on_event,
            code=code,
            reuse_plan=reuse_plan if self.reuse_cells else None,
            say_first_runs=False,
        )
        scheduler.set_first_task_id(self.last_task_id)
        self.running_step = cell.name
        try:
            ok = scheduler.run(parents)
        finally:
            self.running_step = None
        self.last_task_id = scheduler._last_task_id
        if not ok:
            raise StepFailed(
                f"Step '{cell.name}' failed: " + "; ".join(scheduler.failures),
                pathspec=f"{self.flow_name}/{run_id}/{cell.name}",
            )
        records = sorted(
            scheduler.finished_records,
            key=lambda r: [f.get("index", 0) for f in r.get("foreach_stack", [])],
        )
        self.latest[cell.name] = records
        for record in records:
            self._made[_pathspec(self.flow_name, record)] = _signature(record)
        self.stale = self._stale_steps(graph)
        self._notify("step_done", {"step": cell.name})
        return records

    def _reuse_plan(
        self,
        flow_cls: type,
        graph: FlowGraph,
        run_id: str,
        parameters: dict,
        only: set[str] | None = None,
    ) -> tuple[dict, ReusePlan]:
        """The steps' code fingerprints (of ``only`` those), and what finds an earlier
        identical task of a step: in this session's interactive run, then earlier runs."""
        code = code_fingerprints(flow_cls, graph, self.datastore, only)
        plan = ReusePlan(
            self.datastore, graph, run_id, current_user(), code, parameters, include_this_run=True
        )
        return code, plan

    def staleness(self) -> dict[str, str | None]:
        """For each step cell: None when its latest results are what running it again
        would give (same code, inputs and parameters), else why not."""
        found: dict[str, str | None] = {}
        if not self.steps:
            return found
        flow_cls, graph = build_flow(self.source(), self._globals(), partial=True)
        parameters = self._parameter_index()
        _, plan = self._reuse_plan(flow_cls, graph, self.run_id or "", parameters)
        settings = {node.name: step_settings(node.decorators, node.name) for node in graph}
        for name in self.steps:
            if name not in self.latest:
                found[name] = "not run yet"
                continue
            found[name] = None
            try:
                parent_records = self._parent_records(graph, name)
            except FlowbookError as exc:
                found[name] = str(exc)
                continue
            parents = [parent_info(self.flow_name, r) for r in parent_records]
            lists = {
                r["next"].get("sha")
                for r in parent_records
                if cast("Mapping[str, Any]", r.get("next") or {}).get("sha")
            }
            for record in self.latest[name]:
                frames = record.get("foreach_stack") or []
                if lists and frames and frames[-1].get("sha") not in lists:
                    found[name] = f"its foreach input changed: the list '{frames[-1]['var']}'"
                    break
                task_parents = _parents_of(record, parents)
                decision = plan.decide(
                    name, record.get("split_stack", []), task_parents, settings[name]["reuse"]
                )
                if decision.origin is None:
                    found[name] = decision.reason
                    break
        for name, why in list(found.items()):  # what follows a stale step is stale too
            if why and why != "not run yet":
                for after in sorted(_downstream(graph, name)):
                    if found.get(after) is None and after in self.latest:
                        found[after] = f"step '{name}' before it is stale"
        return found

    def _parent_records(self, graph: FlowGraph, step: str) -> list[TaskRecord]:
        if step == "start":
            return []
        parents = graph[step].in_funcs
        if not parents:
            raise FlowbookError(
                f"Flow {self.flow_name}: no step goes to '{step}' yet (no registered step "
                f"calls self.next(self.{step})); run the cell of its parent step first."
            )
        records: list[TaskRecord] = []
        for parent in parents:
            if parent not in self.latest:
                raise FlowbookError(
                    f"Flow {self.flow_name}: step '{step}' needs the results of step "
                    f"'{parent}', which has not run yet in this session; run its cell first."
                )
            records.extend(self.latest[parent])
        if step == "end" and any(r.get("split_stack") for r in records):
            split = records[0]["split_stack"][-1]["step"]
            raise FlowbookError(
                f"Flow {self.flow_name}: step 'end' follows a branch of the split at step "
                f"'{split}' that has not been joined; add a join step (%%step NAME --join) first."
            )
        return records

    def _interactive_run(self, graph: FlowGraph) -> str:
        if self.run_id is None:
            ds = self.datastore
            ds.storage.check_usable_by_tasks()
            user = current_user()
            self.run_id = ds.new_run_id(self.flow_name)
            ds.write_run(
                self.flow_name,
                self.run_id,
                {
                    "flow": self.flow_name,
                    "run_id": self.run_id,
                    "user": user,
                    "tags": ["interactive"],
                    "system_tags": system_tags(user) + ["runtime:notebook"],
                    "created_at": time.time(),
                    "parameters": {},
                    "graph": graph.to_dict(),
                    "origin_run_id": None,
                    "interactive": True,
                },
            )
        return self.run_id

    def _parameter_index(self) -> dict[str, ArtifactEntry]:
        values = {name: self._parameter_value(name) for name in self.parameter_names}
        return store_parameters(self.datastore, values)

    # ------------------------------------------------------------ whole runs
    def run_flow(
        self,
        given: dict[str, str],
        console: NotebookConsole,
        max_workers: int = DEFAULT_MAX_WORKERS,
        max_num_splits: int = DEFAULT_MAX_NUM_SPLITS,
        resume: bool = False,
        origin_run_id: str | None = None,
        resume_step: str | None = None,
        tags: list[str] | None = None,
        executor_settings: dict[str, Any] | None = None,
        reuse: bool = False,
    ):
        """Run the whole notebook flow as a new run (or resume one); returns the outcome.

        ``executor_settings`` (``executor``, ``dask_scheduler``, ...: the options of
        ``%flow run``) may send the tasks to a Dask cluster instead of the kernel's
        task server; the flow then travels to the workers pickled by value."""
        from ..parameters import convert_given, flow_parameters, resolve_parameters
        from ..runtime.launch import run_flow

        flow_cls, graph = build_flow(self.source(), self._globals())
        parameters = flow_parameters(flow_cls)
        if resume:  # only the values given now, checked against the origin run's
            values = convert_given(self.flow_name, parameters, given)
        else:
            values = resolve_parameters(self.flow_name, parameters, given, environ={})
        settings = dict(executor_settings or {})
        kind = settings.get("executor") or os.environ.get("FLOWBOOK_EXECUTOR") or "local"
        executor = None
        if kind == "local":
            executor = self.executor
            executor.define(flow_cls, graph, _sources())
        outcome = run_flow(
            flow_cls,
            graph,
            values,
            datastore_url=self.datastore.url,
            max_workers=max_workers,
            max_num_splits=max_num_splits,
            tags=tags,
            console=console,
            executor=executor,
            executor_settings=settings,
            resume=resume,
            origin_run_id=origin_run_id,
            resume_step=resume_step,
            on_event=self._notify,
            reuse=reuse,
            record_code=True,  # cheap in a kernel: a later --reuse run can reuse this one
        )
        self.last_run_pathspec = outcome.pathspec
        return outcome

    def full_graph(self) -> FlowGraph:
        return build_flow(self.source(), self._globals())[1]

    def partial_graph(self) -> FlowGraph:
        return build_flow(self.source(), self._globals(), partial=True)[1]

    # ------------------------------------------------------------ events
    def _notify(self, kind: str, info: dict) -> None:
        for listener in list(self.listeners):
            try:
                listener(kind, info)
            except Exception:  # a broken view must not break a run
                pass


def _downstream(graph: FlowGraph, step: str) -> set[str]:
    found: set[str] = set()
    todo = [t for t in graph[step].out_funcs if t in graph]
    while todo:
        name = todo.pop()
        if name not in found:
            found.add(name)
            todo.extend(t for t in graph[name].out_funcs if t in graph)
    return found


def _pathspec(flow: str, record: TaskRecord) -> str:
    return f"{flow}/{record['run_id']}/{record['step']}/{record['task_id']}"


def _signature(record: TaskRecord) -> frozenset:
    """What a task made, by content: its artifacts' names and SHAs."""
    return frozenset((name, entry["sha"]) for name, entry in record.get("artifacts", {}).items())


def _parents_of(record: TaskRecord, parents: list[ParentInfo]) -> list[ParentInfo]:
    """The parent infos among ``parents`` that a task's record names, in its order."""
    by_pathspec = {p["pathspec"]: p for p in parents}
    named = [by_pathspec[p] for p in record.get("parents", []) if p in by_pathspec]
    return named if len(named) == len(record.get("parents", [])) else parents


def _sources() -> dict[str, str]:
    import linecache

    return {
        name: "".join(entry[2])
        for name, entry in list(linecache.cache.items())
        if name.startswith(("<step ", "<setup cell ")) and len(entry) == 4
    }


def _names_read(tree: Any) -> set[str]:
    import ast

    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}


def _python_only(code: str) -> str:
    from .cells import strip_ipython_lines

    lines = code.splitlines()
    if lines and lines[0].lstrip().startswith("%%"):
        return ""
    return strip_ipython_lines(code)
