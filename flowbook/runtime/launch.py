"""Start a run: check the datastore, store parameters, run the scheduler, record the outcome."""

from __future__ import annotations

import os
import sys
import time

from ..datastore import Datastore
from ..decorators import step_settings
from ..exceptions import DatastoreError, ParameterError
from ..graph import FlowGraph
from ..identity import current_user, system_tags
from ..options import DEFAULT_MAX_NUM_SPLITS, DEFAULT_MAX_WORKERS
from ..plain import Plain
from .console import Console
from .resume import ResumePlan, find_origin_run
from .scheduler import Scheduler
from .server import TaskServerClient
from .task import execute_task

TYPE_CHECKING = False  # typing costs ~6 ms to import; annotations are strings here
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

    from ..datastore.schema import ArtifactEntry


class RunOutcome(Plain):
    """How a run ended."""

    def __init__(self, flow_name: str, run_id: str, successful: bool, failures: list[str]) -> None:
        self.flow_name = flow_name
        self.run_id = run_id
        self.successful = successful
        self.failures = failures

    @property
    def pathspec(self) -> str:
        return f"{self.flow_name}/{self.run_id}"


def store_parameters(datastore: Datastore, values: dict[str, Any]) -> dict[str, ArtifactEntry]:
    """Each parameter value as an artifact blob; returns the parameters' artifact index."""
    index: dict[str, ArtifactEntry] = {}
    for name, value in values.items():
        index[name] = datastore.store_artifact(value, name)
    return index


def start_task_server(flow_cls: type, graph: FlowGraph) -> TaskServerClient:
    """Fork the warm task server from this process, or spawn one (see docs/architecture.md).

    ``FLOWBOOK_START_METHOD=spawn`` starts a fresh interpreter that imports the flow
    file itself; use it where forking the current process is unsafe.
    """
    if os.environ.get("FLOWBOOK_START_METHOD", "fork") == "spawn":
        source = sys.modules[flow_cls.__module__].__file__
        decospecs = [
            f"{d.name}:" + ",".join(f"{k}={v!r}" for k, v in d.attributes.items())
            for d in graph.cli_decorators
        ]
        return TaskServerClient.start_spawned(("file", source, flow_cls.__name__, decospecs))
    return TaskServerClient.start_forked(lambda spec: execute_task(spec, flow_cls, graph))


def resume_parameters(
    datastore: Datastore, flow: str, origin_run_id: str, given: dict[str, Any]
) -> dict[str, ArtifactEntry]:
    """The origin run's parameter index; a different value given now is refused."""
    record: Mapping[str, Any] = datastore.read_run(flow, origin_run_id) or {}
    index: dict[str, ArtifactEntry] = record.get("parameters", {})
    for name, value in given.items():
        entry = index.get(name)
        old = datastore.load_artifact(entry, name, f"{flow}/{origin_run_id}") if entry else None
        if entry is None or old != value:
            raise ParameterError(
                f"Flow {flow}: cannot change parameter '{name}' on resume (run "
                f"{origin_run_id} used {old!r}, got {value!r}); a resumed run keeps the "
                "parameters of the run it resumes."
            )
    return index


#: The values of ``--executor``.
EXECUTORS = ("local", "dask")


def start_cluster_executor(
    flow_cls: type,
    graph: FlowGraph,
    datastore: Datastore,
    settings: dict[str, Any] | None,
    console: Console,
) -> Any:
    """The executor ``settings`` ask for when it is not the local task server (None
    for ``local``): a Dask cluster's, connected and checked. FlowbookError (one line)
    for an unknown executor or a cluster that cannot run this flow."""
    settings = settings or {}
    kind = settings.get("executor") or os.environ.get("FLOWBOOK_EXECUTOR") or "local"
    if kind not in EXECUTORS:
        from ..exceptions import FlowbookError

        from_env = os.environ.get("FLOWBOOK_EXECUTOR") == kind
        given = "FLOWBOOK_EXECUTOR" if from_env else "--executor"
        raise FlowbookError(f"{given} {kind!r}: expected one of {', '.join(EXECUTORS)}.")
    if kind == "local":
        for option in ("dask_scheduler", "dask_scheduler_file"):
            value = settings.get(option)  # (an environment's default says nothing)
            if value and value != os.environ.get("FLOWBOOK_DASK_SCHEDULER"):
                console.error(
                    f"Warning: --{option.replace('_', '-')} is for --executor dask; "
                    "this run's tasks run on this machine."
                )
        return None
    from .dask_executor import DaskExecutor, scheduler_from_env

    address = settings.get("dask_scheduler")
    if address is None and "dask_scheduler" not in settings:
        address = os.environ.get("FLOWBOOK_DASK_SCHEDULER")
    address, scheduler_file = scheduler_from_env(address)
    scheduler_file = settings.get("dask_scheduler_file") or scheduler_file
    if scheduler_file:
        address = None
        if not os.path.isfile(scheduler_file):
            from ..exceptions import FlowbookError

            raise FlowbookError(f"Dask scheduler file {scheduler_file} does not exist.")
    return DaskExecutor(
        flow_cls,
        graph,
        datastore,
        address=address,
        scheduler_file=scheduler_file,
        allow_local_datastore=bool(settings.get("allow_local_datastore")),
        say=console.message,
    )


class RunTerminated(KeyboardInterrupt):
    """SIGTERM reached the process running the scheduler: stop as on Ctrl-C."""


def _stop_on_sigterm() -> Any:
    """Make SIGTERM stop the run as Ctrl-C does (tasks stopped, run marked failed);
    returns what puts the previous handler back. Only in the main thread."""
    from . import signals

    def terminated(number: int, frame: Any) -> None:
        raise RunTerminated("the run was terminated (SIGTERM)")

    try:
        previous = signals.signal(signals.SIGTERM, terminated)
    except ValueError:  # not the main thread: leave SIGTERM alone
        return None
    return lambda: signals.signal(signals.SIGTERM, previous)


def _write_step_indexes(
    datastore: Datastore, flow: str, run_id: str, scheduler: Scheduler, console: Console
) -> None:
    """Gather the run's task records per step: a read-side copy, so a failure to
    write it is said but does not fail the run (readers fall back to the records)."""
    try:
        datastore.write_step_indexes(flow, run_id, scheduler.finished_records)
    except DatastoreError as exc:
        console.error(
            f"Flow {flow}: run {run_id} succeeded; its step indexes were not written: {exc}"
        )


def _write_status(
    datastore: Datastore,
    flow: str,
    run_id: str,
    successful: bool,
    scheduler: Scheduler,
    console: Console,
) -> bool:
    """Mark the run finished; False (and one line saying why) when that is impossible."""
    record = {"successful": successful, "finished_at": time.time(), "failures": scheduler.failures}
    try:
        datastore.write_run_status(flow, run_id, record)
    except DatastoreError as exc:
        problem = datastore.storage.space_problem()
        scheduler.failures.append(
            f"run {run_id} could not be marked finished: {exc}"
            + (f" ({problem})" if problem else "")
        )
        return False
    return True


def run_flow(
    flow_cls: type,
    graph: FlowGraph,
    parameter_values: dict[str, Any],
    datastore_url: str | None = None,
    max_workers: int = DEFAULT_MAX_WORKERS,
    max_num_splits: int = DEFAULT_MAX_NUM_SPLITS,
    tags: list[str] | None = None,
    console: Console | None = None,
    origin_run_id: str | None = None,
    resume: bool = False,
    resume_step: str | None = None,
    run_id_file: str | None = None,
    executor: Any = None,
    on_event: Any = None,
    executor_settings: dict[str, Any] | None = None,
    reuse: bool = False,
    record_code: bool = False,
) -> RunOutcome:
    """Run ``flow_cls`` to the end (or the first failure) as a new run.

    With ``resume=True`` the new run reuses the successful tasks of
    ``origin_run_id`` (default: the latest run) up to ``resume_step`` or the first
    failure; ``parameter_values`` then holds only the values given explicitly,
    which must equal the origin's. ``executor`` is a task server that stays open
    after the run (a notebook's); by default one is started for this run: the local
    task server, or with ``executor_settings["executor"] == "dask"`` (the settings of
    the command line: ``executor``, ``dask_scheduler``, ``dask_scheduler_file``,
    ``allow_local_datastore``) a :class:`~flowbook.runtime.dask_executor.DaskExecutor`.
    With ``reuse=True`` a task whose code and inputs equal an earlier task's is not
    run: that task's result is cloned (runtime/reuse.py). Its tasks' records keep
    their steps' code fingerprints, so a later run can reuse them, when ``reuse`` or
    ``record_code`` is set (fingerprinting imports ~15 ms of modules a plain run
    does without; a notebook's kernel has them loaded anyway).
    """
    console = console or Console()
    datastore = Datastore(datastore_url)
    datastore.storage.check_usable_by_tasks()
    cluster = None
    if executor is None:
        cluster = start_cluster_executor(flow_cls, graph, datastore, executor_settings, console)
    try:
        return _run(
            flow_cls,
            graph,
            parameter_values,
            datastore,
            max_workers,
            max_num_splits,
            tags,
            console,
            origin_run_id,
            resume,
            resume_step,
            run_id_file,
            executor,
            on_event,
            cluster,
            reuse,
            record_code,
        )
    finally:
        if cluster is not None:
            cluster.close()


def _run(
    flow_cls: type,
    graph: FlowGraph,
    parameter_values: dict[str, Any],
    datastore: Datastore,
    max_workers: int,
    max_num_splits: int,
    tags: list[str] | None,
    console: Console,
    origin_run_id: str | None,
    resume: bool,
    resume_step: str | None,
    run_id_file: str | None,
    executor: Any,
    on_event: Any,
    cluster: Any,
    reuse: bool,
    record_code: bool,
) -> RunOutcome:
    for node in graph:  # a bad decorator value is said before any run is recorded
        step_settings(node.decorators, node.name)
    user = current_user()
    tags = list(dict.fromkeys(tags or []))
    plan = None
    if resume:
        origin_run_id = origin_run_id or find_origin_run(datastore, graph.name, user)
        plan = ResumePlan(datastore, graph, origin_run_id, resume_step)
        parameters = resume_parameters(datastore, graph.name, origin_run_id, parameter_values)
    else:
        parameters = store_parameters(datastore, parameter_values)
    run_id = datastore.new_run_id(graph.name)
    datastore.write_run(
        graph.name,
        run_id,
        {
            "flow": graph.name,
            "run_id": run_id,
            "user": user,
            "tags": tags,
            "system_tags": system_tags(user),
            "created_at": time.time(),
            "parameters": parameters,
            "graph": graph.to_dict(),
            "origin_run_id": origin_run_id if resume else None,
        },
    )
    if run_id_file:  # how a Runner in another process learns the run's id
        with open(run_id_file + ".tmp", "w") as handle:
            handle.write(f"{graph.name}/{run_id}")
        os.replace(run_id_file + ".tmp", run_id_file)
    if resume:
        console.message(f"Resuming run {origin_run_id} as run {run_id}:")
    else:
        console.message(f"Workflow starting (run-id {run_id}):")
    code, reuse_plan = {}, None
    if reuse or record_code:
        from .fingerprint import code_fingerprints

        try:
            code = code_fingerprints(flow_cls, graph, datastore)
        except Exception as exc:  # reuse only saves time: the run still runs
            console.error(
                f"Flow {graph.name}: reuse is off for this run: {type(exc).__name__}: {exc}"
            )
            reuse = False
    if reuse:
        from .reuse import ReusePlan

        reuse_plan = ReusePlan(datastore, graph, run_id, user, code, parameters)
    server = executor or cluster or start_task_server(flow_cls, graph)
    scheduler = Scheduler(
        graph,
        datastore,
        run_id,
        server,
        console,
        parameters,
        max_workers=max_workers,
        max_num_splits=max_num_splits,
        tags=tags,
        user=user,
        resume_plan=plan,
        on_event=on_event,
        code=code,
        reuse_plan=reuse_plan,
    )
    successful = False
    restore = _stop_on_sigterm() if executor is None else None
    try:
        successful = scheduler.run()
        if successful:
            _write_step_indexes(datastore, graph.name, run_id, scheduler, console)
    finally:
        if restore is not None:
            restore()
        if executor is None and cluster is None:
            server.close()
        if not _write_status(datastore, graph.name, run_id, successful, scheduler, console):
            successful = False
    if successful:
        console.message("Done!")
    else:
        for failure in scheduler.failures:
            console.error(f"Flow {graph.name} failed: {failure}")
    return RunOutcome(graph.name, run_id, successful, list(scheduler.failures))
