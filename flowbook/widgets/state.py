"""The state a run view shows, as plain data: which step is running, done, failed, stale.

Fed either by the scheduler's events while a run executes (:meth:`RunState.apply`)
or by a finished run's records (:meth:`RunState.from_run`). The widgets only render
it; tests check it without a browser.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..datastore.schema import TaskRecord

NOT_RUN, RUNNING, DONE, FAILED, STALE = "not-run", "running", "done", "failed", "stale"
STATES = (NOT_RUN, RUNNING, DONE, FAILED, STALE)


@dataclass
class TaskState:
    task_id: str
    state: str = RUNNING
    attempts: int = 1
    started: float | None = None
    finished: float | None = None
    #: The innermost foreach frame of the task ({"index", "sha", "var", ...}), when known.
    frame: dict | None = None
    #: The earlier task whose result this one reused (``--reuse``), if it was.
    reused_from: str | None = None
    #: Why it was reused or ran (``reused from ... (...)``, ``runs (...)``), with reuse on.
    reason: str | None = None

    @property
    def index(self) -> int | None:
        return None if self.frame is None else self.frame.get("index")

    @property
    def duration(self) -> float | None:
        if self.started is None:
            return None
        return (self.finished or time.time()) - self.started


@dataclass
class StepState:
    name: str
    tasks: dict[str, TaskState] = field(default_factory=dict)
    stale: bool = False
    expected: int | None = None  # tasks a foreach will have, when known
    #: Why the step's first task was reused or runs (with reuse on), before it starts.
    first_reason: str | None = None

    @property
    def state(self) -> str:
        states = [t.state for t in self.tasks.values()]
        if not states:
            return STALE if self.stale else NOT_RUN
        if FAILED in states and RUNNING not in states:
            return FAILED
        if RUNNING in states:
            return RUNNING
        if self.expected and len(states) < self.expected:
            return RUNNING
        return STALE if self.stale else DONE

    @property
    def reused(self) -> bool:
        """Every task of the step reused an earlier result (none ran)."""
        return bool(self.tasks) and all(t.reused_from for t in self.tasks.values())

    @property
    def reason(self) -> str | None:
        """Why the step was reused or ran: its first task's reason, and how many of
        several tasks were reused."""
        reasons = [t.reason for t in self.tasks.values() if t.reason]
        first = reasons[0] if reasons else self.first_reason
        if first and len(self.tasks) > 1:
            reused = sum(1 for t in self.tasks.values() if t.reused_from)
            return f"{first}; {reused} of {len(self.tasks)} reused"
        return first

    @property
    def done(self) -> int:
        return sum(1 for t in self.tasks.values() if t.state == DONE)

    @property
    def total(self) -> int:
        return max(self.expected or 0, len(self.tasks))

    @property
    def attempts(self) -> int:
        return max((t.attempts for t in self.tasks.values()), default=0)

    @property
    def duration(self) -> float | None:
        starts = [t.started for t in self.tasks.values() if t.started]
        if not starts:
            return None
        ends = [t.finished or time.time() for t in self.tasks.values()]
        return max(ends) - min(starts)


class RunState:
    """Per-step states of one run (or of a notebook's interactive session)."""

    def __init__(self, steps: list[str], pathspec: str | None = None) -> None:
        self.steps = {name: StepState(name) for name in steps}
        self.pathspec = pathspec
        self.finished = False
        self.successful: bool | None = None
        #: A run was started (its record exists), though no task may have started yet.
        self.started = False
        #: A notebook's interactive run: it never finishes; its steps run one cell at a time.
        self.interactive = False
        self._reasons: dict[tuple[str, str], str | None] = {}

    def step(self, name: str) -> StepState:
        return self.steps.setdefault(name, StepState(name))

    # ------------------------------------------------------------ live events
    def apply(self, kind: str, info: dict[str, Any]) -> None:
        """Take one scheduler event (task_started, task_finished, task_failed, ...)."""
        step_name, task_id = info.get("step"), info.get("task_id")
        if step_name is None or task_id is None:
            return
        step = self.step(step_name)
        task = step.tasks.get(task_id)
        now = time.time()
        if kind == "task_started":
            if task is None:
                step.tasks[task_id] = TaskState(task_id, RUNNING, 1, now)
            else:  # a retry of the same task
                task.state, task.attempts, task.finished = RUNNING, task.attempts + 1, None
            step.stale = False
        elif kind in ("task_finished", "task_cloned"):
            task = step.tasks.setdefault(task_id, TaskState(task_id, started=now))
            task.state, task.finished = DONE, now
            step.stale = False
        elif kind == "task_failed" and task is not None:
            task.state, task.finished = FAILED, now
        elif kind == "task_reused":
            step.tasks[task_id] = TaskState(
                task_id,
                DONE,
                1,
                now,
                now,
                reused_from=info.get("reused_from"),
                reason=info.get("reason"),
            )
            step.stale = False
        elif kind == "task_reason":  # it will run: why, shown before it starts
            step.first_reason = step.first_reason or info.get("reason")
            self._reasons[(step_name, task_id)] = info.get("reason")
        if kind == "task_started" and (step_name, task_id) in self._reasons:
            step.tasks[task_id].reason = self._reasons.pop((step_name, task_id))

    def mark_stale(self, names: set[str]) -> None:
        for name, step in self.steps.items():
            step.stale = name in names

    def finish(self, successful: bool) -> None:
        self.finished, self.successful = True, successful

    # ------------------------------------------------------------ from records
    @classmethod
    def from_run(cls, run: Any) -> RunState:
        """The state of a Client ``Run`` as its records tell it."""
        state = cls([s["name"] for s in run.graph], run.pathspec)
        for step in run:
            for task in step:
                frames = task.foreach_frames
                state.step(step.id).tasks[task.id] = TaskState(
                    task.id,
                    {"successful": DONE, "failed": FAILED}.get(task.status, RUNNING),
                    task.current_attempt + 1,
                    task.created_at,
                    task.finished_at,
                    frames[-1] if frames else None,
                    task.reused_from,
                    task.run_reason,
                )
        state.finished = run.finished
        state.successful = run.successful if run.finished else None
        return state

    @classmethod
    def from_records(
        cls,
        steps: list[str],
        records: dict[str, list[TaskRecord]],
        stale: set[str],
        pathspec: str | None = None,
    ) -> RunState:
        """The state of a notebook's interactive run: the latest tasks of each step."""
        state = cls(steps, pathspec)
        for name, step_records in records.items():
            for record in step_records:
                state.step(name).tasks[record["task_id"]] = TaskState(
                    record["task_id"],
                    DONE if record.get("status") == "successful" else FAILED,
                    int(record.get("attempt", 0)) + 1,
                    record.get("started_at"),
                    record.get("finished_at"),
                    foreach_frame(record),
                    record.get("reused_from"),
                    record.get("run_reason"),
                )
        state.mark_stale(stale)
        state.interactive = True
        return state

    # ------------------------------------------------------------ reading
    def outcome(self) -> str:
        """not started, running, successful or failed."""
        return _outcome(self)

    def failed_steps(self) -> list[str]:
        return [name for name, step in self.steps.items() if step.state == FAILED]

    def summary(self) -> str:
        """Readable text: one line per step (what a front-end-less notebook shows)."""
        lines = [f"{self.pathspec or 'flow'}: " + _outcome(self)]
        for name, step in self.steps.items():
            extra = f" {step.done}/{step.total}" if step.total > 1 else ""
            why = f"  {step.reason}" if step.reason else ""
            lines.append(f"  {name:<20} {step.state}{extra}{why}")
        return "\n".join(lines)


def foreach_frame(record: Mapping[str, Any]) -> dict | None:
    """The innermost foreach frame of a task record (its split index and foreach blob)."""
    frames = record.get("foreach_stack") or []
    return dict(frames[-1]) if frames else None


def _outcome(state: RunState) -> str:
    if state.finished:
        return "successful" if state.successful else "failed"
    steps = state.steps.values()
    if any(s.state == RUNNING for s in steps) or (state.started and not state.interactive):
        return "running"
    if state.interactive:
        return "interactive" if any(s.tasks for s in steps) else "not started"
    return "running" if any(s.tasks for s in steps) else "not started"
