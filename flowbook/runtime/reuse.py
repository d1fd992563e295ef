"""Reuse: hand a task the result of an earlier, provably identical task, and say why not.

With ``--reuse`` the scheduler asks :meth:`ReusePlan.decide` before starting each
task. An earlier task may stand in for it when it

* succeeded (a failed task, or one whose failure ``@catch`` stored, never does),
* is of the same step at the same place (the same split index or branch in every
  enclosing foreach and split, and the same foreach list, by content),
* ran the same code: the same fingerprint (runtime/fingerprint.py: the step's
  source, the module-level code and local modules it uses, its decorators, the
  Python and flowbook versions),
* and read the same values: every artifact and parameter the earlier task actually
  read (the task records its reads: runtime/context.py) has the same content (SHA)
  now. What it did not read does not matter: a parameter it never looked at may
  change, a parent may run again and produce the same bytes.

Such a task is cloned as resume clones (runtime/resume.py: no data copied), with
``reused_from`` and ``run_reason`` in its record. Its artifact index is rebuilt: the
artifacts the earlier task made (``own`` in its record) come from it, everything it
passed on unread comes from this run's parent and parameters, so the new run's
data is exactly what running the task would have made.

Earlier tasks are looked for in every earlier run of the flow by the same user,
newest first; each run's records of a step are read once, and only as far back as
needed (a step reused from the latest run reads one run). When nothing matches,
:meth:`ReusePlan.decide` explains the difference with the newest earlier task at
the same place: its code changed (on which line), a parameter changed (from what to
what), an input changed (from which step), ...
"""

from __future__ import annotations

from ..datastore import Datastore
from ..datastore.records import shown_value
from ..exceptions import CorruptRecordError
from ..graph import FlowGraph
from .context import NAMES, inherited_artifacts, names_text
from .fingerprint import first_difference, load_texts, support_statements
from .resume import final_records, task_identity, write_clone

TYPE_CHECKING = False  # typing costs ~6 ms to import; annotations are strings here
if TYPE_CHECKING:
    from collections.abc import Iterator

    from ..datastore.schema import ArtifactEntry, Frame, ParentInfo, TaskRecord

#: The reason of a task reused in full.
SAME = "same code, inputs and parameters"
#: The reason when no earlier task is at the same place.
NO_EARLIER = "no earlier task with this key"


def _lists(split_stack: list[Frame]) -> tuple:
    """The content of the foreach lists a task's splits come from."""
    return tuple(f.get("sha") for f in split_stack if f["kind"] == "foreach")


class Decision:
    """Reuse ``origin`` (a successful earlier task's record), or run, because ``reason``."""

    def __init__(self, reason: str, origin: TaskRecord | None = None) -> None:
        self.reason = reason
        self.origin = origin

    @property
    def text(self) -> str:
        """``reused from RUN/STEP/TASK (same code, ...)`` or ``runs (why)``."""
        if self.origin is not None:
            o = self.origin
            return f"reused from {o['run_id']}/{o['step']}/{o['task_id']} ({self.reason})"
        return f"runs ({self.reason})"


class ReusePlan:
    """The earlier tasks of a flow's steps, and the decision for each new task."""

    def __init__(
        self,
        datastore: Datastore,
        graph: FlowGraph,
        run_id: str,
        user: str,
        code: dict[str, dict],
        parameters: dict[str, ArtifactEntry],
        include_this_run: bool = False,
    ) -> None:
        self.datastore = datastore
        self.graph = graph
        self.flow = graph.name
        self.run_id = run_id
        self.user = user
        self.code = code
        self.parameters = parameters
        self.include_this_run = include_this_run
        self._runs: list[str] | None = None
        self._run_records: dict[str, dict] = {}
        # step -> (how many runs were read, {place: [record, ...] newest first})
        self._seen: dict[str, tuple[int, dict[tuple, list[TaskRecord]]]] = {}

    # ------------------------------------------------------------ deciding
    def decide(
        self, step: str, split_stack: list[Frame], parents: list[ParentInfo], enabled: bool
    ) -> Decision:
        """Reuse an earlier task for this one, or run it, and why."""
        if not enabled:
            return Decision("@reuse(False)")
        code = self.code.get(step)
        if code is None:
            return Decision("its source could not be read, so it cannot be compared")
        if not code.get("key"):
            return Decision(code.get("stale") or "it has no code fingerprint")
        previous = None
        for record in self._earlier(step, task_identity(step, split_stack)):
            previous = previous or record
            if self.stands_in(record, step, split_stack, parents):
                return Decision(SAME, record)
        if previous is None:
            return Decision(NO_EARLIER)
        is_join = self.graph[step].is_join
        return Decision(self._difference(previous, code, split_stack, parents, is_join))

    def stands_in(
        self, record: TaskRecord, step: str, split_stack: list[Frame], parents: list[ParentInfo]
    ) -> bool:
        """Whether the earlier task ``record`` gives what this task would: the same
        code, foreach lists and values read (its place is the caller's to match)."""
        key = (self.code.get(step) or {}).get("key")
        return bool(
            key
            and (record.get("code") or {}).get("key") == key
            and _lists(record.get("split_stack", [])) == _lists(split_stack)
            and "own" in record
            and self._changed_read(record, parents, self.graph[step].is_join) is None
        )

    def _changed_read(
        self, record: TaskRecord, parents: list[ParentInfo], is_join: bool
    ) -> tuple | None:
        """The first read of ``record`` whose value differs now: (source, name, then,
        now), where the SHAs are None for an artifact that was (or is) missing."""
        if is_join and len(record.get("parents", [])) != len(parents):
            return ("inputs", "", len(record.get("parents", [])), len(parents))
        for source, name, sha in record.get("reads") or []:
            if source == "p":
                entry = self.parameters.get(name)
            elif source == ".":
                if is_join:
                    continue  # a join's own artifacts come from its inputs, compared below
                if name in self.parameters or not parents:
                    entry = None
                else:
                    entry = parents[0]["artifacts"].get(name)
            elif isinstance(source, int) and 0 <= source < len(parents):
                if name == NAMES:  # merge_artifacts looked at the input's names
                    if names_text(parents[source]["artifacts"]) != sha:
                        return (source, name, sha, names_text(parents[source]["artifacts"]))
                    continue
                entry = parents[source]["artifacts"].get(name)
                if entry is None:
                    entry = self.parameters.get(name)
            else:
                return (source, name, sha, None)
            now = entry["sha"] if entry is not None else None
            if now != sha:
                return (source, name, sha, now)
        return None

    # ------------------------------------------------------------ explaining
    def _difference(
        self,
        previous: TaskRecord,
        code: dict,
        split_stack: list[Frame],
        parents: list[ParentInfo],
        is_join: bool,
    ) -> str:
        """Why ``previous`` (the newest earlier task at this place) cannot stand in."""
        then = previous.get("code") or {}
        if not then.get("key"):
            return f"{NO_EARLIER} (the earlier tasks recorded no code fingerprint)"
        for part, label in (("python", "Python"), ("flowbook", "flowbook")):
            if then.get(part) != code.get(part):
                return f"{label} {then.get(part)} -> {code.get(part)}"
        if then.get("step") != code.get("step"):
            return self._code_change(then, code)
        if then.get("support") != code.get("support"):
            return self._support_change(then, code)
        if then.get("helpers") != code.get("helpers"):
            old, new = then.get("helpers") or {}, code.get("helpers") or {}
            modules = sorted(p for p in set(old) | set(new) if old.get(p) != new.get(p))
            return f"helper module {', '.join(modules)} changed"
        if _lists(previous.get("split_stack", [])) != _lists(split_stack):
            frame = next(
                (
                    f
                    for f, g in zip(split_stack, previous.get("split_stack", []), strict=False)
                    if f["kind"] == "foreach" and f.get("sha") != g.get("sha")
                ),
                None,
            )
            if frame is None:
                return "its foreach input changed"
            return f"its foreach input changed: the list '{frame['var']}' of step '{frame['step']}'"
        changed = self._changed_read(previous, parents, is_join)
        if changed is None:
            return NO_EARLIER
        source, name, old, new = changed
        if source == "inputs":
            return f"it joins {new} inputs, not {old}"
        if source == "p":
            return f"parameter {name} {self._parameter_text(previous, name)} -> " + (
                self._value_text(self.parameters.get(name), name)
            )
        info = parents[source if isinstance(source, int) else 0] if parents else None
        parent = info["step"] if info else "?"
        if name == NAMES:
            return f"the artifacts it merges changed, from step '{parent}'"
        made = info is None or name in (info.get("own") or [name])
        origin = f"from step '{parent}'" if made else f"passed on by step '{parent}'"
        if new is None:
            return f"input '{name}' is gone, {origin}"
        if old is None:
            return f"input '{name}' is new, {origin}"
        return f"input '{name}' changed, {origin}"

    def _code_change(self, then: dict, code: dict) -> str:
        texts = (load_texts(self.datastore, then), load_texts(self.datastore, code))
        if texts[0] is None or texts[1] is None:
            return "its code changed"
        index = first_difference(texts[0][0], texts[1][0])
        if index is None:
            return "its code changed"
        where = "" if code.get("where") in (None, "cell") else f" of {code['where']}"
        if code.get("where") == "cell" and index == 0:
            return "its code changed: its %%step line (or tags)"
        return f"its code changed: line {code.get('line', 1) + index}{where}"

    def _support_change(self, then: dict, code: dict) -> str:
        texts = (load_texts(self.datastore, then), load_texts(self.datastore, code))
        kind = "setup code" if code.get("where") == "cell" else "module-level code"
        if texts[0] is None or texts[1] is None:
            return f"the {kind} it uses changed"
        old = {body for _, body in support_statements(texts[0][1])}
        for at, body in support_statements(texts[1][1]):
            if body not in old:
                return f"the {kind} it uses changed: {at}"
        return f"the {kind} it uses changed (a statement it used is gone)"

    def _parameter_text(self, previous: TaskRecord, name: str) -> str:
        record = self._run_record(previous["run_id"])
        return self._value_text((record.get("parameters") or {}).get(name), name)

    def _value_text(self, entry: ArtifactEntry | None, name: str) -> str:
        if entry is None:
            return "(none)"
        try:
            return shown_value(self.datastore.load_artifact(entry, name, self.flow))
        except Exception:  # only ever a hint
            return f"sha {entry.get('sha', '?')[:12]}"

    # ------------------------------------------------------------ cloning
    def clone(
        self,
        decision: Decision,
        run_id: str,
        task_id: str,
        split_stack: list[Frame],
        parents: list[ParentInfo],
    ) -> TaskRecord:
        """Write the reused task into this run (see the module's docstring)."""
        origin = decision.origin
        assert origin is not None
        step = origin["step"]
        inherited, dropped = inherited_artifacts(
            step, self.parameters, parents, self.graph[step].is_join
        )
        artifacts = dict(self.parameters)
        artifacts.update(inherited)
        for name in origin.get("own", []):
            if name in origin.get("artifacts", {}):
                artifacts[name] = origin["artifacts"][name]
        for name in artifacts:
            dropped.pop(name, None)
        return write_clone(
            self.datastore,
            self.flow,
            origin,
            run_id,
            task_id,
            split_stack,
            parents,
            artifacts=artifacts,
            dropped=dropped,
            code=self.code[step],
            reused_from=f"{self.flow}/{origin['run_id']}/{step}/{origin['task_id']}",
            run_reason=decision.text,
        )

    # ------------------------------------------------------------ earlier tasks
    def _earlier(self, step: str, where: tuple) -> Iterator[TaskRecord]:
        """Successful earlier tasks of ``step`` at ``where``, newest run first; reads
        the runs' records of the step one run at a time, as far as the caller goes."""
        read, by_place = self._seen.setdefault(step, (0, {}))
        position = 0
        while True:
            found = by_place.get(where, [])
            while position < len(found):
                yield found[position]
                position += 1
            runs = self._earlier_runs()
            if read >= len(runs):
                return
            for record in self._step_records(runs[read], step):
                if record.get("status") == "successful" and not record.get("caught"):
                    try:
                        key = task_identity(step, record.get("split_stack", []))
                    except (KeyError, TypeError, AttributeError):
                        continue  # a malformed record stands in for nothing
                    by_place.setdefault(key, []).append(record)
            read += 1
            self._seen[step] = (read, by_place)

    def _earlier_runs(self) -> list[str]:
        """This user's earlier runs of the flow, newest first."""
        if self._runs is None:
            runs = []
            for run_id in self.datastore.list_runs(self.flow):
                if run_id == self.run_id and not self.include_this_run:
                    continue
                if self._run_record(run_id).get("user") == self.user:
                    runs.append(run_id)
            self._runs = runs
        return self._runs

    def _run_record(self, run_id: str) -> dict:
        if run_id not in self._run_records:
            try:
                self._run_records[run_id] = dict(self.datastore.read_run(self.flow, run_id) or {})
            except CorruptRecordError:
                self._run_records[run_id] = {}
        return self._run_records[run_id]

    def _step_records(self, run_id: str, step: str) -> list[TaskRecord]:
        """The final records of a step's tasks in one run, newest first: a notebook's
        interactive run (never finished, so read task by task) holds a step's tasks
        of every execution of its cell, and the latest one is the one to compare with."""
        found = final_records(
            self.datastore,
            self.flow,
            run_id,
            step,
            "It is not looked at for reuse.",
            use_index=run_id != self.run_id,
        )
        # (annotated: mypy makes reversed() of records holding Any fields Any)
        newest_first: Iterator[tuple[str, int, TaskRecord]] = reversed(found)
        return [
            {**record, "task_id": task_id, "run_id": run_id, "step": step}
            for task_id, _, record in newest_first
        ]
