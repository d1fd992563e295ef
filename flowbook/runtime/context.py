"""What a running task knows: its inherited artifacts, its transition, its foreach.

A :class:`TaskContext` lives in the task process, attached to the FlowSpec instance
as ``_fb``. Inherited artifacts are not loaded until the step reads them; at the end
of the step :meth:`TaskContext.collect_artifacts` builds the task's artifact index:
new and changed values are stored as blobs, unchanged inherited ones are kept as
references to blobs that already exist. A value read from a parent and left as it
was is not written again (nor, when it was read by mapping its blob, even hashed).
"""

from __future__ import annotations

from collections.abc import Iterable

from ..datastore import Datastore
from ..datastore.blobs import type_name
from ..exceptions import ArtifactError, FlowbookError, MergeError, MissingArtifactError
from ..flowspec import Inputs, InputView
from .spec import TaskSpec

TYPE_CHECKING = False  # typing costs ~6 ms to import; annotations are strings here
if TYPE_CHECKING:
    from typing import Any

    from ..datastore.blobs import MappedBlob
    from ..datastore.schema import ArtifactEntry, ForeachFrame, ParentInfo

_NOT_LIST_LIKE = (str, bytes, bytearray, dict, set, frozenset)

#: The name of the read ``merge_artifacts`` makes of each input's artifact names (not
#: a Python name, so no artifact has it); its value is :func:`names_text`.
NAMES = "*names"


def names_text(artifacts: dict) -> str:
    """An artifact index's names, as one comparable text."""
    return "\n".join(sorted(artifacts))


def inherited_artifacts(
    step: str, parameters: dict[str, ArtifactEntry], parents: list[ParentInfo], is_join: bool
) -> tuple[dict[str, ArtifactEntry], dict[str, str]]:
    """What a task starts with besides its parameters: the artifacts it inherits (one
    parent's index, minus the parameters; a join inherits nothing) and the names
    dropped by a join on the way (name -> the join's step), as ``(inherited, dropped)``.
    """
    if is_join or not parents:
        dropped: dict[str, str] = {}
        if is_join:
            for parent in parents:
                for name in parent["artifacts"]:
                    if name not in parameters:
                        dropped[name] = step
                for name in parent.get("dropped", {}):
                    dropped.setdefault(name, parent["dropped"][name])
        return {}, dropped
    parent = parents[0]
    inherited = {k: v for k, v in parent["artifacts"].items() if k not in parameters}
    return inherited, dict(parent.get("dropped", {}))


class TaskContext:
    def __init__(self, spec: TaskSpec, datastore: Datastore, is_join: bool) -> None:
        self.spec = spec
        self.datastore = datastore
        self.flow_name = spec.flow_name
        self.step_name = spec.step
        self.pathspec = spec.pathspec
        self.is_join = is_join
        self.parameters: dict[str, ArtifactEntry] = dict(spec.parameters)
        self._parameter_values: dict[str, Any] = {}
        self.inherited, self.dropped = inherited_artifacts(
            spec.step, self.parameters, spec.parents, is_join
        )
        # what the step read, for reuse (runtime/reuse.py): (source, name) -> sha, where
        # source is "." (self), "p" (a parameter) or an input's position in a join;
        # None for an artifact the step looked for and did not find
        self.reads: dict[tuple[str | int, str], str | None] = {}
        self._input_position = {p["pathspec"]: i for i, p in enumerate(spec.parents)}
        #: Names the step merged from its inputs (merge_artifacts): its own, like assigned ones.
        self.merged: set[str] = set()
        # id(value) -> (value, index entry, mapping) for every artifact value read
        # from a parent: an unchanged one is not stored again (collect_artifacts)
        self._read: dict[int, tuple[Any, ArtifactEntry, MappedBlob | None]] = {}
        self.transition: tuple[list[str], str | None] | None = None
        self._foreach_values: dict[str, Any] = {}

    def _where(self) -> str:
        return f"Flow {self.flow_name}, step '{self.step_name}'"

    # ------------------------------------------------------------ reading
    def load_artifact(self, obj: Any, name: str) -> Any:
        entry = self.inherited.get(name)
        self.reads[(".", name)] = entry["sha"] if entry is not None else None
        if entry is None:
            raise self._missing(name)
        value = self._read_artifact(entry, name, self.pathspec)
        obj.__dict__[name] = value
        return value

    def _read_artifact(self, entry: ArtifactEntry, name: str, pathspec: str) -> Any:
        value, mapped = self.datastore.read_artifact(entry, name, pathspec)
        self._read[id(value)] = (value, entry, mapped)
        return value

    def _missing(self, name: str) -> MissingArtifactError:
        join = self.dropped.get(name)
        if join == self.step_name:
            return MissingArtifactError(
                f"{self._where()}: artifact '{name}' is not carried into this join; read it "
                f"from an input (inputs[0].{name}) or call self.merge_artifacts(inputs) first."
            )
        if join is not None:
            return MissingArtifactError(
                f"{self._where()}: artifact '{name}' is not available after join step "
                f"'{join}'. Artifacts must be reassigned in a join: "
                f"self.{name} = inputs[0].{name}, or self.merge_artifacts(inputs)."
            )
        return MissingArtifactError(f"{self._where()}: there is no artifact '{name}'.")

    def load_parameter(self, obj: Any, attribute_name: str) -> Any:
        if attribute_name not in self._parameter_values:
            entry = self.parameters.get(attribute_name)
            if entry is None:
                raise MissingArtifactError(
                    f"{self._where()}: parameter '{attribute_name}' has no value in this run."
                )
            self.reads[("p", attribute_name)] = entry["sha"]
            self._parameter_values[attribute_name] = self.datastore.load_artifact(
                entry, attribute_name, self.pathspec
            )
        return self._parameter_values[attribute_name]

    def load_input_artifact(self, parent: ParentInfo, name: str) -> Any:
        entry = parent["artifacts"].get(name)
        source: str | int = self._input_position.get(parent["pathspec"], -1)
        if entry is None and name in self.parameters:
            entry, source = self.parameters[name], "p"
        self.reads[(source, name)] = entry["sha"] if entry is not None else None
        if entry is None:
            join = parent.get("dropped", {}).get(name)
            hint = f" (it was not reassigned in join step '{join}')" if join else ""
            raise MissingArtifactError(
                f"{self._where()}: input {parent['pathspec']} has no artifact '{name}'{hint}."
            )
        return self._read_artifact(entry, name, parent["pathspec"])

    def make_inputs(self) -> Inputs:
        return Inputs([InputView(self, parent) for parent in self.spec.parents])

    # ------------------------------------------------------------ transitions
    def record_transition(self, names: list[str], foreach: str | None) -> None:
        if self.transition is not None and self.transition != (names, foreach):
            raise FlowbookError(f"{self._where()}: self.next() was called twice.")
        self.transition = (names, foreach)

    # ------------------------------------------------------------ foreach
    def _foreach_frames(self) -> list[ForeachFrame]:
        return [f for f in self.spec.split_stack if f["kind"] == "foreach"]

    def foreach_index(self) -> int | None:
        frames = self._foreach_frames()
        return frames[-1]["index"] if frames else None

    def _foreach_value(self, frame: ForeachFrame) -> Any:
        key = frame["sha"]
        if key not in self._foreach_values:
            self._foreach_values[key] = self.datastore.blobs.get(
                key, what=f"Foreach artifact '{frame['var']}' of step '{frame['step']}'"
            )
        return self._foreach_values[key][frame["index"]]

    def foreach_input(self, obj: Any) -> Any:
        frames = self._foreach_frames()
        if not frames:
            raise FlowbookError(
                f"{self._where()}: self.input exists only in the steps of a foreach."
            )
        return self._foreach_value(frames[-1])

    def foreach_stack(self, obj: Any) -> list[tuple[int, int, Any]]:
        return [
            (f["index"], f["num_splits"], self._foreach_value(f)) for f in self._foreach_frames()
        ]

    # ------------------------------------------------------------ joins
    def merge_artifacts(
        self,
        obj: Any,
        inputs: Inputs,
        exclude: Iterable[str] | None,
        include: Iterable[str] | None,
    ) -> None:
        if not self.is_join:
            raise FlowbookError(f"{self._where()}: merge_artifacts() works only in a join step.")
        exclude = set(exclude or ())
        include_set = set(include) if include is not None else None
        if include_set is not None and exclude & include_set:
            raise FlowbookError(
                f"{self._where()}: merge_artifacts() got the same names in include and "
                f"exclude: {', '.join(sorted(exclude & include_set))}."
            )
        candidates: dict[str, list[tuple[str, ArtifactEntry]]] = {}
        for view in inputs:
            parent = view._parent
            position = self._input_position.get(parent["pathspec"], -1)
            self.reads[(position, NAMES)] = names_text(parent["artifacts"])
            for name, entry in parent["artifacts"].items():
                candidates.setdefault(name, []).append((parent["pathspec"], entry))
                self.reads[(position, name)] = entry["sha"]
        if include_set is not None:
            missing = sorted(n for n in include_set if n not in candidates)
            if missing:
                raise MergeError(
                    f"{self._where()}: merge_artifacts(include=...) names artifacts no "
                    f"input has: {', '.join(repr(m) for m in missing)}."
                )
        divergent = []
        for name, entries in candidates.items():
            if name in self.parameters or name in obj.__dict__ or name in exclude:
                continue
            if include_set is not None and name not in include_set:
                continue
            if len({entry["sha"] for _, entry in entries}) == 1:
                self.inherited[name] = entries[0][1]
                self.merged.add(name)
                self.dropped.pop(name, None)
            else:
                divergent.append(name)
        if divergent:
            names = ", ".join(repr(n) for n in sorted(divergent))
            raise MergeError(
                f"{self._where()}: merge_artifacts() found artifacts whose values differ "
                f"between the inputs: {names}. Assign them in the join before calling "
                "merge_artifacts(), or pass exclude=[...]."
            )

    # ------------------------------------------------------------ persisting
    def collect_artifacts(self, obj: Any, as_blob: str | None = None) -> dict[str, ArtifactEntry]:
        """Store new and changed artifacts; return the task's artifact index.

        Small values travel inline in the index, except ``as_blob`` (a foreach's
        list, which every split reads by its hash)."""
        index = dict(self.parameters)
        index.update(self.inherited)
        store = self.datastore.store_artifact
        for name, value in obj.__dict__.items():
            if name == "_fb":
                continue
            read = self._read.get(id(value))
            read_from = read[1:] if read is not None and read[0] is value else None
            try:
                index[name] = store(value, name, inline=name != as_blob, read_from=read_from)
            except ArtifactError as exc:
                raise ArtifactError(f"{self._where()}: {exc}") from None
            self.dropped.pop(name, None)
        for name in index:
            self.dropped.pop(name, None)
        return index

    def own_names(self, obj: Any) -> list[str]:
        """The artifacts this step made: assigned (or read and left) on ``self``, or
        merged from its inputs. The rest of its index it passed on unread."""
        return sorted(self.merged.union(name for name in obj.__dict__ if name != "_fb"))

    def recorded_reads(self) -> list[list]:
        """What the step read, as ``[source, name, sha]`` rows for its record."""
        return [[source, name, sha] for (source, name), sha in self.reads.items()]

    def foreach_split_count(self, obj: Any, var: str) -> int:
        try:
            value = getattr(obj, var)
        except AttributeError:
            raise FlowbookError(
                f"{self._where()}: self.next(..., foreach='{var}') names an artifact "
                f"'{var}' that the step does not have."
            ) from None
        if isinstance(value, _NOT_LIST_LIKE) or not (
            hasattr(value, "__len__") and hasattr(value, "__getitem__")
        ):
            shown = repr(value)
            shown = shown if len(shown) <= 60 else shown[:57] + "..."
            raise FlowbookError(
                f"{self._where()}: foreach='{var}' must name a list-like artifact, but "
                f"'{var}' is of type {type_name(value)}: {shown}."
            )
        return len(value)
