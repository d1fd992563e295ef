"""The errors flowbook raises on purpose.

Every error a user can cause is a :class:`FlowbookError`: its first line is a
headline the user can act on, naming the flow, step, cell or artifact at fault.
Command-line entry points print ``headline`` and exit non-zero instead of showing
a traceback from inside flowbook.
"""

from __future__ import annotations


class FlowbookError(Exception):
    """Base class of every error flowbook raises on purpose."""

    headline = "flowbook error"

    def __init__(self, message: str = "") -> None:
        super().__init__(message or self.headline)
        self.message = message or self.headline

    def __str__(self) -> str:
        return self.message

    def __reduce__(self):
        # Errors cross process boundaries (task -> scheduler -> kernel): keep them picklable.
        return (self.__class__, (self.message,))

    def _render_traceback_(self) -> list[str]:
        """How IPython shows it: the message alone, not flowbook's frames."""
        return [f"\x1b[0;31m{type(self).__name__}\x1b[0m: {self.message}"]


class GraphError(FlowbookError):
    """The flow's DAG is not valid; nothing has run."""

    headline = "invalid flow graph"


class InvalidNameError(FlowbookError, ValueError):
    """A run id, task id, pathspec or name is not in flowbook's grammar (names.py)."""

    headline = "invalid name"


class ParameterError(FlowbookError):
    """A parameter is missing or has a value of the wrong type; nothing has run."""

    headline = "invalid parameter"


class DatastoreError(FlowbookError):
    """The datastore is missing, read-only, or holds data that cannot be read."""

    headline = "datastore error"


class CorruptBlobError(DatastoreError):
    """A stored blob's content does not match its content hash."""

    headline = "corrupt artifact blob"


class CorruptRecordError(DatastoreError):
    """A run or task record (``run.json``, ``status.json``, ``done.json``...) cannot be
    read: not JSON, not a JSON object, or a field of the wrong type. Names the file."""

    headline = "corrupt record"


class FlowbookWarning(UserWarning):
    """Base class of the warnings flowbook gives (a one-line message)."""


class CorruptRecordWarning(FlowbookWarning):
    """A corrupt record was skipped (a run left out of a listing, a task run again)."""


class ArtifactError(FlowbookError):
    """An artifact cannot be stored or read (unpicklable, not available here)."""

    headline = "artifact error"


class MissingArtifactError(ArtifactError, AttributeError):
    """An artifact that a step reads does not exist (or was dropped at a join)."""


class MergeError(ArtifactError):
    """``merge_artifacts`` met artifacts whose values differ between inputs."""


class TransitionError(FlowbookError):
    """A step called ``self.next`` in a way that does not match the flow's graph."""


class StepFailed(FlowbookError):
    """A task of a step failed; carries the user's exception summary."""

    def __init__(
        self,
        message: str = "",
        pathspec: str = "",
        exception_type: str = "",
        exception_message: str = "",
        traceback_text: str = "",
    ) -> None:
        super().__init__(message)
        self.pathspec = pathspec
        self.exception_type = exception_type
        self.exception_message = exception_message
        self.traceback_text = traceback_text

    def __reduce__(self):
        return (
            self.__class__,
            (
                self.message,
                self.pathspec,
                self.exception_type,
                self.exception_message,
                self.traceback_text,
            ),
        )


class StepException:
    """What ``@catch(var=...)`` stores: the exception a step's last attempt raised.

    A plain, picklable record (the original exception object may not unpickle
    elsewhere): ``type``, ``message`` and the user's ``traceback``.
    """

    def __init__(self, type: str, message: str, traceback: str = "") -> None:  # noqa: A002
        self.type = type
        self.message = message
        self.traceback = traceback

    @property
    def exception(self) -> str:  # Metaflow's name
        return self.message

    @property
    def stacktrace(self) -> str:  # Metaflow's name
        return self.traceback

    def __str__(self) -> str:
        return f"{self.type}: {self.message}"

    def __repr__(self) -> str:
        return f"StepException({self.type!r}, {self.message!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StepException) and (self.type, self.message) == (
            other.type,
            other.message,
        )

    __hash__ = None  # type: ignore[assignment]


class RunFailed(FlowbookError):
    """A run did not complete successfully."""


class ClientError(FlowbookError):
    """A Client API lookup failed (unknown flow, run, step, task or artifact)."""


class ClientNotFound(ClientError, KeyError):
    """The object named by a pathspec does not exist in the current namespace."""

    def __str__(self) -> str:  # KeyError would quote the message
        return self.message
