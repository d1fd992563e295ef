"""``flow``: the notebook's step results in the kernel (``flow.train.model``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..exceptions import MissingArtifactError

if TYPE_CHECKING:
    from ..datastore.schema import TaskRecord
    from .session import NotebookSession


class StepResults:
    """The latest results of one step; a foreach body gives one value per split."""

    _session: NotebookSession
    _step: str
    _cache: dict

    def __init__(self, session: Any, step: str) -> None:
        object.__setattr__(self, "_session", session)
        object.__setattr__(self, "_step", step)
        object.__setattr__(self, "_cache", {})

    @property
    def _records(self) -> list[TaskRecord]:
        return self._session.latest.get(self._step, [])

    @property
    def stale(self) -> bool:
        """True when a step before this one ran again after this one did."""
        return self._step in self._session.stale

    @property
    def is_foreach(self) -> bool:
        return any(r.get("foreach_stack") for r in self._records)

    @property
    def pathspecs(self) -> list[str]:
        return [
            f"{self._session.flow_name}/{r['run_id']}/{r['step']}/{r['task_id']}"
            for r in self._records
        ]

    @property
    def tasks(self) -> list:
        """The Client ``Task`` of each result, in order."""
        from ..client import Step

        steps: dict[str, dict] = {}  # one listing per step, not one per task
        tasks = []
        for pathspec in self.pathspecs:
            step_path, _, task_id = pathspec.rpartition("/")
            if step_path not in steps:
                step = Step(step_path, datastore=self._session.datastore, namespace=None)
                steps[step_path] = {task.id: task for task in step}
            tasks.append(steps[step_path][task_id])
        return tasks

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        records = self._records
        key = (name, tuple(r["task_id"] for r in records))
        cache = self._cache
        if key not in cache:
            values = []
            for record, pathspec in zip(records, self.pathspecs, strict=True):
                entry = record.get("artifacts", {}).get(name)
                if entry is None:
                    raise MissingArtifactError(
                        f"Step '{self._step}' has no artifact '{name}' "
                        f"(it has: {', '.join(sorted(record.get('artifacts', {}))) or 'none'})."
                    )
                values.append(self._session.datastore.load_artifact(entry, name, pathspec))
            cache[key] = values if self.is_foreach or len(values) > 1 else values[0]
        return cache[key]

    def __dir__(self) -> list[str]:
        names: set[str] = set()
        for record in self._records:
            names |= set(record.get("artifacts", {}))
        return sorted(names)

    def __repr__(self) -> str:
        state = " (stale)" if self.stale else ""
        return (
            f"<step {self._step}{state}: {len(self._records)} task(s), "
            f"artifacts: {', '.join(dir(self)) or 'none'}>"
        )


class FlowResults:
    """``flow.<step>`` for every step that has run in this kernel."""

    _session: NotebookSession  # (set in __init__; not a step, as __getattr__ would say)

    def __init__(self, session: Any) -> None:
        object.__setattr__(self, "_session", session)

    def __getattr__(self, step: str) -> StepResults:
        if step.startswith("_"):
            raise AttributeError(step)
        session = self._session
        if step in session.latest:
            return StepResults(session, step)
        if step in session.steps:
            raise MissingArtifactError(f"Step '{step}' is registered but has not run yet.")
        raise MissingArtifactError(
            f"Flow {session.flow_name} has no step '{step}' "
            f"(its steps: {', '.join(session.steps) or 'none yet'})."
        )

    def __getitem__(self, step: str) -> StepResults:
        return getattr(self, step)

    def __dir__(self) -> list[str]:
        return sorted(self._session.latest)

    @property
    def name(self) -> str:
        return self._session.flow_name

    @property
    def last_run(self):
        """The Client ``Run`` of the latest ``%flow run`` (None before one)."""
        from ..client import Run

        path = self._session.last_run_pathspec
        if path is None:
            return None
        return Run(path, datastore=self._session.datastore, namespace=None)

    def __repr__(self) -> str:
        session = self._session
        lines = [f"<flow {session.flow_name}>"]
        for step in session.steps:
            if step in session.latest:
                state = "stale" if step in session.stale else "done"
                lines.append(f"  {step}: {state}, {len(session.latest[step])} task(s)")
            else:
                lines.append(f"  {step}: not run")
        return "\n".join(lines)
