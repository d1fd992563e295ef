"""Run one attempt of one step in the current process (a freshly forked task process).

The task writes its own record: ``<attempt>.start.json`` when it begins and
``<attempt>.done.json`` when it ends, successful or not. Its stdout and stderr go,
at the file-descriptor level, to the attempt's log files, so output of C extensions
and subprocesses is captured too and the scheduler can tail them live.

When an artifact cannot be stored (the disk is full, the datastore read-only) the
attempt fails with a message naming the artifact, the task and the reason. When
not even its record can be written, the task says why in one line on the task
server's own stderr (the terminal of ``python flow.py run``), which it keeps
aside before redirecting its output, and exits with ``EXIT_CANNOT_RECORD``.
"""

from __future__ import annotations

import errno
import io
import os
import sys
import time

from ..current_task import current
from ..datastore import Datastore
from ..datastore.blobs import type_name
from ..datastore.storage import DatastoreWriteError, make_dirs, open_storage
from ..decorators import step_settings
from ..exceptions import DatastoreError, FlowbookError, StepException, TransitionError
from ..graph import FlowGraph
from .context import TaskContext
from .spec import TaskSpec

TYPE_CHECKING = False  # typing costs ~6 ms to import; annotations are strings here
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any, cast

    from ..flowspec import FlowSpec

#: Modules the run path imports only when a value needs them (cloudpickle: see
#: datastore/pickling.py; hashlib: see datastore/hashing.py).
LAZY_MODULES = ("cloudpickle", "hashlib")

_FLOWBOOK_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep

#: The exit code of a task that could not write its record (``EX_TEMPFAIL``): it
#: said why in one line on the task server's stderr.
EXIT_CANNOT_RECORD = 75

#: An OSError with one of these errnos means the datastore's disk may be full.
_NO_SPACE = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


def execute_task(spec: TaskSpec, flow_cls: type, graph: FlowGraph) -> int:
    """Run the attempt described by ``spec``; return the process exit code: 0, 1 when
    the step failed (recorded), ``EXIT_CANNOT_RECORD`` when no record could be written."""
    cold = [name for name in LAZY_MODULES if name not in sys.modules]
    os.setpgid(0, 0)  # the task leads a process group: a timeout kills its children too
    try:  # the server's stderr: the last place to say why, if all else fails
        terminal = os.dup(2)
    except OSError:
        terminal = -1
    datastore = None
    try:
        _redirect_output(spec)
        # the scheduler opened (and checked) this very datastore before starting the task
        datastore = Datastore(storage=open_storage(spec.datastore_url, trusted=True))
        return _run_attempt(spec, flow_cls, graph, datastore, cold)
    except (DatastoreError, OSError, _RecordLost) as exc:
        _tell_terminal(terminal, spec, exc, datastore)
        return EXIT_CANNOT_RECORD
    finally:
        if terminal >= 0:
            os.close(terminal)


def _tell_terminal(
    terminal: int, spec: TaskSpec, exc: BaseException, datastore: Datastore | None
) -> None:
    """One line on the server's stderr: this task could not record its result, and why."""
    line = (
        f"Flow {spec.flow_name}, task {spec.run_id}/{spec.step}/{spec.task_id} "
        f"(attempt {spec.attempt}) could not record its result: {str(exc).rstrip('.')}"
    )
    problem = _space_problem(datastore)
    line += f" ({problem})." if problem and problem not in line else "."
    if terminal < 0:
        return
    try:
        os.write(terminal, (line.replace("\n", " ") + "\n").encode("utf-8", "backslashreplace"))
    except OSError:
        pass


def _space_problem(datastore: Datastore | None) -> str | None:
    try:
        return datastore.storage.space_problem() if datastore is not None else None
    except Exception:  # only ever a hint
        return None


def _cannot_store(spec: TaskSpec, exc: DatastoreWriteError) -> DatastoreWriteError:
    """``exc`` (from storing an artifact) said from the task's point of view."""
    return DatastoreWriteError(
        f"Flow {spec.flow_name}, task {spec.run_id}/{spec.step}/{spec.task_id}: cannot "
        f"store {exc.what} ({exc.reason}, {exc.root}).",
        exc.root,
        exc.what,
        exc.reason,
        exc.errno,
    )


def _run_attempt(
    spec: TaskSpec, flow_cls: type, graph: FlowGraph, datastore: Datastore, cold: list[str]
) -> int:
    started_at = time.time()
    base = {
        "flow": spec.flow_name,
        "run_id": spec.run_id,
        "step": spec.step,
        "task_id": spec.task_id,
        "attempt": spec.attempt,
        "pid": os.getpid(),
        "started_at": started_at,
        "parents": [p["pathspec"] for p in spec.parents],
        "split_stack": spec.split_stack,
        "foreach_stack": [f for f in spec.split_stack if f["kind"] == "foreach"],
        "max_attempts": spec.max_attempts,
    }
    if spec.caught is not None:
        base["caught"] = True
    if spec.code is not None:
        base["code"] = spec.code
    if spec.run_reason is not None:
        base["run_reason"] = spec.run_reason
    datastore.write_attempt_start(
        spec.flow_name, spec.run_id, spec.step, spec.task_id, spec.attempt, base
    )
    node = graph[spec.step]
    context = TaskContext(spec, datastore, node.is_join)
    current._set(
        flow_name=spec.flow_name,
        run_id=spec.run_id,
        step_name=spec.step,
        task_id=spec.task_id,
        retry_count=spec.attempt,
        origin_run_id=spec.origin_run_id,
        parameter_names=list(spec.parameters),
        tags=list(spec.tags),
        username=spec.user,
    )
    if TYPE_CHECKING:  # (every flow class is a FlowSpec subclass)
        flow_cls = cast("type[FlowSpec]", flow_cls)
    instance = flow_cls.__new__(flow_cls)
    object.__setattr__(instance, "_fb", context)
    record: dict[str, Any]
    try:
        if spec.caught is not None:
            _store_caught_exception(instance, context, graph, spec)
        else:
            step_function = getattr(flow_cls, spec.step)
            if node.is_join:
                step_function(instance, context.make_inputs())
            else:
                step_function(instance)
            _clear_catch_var(instance, node, spec.step)
        transition = _check_transition(context, graph, spec)
        foreach = transition.get("foreach")
        if foreach:
            transition["num_splits"] = context.foreach_split_count(instance, foreach)
        try:
            artifacts = context.collect_artifacts(instance, as_blob=foreach)
            if foreach:
                # every split reads the list by its hash: it must be a blob file, also
                # when it arrived inline (a small list given as a Parameter)
                foreach_entry = artifacts[foreach]
                try:
                    datastore.ensure_blob(foreach_entry)
                except DatastoreWriteError as exc:
                    raise exc.about(f"artifact '{foreach}'") from None
                transition["sha"] = foreach_entry["sha"]
        except DatastoreWriteError as exc:
            raise _cannot_store(spec, exc) from None
        record = dict(
            base,
            status="successful",
            artifacts=artifacts,
            dropped=context.dropped,
            next=transition,
            reads=context.recorded_reads(),
            own=context.own_names(instance),
        )
        exit_code = 0
    except BaseException as exc:  # the user's code may raise anything, even SystemExit
        text = format_user_traceback(exc)
        message = str(exc)
        if isinstance(exc, OSError) and exc.errno in _NO_SPACE:
            # e.g. a print() to a log file on a full disk: say which disk
            problem = _space_problem(datastore)
            if problem:
                message = f"{message} ({problem})"
                text = f"{text.rstrip()} ({problem})\n"
        try:
            sys.stderr.write(text)
        except (OSError, ValueError):  # the log file's disk may be the full one
            pass
        record = dict(
            base,
            status="failed",
            exception={
                "type": type_name(exc),
                "message": message,
                "traceback": text,
            },
        )
        exit_code = 1
    record["finished_at"] = time.time()
    needed = [name for name in cold if name in sys.modules]
    if needed:
        # this task needed them: the scheduler has the server import them, so that
        # later tasks start with them
        record["warm"] = needed
    _flush_output()
    try:
        if not datastore.storage.is_local:
            upload_logs(datastore, spec)
        datastore.write_attempt_done(
            spec.flow_name,
            spec.run_id,
            spec.step,
            spec.task_id,
            spec.attempt,
            record,
            copy_to=spec.record_copy,
        )
    except (DatastoreError, OSError) as exc:
        if "exception" not in record:
            raise
        # the step's own failure is the first thing the terminal line must tell
        failure = record["exception"]
        raise _RecordLost(
            f"{str(exc).rstrip('.')}; the step had failed with "
            f"{failure['type']}: {failure['message']}"
        ) from None
    return exit_code


class _RecordLost(Exception):
    """The record of a failed attempt could not be written (see ``_tell_terminal``)."""


def _clear_catch_var(instance: Any, node: Any, step: str) -> None:
    """``@catch(var=...)`` on a step that succeeded: the variable is None, as in
    Metaflow, so that a later step can test it either way."""
    catch = step_settings(node.decorators, step)["catch"]
    if catch and catch.get("var"):
        setattr(instance, catch["var"], None)


def _store_caught_exception(
    instance: Any, context: TaskContext, graph: FlowGraph, spec: TaskSpec
) -> None:
    """The ``@catch`` attempt: no user code runs; the exception becomes an artifact."""
    node = graph[spec.step]
    settings = step_settings(node.decorators, spec.step)
    var = (settings["catch"] or {}).get("var")
    exc: Mapping[str, Any] = spec.caught or {}
    if var:
        setattr(
            instance,
            var,
            StepException(exc.get("type", ""), exc.get("message", ""), exc.get("traceback", "")),
        )
    if node.foreach is not None:
        raise FlowbookError(
            f"Flow {spec.flow_name}, step '{spec.step}': @catch cannot continue a foreach "
            "step whose task failed (there is no list to split)."
        )
    if node.name != "end":
        context.record_transition(list(node.out_funcs), None)


def _check_transition(context: TaskContext, graph: FlowGraph, spec: TaskSpec) -> dict:
    node = graph[spec.step]
    where = f"Flow {spec.flow_name}, step '{spec.step}'"
    if node.name == "end":
        if context.transition is not None:
            raise TransitionError(f"{where}: the end step must not call self.next().")
        return {}
    if context.transition is None:
        raise TransitionError(
            f"{where} finished without calling self.next(); it must end with "
            f"self.next({', '.join('self.' + n for n in node.out_funcs)})."
        )
    names, foreach = context.transition
    if names != node.out_funcs or foreach != node.foreach:
        raise TransitionError(
            f"{where} called self.next({', '.join(names)}"
            f"{f', foreach={foreach!r}' if foreach else ''}) but its source declares "
            f"self.next({', '.join(node.out_funcs)}"
            f"{f', foreach={node.foreach!r}' if node.foreach else ''})."
        )
    return {"steps": list(names), "foreach": foreach}


def format_user_traceback(exc: BaseException) -> str:
    """The traceback without flowbook's own frames: what the user's code did."""
    if isinstance(exc, FlowbookError) and not _user_frames(exc.__traceback__):
        return f"{type(exc).__name__}: {exc}\n"
    import traceback  # only when a step fails: it costs ~4 ms to import

    te: traceback.TracebackException | None = traceback.TracebackException.from_exception(exc)
    chain = []
    while te is not None:
        chain.append(te)
        te = te.__cause__ or (None if te.__suppress_context__ else te.__context__)
    lines: list[str] = []
    for position, item in enumerate(reversed(chain)):
        if position:
            lines.append(
                "\nDuring handling of the above exception, another exception occurred:\n\n"
            )
        frames = [f for f in item.stack if not f.filename.startswith(_FLOWBOOK_DIR)]
        if frames:
            lines.append("Traceback (most recent call last):\n")
            lines.extend(traceback.StackSummary.from_list(frames).format())
        lines.extend(item.format_exception_only())
    return "".join(lines)


def _user_frames(tb) -> list:
    import traceback

    return [f for f in traceback.extract_tb(tb) if not f.filename.startswith(_FLOWBOOK_DIR)]


def _redirect_output(spec: TaskSpec) -> None:
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    for fd, path in ((1, spec.stdout_path), (2, spec.stderr_path)):
        make_dirs(os.path.dirname(path))
        handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(handle, fd)
        os.close(handle)
    sys.stdout = io.TextIOWrapper(
        io.FileIO(1, "w", closefd=False),
        encoding="utf-8",
        errors="backslashreplace",
        line_buffering=True,
    )
    sys.stderr = io.TextIOWrapper(
        io.FileIO(2, "w", closefd=False),
        encoding="utf-8",
        errors="backslashreplace",
        line_buffering=True,
        write_through=True,
    )


def _flush_output() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass


def upload_logs(datastore: Datastore, spec: TaskSpec) -> None:
    """Copy the attempt's local log spool to a remote datastore. An empty log is not
    uploaded (a missing log reads as empty): most tasks print nothing on stderr, and
    on S3 each object is a request."""
    for kind, path in (("stdout", spec.stdout_path), ("stderr", spec.stderr_path)):
        try:
            with open(path, "rb") as handle:
                data = handle.read()
        except OSError:
            continue
        if not data:
            continue
        datastore.storage.write_bytes(
            datastore.attempt_file(
                spec.flow_name, spec.run_id, spec.step, spec.task_id, spec.attempt, kind
            ),
            data,
        )
