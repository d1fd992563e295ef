"""``FlowSpec`` and ``@step``: how a user writes a flow.

A FlowSpec subclass is only a description until it runs: the graph is read from
its source (see graph.py) and each step runs in its own task process, where the
instance's attributes are the task's artifacts. Inside a task the instance carries
one private attribute, ``_fb`` (a :class:`flowbook.runtime.context.TaskContext`),
which loads inherited artifacts lazily and records ``self.next``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from .exceptions import FlowbookError, MergeError, MissingArtifactError

TYPE_CHECKING = False  # typing costs ~6 ms to import; annotations are strings here
if TYPE_CHECKING:
    from typing import Any

    from .datastore.schema import ParentInfo

#: Attribute names a step may not assign (they mean something else on a flow).
RESERVED_NAMES = frozenset({"next", "input", "index", "merge_artifacts", "foreach_stack", "_fb"})


def step(func: Callable) -> Callable:
    """Mark a method of a FlowSpec as a step."""
    setattr(func, "_flowbook_step", True)  # noqa: B010 - a Callable declares no such attribute
    setattr(func, "is_step", True)  # noqa: B010
    return func


class FlowSpec:
    """Base class of every flow. ``MyFlow()`` under ``__main__`` runs the command line."""

    def __init__(self, use_cli: bool = True) -> None:
        if use_cli:
            from .cli.entry import main

            main(type(self))

    # ------------------------------------------------------------ artifacts
    def __getattr__(self, name: str) -> Any:
        # Only called when normal lookup fails: an inherited artifact not loaded yet.
        if name.startswith("__") or name == "_fb":
            raise AttributeError(name)
        context = self.__dict__.get("_fb")
        if context is None:
            raise AttributeError(
                f"'{type(self).__name__}' has no attribute '{name}' (artifacts exist only "
                "while a step runs; read past runs with the Client API)"
            )
        return context.load_artifact(self, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in RESERVED_NAMES:
            context = self.__dict__.get("_fb")
            where = f" (step '{context.step_name}')" if context else ""
            raise FlowbookError(
                f"Flow {type(self).__name__}{where}: '{name}' is reserved and cannot be "
                "assigned as an artifact; choose another name."
            )
        object.__setattr__(self, name, value)

    def _read_parameter(self, attribute_name: str) -> Any:
        context = self.__dict__.get("_fb")
        if context is None:
            return getattr(type(self), attribute_name).default
        return context.load_parameter(self, attribute_name)

    def _refuse_parameter_assignment(self, attribute_name: str) -> None:
        context = self.__dict__.get("_fb")
        where = f" in step '{context.step_name}'" if context else ""
        raise FlowbookError(
            f"Flow {type(self).__name__}: cannot assign to parameter '{attribute_name}'"
            f"{where}; parameters are immutable during a run. Copy it first: "
            f"self.my_{attribute_name} = self.{attribute_name}."
        )

    # ------------------------------------------------------------ transitions
    def next(self, *steps: Callable, foreach: str | None = None) -> None:
        """Declare the step(s) that run after this one (``foreach=`` fans out)."""
        names = []
        for target in steps:
            name = getattr(target, "__name__", None)
            if name is None:
                raise FlowbookError(
                    f"Flow {type(self).__name__}: self.next() takes steps such as self.end, "
                    f"not {target!r}."
                )
            names.append(name)
        context = self.__dict__.get("_fb")
        if context is not None:
            context.record_transition(names, foreach)

    # ------------------------------------------------------------ foreach
    @property
    def input(self) -> Any:
        """The item of the foreach list this task handles."""
        return self._fb.foreach_input(self)

    @input.setter
    def input(self, value: Any) -> None:
        self.__setattr__("input", value)

    @property
    def index(self) -> int | None:
        """The position of this task in its foreach (None outside a foreach)."""
        context = self.__dict__.get("_fb")
        return context.foreach_index() if context else None

    @index.setter
    def index(self, value: Any) -> None:
        self.__setattr__("index", value)

    def foreach_stack(self) -> list[tuple[int, int, Any]]:
        """(index, number of splits, value) for each enclosing foreach, outermost first."""
        return self._fb.foreach_stack(self)

    # ------------------------------------------------------------ joins
    def merge_artifacts(
        self,
        inputs: Inputs,
        exclude: Iterable[str] | None = None,
        include: Iterable[str] | None = None,
    ) -> None:
        """Copy artifacts whose value is the same in every input into this join.

        Artifacts already assigned in this step are left alone. An artifact whose
        value differs between inputs must be assigned by hand or excluded; otherwise
        the merge fails naming it.
        """
        context = self.__dict__.get("_fb")
        if context is None:
            raise FlowbookError("merge_artifacts() can only be called while a join step runs.")
        context.merge_artifacts(self, inputs, exclude, include)


class InputView:
    """One incoming branch of a join: its artifacts, read lazily as attributes."""

    _context: Any  # (a TaskContext)
    _parent: ParentInfo
    _cache: dict[str, Any]

    def __init__(self, context: Any, parent: ParentInfo) -> None:
        object.__setattr__(self, "_context", context)
        object.__setattr__(self, "_parent", parent)
        object.__setattr__(self, "_cache", {})

    @property
    def step_name(self) -> str:
        return self._parent["step"]

    @property
    def pathspec(self) -> str:
        return self._parent["pathspec"]

    @property
    def index(self) -> int | None:
        stack = self._parent.get("foreach_stack") or []
        return stack[-1]["index"] if stack else None

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        cache = self._cache
        if name not in cache:
            cache[name] = self._context.load_input_artifact(self._parent, name)
        return cache[name]

    def __setattr__(self, name: str, value: Any) -> None:
        raise FlowbookError(
            f"inputs of a join are read-only: cannot set '{name}' on input "
            f"{self._parent['pathspec']}."
        )

    def __repr__(self) -> str:
        return f"<input {self._parent['pathspec']}>"


class Inputs:
    """The ``inputs`` of a join: index it, iterate it, or name a branch (``inputs.a``)."""

    def __init__(self, views: list[InputView]) -> None:
        self._views = views
        self._by_step: dict[str, InputView] = {}
        for view in views:
            self._by_step.setdefault(view.step_name, view)

    def __getitem__(self, index: int) -> InputView:
        return self._views[index]

    def __iter__(self) -> Iterator[InputView]:
        return iter(self._views)

    def __len__(self) -> int:
        return len(self._views)

    def __getattr__(self, name: str) -> InputView:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self._by_step[name]
        except KeyError:
            raise MissingArtifactError(
                f"this join has no input from step '{name}' "
                f"(its inputs come from: {', '.join(sorted(self._by_step))})"
            ) from None


__all__ = ["FlowSpec", "step", "Inputs", "InputView", "MergeError"]
