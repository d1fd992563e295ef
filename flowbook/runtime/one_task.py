"""Run one task anywhere: the entry point of orchestrators (Argo, Step Functions, Dask).

An orchestrator walks the flow's graph itself and starts every task as
``python flow.py step STEP --run-id RUN --task-id TASK --input-paths PATHS`` in a
fresh process on some machine, against a shared datastore, with ids it chose. This
module is what those commands do, as functions taking parsed values:

* :func:`init_run` creates the run (``run.json``, as ``run_flow`` writes it) and its
  *parameters task* ``RUN/_parameters/TASK``, a successful task whose artifacts are
  the parameters. A retried init reuses both.
* :func:`run_step` runs exactly one attempt of one task. Its parents are read from
  their records (their latest successful attempt); its split stack is derived from
  them exactly as the scheduler does (:mod:`flowbook.runtime.frames`). The attempt
  runs in a forked child (:func:`flowbook.runtime.task.execute_task`, which sends the
  child's output to the attempt's log files); this process copies those files to its
  own stdout and stderr as they grow, so the orchestrator's log viewer shows the
  output too, and it enforces ``@timeout``. The ``end`` task marks the run finished
  and successful (``status.json`` and the step indexes); a task that fails with no
  retry left marks the run failed.
* :func:`mark_failed` is for an orchestrator's exit handler.

Nothing here starts a task server or a scheduler: the orchestrator is the scheduler.
See docs/one_task.md.
"""

from __future__ import annotations

import os
import sys
import time

from .. import jsonio
from ..datastore import Datastore
from ..decorators import step_settings
from ..exceptions import CorruptRecordError, DatastoreError, FlowbookError, ParameterError
from ..graph import FlowGraph
from ..names import check, check_run_id, check_task_id, shown
from ..options import DEFAULT_MAX_NUM_SPLITS
from . import signals
from .frames import FramesError, parent_info, task_frames
from .processes import exit_with, hold_lifeline, kill_group
from .spec import TaskSpec

TYPE_CHECKING = False  # typing costs ~6 ms to import; annotations are strings here
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping
    from typing import Any, cast

    from ..datastore.schema import ArtifactEntry, Frame, RunRecord, TaskRecord

#: The step of a run's parameters task (Metaflow's name).
PARAMETERS_STEP = "_parameters"
#: The environment variable holding parameter values as a JSON object (Step Functions).
PARAMETERS_ENV = "FLOWBOOK_PARAMETERS"
#: The environment variable naming the directory an orchestrator reads outputs from.
OUTPUT_DIR_ENV = "FLOWBOOK_OUTPUT_DIR"
#: How often (seconds) the task's log files are copied to this process's output.
TEE_INTERVAL = 0.1


def _say(text: str, error: bool = False, quiet: bool = False) -> None:
    """One line of this process's own (flowbook's, not the task's) output."""
    if quiet and not error:
        return
    stream = sys.stderr if error else sys.stdout
    try:
        stream.write(text + "\n")
        stream.flush()
    except (OSError, ValueError):
        pass


def _open(datastore_url: str | None) -> Datastore:
    datastore = Datastore(datastore_url)
    reason = datastore.storage.process_local_reason()
    if reason is not None:  # the cheap half of check_usable_by_tasks (no probe write)
        datastore.storage.check_usable_by_tasks()
    return datastore


# ---------------------------------------------------------------------- input paths
def parse_input_paths(text: str) -> list[tuple[str, str, str]]:
    """``run/step/task`` triples from ``--input-paths``.

    Accepts a comma-separated list (``r/a/1,r/b/2``), Metaflow's compact form for
    tasks of one step (``r/join/:1,2,3``), and that form compressed (``!`` then the
    base64 of its zlib). Each part is checked against names.py's grammar.
    """
    text = (text or "").strip()
    if not text:
        raise FlowbookError("--input-paths is empty.")
    if text.startswith("!"):
        import binascii
        import zlib

        try:
            text = zlib.decompress(binascii.a2b_base64(text[1:])).decode()
        except (binascii.Error, ValueError, zlib.error, UnicodeDecodeError):
            raise FlowbookError(
                f"--input-paths {shown(text)}: not a compressed list of input paths."
            ) from None
    if ":" in text:
        prefix, _, rest = text.partition(":")
        paths = [prefix + suffix for suffix in rest.split(",")]
    else:
        paths = text.split(",")
    triples = []
    for path in paths:
        parts = path.strip().split("/")
        if len(parts) != 3:
            raise FlowbookError(
                f"--input-paths: {shown(path)} is not of the form RUN_ID/STEP/TASK_ID."
            )
        run_id, step, task_id = parts
        check(run_id, f"run id in input path {shown(path)}:")
        check(step, f"step name in input path {shown(path)}:", leading_underscore=True)
        check(task_id, f"task id in input path {shown(path)}:")
        triples.append((run_id, step, task_id))
    return triples


# ---------------------------------------------------------------------- records
def latest_successful(
    datastore: Datastore, flow: str, run_id: str, step: str, task_id: str
) -> TaskRecord | None:
    """The record of the task's latest successful attempt, or None. The record's
    run, step, task and attempt are where it was found (not what it says)."""
    attempts = datastore.task_attempts(flow, run_id, step, task_id)
    for number in sorted(attempts, reverse=True):
        if "done.json" not in attempts[number]:
            continue
        record = datastore.read_attempt_done(flow, run_id, step, task_id, number)
        if record is not None and record.get("status") == "successful":
            return {**record, "run_id": run_id, "step": step, "task_id": task_id, "attempt": number}
    return None


def final_task_records(datastore: Datastore, flow: str, run_id: str) -> list[TaskRecord]:
    """The final record of every task of a run: its latest successful attempt, else
    its latest finished one (a task with no finished attempt is left out). What the
    step indexes of a finished run hold (``Datastore.write_step_indexes``)."""
    records: list[TaskRecord] = []
    for step in datastore.list_steps(flow, run_id):
        for task_id in datastore.list_tasks(flow, run_id, step):
            try:
                record = latest_successful(datastore, flow, run_id, step, task_id)
                if record is None:
                    attempts = datastore.task_attempts(flow, run_id, step, task_id)
                    done = [n for n, kinds in attempts.items() if "done.json" in kinds]
                    if done:
                        number = max(done)
                        found = datastore.read_attempt_done(flow, run_id, step, task_id, number)
                        if found is not None:
                            record = {
                                **found,
                                "run_id": run_id,
                                "step": step,
                                "task_id": task_id,
                                "attempt": number,
                            }
            except CorruptRecordError:
                continue  # left to the task's own records (readers name it)
            if record is not None:
                records.append(record)
    return records


def _status(datastore: Datastore, flow: str, run_id: str) -> Mapping[str, Any] | None:
    try:
        return datastore.read_run_status(flow, run_id)
    except CorruptRecordError:
        return None  # rewritten below: the run's outcome is being decided now


def _mark_failed(datastore: Datastore, flow: str, run_id: str, failure: str) -> bool:
    """Record ``failure`` in the run's status (failed); False when the run had already
    finished successfully (then nothing changes)."""
    status = _status(datastore, flow, run_id)
    if status is not None and status.get("successful"):
        return False
    failures = [str(f) for f in (status or {}).get("failures", [])]
    if failure not in failures:
        failures.append(failure)
    record = {"successful": False, "finished_at": time.time(), "failures": failures}
    datastore.write_run_status(flow, run_id, record)
    return True


def _check_only_task(datastore: Datastore, flow: str, run_id: str, step: str, task_id: str) -> None:
    """A step outside every split (start, end, a step after the last join) has one
    task per run: refuse a second task id once another has succeeded."""
    for other in datastore.list_tasks(flow, run_id, step):
        if other != task_id and latest_successful(datastore, flow, run_id, step, other):
            raise FlowbookError(
                f"Flow {flow}: run {run_id} has its task of step '{step}' already "
                f"({step}/{other}); a step outside any split has one task per run, so "
                f"{step}/{task_id} cannot be added."
            )


def finish_run(datastore: Datastore, flow: str, run_id: str, quiet: bool = False) -> None:
    """Mark a run whose end task succeeded finished and successful: the step indexes
    (every task's final record, as ``run_flow`` writes them) and ``status.json``.
    A run already marked successful (a retried end task) is left as it is, and so is
    one marked failed meanwhile (an exit handler's verdict is never erased)."""
    status = _status(datastore, flow, run_id)
    if status is not None and status.get("successful"):
        _say(f"Flow {flow}: run {run_id} had finished successfully already.", quiet=quiet)
        return
    if status is not None:
        failures = status.get("failures") or ["no reason recorded"]
        _say(f"Flow {flow}: run {run_id} stays failed ({failures[0]}).", error=True)
        return
    try:
        datastore.write_step_indexes(flow, run_id, final_task_records(datastore, flow, run_id))
    except DatastoreError as exc:  # a read-side copy: readers fall back to the records
        _say(f"Flow {flow}: run {run_id} succeeded; its step indexes were not written: {exc}", True)
    record = {"successful": True, "finished_at": time.time(), "failures": []}
    datastore.write_run_status(flow, run_id, record)
    _say(f"Flow {flow}: run {run_id} finished successfully.", quiet=quiet)


# ---------------------------------------------------------------------- init
def init_run(
    flow_cls: type,
    graph: FlowGraph,
    run_id: str,
    task_id: str,
    given: Mapping[str, Any] | None = None,
    datastore_url: str | None = None,
    tags: Iterable[str] = (),
    environ: Mapping[str, str] | None = None,
    quiet: bool = False,
) -> str:
    """Create run ``run_id`` (if absent) and its parameters task; return the task's
    pathspec ``RUN/_parameters/TASK``.

    Values come from ``given`` (parameter name -> text, the command line), then the
    JSON object in ``FLOWBOOK_PARAMETERS``, then ``FLOWBOOK_RUN_<NAME>``, then the
    default (a deploy-time function is called only here, only when no value is
    given). When the run or the task exists already it is reused: a value given now
    must equal the stored one (ParameterError naming the parameter otherwise), and
    a parameter not given keeps its stored value.
    """
    from ..identity import current_user, system_tags
    from ..parameters import flow_parameters, resolve_parameters

    environ = os.environ if environ is None else environ
    check_run_id(run_id)
    check_task_id(task_id)
    flow = graph.name
    datastore = Datastore(datastore_url)
    datastore.storage.check_usable_by_tasks()
    parameters = flow_parameters(flow_cls)
    explicit = _explicit_values(flow, parameters, dict(given or {}), environ)
    run = datastore.read_run(flow, run_id)
    task: Mapping[str, Any] | None = latest_successful(
        datastore, flow, run_id, PARAMETERS_STEP, task_id
    )
    stored = run["parameters"] if run is not None else (task or {}).get("artifacts")
    pathspec = f"{run_id}/{PARAMETERS_STEP}/{task_id}"
    if stored is not None:
        _check_same(datastore, flow, run_id, parameters, stored, explicit)
        index = stored
    else:
        # the rest from their defaults (a deploy-time function is called here)
        rest = {a: p for a, p in parameters.items() if a not in explicit}
        defaults = resolve_parameters(flow, rest, {}, environ={})
        values = {a: explicit[a] if a in explicit else defaults[a] for a in parameters}
        index = {name: datastore.store_artifact(value, name) for name, value in values.items()}
    now = time.time()
    if task is None:
        attempts = datastore.task_attempts(flow, run_id, PARAMETERS_STEP, task_id)
        attempt = max(attempts) + 1 if attempts else 0
        record: TaskRecord = {
            "flow": flow,
            "run_id": run_id,
            "step": PARAMETERS_STEP,
            "task_id": task_id,
            "attempt": attempt,
            "pid": os.getpid(),
            "started_at": now,
            "parents": [],
            "split_stack": [],
            "foreach_stack": [],
            "max_attempts": 1,
            "status": "successful",
            "artifacts": index,
            "dropped": {},
            "next": {"steps": ["start"], "foreach": None},
            "finished_at": now,
        }
        datastore.write_attempt_done(flow, run_id, PARAMETERS_STEP, task_id, attempt, record)
    if run is None:
        user = current_user()
        datastore.write_run(
            flow,
            run_id,
            {
                "flow": flow,
                "run_id": run_id,
                "user": user,
                "tags": list(dict.fromkeys(tags)),
                "system_tags": system_tags(user),
                "created_at": now,
                "parameters": index,
                "graph": graph.to_dict(),
                "origin_run_id": None,
                "parameters_task": pathspec,
            },
        )
    reused = "reused" if run is not None and task is not None else "created"
    _say(f"Flow {flow}: run {run_id}, parameters task {pathspec} ({reused}).", quiet=quiet)
    return pathspec


def _explicit_values(
    flow: str, parameters: Mapping[str, Any], given: dict[str, Any], environ: Mapping[str, str]
) -> dict[str, Any]:
    """The values given for a run (not defaults), converted, by attribute name. An
    error names the parameter and, unless it is the command line, where the value
    came from."""
    sources: dict[str, str] = {name: "" for name in given}
    text = environ.get(PARAMETERS_ENV)
    if text:
        try:
            values = jsonio.loads(text)
        except ValueError as exc:
            raise ParameterError(f"{PARAMETERS_ENV} is not JSON text ({exc}).") from None
        if not isinstance(values, dict):
            raise ParameterError(f"{PARAMETERS_ENV} must be a JSON object of name -> value.")
        for name, value in values.items():
            if name not in given and value is not None:
                given[name] = value
                sources[name] = f" (given in {PARAMETERS_ENV})"
    by_name = {param.name: (attr, param) for attr, param in parameters.items()}
    for name, (_, param) in by_name.items():
        if name not in given:
            for variable in param.env_names():
                if variable in environ:
                    given[name] = environ[variable]
                    sources[name] = f" (given in {variable})"
                    break
    values = {}
    for name, value in given.items():
        if name not in by_name:
            known = ", ".join(sorted(by_name)) or "none"
            raise ParameterError(
                f"Flow {flow} has no parameter {name!r}{sources[name]} (its parameters: {known})."
            )
        attr, param = by_name[name]
        try:
            values[attr] = param.convert(value, flow)
        except ParameterError as exc:
            raise ParameterError(f"{str(exc).rstrip('.')}{sources[name]}.") from None
    return values


def _check_same(
    datastore: Datastore,
    flow: str,
    run_id: str,
    parameters: Mapping[str, Any],
    stored: dict[str, ArtifactEntry],
    explicit: dict[str, Any],
) -> None:
    for attr, value in explicit.items():
        name = parameters[attr].name
        entry = stored.get(attr)
        old = datastore.load_artifact(entry, attr, f"{flow}/{run_id}") if entry else None
        if entry is None or old != value:
            raise ParameterError(
                f"Flow {flow}: run {run_id} exists with parameter '{name}' = {old!r}; "
                f"init cannot change it to {value!r}."
            )


# ---------------------------------------------------------------------- step
class _Task:
    """What one ``step`` invocation works on (values checked, records read)."""

    def __init__(
        self, datastore: Datastore, graph: FlowGraph, run: RunRecord, spec: TaskSpec
    ) -> None:
        self.datastore = datastore
        self.graph = graph
        self.run = run
        self.spec = spec
        self.flow = graph.name
        self.node = graph[spec.step]
        self.short = spec.short_pathspec
        #: The signals (SIGTERM, SIGINT) this process got while the task ran.
        self.stopped: list[int] = []


def run_step(
    flow_cls: type,
    graph: FlowGraph,
    step: str,
    run_id: str,
    task_id: str,
    input_paths: str,
    split_index: int | None = None,
    retry_count: int = 0,
    max_user_code_retries: int | None = None,
    tags: Iterable[str] = (),
    datastore_url: str | None = None,
    output_dir: str | None = None,
    max_num_splits: int = DEFAULT_MAX_NUM_SPLITS,
    quiet: bool = False,
) -> int:
    """Run one attempt of task ``run_id/step/task_id`` in a child of this process;
    return the exit code for the orchestrator: 0 when the task succeeded (or had
    succeeded before: it is not run again), else non-zero.

    ``retry_count`` is the attempt (0 first); ``max_user_code_retries`` defaults to
    the step's ``@retry``. When the attempt fails and no retry is left, the run is
    marked failed (after ``@catch``'s attempt, if the step has one, which continues
    the flow instead). ``output_dir`` (``FLOWBOOK_OUTPUT_DIR``) receives ``task_id``
    and, for a foreach step, ``splits`` and ``split_cardinality``.
    """
    check_run_id(run_id)
    check_task_id(task_id)
    flow = graph.name
    if step not in graph:
        raise FlowbookError(
            f"Flow {flow} has no step {shown(step)} (its steps: {', '.join(graph.nodes)})."
        )
    if retry_count < 0:
        raise FlowbookError(f"--retry-count {retry_count}: it must be 0 or more.")
    settings = step_settings(graph[step].decorators, step)
    retries = (
        settings["max_attempts"] - 1 if max_user_code_retries is None else max_user_code_retries
    )
    if retries < 0:
        raise FlowbookError(f"--max-user-code-retries {retries}: it must be 0 or more.")
    datastore = _open(datastore_url)
    run = datastore.read_run(flow, run_id)
    if run is None:
        raise FlowbookError(
            f"Flow {flow} has no run {run_id} in datastore {datastore.url}; create it "
            f"first with: init --run-id {run_id} --task-id TASK_ID."
        )
    parents, stack = _parents(
        datastore, graph, step, run_id, parse_input_paths(input_paths), split_index
    )
    spec = TaskSpec(
        flow_name=flow,
        run_id=run_id,
        step=step,
        task_id=task_id,
        attempt=retry_count,
        datastore_url=datastore.url,
        parents=[parent_info(flow, record) for record in parents],
        split_stack=stack,
        parameters=run.get("parameters", {}),
        tags=list(dict.fromkeys([*run.get("tags", []), *tags])),
        user=run.get("user", ""),
        origin_run_id=run.get("origin_run_id"),
        max_attempts=retries + 1,
    )
    task = _Task(datastore, graph, run, spec)
    done = latest_successful(datastore, flow, run_id, step, task_id)
    if done is not None:
        _check_same_task(task, done)
        _say(
            f"[{task.short}] Task already finished successfully (attempt {done['attempt']}); "
            "not run again.",
            quiet=quiet,
        )
        return _succeeded(task, done, output_dir, max_num_splits, quiet)
    status = _status(datastore, flow, run_id)
    if status is not None and status.get("successful"):
        raise FlowbookError(
            f"Flow {flow}: run {run_id} has finished successfully; it cannot gain task "
            f"{step}/{task_id}."
        )
    if status is not None:  # a run marked failed stays failed: resume makes a new run
        failures = status.get("failures") or ["no reason recorded"]
        raise FlowbookError(
            f"Flow {flow}: run {run_id} has failed ({failures[0]}); it cannot gain task "
            f"{step}/{task_id}. Resume it as a new run: resume --origin-run-id {run_id}."
        )
    if retry_count > retries:
        raise FlowbookError(
            f"[{task.short}] --retry-count {retry_count} is beyond the step's retries "
            f"({retries}); the task had its last attempt."
        )
    if not stack:
        _check_only_task(datastore, flow, run_id, step, task_id)
    attempts = datastore.task_attempts(flow, run_id, step, task_id)
    if spec.attempt in attempts:  # an earlier process of this attempt left records
        spec.attempt = max(attempts) + 1
        _say(
            f"[{task.short}] Attempt {retry_count} has records already; running as "
            f"attempt {spec.attempt}.",
            quiet=quiet,
        )
    _set_log_paths(datastore, spec)
    code, record, reason = _attempt(task, flow_cls, settings["timeout"])
    if code == 0:
        if TYPE_CHECKING:  # a successful attempt has its own record
            record = cast("TaskRecord", record)
        return _succeeded(task, record, output_dir, max_num_splits, quiet)
    _say(f"[{task.short}] Task failed: {reason}", error=True)
    if task.stopped:
        return code  # stopped from outside: the orchestrator decides what follows
    if retry_count < retries:
        _say(
            f"[{task.short}] {retries - retry_count} retr{'y' if retries - retry_count == 1 else 'ies'} "
            "left (@retry): the orchestrator may run it again with --retry-count "
            f"{retry_count + 1}.",
            quiet=quiet,
        )
        return code if code > 0 else 1
    if settings["catch"] is not None:
        # a copy of the attempt's ExceptionInfo ({} when it has none: then TaskKilled's)
        exception: Any = dict((record or {}).get("exception") or {})
        if not exception:
            exception = {"type": "TaskKilled", "message": reason, "traceback": ""}
        _say(f"[{task.short}] @catch: the flow continues; the exception is stored.", error=True)
        spec.attempt += 1
        spec.caught = exception
        _set_log_paths(datastore, spec)
        code, record, reason = _attempt(task, flow_cls, None)
        if code == 0:
            if TYPE_CHECKING:  # a successful attempt has its own record
                record = cast("TaskRecord", record)
            return _succeeded(task, record, output_dir, max_num_splits, quiet)
        _say(f"[{task.short}] Task failed: {reason}", error=True)
    _fail_run(task, f"step '{step}' (task {task.short}): {reason}")
    return code if code > 0 else 1


def _parents(
    datastore: Datastore,
    graph: FlowGraph,
    step: str,
    run_id: str,
    paths: list[tuple[str, str, str]],
    split_index: int | None,
) -> tuple[list[TaskRecord], list[Frame]]:
    """The parents' final records (in input order) and the task's split stack."""
    flow = graph.name
    where = f"Flow {flow}, step '{step}'"
    for path_run, path_step, path_task in paths:
        if path_run != run_id:
            raise FramesError(
                f"{where}: input {path_run}/{path_step}/{path_task} is a task of run "
                f"{path_run}, not of run {run_id}."
            )
    if step == "start":
        if len(paths) != 1 or paths[0][1] != PARAMETERS_STEP:
            shown_paths = ", ".join("/".join(p) for p in paths)
            raise FramesError(
                f"{where}: the input of the start step is the run's parameters task "
                f"({run_id}/{PARAMETERS_STEP}/TASK_ID), not {shown_paths}."
            )
        if split_index is not None:
            raise FramesError(f"{where}: --split-index is only for a task inside a foreach.")
    records: list[TaskRecord] = []
    for path_run, path_step, path_task in paths:
        if path_step == PARAMETERS_STEP and step != "start":
            raise FramesError(
                f"{where}: input {path_run}/{path_step}/{path_task} is the parameters task, "
                "the input of the start step only."
            )
        record = latest_successful(datastore, flow, path_run, path_step, path_task)
        if record is None:
            exists = datastore.task_attempts(flow, path_run, path_step, path_task)
            state = "has no successful attempt" if exists else "does not exist"
            raise FlowbookError(
                f"{where}: input {path_run}/{path_step}/{path_task} {state} in "
                f"datastore {datastore.url}."
            )
        records.append(record)
    if step == "start":
        return [], []  # the start task of a local run has no parents: the same here
    return task_frames(graph, step, records, split_index)


def _identity(stack: list[Frame]) -> list:
    return [
        (
            f.get("step"),
            f.get("task"),
            f.get("index") if f.get("kind") == "foreach" else f.get("branch"),
        )
        for f in stack
    ]


def _check_same_task(task: _Task, done: TaskRecord) -> None:
    """A task id reused for another task (other parents or another split) is refused."""
    spec = task.spec
    parents = [p["pathspec"] for p in spec.parents]
    if done.get("parents", []) != parents or _identity(done.get("split_stack", [])) != _identity(
        spec.split_stack
    ):
        raise FlowbookError(
            f"Flow {task.flow}: task {task.short} already finished successfully with other "
            f"inputs ({', '.join(done.get('parents', [])) or 'none'}; split stack "
            f"{_identity(done.get('split_stack', []))}); a task id names one task."
        )


def _set_log_paths(datastore: Datastore, spec: TaskSpec) -> None:
    """The attempt's log files: in the datastore when it is local, else in a spool
    directory of this machine (the task uploads them at its end)."""
    spool = None
    paths = []
    for kind in ("stdout", "stderr"):
        rel = datastore.attempt_file(
            spec.flow_name, spec.run_id, spec.step, spec.task_id, spec.attempt, kind
        )
        local = datastore.storage.local_path(rel)
        if local is None:
            if spool is None:
                import tempfile

                spool = tempfile.mkdtemp(prefix="flowbook-task-")
            local = os.path.join(spool, kind)
        paths.append(local)
    spec.stdout_path, spec.stderr_path = paths


def _succeeded(
    task: _Task, record: TaskRecord, output_dir: str | None, max_num_splits: int, quiet: bool
) -> int:
    node = task.node
    if node.foreach is not None:
        transition: Mapping[str, Any] = record.get("next") or {}
        count = transition.get("num_splits", 0)
        problem = None
        if count > max_num_splits:
            problem = (
                f"foreach step '{node.name}' made {count} splits, more than "
                f"--max-num-splits {max_num_splits}; raise the limit with --max-num-splits "
                "(or FLOWBOOK_RUN_MAX_NUM_SPLITS)"
            )
        elif count == 0:
            problem = (
                f"foreach step '{node.name}' has nothing to split: "
                f"'{transition.get('foreach')}' is empty"
            )
        if problem:
            _fail_run(task, problem)
            return 1
    if output_dir:
        write_outputs(output_dir, task.spec.task_id, record if node.foreach is not None else None)
    if node.type == "end":
        finish_run(task.datastore, task.flow, task.spec.run_id, quiet)
    else:
        _say(f"[{task.short}] Task finished successfully.", quiet=quiet)
    return 0


def write_outputs(output_dir: str, task_id: str, foreach_record: TaskRecord | None = None) -> None:
    """Write ``task_id`` (and for a foreach task, ``splits`` and ``split_cardinality``)
    into ``output_dir``, each file atomically."""
    os.makedirs(output_dir, exist_ok=True)
    files = {"task_id": task_id}
    if foreach_record is not None:
        count = foreach_record["next"]["num_splits"]
        files["splits"] = jsonio.dumps(list(range(count)))
        files["split_cardinality"] = str(count)
    for name, text in files.items():
        path = os.path.join(output_dir, name)
        with open(f"{path}.tmp-{os.getpid()}", "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(f"{path}.tmp-{os.getpid()}", path)


def _fail_run(task: _Task, failure: str) -> None:
    _say(f"Flow {task.flow} failed: {failure}", error=True)
    try:
        _mark_failed(task.datastore, task.flow, task.spec.run_id, failure)
    except DatastoreError as exc:
        _say(f"Flow {task.flow}: run {task.spec.run_id} could not be marked failed: {exc}", True)


def mark_failed(
    flow_name: str,
    run_id: str,
    reason: str | None = None,
    datastore_url: str | None = None,
    quiet: bool = False,
) -> bool:
    """An orchestrator's exit handler: mark the run failed with ``reason`` unless it
    finished successfully (then nothing changes and False is returned). Idempotent:
    a reason already recorded is not added again."""
    check_run_id(run_id)
    datastore = _open(datastore_url)
    if datastore.read_run(flow_name, run_id) is None:
        raise FlowbookError(f"Flow {flow_name} has no run {run_id} in datastore {datastore.url}.")
    reason = reason or "marked failed by the orchestrator"
    if _mark_failed(datastore, flow_name, run_id, reason):
        _say(f"Flow {flow_name}: run {run_id} marked failed: {reason}", quiet=quiet)
        return True
    _say(f"Flow {flow_name}: run {run_id} finished successfully; not marked failed.", quiet=quiet)
    return False


# ---------------------------------------------------------------------- the attempt
def _attempt(
    task: _Task, flow_cls: type, timeout: float | None
) -> tuple[int, Mapping[str, Any] | None, str]:
    """Run the attempt in a forked child, copying its log files to this process's
    stdout and stderr; return (exit code, its record, why it failed)."""
    from .task import EXIT_CANNOT_RECORD, execute_task

    spec = task.spec
    for path in (spec.stdout_path, spec.stderr_path):
        if os.path.dirname(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
        open(path, "ab").close()  # so that the copying can open them at once
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    lifeline_r, lifeline_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the task

        def run() -> int:
            os.setpgid(0, 0)  # before the lifeline's thread: it kills this group
            os.close(lifeline_w)
            hold_lifeline(lifeline_r)
            return execute_task(spec, flow_cls, task.graph)

        exit_with(run)
    os.close(lifeline_r)
    try:
        os.setpgid(pid, pid)  # also here: a signal forwarded at once reaches the group
    except OSError:
        pass
    stopped = task.stopped

    def stop(number: int, frame: Any) -> None:
        stopped.append(number)
        kill_group(pid, number)

    previous = {}
    for number in (signals.SIGTERM, signals.SIGINT):
        try:
            previous[number] = signals.signal(number, stop)
        except ValueError:  # not the main thread
            pass
    try:
        code, timed_out = _wait(pid, spec, timeout)
    finally:
        for number, handler in previous.items():
            signals.signal(number, handler)
        os.close(lifeline_w)
    # the attempt's record; when it is corrupt, a stand-in (status, exception)
    record: Mapping[str, Any] | None
    try:
        record = task.datastore.read_attempt_done(
            spec.flow_name, spec.run_id, spec.step, spec.task_id, spec.attempt
        )
    except CorruptRecordError as exc:
        record = {
            "status": "failed",
            "exception": {"type": "CorruptRecordError", "message": str(exc)},
        }
    if not task.datastore.storage.is_local:  # the task uploaded its spool files
        for path in (spec.stdout_path, spec.stderr_path):
            try:
                os.remove(path)
            except OSError:
                pass
        try:
            os.rmdir(os.path.dirname(spec.stdout_path))
        except OSError:
            pass
    if code == 0 and record is not None and record.get("status") == "successful":
        return 0, {**record, "attempt": spec.attempt}, ""
    if stopped:
        return 128 + stopped[0], record, f"stopped by signal {stopped[0]} from outside"
    if timed_out:
        reason = f"timed out after {timeout:g} s (@timeout)"
    elif code < 0:
        reason = f"killed by signal {-code}"
    elif record and record.get("exception"):
        error = record["exception"]
        reason = f"{error['type']}: {error['message']}"
    elif code == EXIT_CANNOT_RECORD:
        problem = task.datastore.storage.space_problem()
        reason = "could not record its result in the datastore" + (
            f": {problem}" if problem else " (see the line above)"
        )
    else:
        reason = f"exited with code {code} without recording a result"
    return (code if code != 0 else 1), record, reason


def _wait(pid: int, spec: TaskSpec, timeout: float | None) -> tuple[int, bool]:
    """Wait for the task to exit, copying its log files as they grow; kill its group
    at the ``timeout``. Returns (exit code, negative for a signal; timed out)."""
    import select

    deadline = time.monotonic() + timeout if timeout else None
    tees = [_Tee(spec.stdout_path, 1), _Tee(spec.stderr_path, 2)]
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        pidfd = None
    timed_out = False
    status = None
    try:
        while status is None:
            wait = TEE_INTERVAL
            if deadline is not None:
                wait = max(0.0, min(wait, deadline - time.monotonic()))
            if pidfd is not None:
                select.select([pidfd], [], [], wait)
            else:
                time.sleep(min(wait, 0.01))
            for tee in tees:
                tee.copy()
            if pidfd is not None:
                ready, _, _ = select.select([pidfd], [], [], 0)
                if ready:  # exited (not reaped yet): end what it started, then reap
                    kill_group(pid, signals.SIGKILL)
                    status = os.waitpid(pid, 0)[1]
            else:
                done, raw = os.waitpid(pid, os.WNOHANG)
                if done:
                    status = raw
                    kill_group(pid, signals.SIGKILL)
            if status is None and deadline is not None and time.monotonic() >= deadline:
                timed_out = True
                deadline = None
                kill_group(pid, signals.SIGKILL)
    finally:
        if pidfd is not None:
            os.close(pidfd)
        for tee in tees:
            tee.copy()
            tee.close()
    return os.waitstatus_to_exitcode(status), timed_out


class _Tee:
    """Copies what is appended to a log file to one of this process's descriptors."""

    PIECE = 1 << 20

    def __init__(self, path: str, fd: int) -> None:
        self.path = path
        self.fd = fd
        self.source: int | None = None

    def copy(self) -> None:
        if self.source is None:
            try:
                self.source = os.open(self.path, os.O_RDONLY)
            except OSError:
                return
        while True:
            piece = os.read(self.source, self.PIECE)
            if not piece:
                return
            view = memoryview(piece)
            while view:
                try:
                    written = os.write(self.fd, view)
                except OSError:  # nobody reads our output: the log file keeps it
                    return
                view = view[written:]

    def close(self) -> None:
        if self.source is not None:
            os.close(self.source)
            self.source = None
