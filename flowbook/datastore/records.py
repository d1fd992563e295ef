"""Run and task metadata: small JSON objects beside the blobs, each written atomically.

Layout under the datastore root::

    blobs/<sha[:2]>/<sha>                              artifact blobs (see blobs.py)
    flows/<Flow>/<run_id>/run.json                     parameters, tags, graph, start time
    flows/<Flow>/<run_id>/status.json                  written once the run ends
    flows/<Flow>/<run_id>/<step>.tasks.json            every task record of the step,
                                                       written once a run succeeded
    flows/<Flow>/<run_id>/<step>/<task_id>/<n>.start.json   attempt n started
    flows/<Flow>/<run_id>/<step>/<task_id>/<n>.stdout       its output (plain text)
    flows/<Flow>/<run_id>/<step>/<task_id>/<n>.stderr
    flows/<Flow>/<run_id>/<step>/<task_id>/<n>.done.json    attempt n ended: status,
                                                            artifact index, exception

An attempt is successful when its ``done.json`` says so; the artifact index in it
maps each artifact name to its blob's hash, type and size. Nothing else describes a
task, so a task either has a complete, readable record or none. ``<step>.tasks.json``
is a read-side copy: once a run has succeeded, its tasks never change again, so the
final record of every task of a step is gathered into one object and a reader of a
1000-task step opens one file instead of a thousand.
"""

from __future__ import annotations

import binascii
import os
import time

from .. import jsonio
from ..exceptions import CorruptBlobError, CorruptRecordError
from ..names import check, is_valid
from .blobs import BlobStore, MappedBlob, type_name
from .storage import DIR_MODE, Storage, make_dirs, open_storage, replace_file

TYPE_CHECKING = False  # typing costs ~6 ms to import; annotations are strings here
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any, cast

    from .schema import ArtifactEntry, NoRecord, RunRecord, RunStatus, TaskRecord


def _from_base64(text: str) -> bytes:
    """Strict base64 decoding (``base64`` itself imports ``re``)."""
    try:
        return binascii.a2b_base64(text, strict_mode=True)
    except TypeError:  # Python 3.10 has no strict mode
        import base64

        return base64.b64decode(text, validate=True)


def _dumps(record: Mapping[str, Any]) -> bytes:
    return jsonio.dumps(record, default=str).encode()


def _refuse_path(flow: object, run_id: object, step: object = "s", task_id: object = "1") -> None:
    """Raise InvalidNameError for the first part of a record path outside the grammar."""
    check(flow, "flow name", leading_underscore=True)
    check(run_id, "run id")
    check(step, "step name", leading_underscore=True)
    check(task_id, "task id")


# ---------------------------------------------------------------------- record shapes
# What a reader may rely on: the JSON type of each field a record has (a field may be
# missing). A record of another shape is corrupt, like one that is not JSON at all.
_NUMBER = (int, float)
_RUN_FIELDS: dict[str, type | tuple] = {
    "flow": str,
    "run_id": str,
    "user": str,
    "tags": list,
    "system_tags": list,
    "created_at": _NUMBER,
    "parameters": dict,
    "graph": dict,
    "origin_run_id": (str, type(None)),
}
_STATUS_FIELDS: dict[str, type | tuple] = {
    "successful": bool,
    "finished_at": _NUMBER,
    "failures": list,
}
_ATTEMPT_FIELDS: dict[str, type | tuple] = {
    "flow": str,
    "run_id": str,
    "step": str,
    "task_id": str,
    "attempt": int,
    "status": str,
    "started_at": _NUMBER,
    "finished_at": _NUMBER,
    "parents": list,
    "split_stack": list,
    "foreach_stack": list,
    "artifacts": dict,
    "dropped": dict,
    "next": dict,
    "exception": dict,
    "warm": list,
    "origin_pathspec": str,
}
_JSON_KINDS = {
    dict: "an object",
    list: "an array",
    str: "a string",
    int: "a number",
    float: "a number",
    bool: "a boolean",
    type(None): "null",
}


def _kind(value: object) -> str:
    return _JSON_KINDS.get(type(value), type(value).__name__)


def _shape_error(record: dict, fields: dict[str, type | tuple]) -> str | None:
    """What is wrong with the shape of ``record`` (None: nothing)."""
    for name, types in fields.items():
        if name in record and not isinstance(record[name], types):
            return f"its field '{name}' is {_kind(record[name])}"
    return None


def _run_shape_error(record: dict) -> str | None:
    problem = _shape_error(record, _RUN_FIELDS)
    if problem:
        return problem
    for name in ("tags", "system_tags"):
        if not all(isinstance(tag, str) for tag in record.get(name, ())):
            return f"its field '{name}' holds something other than strings"
    for name, entry in record.get("parameters", {}).items():
        if not isinstance(entry, dict) or not isinstance(entry.get("sha"), str):
            return f"its parameter '{name}' is not an artifact entry"
    steps = record.get("graph", {}).get("steps", [])
    if not isinstance(steps, list) or not all(
        isinstance(s, dict) and isinstance(s.get("name"), str) for s in steps
    ):
        return "its field 'graph' has no list of named steps"
    return None


def _attempt_shape_error(record: dict) -> str | None:
    problem = _shape_error(record, _ATTEMPT_FIELDS)
    if problem:
        return problem
    for name, entry in record.get("artifacts", {}).items():
        if not isinstance(entry, dict) or not isinstance(entry.get("sha"), str):
            return f"its artifact '{name}' is not an artifact entry"
    exception = record.get("exception")
    if exception is not None and not (
        isinstance(exception.get("type"), str) and isinstance(exception.get("message"), str)
    ):
        return "its field 'exception' has no type and message"
    for name in ("split_stack", "foreach_stack"):
        if not all(isinstance(frame, dict) for frame in record.get(name, ())):
            return f"its field '{name}' holds something other than objects"
    return None


def _status_shape_error(record: dict) -> str | None:
    return _shape_error(record, _STATUS_FIELDS)


def _index_shape_error(record: dict) -> str | None:
    if record.get("v") != 1:
        return f"its version is {shown_value(record.get('v'))}, not 1"
    tasks = record.get("tasks")
    if not isinstance(tasks, dict):
        return f"its field 'tasks' is {_kind(tasks)}"
    for task_id, task in tasks.items():
        if not is_valid(task_id):
            return f"it names a task {shown_value(task_id)} outside the grammar of task ids"
        if not isinstance(task, dict):
            return f"its task {task_id} is {_kind(task)}"
        problem = _attempt_shape_error(task)
        if problem is None and not isinstance(task.get("attempt"), int):
            problem = "it has no attempt number"
        if problem:
            return f"its task {task_id}: {problem}"
    return None


def shown_value(value: object) -> str:
    from ..names import shown

    return shown(value, 40)


def take_record_copy(path: str) -> bytes | None:
    """The bytes of the record copy at ``path``, removed; None when there is none."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
        os.unlink(path)
    except OSError:
        return None
    return data


class Datastore:
    """One datastore: blobs plus run and task records under one root."""

    def __init__(self, url: str | None = None, storage: Storage | None = None) -> None:
        self.storage = storage or open_storage(url)
        self.url = self.storage.url
        self.blobs = BlobStore(self.storage)

    # ---------------------------------------------------------------- paths
    # Every part of a record's path is checked against the grammar of names.py here,
    # the last line of defence under the checks where ids enter (Client, CLI, resume):
    # no part can be '..', hold a '/', a NUL or anything else a path must not.
    @staticmethod
    def flow_path(flow: str) -> str:
        if not is_valid(flow, True):
            _refuse_path(flow, "1")
        return f"flows/{flow}"

    @staticmethod
    def run_path(flow: str, run_id: str) -> str:
        if not (is_valid(flow, True) and is_valid(run_id)):
            _refuse_path(flow, run_id)
        return f"flows/{flow}/{run_id}"

    @staticmethod
    def step_path(flow: str, run_id: str, step: str) -> str:
        if not (is_valid(flow, True) and is_valid(run_id) and is_valid(step, True)):
            _refuse_path(flow, run_id, step)
        return f"flows/{flow}/{run_id}/{step}"

    @staticmethod
    def task_path(flow: str, run_id: str, step: str, task_id: str) -> str:
        if not (
            is_valid(flow, True) and is_valid(run_id) and is_valid(step, True) and is_valid(task_id)
        ):
            _refuse_path(flow, run_id, step, task_id)
        return f"flows/{flow}/{run_id}/{step}/{task_id}"

    def attempt_file(
        self, flow: str, run_id: str, step: str, task_id: str, attempt: int, kind: str
    ) -> str:
        return f"{self.task_path(flow, run_id, step, task_id)}/{attempt}.{kind}"

    # ---------------------------------------------------------------- runs
    def new_run_id(self, flow: str) -> str:
        """A fresh numeric run id (microseconds since the epoch), unique per flow."""
        candidate = time.time_ns() // 1000
        while True:
            run_id = str(candidate)
            if self._claim_run(flow, run_id):
                return run_id
            candidate += 1

    def _claim_run(self, flow: str, run_id: str) -> bool:
        if self.storage.is_local:
            path = self.storage.local_path(self.run_path(flow, run_id))
            if TYPE_CHECKING:  # a local storage's paths are local
                assert path is not None
            make_dirs(os.path.dirname(path))  # never world-writable, whatever the umask
            try:
                os.mkdir(path, DIR_MODE)
            except FileExistsError:
                return False
            return True
        return not self.storage.exists(f"{self.run_path(flow, run_id)}/run.json")

    def write_run(self, flow: str, run_id: str, record: Mapping[str, Any]) -> None:
        self.storage.write_bytes(f"{self.run_path(flow, run_id)}/run.json", _dumps(record))

    def read_run(self, flow: str, run_id: str) -> RunRecord | None:
        """The run's record, None when it has none; CorruptRecordError when unreadable."""
        return self._read_json(f"{self.run_path(flow, run_id)}/run.json", _run_shape_error)

    def write_run_status(self, flow: str, run_id: str, record: Mapping[str, Any]) -> None:
        self.storage.write_bytes(f"{self.run_path(flow, run_id)}/status.json", _dumps(record))

    def read_run_status(self, flow: str, run_id: str) -> RunStatus | None:
        """The run's outcome once it ended, else None; CorruptRecordError when unreadable."""
        return self._read_json(f"{self.run_path(flow, run_id)}/status.json", _status_shape_error)

    def list_flows(self) -> list[str]:
        return sorted(name for name in self.storage.list("flows") if is_valid(name, True))

    def list_runs(self, flow: str) -> list[str]:
        """Run ids of a flow, newest first.

        Every entry that is a valid run id is listed (names.py), so runs created by an
        orchestrator (``argo-...``, ``sfn-<uuid>``) are too. An id of digits only is
        flowbook's own: microseconds since the epoch, so its time costs no read. Any
        other id is placed by its ``run.json``'s ``created_at`` (one small read each);
        one without a readable ``run.json`` (being created, or corrupt) sorts last.
        Equal times are ordered by id.
        """
        keyed = []
        for run_id in self.storage.list(self.flow_path(flow)):
            if not is_valid(run_id):
                continue
            if run_id.isdigit():
                keyed.append((int(run_id), run_id))
            else:
                keyed.append((self._created_us(flow, run_id), run_id))
        keyed.sort(reverse=True)
        return [run_id for _, run_id in keyed]

    def _created_us(self, flow: str, run_id: str) -> int:
        """When a run with a non-numeric id was created, in microseconds (0: unknown)."""
        try:
            record = self.read_run(flow, run_id)
        except CorruptRecordError:
            return 0
        created = record.get("created_at") if record else None
        return int(created * 1e6) if isinstance(created, _NUMBER) and created > 0 else 0

    def list_steps(self, flow: str, run_id: str) -> list[str]:
        names = self.storage.list(self.run_path(flow, run_id))
        return [name for name in names if "." not in name and is_valid(name, True)]

    def list_tasks(self, flow: str, run_id: str, step: str) -> list[str]:
        tasks = [t for t in self.storage.list(self.step_path(flow, run_id, step)) if is_valid(t)]
        return sorted(tasks, key=lambda t: (len(t), t))

    # ---------------------------------------------------------------- step indexes
    def write_step_indexes(self, flow: str, run_id: str, records: list[TaskRecord]) -> None:
        """Gather the final records of a finished run's tasks, one object per step."""
        by_step: dict[str, dict[str, TaskRecord]] = {}
        for record in records:
            by_step.setdefault(record["step"], {})[record["task_id"]] = record
        for step, tasks in by_step.items():
            path = f"{self.step_path(flow, run_id, step)}.tasks.json"
            self.storage.write_bytes(path, _dumps({"v": 1, "tasks": tasks}))

    def read_step_index(self, flow: str, run_id: str, step: str) -> dict[str, TaskRecord] | None:
        """{task_id: final record} for a step of a finished run, or None.

        The index is a copy of the task records: when it is corrupt, a
        CorruptRecordWarning names it and None sends the reader to the task records."""
        path = f"{self.step_path(flow, run_id, step)}.tasks.json"
        try:
            index = self._read_json(path, _index_shape_error)
        except CorruptRecordError as exc:
            warn_corrupt(f"{exc} Reading the step's task records instead.")
            return None
        return index["tasks"] if index is not None else None

    # ---------------------------------------------------------------- tasks
    def write_attempt_start(
        self,
        flow: str,
        run_id: str,
        step: str,
        task_id: str,
        attempt: int,
        record: Mapping[str, Any],
    ) -> None:
        path = self.attempt_file(flow, run_id, step, task_id, attempt, "start.json")
        self.storage.write_bytes(path, _dumps(record))

    def write_attempt_done(
        self,
        flow: str,
        run_id: str,
        step: str,
        task_id: str,
        attempt: int,
        record: Mapping[str, Any],
        copy_to: str | None = None,
    ) -> None:
        """Write the attempt's final record; then, with ``copy_to`` (a local file
        path whose directory exists), a copy there for a scheduler on this machine,
        which then need not fetch it from a remote datastore. The copy is only ever
        a shortcut: failing to write it is not an error."""
        path = self.attempt_file(flow, run_id, step, task_id, attempt, "done.json")
        data = _dumps(record)
        self.storage.write_bytes(path, data)
        if copy_to:
            replace_file(copy_to, data)  # only ever a shortcut: failing is no error

    def read_attempt_done(
        self,
        flow: str,
        run_id: str,
        step: str,
        task_id: str,
        attempt: int,
        copy_at: str | None = None,
    ) -> TaskRecord | None:
        """The attempt's final record, None while it has none; CorruptRecordError
        (naming the file) when it cannot be read. With ``copy_at``, the local copy
        the task left there (``write_attempt_done``) is read and removed instead,
        when it is there and sound."""
        data = take_record_copy(copy_at) if copy_at else None
        if data is not None:
            try:
                record = jsonio.loads(data)
                if isinstance(record, dict) and _attempt_shape_error(record) is None:
                    if TYPE_CHECKING:  # of the shape just checked
                        record = cast("TaskRecord", record)
                    return record
            except ValueError:
                pass  # not sound: the datastore has the record
        path = self.attempt_file(flow, run_id, step, task_id, attempt, "done.json")
        return self._read_json(path, _attempt_shape_error)

    def task_attempts(self, flow: str, run_id: str, step: str, task_id: str) -> dict[int, set]:
        """Which files exist for each attempt: {attempt: {"start.json", "done.json", ...}}."""
        attempts: dict[int, set] = {}
        for name in self.storage.list(self.task_path(flow, run_id, step, task_id)):
            number, _, kind = name.partition(".")
            if number.isdigit():
                attempts.setdefault(int(number), set()).add(kind)
        return attempts

    def latest_attempt(
        self, flow: str, run_id: str, step: str, task_id: str
    ) -> tuple[int, TaskRecord | NoRecord]:
        """The latest attempt number and its record (done, else start, else {}).

        CorruptRecordError when the record that exists cannot be read: a corrupt
        ``done.json`` is not replaced by its ``start.json`` (that would say "running")."""
        attempts = self.task_attempts(flow, run_id, step, task_id)
        if not attempts:
            return -1, {}
        number = max(attempts)
        kinds = attempts[number]
        for kind in ("done.json", "start.json"):
            if kind in kinds:
                record: TaskRecord | None = self._read_json(
                    self.attempt_file(flow, run_id, step, task_id, number, kind),
                    _attempt_shape_error,
                )
                if record is not None:
                    if kind == "start.json":
                        record = {**record, "status": "running"}
                    return number, record
        return number, {}

    def read_log(
        self, flow: str, run_id: str, step: str, task_id: str, attempt: int, stream: str
    ) -> str:
        path = self.attempt_file(flow, run_id, step, task_id, attempt, stream)
        try:
            return self.storage.read_bytes(path).decode("utf-8", errors="replace")
        except (FileNotFoundError, OSError):
            return ""

    # ---------------------------------------------------------------- artifacts
    def store_artifact(
        self,
        value: Any,
        name: str,
        inline: bool = True,
        read_from: tuple[ArtifactEntry, MappedBlob | None] | None = None,
    ) -> ArtifactEntry:
        """Store one artifact; its index entry (small values travel inline in it).

        ``read_from`` is the entry (and mapping) ``value`` was read from in this
        task: an unchanged value is then not written again (``BlobStore.put_again``)."""
        if read_from is not None and "inline" not in read_from[0]:
            previous, mapped = read_from
            stored = self.blobs.put_again(value, name, inline, previous["sha"], mapped)
            if stored.sha == previous["sha"] and stored.inline is None:
                stored.file_id = previous.get("file_id")  # the same file: still the writer's
        else:
            stored = self.blobs.put(value, name, inline=inline)
        entry: ArtifactEntry = {"sha": stored.sha, "type": type_name(value), "size": stored.size}
        if stored.inline is not None:
            entry["inline"] = binascii.b2a_base64(stored.inline, newline=False).decode("ascii")
        file_id = stored.file_id
        if file_id is not None:
            entry["file_id"] = file_id
        return entry

    def ensure_blob(self, entry: ArtifactEntry) -> None:
        """Give an inline artifact its blob file too, so its hash alone finds it."""
        inline = entry.get("inline")
        if inline is not None and not self.storage.exists(self.blobs.path(entry["sha"])):
            self.storage.write_bytes(self.blobs.path(entry["sha"]), _from_base64(inline))

    def load_artifact(self, entry: ArtifactEntry, name: str, pathspec: str) -> Any:
        return self.read_artifact(entry, name, pathspec)[0]

    def read_artifact(
        self, entry: ArtifactEntry, name: str, pathspec: str
    ) -> tuple[Any, MappedBlob | None]:
        """An artifact's value, and the mapping of its blob file when it was mapped."""
        what = f"Artifact '{name}' of task {pathspec}"
        inline = entry.get("inline")
        if inline is None:
            return self.blobs.load(entry["sha"], what=what, file_id=entry.get("file_id"))
        try:
            data = _from_base64(inline)
        except (binascii.Error, ValueError):
            raise CorruptBlobError(f"{what}: its inline value is corrupt (not base64).") from None
        return self.blobs.load(entry["sha"], what=what, inline=data)

    # ---------------------------------------------------------------- helpers
    def where(self, path: str) -> str:
        """Where a path under the root is, as a user would look for it."""
        local = self.storage.local_path(path) if self.storage.is_local else None
        return local or f"{self.url.rstrip('/')}/{path}"

    def _read_json(self, path: str, shape_error: Any = None) -> Any:
        """The JSON object stored at ``path`` (a dict, of the shape ``shape_error``
        checks: Any, so that each reader names its record's type); None when there is none.

        Anything else there (not UTF-8, not JSON, nested too deep, not an object, or
        of a shape ``shape_error(record)`` describes) raises CorruptRecordError, one
        line naming the file."""
        try:
            data = self.storage.read_bytes(path)
        except OSError:  # missing (or not a file): no record
            return None
        try:
            record = jsonio.loads(data)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError
            reason = " ".join(str(exc).split())
            if len(reason) > 100:
                reason = reason[:97] + "..."
            raise self._corrupt(path, f"not a JSON text ({reason or type(exc).__name__})") from None
        if not isinstance(record, dict):
            raise self._corrupt(path, f"it holds {_kind(record)}, not a JSON object")
        problem = shape_error(record) if shape_error is not None else None
        if problem:
            raise self._corrupt(path, problem)
        return record

    def _corrupt(self, path: str, reason: str) -> CorruptRecordError:
        return CorruptRecordError(f"Corrupt record {self.where(path)}: {reason}.")


def warn_corrupt(message: str) -> None:
    """Give a CorruptRecordWarning (one line) for a record that was skipped."""
    import warnings

    from ..exceptions import CorruptRecordWarning

    warnings.warn(message, CorruptRecordWarning, stacklevel=3)
