"""The one interface between the scheduler and whatever runs its tasks.

The scheduler decides *which* task runs next; an executor decides *where*: a
warm fork server on this machine (:class:`~flowbook.runtime.server.TaskServerClient`),
the kernel's spawned server in a notebook (``notebook/executor.py``), or, later, a
Dask cluster. An executor takes :class:`~flowbook.runtime.spec.TaskSpec` objects,
reports when each task starts and exits, and can stop one. That is all the
scheduler knows of it: it reads every result from the datastore, never from the
executor, so a new executor is one new module and no edit to the scheduler.

The run path avoids ``typing`` (see docs/architecture.md), so the interface is a
plain base class whose methods say what an implementation must do.
"""

from __future__ import annotations

from ..exceptions import FlowbookError
from ..plain import Plain

TYPE_CHECKING = False  # typing costs ~6 ms to import; annotations are strings here
if TYPE_CHECKING:
    from .spec import TaskSpec


class TaskStarted(Plain):
    """The task ``key`` started; ``pid`` is its process id where it has one here."""

    def __init__(self, key: str, pid: int | None = None) -> None:
        self.key = key
        self.pid = pid


class TaskExited(Plain):
    """The task ``key`` ended: ``code`` is its exit code, or minus the number of the
    signal that killed it (as ``os.waitstatus_to_exitcode`` gives it). ``reason``
    says why when the executor knows better than the code (a lost worker)."""

    def __init__(
        self, key: str, code: int, pid: int | None = None, reason: str | None = None
    ) -> None:
        self.key = key
        self.code = code
        self.pid = pid
        self.reason = reason


class ExecutorLost(FlowbookError):
    """The process or cluster that runs a run's tasks went away in the middle of it;
    its message says what happened (one line)."""


class TaskExecutor:
    """What the scheduler needs from anything that runs tasks.

    Keys are the scheduler's task ids: unique among the tasks submitted and not yet
    exited. Every submitted task yields exactly one :class:`TaskExited`, preceded by
    one :class:`TaskStarted` unless it could not start at all.
    """

    def submit(self, key: str, spec: TaskSpec) -> None:
        """Start one attempt of one task (asynchronously: return at once)."""
        raise NotImplementedError

    def wait_events(self, timeout: float) -> list[TaskStarted | TaskExited]:
        """Wait up to ``timeout`` seconds for news; return what happened, oldest
        first (an empty list when nothing did). Raise :class:`ExecutorLost` when the
        executor itself is gone."""
        raise NotImplementedError

    def kill(self, key: str, signal_number: int) -> None:
        """Send a signal to a running task and everything it started; a task that
        already exited, or has not started, is left alone (its exit still comes)."""
        raise NotImplementedError

    #: Where a person can watch the tasks (a cluster's dashboard), if anywhere.
    dashboard_link: str | None = None

    def warm(self, module: str) -> None:
        """A hint: tasks turned out to import ``module``; preload it for later ones."""

    def close(self) -> None:
        """Stop every task still running and release the executor."""
        raise NotImplementedError
