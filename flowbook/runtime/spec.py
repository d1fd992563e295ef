"""The message that describes one task attempt, sent from the scheduler to an executor."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TaskSpec:
    """Everything a task process needs to run one attempt of one step.

    ``parents`` holds, for each parent task, ``{"pathspec", "step", "artifacts",
    "dropped", "foreach_stack"}``: the parent's artifact index travels with the spec,
    so a task reads no metadata before it starts. ``split_stack`` holds the frames of
    the splits and foreaches this task is inside, outermost first.
    """

    flow_name: str
    run_id: str
    step: str
    task_id: str
    attempt: int
    datastore_url: str
    parents: list[dict] = field(default_factory=list)
    split_stack: list[dict] = field(default_factory=list)
    parameters: dict[str, dict] = field(default_factory=dict)
    stdout_path: str = ""
    stderr_path: str = ""
    tags: list[str] = field(default_factory=list)
    user: str = ""
    origin_run_id: str | None = None
    max_attempts: int = 1
    #: For the attempt that only stores a caught exception (``@catch``): the exception.
    caught: dict | None = None

    @property
    def pathspec(self) -> str:
        return f"{self.flow_name}/{self.run_id}/{self.step}/{self.task_id}"

    @property
    def short_pathspec(self) -> str:
        return f"{self.run_id}/{self.step}/{self.task_id}"
