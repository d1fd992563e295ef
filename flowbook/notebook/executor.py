"""The kernel's task server: a spawned process that forks the notebook's tasks.

The kernel must never fork itself, so it spawns one server per kernel and keeps it
warm. Each time the notebook's flow changes (a step cell runs), the kernel sends the
new flow class and graph, pickled by value, as a *definition*; task payloads name
the definition they run against. This module is imported by the server process, so
it must not import IPython or widgets.
"""

from __future__ import annotations

import hashlib
from typing import Any

from ..datastore.pickling import dumps_code
from ..runtime.executor import TaskExecutor, TaskExited, TaskStarted
from ..runtime.server import DEFINITIONS, TaskServerClient
from ..runtime.task import execute_task
from .builder import register_source  # imported here, in the server, not in every task


def run_defined_task(payload: tuple) -> int:
    """Server-side handler: ``payload`` is (definition name, TaskSpec)."""
    name, spec = payload
    flow_cls, graph, sources = DEFINITIONS[name]
    for filename, text in sources.items():
        register_source(filename, text)
    return execute_task(spec, flow_cls, graph)


class NotebookExecutor(TaskExecutor):
    """What the scheduler talks to: the kernel's server plus the current definition."""

    def __init__(self) -> None:
        handler = dumps_code(run_defined_task)
        self.server = TaskServerClient.start_spawned(("pickled", handler))
        self.definition: str | None = None
        self._sent: set[str] = set()

    def define(self, flow_cls: type, graph: Any, sources: dict[str, str]) -> str:
        data = dumps_code((flow_cls, graph, sources))
        name = hashlib.sha256(data).hexdigest()[:16]
        if name not in self._sent:
            self.server.define(name, data)
            self._sent.add(name)
        self.definition = name
        return name

    # The scheduler's executor interface (runtime/executor.py)
    def submit(self, key: Any, spec: Any) -> None:
        self.server.submit(key, (self.definition, spec))

    def wait_events(self, timeout: float) -> list[TaskStarted | TaskExited]:
        return self.server.wait_events(timeout)

    def kill(self, key: Any, signal_number: int) -> None:
        self.server.kill(key, signal_number)

    def warm(self, module: str) -> None:
        self.server.warm(module)

    def alive(self) -> bool:
        return self.server.alive()

    def close(self) -> None:
        self.server.close()
