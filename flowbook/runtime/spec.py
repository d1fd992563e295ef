"""The message that describes one task attempt, sent from the scheduler to an executor."""

from __future__ import annotations

from ..plain import Plain

TYPE_CHECKING = False  # typing costs ~6 ms to import; annotations are strings here
if TYPE_CHECKING:
    from ..datastore.schema import ArtifactEntry, ExceptionInfo, Frame, ParentInfo


class TaskSpec(Plain):
    """Everything a task process needs to run one attempt of one step.

    ``parents`` holds, for each parent task, ``{"pathspec", "step", "artifacts",
    "dropped", "foreach_stack"}``: the parent's artifact index travels with the spec,
    so a task reads no metadata before it starts. ``split_stack`` holds the frames of
    the splits and foreaches this task is inside, outermost first. ``caught`` is set
    for the attempt that only stores a caught exception (``@catch``). ``code``
    and ``run_reason`` are what reuse (runtime/reuse.py) keeps in the task's record.
    """

    def __init__(
        self,
        flow_name: str,
        run_id: str,
        step: str,
        task_id: str,
        attempt: int,
        datastore_url: str,
        parents: list[ParentInfo] | None = None,
        split_stack: list[Frame] | None = None,
        parameters: dict[str, ArtifactEntry] | None = None,
        stdout_path: str = "",
        stderr_path: str = "",
        tags: list[str] | None = None,
        user: str = "",
        origin_run_id: str | None = None,
        max_attempts: int = 1,
        caught: ExceptionInfo | None = None,
        code: dict | None = None,
        run_reason: str | None = None,
        record_copy: str | None = None,
    ) -> None:
        self.flow_name = flow_name
        self.run_id = run_id
        self.step = step
        self.task_id = task_id
        self.attempt = attempt
        self.datastore_url = datastore_url
        self.parents: list[ParentInfo] = parents if parents is not None else []
        self.split_stack: list[Frame] = split_stack if split_stack is not None else []
        self.parameters: dict[str, ArtifactEntry] = parameters if parameters is not None else {}
        self.stdout_path = stdout_path
        self.stderr_path = stderr_path
        self.tags: list[str] = tags if tags is not None else []
        self.user = user
        self.origin_run_id = origin_run_id
        self.max_attempts = max_attempts
        self.caught = caught
        #: The step's code fingerprint (runtime/fingerprint.py), kept in the record so
        #: that a later run can reuse this task; None when not computed.
        self.code = code
        #: Why this task runs rather than being reused (with ``--reuse``).
        self.run_reason = run_reason
        #: A local path where the task also leaves its final record, so that a
        #: scheduler on this machine need not fetch it from a remote datastore.
        self.record_copy = record_copy

    @property
    def pathspec(self) -> str:
        return f"{self.flow_name}/{self.run_id}/{self.step}/{self.task_id}"

    @property
    def short_pathspec(self) -> str:
        return f"{self.run_id}/{self.step}/{self.task_id}"
