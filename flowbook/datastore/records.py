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
from ..exceptions import CorruptBlobError
from .blobs import BlobStore, MappedBlob, type_name
from .storage import Storage, open_storage

TYPE_CHECKING = False  # typing costs ~6 ms to import; annotations are strings here
if TYPE_CHECKING:
    from typing import Any


def _from_base64(text: str) -> bytes:
    """Strict base64 decoding (``base64`` itself imports ``re``)."""
    try:
        return binascii.a2b_base64(text, strict_mode=True)
    except TypeError:  # Python 3.10 has no strict mode
        import base64

        return base64.b64decode(text, validate=True)


def _dumps(record: dict) -> bytes:
    return jsonio.dumps(record, default=str).encode()


class Datastore:
    """One datastore: blobs plus run and task records under one root."""

    def __init__(self, url: str | None = None, storage: Storage | None = None) -> None:
        self.storage = storage or open_storage(url)
        self.url = self.storage.url
        self.blobs = BlobStore(self.storage)

    # ---------------------------------------------------------------- paths
    @staticmethod
    def run_path(flow: str, run_id: str) -> str:
        return f"flows/{flow}/{run_id}"

    @staticmethod
    def task_path(flow: str, run_id: str, step: str, task_id: str) -> str:
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
            os.makedirs(os.path.dirname(path), exist_ok=True)
            try:
                os.mkdir(path)
            except FileExistsError:
                return False
            return True
        return not self.storage.exists(f"{self.run_path(flow, run_id)}/run.json")

    def write_run(self, flow: str, run_id: str, record: dict) -> None:
        self.storage.write_bytes(f"{self.run_path(flow, run_id)}/run.json", _dumps(record))

    def read_run(self, flow: str, run_id: str) -> dict | None:
        return self._read_json(f"{self.run_path(flow, run_id)}/run.json")

    def write_run_status(self, flow: str, run_id: str, record: dict) -> None:
        self.storage.write_bytes(f"{self.run_path(flow, run_id)}/status.json", _dumps(record))

    def read_run_status(self, flow: str, run_id: str) -> dict | None:
        return self._read_json(f"{self.run_path(flow, run_id)}/status.json")

    def list_flows(self) -> list[str]:
        return sorted(self.storage.list("flows"))

    def list_runs(self, flow: str) -> list[str]:
        """Run ids of a flow, newest first."""
        runs = [r for r in self.storage.list(f"flows/{flow}") if r.isdigit()]
        return sorted(runs, key=int, reverse=True)

    def list_steps(self, flow: str, run_id: str) -> list[str]:
        return [name for name in self.storage.list(self.run_path(flow, run_id)) if "." not in name]

    def list_tasks(self, flow: str, run_id: str, step: str) -> list[str]:
        tasks = self.storage.list(f"{self.run_path(flow, run_id)}/{step}")
        return sorted(tasks, key=lambda t: (len(t), t))

    # ---------------------------------------------------------------- step indexes
    def write_step_indexes(self, flow: str, run_id: str, records: list[dict]) -> None:
        """Gather the final records of a finished run's tasks, one object per step."""
        by_step: dict[str, dict[str, dict]] = {}
        for record in records:
            by_step.setdefault(record["step"], {})[record["task_id"]] = record
        for step, tasks in by_step.items():
            path = f"{self.run_path(flow, run_id)}/{step}.tasks.json"
            self.storage.write_bytes(path, _dumps({"v": 1, "tasks": tasks}))

    def read_step_index(self, flow: str, run_id: str, step: str) -> dict[str, dict] | None:
        """{task_id: final record} for a step of a finished run, or None."""
        index = self._read_json(f"{self.run_path(flow, run_id)}/{step}.tasks.json")
        return index.get("tasks") if index and index.get("v") == 1 else None

    # ---------------------------------------------------------------- tasks
    def write_attempt_start(
        self, flow: str, run_id: str, step: str, task_id: str, attempt: int, record: dict
    ) -> None:
        path = self.attempt_file(flow, run_id, step, task_id, attempt, "start.json")
        self.storage.write_bytes(path, _dumps(record))

    def write_attempt_done(
        self, flow: str, run_id: str, step: str, task_id: str, attempt: int, record: dict
    ) -> None:
        path = self.attempt_file(flow, run_id, step, task_id, attempt, "done.json")
        self.storage.write_bytes(path, _dumps(record))

    def read_attempt_done(
        self, flow: str, run_id: str, step: str, task_id: str, attempt: int
    ) -> dict | None:
        return self._read_json(self.attempt_file(flow, run_id, step, task_id, attempt, "done.json"))

    def task_attempts(self, flow: str, run_id: str, step: str, task_id: str) -> dict[int, set]:
        """Which files exist for each attempt: {attempt: {"start.json", "done.json", ...}}."""
        attempts: dict[int, set] = {}
        for name in self.storage.list(self.task_path(flow, run_id, step, task_id)):
            number, _, kind = name.partition(".")
            if number.isdigit():
                attempts.setdefault(int(number), set()).add(kind)
        return attempts

    def latest_attempt(self, flow: str, run_id: str, step: str, task_id: str) -> tuple[int, dict]:
        """The latest attempt number and its record (done, else start, else {})."""
        attempts = self.task_attempts(flow, run_id, step, task_id)
        if not attempts:
            return -1, {}
        number = max(attempts)
        kinds = attempts[number]
        for kind in ("done.json", "start.json"):
            if kind in kinds:
                record = self._read_json(
                    self.attempt_file(flow, run_id, step, task_id, number, kind)
                )
                if record is not None:
                    if kind == "start.json":
                        record = dict(record, status="running")
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
        read_from: tuple[dict, MappedBlob | None] | None = None,
    ) -> dict:
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
        entry = {"sha": stored.sha, "type": type_name(value), "size": stored.size}
        if stored.inline is not None:
            entry["inline"] = binascii.b2a_base64(stored.inline, newline=False).decode("ascii")
        file_id = stored.file_id
        if file_id is not None:
            entry["file_id"] = file_id
        return entry

    def ensure_blob(self, entry: dict) -> None:
        """Give an inline artifact its blob file too, so its hash alone finds it."""
        inline = entry.get("inline")
        if inline is not None and not self.storage.exists(self.blobs.path(entry["sha"])):
            self.storage.write_bytes(self.blobs.path(entry["sha"]), _from_base64(inline))

    def load_artifact(self, entry: dict, name: str, pathspec: str) -> Any:
        return self.read_artifact(entry, name, pathspec)[0]

    def read_artifact(self, entry: dict, name: str, pathspec: str) -> tuple[Any, MappedBlob | None]:
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
    def _read_json(self, path: str) -> dict | None:
        try:
            data = self.storage.read_bytes(path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError:
            return None
        return jsonio.loads(data)
