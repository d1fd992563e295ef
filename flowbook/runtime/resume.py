"""Resume: which tasks of an origin run can be reused, and how to clone them.

A task of the new run is cloned instead of run when

* its step is not the step the user asked to resume from, nor after it;
* every parent task in the new run was itself cloned (its inputs are the same);
* the origin run has a successful task at the same place: the same step and the same
  position in every enclosing split and foreach.

So after a failure, the failed tasks and everything downstream of them run again,
while in a foreach whose body failed in only some splits, the other splits are
cloned. A clone copies the origin's record (its artifact index points at the same
blobs: no artifact data is copied) and records ``origin_pathspec``.

Every face (command line, Runner, notebook) comes through :func:`find_origin_run`
and :class:`ResumePlan`, so the origin run id is checked here (names.py): an id
such as ``../../other/flows/F/1`` cannot reach outside the flow's directory. An
origin whose ``run.json`` is corrupt is refused naming the file; a task record of
the origin that is corrupt is skipped with a warning, so that task runs again.
"""

from __future__ import annotations

import time

from ..datastore import Datastore
from ..datastore.records import warn_corrupt
from ..exceptions import CorruptRecordError, FlowbookError
from ..graph import FlowGraph
from ..names import check

TYPE_CHECKING = False  # typing costs ~6 ms to import; annotations are strings here
if TYPE_CHECKING:
    from typing import cast

    from ..datastore.schema import Frame, ParentInfo, TaskRecord


def task_identity(step: str, split_stack: list[Frame]) -> tuple:
    return (
        step,
        tuple(
            (f["step"], f.get("index") if f["kind"] == "foreach" else f["branch"])
            for f in split_stack
        ),
    )


def find_origin_run(datastore: Datastore, flow: str, user: str) -> str:
    """The latest run of ``flow`` started by ``user`` (else by anyone).

    A run whose ``run.json`` is corrupt is passed over with a CorruptRecordWarning."""
    readable = []
    for run_id in datastore.list_runs(flow):
        try:
            record = datastore.read_run(flow, run_id)
        except CorruptRecordError as exc:
            warn_corrupt(f"Not resuming run {run_id}: {exc}")
            continue
        if record is None:
            continue
        if record.get("user") == user:
            return run_id
        readable.append(run_id)
    if not readable:
        raise FlowbookError(f"Flow {flow} has no run to resume in datastore {datastore.url}.")
    return readable[0]


def descendants(graph: FlowGraph, step: str) -> set[str]:
    found = set()
    todo = [step]
    while todo:
        name = todo.pop()
        if name in found:
            continue
        found.add(name)
        todo.extend(graph[name].out_funcs)
    return found


class ResumePlan:
    """The successful tasks of an origin run, by identity, and the steps to re-run."""

    def __init__(
        self, datastore: Datastore, graph: FlowGraph, origin_run_id: str, step: str | None
    ) -> None:
        self.datastore = datastore
        self.flow = graph.name
        self.origin_run_id = check(origin_run_id, "origin run id")
        try:
            origin = datastore.read_run(self.flow, origin_run_id)
        except CorruptRecordError as exc:
            raise CorruptRecordError(
                f"Flow {self.flow}: cannot resume run {origin_run_id}: {exc}"
            ) from None
        if origin is None:
            raise FlowbookError(
                f"Flow {self.flow} has no run {origin_run_id} to resume in {datastore.url}."
            )
        if step is not None and step not in graph:
            raise FlowbookError(
                f"Flow {self.flow} has no step '{step}' to resume from "
                f"(its steps: {', '.join(n.name for n in graph)})."
            )
        self.step = step
        self.forced = descendants(graph, step) if step else set()
        self.successful: dict[tuple, TaskRecord] = {}
        for step_name in datastore.list_steps(self.flow, origin_run_id):
            for task_id, attempt, record in self._final_records(step_name):
                if record.get("status") == "successful":
                    try:
                        key = task_identity(step_name, record.get("split_stack", []))
                    except (KeyError, TypeError):
                        warn_corrupt(
                            f"Task {self.flow}/{origin_run_id}/{step_name}/{task_id} has a "
                            "malformed split stack in its record; it will run again."
                        )
                        continue
                    # where the record was found, not what it says, names its files
                    self.successful[key] = {
                        **record,
                        "attempt": attempt,
                        "run_id": origin_run_id,
                        "step": step_name,
                        "task_id": task_id,
                    }

    def _final_records(self, step: str) -> list[tuple[str, int, TaskRecord]]:
        """(task id, attempt, record) of each task of a step of the origin run."""
        return final_records(
            self.datastore, self.flow, self.origin_run_id, step, "It will run again."
        )

    def clone_source(
        self, step: str, split_stack: list[Frame], parents: list[ParentInfo]
    ) -> TaskRecord | None:
        """The origin record to clone for this task, or None when it must run."""
        if step in self.forced:
            return None
        if not all(parent.get("cloned") for parent in parents):
            return None
        return self.successful.get(task_identity(step, split_stack))

    def clone(
        self,
        origin: TaskRecord,
        run_id: str,
        task_id: str,
        split_stack: list[Frame],
        parents: list[ParentInfo],
    ) -> TaskRecord:
        """Write the clone's record into the new run and return it."""
        return write_clone(
            self.datastore,
            self.flow,
            origin,
            run_id,
            task_id,
            split_stack,
            parents,
            origin_run_id=self.origin_run_id,
        )


def final_records(
    datastore: Datastore,
    flow: str,
    run_id: str,
    step: str,
    if_corrupt: str,
    use_index: bool = True,
) -> list[tuple[str, int, TaskRecord]]:
    """(task id, attempt, record) of the latest attempt of each task of a step of a
    run, in task id order: the step's index of a finished run in one read (unless
    ``use_index`` is False), else each task's own records. A corrupt record is
    passed over with a CorruptRecordWarning ending in ``if_corrupt``."""
    index = datastore.read_step_index(flow, run_id, step) if use_index else None
    if index is not None:
        return [(task_id, r["attempt"], r) for task_id, r in index.items()]
    records = []
    for task_id in datastore.list_tasks(flow, run_id, step):
        try:
            attempt, record = datastore.latest_attempt(flow, run_id, step, task_id)
        except CorruptRecordError as exc:
            warn_corrupt(f"{exc} Task {flow}/{run_id}/{step}/{task_id}: {if_corrupt}")
            continue
        if record:
            records.append((task_id, attempt, record))
    return records


def write_clone(
    datastore: Datastore,
    flow: str,
    origin: TaskRecord,
    run_id: str,
    task_id: str,
    split_stack: list[Frame],
    parents: list[ParentInfo],
    **fields: object,
) -> TaskRecord:
    """Record ``origin`` (a successful task of an earlier run) as task ``task_id`` of
    ``run_id``: its record with this run's ids, parents and frames (plus ``fields``),
    and its logs. Its artifact index points at the same blobs: no data is copied."""
    origin_pathspec = f"{flow}/{origin['run_id']}/{origin['step']}/{origin['task_id']}"
    record = dict(
        origin,
        run_id=run_id,
        task_id=task_id,
        attempt=0,
        parents=[p["pathspec"] for p in parents],
        split_stack=split_stack,
        foreach_stack=[f for f in split_stack if f["kind"] == "foreach"],
        origin_pathspec=origin_pathspec,
        cloned_at=time.time(),
    )
    for key in ("reused_from", "run_reason", "warm"):  # what the origin's own run said
        record.pop(key, None)
    record.update(fields)
    step = origin["step"]
    for kind in ("stdout", "stderr"):
        text = datastore.read_log(
            flow, origin["run_id"], step, origin["task_id"], origin["attempt"], kind
        )
        if text:  # a missing log reads as empty: an empty one needs no copy
            datastore.storage.write_bytes(
                datastore.attempt_file(flow, run_id, step, task_id, 0, kind), text.encode()
            )
    datastore.write_attempt_done(flow, run_id, step, task_id, 0, record)
    if TYPE_CHECKING:  # origin's record with the fields above: a TaskRecord still
        return cast("TaskRecord", record)
    return record
