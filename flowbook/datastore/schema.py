"""The shapes of the JSON records flowbook stores and passes around, for type checkers.

Records travel as plain dicts (they are read from and written to JSON, and the run
path cannot afford ``typing``: see docs/architecture.md), so these TypedDicts are
for readers and type checkers only. Import them under ``TYPE_CHECKING``::

    TYPE_CHECKING = False
    if TYPE_CHECKING:
        from ..datastore.schema import TaskRecord

Never import this module at run time.
"""

from __future__ import annotations

from typing import Literal, TypedDict

from typing_extensions import NotRequired


class ArtifactEntry(TypedDict):
    """One artifact in a task's index: its blob's name, type and size; a small value
    also travels ``inline`` (base64); ``file_id`` vouches for a local blob file."""

    sha: str
    type: str
    size: int
    inline: NotRequired[str]
    file_id: NotRequired[list[int]]


class ForeachFrame(TypedDict):
    """Pushed for each task a foreach step creates (runtime/frames.py)."""

    kind: Literal["foreach"]
    step: str
    task: str
    index: int
    num_splits: int
    var: str
    sha: str


class SplitFrame(TypedDict):
    """Pushed for each branch of a static split (runtime/frames.py)."""

    kind: Literal["split"]
    step: str
    task: str
    branch: str
    num_splits: int


Frame = ForeachFrame | SplitFrame


class Transition(TypedDict):
    """What ``self.next(...)`` said: the next steps, and the foreach's artifact."""

    steps: list[str]
    foreach: str | None
    num_splits: NotRequired[int]
    sha: NotRequired[str]


class ExceptionInfo(TypedDict):
    """What a failed attempt raised (a record of the scheduler's own, for a record it
    cannot read, has no traceback)."""

    type: str
    message: str
    traceback: NotRequired[str]


class TaskRecord(TypedDict):
    """``<attempt>.start.json`` / ``<attempt>.done.json`` of one task attempt."""

    flow: str
    run_id: str
    step: str
    task_id: str
    attempt: int
    pid: int
    started_at: float
    parents: list[str]
    split_stack: list[Frame]
    foreach_stack: list[ForeachFrame]
    max_attempts: int
    status: NotRequired[Literal["successful", "failed", "running"]]
    finished_at: NotRequired[float]
    artifacts: NotRequired[dict[str, ArtifactEntry]]
    dropped: NotRequired[dict[str, str]]
    next: NotRequired[Transition]
    exception: NotRequired[ExceptionInfo]
    caught: NotRequired[bool]
    warm: NotRequired[list[str]]
    origin_pathspec: NotRequired[str]
    origin_run_id: NotRequired[str]  # a task resume cloned: the run it was cloned from
    cloned_at: NotRequired[float]
    reused_from: NotRequired[str]
    run_reason: NotRequired[str]
    code: NotRequired[dict]
    reads: NotRequired[list[list]]
    own: NotRequired[list[str]]


class NoRecord(TypedDict):
    """The empty record ``{}``: what ``Datastore.latest_attempt`` gives for a task with
    no attempt yet (falsy, so ``if record:`` tells it from a TaskRecord)."""


class ParentInfo(TypedDict):
    """What a child task is told about a finished parent (runtime/frames.parent_info)."""

    pathspec: str
    step: str
    task_id: str
    artifacts: dict[str, ArtifactEntry]
    dropped: dict[str, str]
    foreach_stack: list[ForeachFrame]
    own: list[str]
    cloned: bool


class RunRecord(TypedDict):
    """``run.json``."""

    flow: str
    run_id: str
    user: str
    tags: list[str]
    system_tags: list[str]
    created_at: float
    parameters: dict[str, ArtifactEntry]
    graph: dict
    origin_run_id: str | None
    parameters_task: NotRequired[str]
    interactive: NotRequired[bool]  # a notebook session's run of step cells


class RunStatus(TypedDict):
    """``status.json``, written once the run ends."""

    successful: bool
    finished_at: float
    failures: list[str]
