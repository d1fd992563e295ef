"""The Client API: read past runs, their tasks, artifacts and logs.

Objects nest as in Metaflow: ``Metaflow()`` > ``Flow`` > ``Run`` > ``Step`` > ``Task``
> ``DataArtifact``, each named by a pathspec (``Flow/run_id/step/task_id/name``).
Everything is read from the datastore (``FLOWBOOK_DATASTORE`` or ``./.flowbook``;
:func:`datastore` changes it) and artifact values load only when asked for.

Namespaces work as in Metaflow: by default you see your own runs (``user:<you>``);
``namespace(None)`` shows everyone's, ``namespace('team:x')`` runs with that tag.

Both settings are global, as in Metaflow. Every object also takes them for
itself: ``Run('F/1', datastore='s3://b/fb', namespace=None)`` reads that run from
that datastore in any namespace, whatever the global settings, and the objects it
gives (its steps, tasks, artifacts) use the same two settings. ``datastore=``
takes a URL or a :class:`~flowbook.datastore.Datastore`; ``namespace=`` a
namespace or None (every run); left out, each follows the global setting. Every
object tells its own with ``.datastore`` (a Datastore) and ``.namespace``.

Every id and name of a pathspec is checked against flowbook's grammar
(:mod:`flowbook.names`) before anything is read: a bad one raises
InvalidNameError naming it. A record that cannot be read raises
CorruptRecordError naming its file; listings (``Flow.runs()``, ``latest_run``...)
leave such a run out with a CorruptRecordWarning.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from .datastore import Datastore, default_datastore_url
from .datastore.records import warn_corrupt
from .exceptions import ClientNotFound, CorruptRecordError, MissingArtifactError
from .identity import current_user
from .names import check_name, check_pathspec, check_run_id, check_task_id

if TYPE_CHECKING:
    from .datastore.schema import ArtifactEntry, NoRecord, RunRecord, RunStatus, TaskRecord


class _Unset:
    """The type of "not given" for ``namespace=`` (None means every run)."""

    def __repr__(self) -> str:
        return "<global setting>"


_DEFAULT = object()
#: ``namespace=`` left out: follow the global setting.
_GLOBAL = _Unset()
_state: dict[str, Any] = {"namespace": _DEFAULT, "datastore_url": None, "datastores": {}}


# ---------------------------------------------------------------------- configuration
def _user_namespace() -> str:
    return f"user:{current_user()}"


def namespace(ns: str | None) -> str | None:
    """Set the namespace for later lookups (None: every run); returns it."""
    _state["namespace"] = ns
    return ns


def get_namespace() -> str | None:
    ns = _state["namespace"]
    return _user_namespace() if ns is _DEFAULT else ns


def default_namespace() -> str:
    """Go back to the default namespace, ``user:<you>``, and return it."""
    _state["namespace"] = _DEFAULT
    return _user_namespace()


def datastore(url: str | None = None) -> str:
    """Read runs from the datastore at ``url`` (None: back to the default); returns it.

    This is the global setting; ``Run(..., datastore=url)`` (any object) overrides
    it for that object and what it gives."""
    _state["datastore_url"] = url
    return url or default_datastore_url()


def get_datastore() -> str:
    """The URL of the datastore the Client reads when an object is given none."""
    return _state["datastore_url"] or default_datastore_url()


def open_datastore(where: str | Datastore | None = None) -> Datastore:
    """The Datastore at ``where`` (a URL, or a Datastore as is; None: the global setting).

    Datastores opened by URL are kept, one per URL, for the life of the process."""
    if isinstance(where, Datastore):
        return where
    url = where or get_datastore()
    cache = _state["datastores"]
    if url not in cache:
        cache[url] = Datastore(url)
    return cache[url]


def _in_namespace(run_record: RunRecord, ns: str | None) -> bool:
    if ns is None:
        return True
    return ns in run_record.get("tags", []) or ns in run_record.get("system_tags", [])


def _split(pathspec: str, parts: int, kind: str) -> list[str]:
    """The parts of a pathspec, each checked (InvalidNameError names a bad one)."""
    return check_pathspec(pathspec, parts, kind)


# ---------------------------------------------------------------------- objects
class _ClientObject:
    _kind = "object"

    def __init__(
        self,
        pathspec: str,
        datastore: str | Datastore | None = None,
        namespace: str | None | _Unset = _GLOBAL,
    ) -> None:
        self.pathspec = pathspec
        self.id = pathspec.rsplit("/", 1)[-1]
        self._ds = open_datastore(datastore)
        self._ns = namespace

    @property
    def datastore(self) -> Datastore:
        """The datastore this object is read from."""
        return self._ds

    @property
    def namespace(self) -> str | None:
        """The namespace this object lists and checks runs in (None: every run)."""
        return get_namespace() if isinstance(self._ns, _Unset) else self._ns

    def _scope(self) -> dict[str, Any]:
        """The settings an object passes to the objects it gives."""
        return {"datastore": self._ds, "namespace": self._ns}

    def __repr__(self) -> str:
        return f"{type(self).__name__}('{self.pathspec}')"

    def __eq__(self, other: object) -> bool:
        """The same object: same kind, same pathspec, same datastore."""
        return (
            type(self) is type(other)
            and self.pathspec == other.pathspec
            and self._ds.url == other._ds.url
        )

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.pathspec, self._ds.url))


class Metaflow:
    """Every flow in the datastore (``datastore=``: this one instead of the global)."""

    def __init__(
        self,
        *,
        datastore: str | Datastore | None = None,
        namespace: str | None | _Unset = _GLOBAL,
    ) -> None:
        self._ds = open_datastore(datastore) if datastore is not None else None
        self._ns = namespace

    @property
    def datastore(self) -> Datastore:
        return self._ds if self._ds is not None else open_datastore()

    @property
    def namespace(self) -> str | None:
        return get_namespace() if isinstance(self._ns, _Unset) else self._ns

    @property
    def flows(self) -> list[Flow]:
        ds = self.datastore
        return [Flow(name, datastore=ds, namespace=self._ns) for name in ds.list_flows()]

    def __iter__(self) -> Iterator[Flow]:
        return iter(self.flows)

    def __repr__(self) -> str:
        return "Metaflow()"


class Flow(_ClientObject):
    """A flow: all of its runs, newest first."""

    def __init__(
        self,
        pathspec: str,
        *,
        datastore: str | Datastore | None = None,
        namespace: str | None | _Unset = _GLOBAL,
    ) -> None:
        (name,) = _split(pathspec, 1, "Flow")
        super().__init__(name, datastore, namespace)
        if not self._ds.list_runs(name):
            raise ClientNotFound(f"Flow {name} has no runs in datastore {self._ds.url}.")

    def runs(self, *tags: str) -> Iterator[Run]:
        """Runs in the current namespace (with all of ``tags``), newest first.

        A run whose ``run.json`` is corrupt is left out with a CorruptRecordWarning."""
        ns = self.namespace
        for run_id in self._ds.list_runs(self.id):
            try:
                record = self._ds.read_run(self.id, run_id)
            except CorruptRecordError as exc:
                warn_corrupt(f"Skipping run {self.id}/{run_id}: {exc}")
                continue
            if record is None or not _in_namespace(record, ns):
                continue
            all_tags = set(record.get("tags", [])) | set(record.get("system_tags", []))
            if all(t in all_tags for t in tags):
                yield Run(f"{self.id}/{run_id}", _record=record, **self._scope())

    def __iter__(self) -> Iterator[Run]:
        return self.runs()

    def __getitem__(self, run_id: str) -> Run:
        check_run_id(run_id)
        return Run(f"{self.id}/{run_id}", **self._scope())

    @property
    def latest_run(self) -> Run | None:
        return next(self.runs(), None)

    @property
    def latest_successful_run(self) -> Run | None:
        """The newest successful run; one whose outcome cannot be read is skipped."""
        for run in self.runs():
            try:
                if run.successful:
                    return run
            except CorruptRecordError as exc:
                warn_corrupt(f"Skipping run {run.pathspec}: {exc}")
        return None


class Run(_ClientObject):
    """One run of a flow."""

    def __init__(
        self,
        pathspec: str,
        _record: RunRecord | None = None,
        *,
        datastore: str | Datastore | None = None,
        namespace: str | None | _Unset = _GLOBAL,
    ) -> None:
        flow, run_id = _split(pathspec, 2, "Run")
        super().__init__(pathspec, datastore, namespace)
        self.flow_name = flow
        record = _record if _record is not None else self._ds.read_run(flow, run_id)
        if record is None:
            raise ClientNotFound(f"Run {pathspec} does not exist in datastore {self._ds.url}.")
        if _record is None and not _in_namespace(record, self.namespace):
            raise ClientNotFound(
                f"Run {pathspec} is not in namespace {self.namespace!r}; "
                "use namespace(None) (or Run(..., namespace=None)) to see every run."
            )
        self._record = record

    @property
    def _status(self) -> RunStatus | None:
        return self._ds.read_run_status(self.flow_name, self.id)

    def steps(self) -> Iterator[Step]:
        """Steps that ran, from the last to the first (as Metaflow lists them).

        flowbook's own steps (``_parameters``, the parameters task of a run made by an
        orchestrator) are not listed, as in Metaflow; ``run["_parameters"]`` reads it."""
        order = [s["name"] for s in self._record.get("graph", {}).get("steps", [])]
        present = {n for n in self._ds.list_steps(self.flow_name, self.id) if n[0] != "_"}
        names = [n for n in order if n in present] + sorted(present - set(order))
        for name in reversed(names):
            yield Step(f"{self.pathspec}/{name}", _run=self)

    def __iter__(self) -> Iterator[Step]:
        return self.steps()

    def __getitem__(self, step_name: str) -> Step:
        check_name(step_name, "step name")
        if step_name not in self._ds.list_steps(self.flow_name, self.id):
            raise ClientNotFound(f"Run {self.pathspec} has no step '{step_name}'.")
        return Step(f"{self.pathspec}/{step_name}", _run=self)

    def __contains__(self, step_name: object) -> bool:
        return step_name in self._ds.list_steps(self.flow_name, self.id)

    @property
    def end_task(self) -> Task | None:
        if "end" not in self:
            return None
        return self["end"].task

    @property
    def data(self) -> MetaflowData | None:
        """The end step's artifacts (None when the run has not reached the end)."""
        task = self.end_task
        return task.data if task is not None else None

    @property
    def successful(self) -> bool:
        status = self._status
        if status is not None:
            return bool(status.get("successful"))
        task = self.end_task
        return bool(task and task.successful)

    @property
    def finished(self) -> bool:
        return self._status is not None

    @property
    def finished_at(self) -> float | None:
        status = self._status
        return status.get("finished_at") if status else None

    @property
    def created_at(self) -> float:
        return self._record.get("created_at")

    @property
    def user_tags(self) -> frozenset[str]:
        return frozenset(self._record.get("tags", []))

    @property
    def system_tags(self) -> frozenset[str]:
        return frozenset(self._record.get("system_tags", []))

    @property
    def tags(self) -> frozenset[str]:
        return self.user_tags | self.system_tags

    @property
    def parameters(self) -> dict[str, Any]:
        return {
            name: self._ds.load_artifact(entry, name, self.pathspec)
            for name, entry in self._record.get("parameters", {}).items()
        }

    @property
    def origin_run_id(self) -> str | None:
        return self._record.get("origin_run_id")

    @property
    def graph(self) -> list[dict[str, Any]]:
        """The flow's steps as recorded when the run started, in order: for each a dict
        with ``name``, ``next`` (step names) and, when they apply, ``foreach``,
        ``join`` and ``doc``."""
        return [dict(s) for s in self._record.get("graph", {}).get("steps", [])]

    @property
    def failures(self) -> list[str]:
        status = self._status
        return list(status.get("failures", [])) if status else []

    def explain(self) -> list[str]:
        """One line per task, in step order: whether it was reused, cloned or ran, and
        why (``flowbook explain``, ``%flow explain``)."""
        lines = []
        for step in reversed(list(self.steps())):
            for task in step:
                try:
                    decision = task.decision
                except CorruptRecordError as exc:
                    decision = f"unreadable record ({exc})"
                lines.append(f"{step.id}/{task.id}: {decision}")
        return lines


class Step(_ClientObject):
    """One step of a run: its tasks (several for a foreach)."""

    def __init__(
        self,
        pathspec: str,
        _run: Run | None = None,
        *,
        datastore: str | Datastore | None = None,
        namespace: str | None | _Unset = _GLOBAL,
    ) -> None:
        flow, run_id, step_name = _split(pathspec, 3, "Step")
        if _run is not None:
            datastore, namespace = _run._ds, _run._ns
        super().__init__(pathspec, datastore, namespace)
        self.flow_name, self.run_id = flow, run_id
        if _run is None:
            Run(f"{flow}/{run_id}", **self._scope())  # checks existence and namespace
            if step_name not in self._ds.list_steps(flow, run_id):
                raise ClientNotFound(f"Run {flow}/{run_id} has no step '{step_name}'.")

    def tasks(self) -> Iterator[Task]:
        index = self._ds.read_step_index(self.flow_name, self.run_id, self.id)
        if index is not None:  # a finished run: every final record in one object
            for task_id in sorted(index, key=lambda t: (len(t), t)):
                task = Task(f"{self.pathspec}/{task_id}", _checked=True, **self._scope())
                task._attempt, task._record_cache = index[task_id]["attempt"], index[task_id]
                yield task
            return
        for task_id in self._ds.list_tasks(self.flow_name, self.run_id, self.id):
            yield Task(f"{self.pathspec}/{task_id}", _checked=True, **self._scope())

    def __iter__(self) -> Iterator[Task]:
        return self.tasks()

    def __getitem__(self, task_id: str) -> Task:
        check_task_id(task_id)
        if task_id not in self._ds.list_tasks(self.flow_name, self.run_id, self.id):
            raise ClientNotFound(f"Step {self.pathspec} has no task {task_id}.")
        return Task(f"{self.pathspec}/{task_id}", _checked=True, **self._scope())

    @property
    def task(self) -> Task | None:
        """The step's first task (the only one unless the step is in a foreach)."""
        return next(self.tasks(), None)


class Task(_ClientObject):
    """One task: its artifacts, logs and outcome (of its latest attempt)."""

    def __init__(
        self,
        pathspec: str,
        _checked: bool = False,
        *,
        datastore: str | Datastore | None = None,
        namespace: str | None | _Unset = _GLOBAL,
    ) -> None:
        flow, run_id, step_name, task_id = _split(pathspec, 4, "Task")
        super().__init__(pathspec, datastore, namespace)
        self.flow_name, self.run_id, self.step_name = flow, run_id, step_name
        if not _checked:
            Step(f"{flow}/{run_id}/{step_name}", **self._scope())
            if task_id not in self._ds.list_tasks(flow, run_id, step_name):
                raise ClientNotFound(f"Step {flow}/{run_id}/{step_name} has no task {task_id}.")
        self._attempt: int | None = None
        self._record_cache: TaskRecord | NoRecord | None = None

    @property
    def _record(self) -> Mapping[str, Any]:  # ({} when the task has no attempt yet)
        if self._record_cache is None or self._record_cache.get("status") == "running":
            self._attempt, self._record_cache = self._ds.latest_attempt(
                self.flow_name, self.run_id, self.step_name, self.id
            )
        return self._record_cache

    @property
    def current_attempt(self) -> int:
        self._record  # noqa: B018 - loads the attempt number
        return max(self._attempt or 0, 0)

    @property
    def successful(self) -> bool:
        return self._record.get("status") == "successful"

    @property
    def finished(self) -> bool:
        return self._record.get("status") in ("successful", "failed")

    @property
    def finished_at(self) -> float | None:
        return self._record.get("finished_at")

    @property
    def created_at(self) -> float | None:
        return self._record.get("started_at")

    @property
    def exception(self) -> str | None:
        """The user's exception as ``Type: message``, or None."""
        exc = self._record.get("exception")
        return f"{exc['type']}: {exc['message']}" if exc else None

    @property
    def traceback(self) -> str | None:
        exc = self._record.get("exception")
        return exc.get("traceback") if exc else None

    @property
    def index(self) -> int | None:
        stack = self._record.get("foreach_stack") or []
        return stack[-1]["index"] if stack else None

    @property
    def foreach_frames(self) -> list[dict]:
        """The foreaches this task is in, outermost first: each its ``step``, ``index``,
        ``num_splits``, the artifact it splits (``var``) and that list's blob (``sha``)."""
        return [dict(frame) for frame in self._record.get("foreach_stack") or []]

    @property
    def status(self) -> str:
        """'successful', 'failed', 'running' (started, no result yet) or 'unknown'."""
        return self._record.get("status") or "unknown"

    @property
    def origin_pathspec(self) -> str | None:
        return self._record.get("origin_pathspec")

    @property
    def reused_from(self) -> str | None:
        """The earlier task whose result this one reused (``--reuse``), or None."""
        return self._record.get("reused_from")

    @property
    def run_reason(self) -> str | None:
        """Why the task was reused or ran, as the run printed it: ``reused from
        RUN/STEP/TASK (same code, inputs and parameters)``, ``runs (parameter alpha
        0.1 -> 0.2)``; None when its run did not use ``--reuse``."""
        return self._record.get("run_reason")

    @property
    def decision(self) -> str:
        """How this task came to be, in a few words (what ``explain`` prints)."""
        record = self._record
        if record.get("run_reason"):
            return record["run_reason"]
        if record.get("origin_pathspec"):
            return f"cloned by resume from {record['origin_pathspec']}"
        if record.get("status") == "running":
            return "running (reuse was off)"
        return "ran (reuse was off)"

    @property
    def parent_task_pathspecs(self) -> list[str]:
        return list(self._record.get("parents", []))

    @property
    def metadata_dict(self) -> dict[str, Any]:
        keep = (
            "attempt",
            "pid",
            "started_at",
            "finished_at",
            "status",
            "origin_pathspec",
            "reused_from",
            "run_reason",
        )
        return {k: self._record.get(k) for k in keep if k in self._record}

    def _log(self, stream: str) -> str:
        try:
            self._record  # noqa: B018 - loads the attempt number
            attempt = max(self._attempt or 0, 0)
        except CorruptRecordError:  # the log needs only the attempt's number
            attempts = self._ds.task_attempts(self.flow_name, self.run_id, self.step_name, self.id)
            attempt = max(attempts, default=0)
        return self._ds.read_log(
            self.flow_name, self.run_id, self.step_name, self.id, attempt, stream
        )

    @property
    def stdout(self) -> str:
        return self._log("stdout")

    @property
    def stderr(self) -> str:
        return self._log("stderr")

    def _entries(self) -> dict[str, ArtifactEntry]:
        return self._record.get("artifacts") or {}

    @property
    def artifacts(self) -> _ArtifactNamespace:
        return _ArtifactNamespace(
            {name: DataArtifact._from(self, name, e) for name, e in self._entries().items()}
        )

    @property
    def data(self) -> MetaflowData:
        return MetaflowData(self)

    def __getitem__(self, name: str) -> DataArtifact:
        entry = self._entries().get(name)
        if entry is None:
            raise ClientNotFound(f"Task {self.pathspec} has no artifact '{name}'.")
        return DataArtifact._from(self, name, entry)

    def __contains__(self, name: object) -> bool:
        return name in self._entries()

    def __iter__(self) -> Iterator[DataArtifact]:
        for name, entry in self._entries().items():
            yield DataArtifact._from(self, name, entry)


class DataArtifact(_ClientObject):
    """One artifact of a task; ``.data`` loads its value."""

    _task: Task
    _entry: ArtifactEntry

    def __init__(
        self,
        pathspec: str,
        *,
        datastore: str | Datastore | None = None,
        namespace: str | None | _Unset = _GLOBAL,
    ) -> None:
        flow, run_id, step_name, task_id, name = _split(pathspec, 5, "DataArtifact")
        task = Task(
            f"{flow}/{run_id}/{step_name}/{task_id}", datastore=datastore, namespace=namespace
        )
        found = task[name]
        self.__dict__.update(found.__dict__)

    @classmethod
    def _from(cls, task: Task, name: str, entry: ArtifactEntry) -> DataArtifact:
        obj = cls.__new__(cls)
        _ClientObject.__init__(obj, f"{task.pathspec}/{name}", **task._scope())
        obj._task = task
        obj._entry = entry
        return obj

    @property
    def data(self) -> Any:
        return self._ds.load_artifact(self._entry, self.id, self._task.pathspec)

    @property
    def sha(self) -> str:
        return self._entry["sha"]

    @property
    def type(self) -> str:
        return self._entry.get("type", "")

    @property
    def size(self) -> int:
        return self._entry.get("size", 0)

    @property
    def finished_at(self) -> float | None:
        return self._task.finished_at


class MetaflowData:
    """A task's artifact values as attributes: ``task.data.model``."""

    def __init__(self, task: Task) -> None:
        object.__setattr__(self, "_task", task)
        object.__setattr__(self, "_cache", {})

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        cache = self._cache
        if name not in cache:
            entry = self._task._entries().get(name)
            if entry is None:
                raise MissingArtifactError(f"Task {self._task.pathspec} has no artifact '{name}'.")
            cache[name] = self._task._ds.load_artifact(entry, name, self._task.pathspec)
        return cache[name]

    def __contains__(self, name: object) -> bool:
        return name in self._task._entries()

    def __dir__(self) -> list[str]:
        return sorted(self._task._entries())

    def __repr__(self) -> str:
        return f"<data of {self._task.pathspec}: {', '.join(sorted(self._task._entries()))}>"


class _ArtifactNamespace:
    def __init__(self, artifacts: dict[str, DataArtifact]) -> None:
        self._artifacts = artifacts

    def __getattr__(self, name: str) -> DataArtifact:
        try:
            return self.__dict__["_artifacts"][name]
        except KeyError:
            raise AttributeError(name) from None

    def __iter__(self) -> Iterator[DataArtifact]:
        return iter(self._artifacts.values())

    def __len__(self) -> int:
        return len(self._artifacts)

    def __dir__(self) -> list[str]:
        return sorted(self._artifacts)
