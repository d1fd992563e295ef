"""``current``: what the running task is, readable from anywhere in a step."""

from __future__ import annotations

TYPE_CHECKING = False  # typing costs ~6 ms to import; annotations are strings here
if TYPE_CHECKING:
    from typing import Any


class Current:
    """Attributes of the running task; outside a task ``is_running_flow`` is False."""

    def __init__(self) -> None:
        self._values: dict[str, Any] = {}

    def _set(self, **values: Any) -> None:
        self._values = values

    def _clear(self) -> None:
        self._values = {}

    @property
    def is_running_flow(self) -> bool:
        return bool(self._values)

    def _get(self, name: str) -> Any:
        if not self._values:
            return None
        return self._values.get(name)

    flow_name = property(lambda self: self._get("flow_name"))
    run_id = property(lambda self: self._get("run_id"))
    step_name = property(lambda self: self._get("step_name"))
    task_id = property(lambda self: self._get("task_id"))
    retry_count = property(lambda self: self._get("retry_count") or 0)
    origin_run_id = property(lambda self: self._get("origin_run_id"))
    parameter_names = property(lambda self: list(self._get("parameter_names") or []))
    tags = property(lambda self: list(self._get("tags") or []))
    username = property(lambda self: self._get("username"))
    namespace = property(lambda self: f"user:{self._get('username')}" if self._values else None)

    @property
    def pathspec(self) -> str | None:
        if not self._values:
            return None
        return f"{self.flow_name}/{self.run_id}/{self.step_name}/{self.task_id}"

    def __repr__(self) -> str:
        return f"<current {self.pathspec or 'not in a running flow'}>"


current = Current()
