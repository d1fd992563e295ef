"""The flow's DAG: parsed from a FlowSpec class without running any step, then validated.

A :class:`FlowGraph` is the one description of a flow's shape that the runtime,
the CLI's ``show``/``check``, the widgets and the exporters all read. It can be
built from a ``FlowSpec`` subclass (the ``self.next(...)`` calls are read from the
source with :mod:`ast`) or from ready-made :class:`StepNode` objects (notebook
flows, whose transitions come from cell magics or tags).

Validation follows Metaflow's rules: ``start`` and ``end`` exist, transitions name
known steps, there are no cycles, and splits and joins nest like parentheses. Each
violation raises one :class:`~flowbook.exceptions.GraphError` naming the steps.
"""

from __future__ import annotations

from collections.abc import Iterator

from .exceptions import GraphError
from .graph_cache import GraphCache
from .plain import Plain

TYPE_CHECKING = False  # typing costs ~6 ms to import; annotations are strings here
if TYPE_CHECKING:
    import ast

#: A split frame: (split step name, branch name); the branch is "" for a foreach.
Frame = tuple[str, str]


class StepNode(Plain):
    """One step of a flow and its outgoing transition."""

    def __init__(
        self,
        name: str,
        out_funcs: list[str] | None = None,
        foreach: str | None = None,
        is_join: bool = False,
        doc: str = "",
        lineno: int | None = None,
        source_file: str | None = None,
        decorators: list | None = None,
    ) -> None:
        self.name = name
        self.out_funcs: list[str] = list(out_funcs or [])
        self.foreach = foreach
        self.is_join = is_join
        self.doc = doc
        self.lineno = lineno
        self.source_file = source_file
        self.decorators: list = list(decorators or [])
        # Filled in by FlowGraph validation:
        self.in_funcs: list[str] = []
        self.split_stack: tuple[Frame, ...] = ()
        self.matching_join: str | None = None

    @property
    def type(self) -> str:
        """One of start, end, join, foreach, split, linear (Metaflow's names)."""
        if self.name == "end":
            return "end"
        if self.foreach is not None:
            return "foreach"
        if len(self.out_funcs) > 1:
            return "split"
        if self.is_join:
            return "join"
        if self.name == "start":
            return "start"
        return "linear"

    @property
    def is_split(self) -> bool:
        return self.foreach is not None or len(self.out_funcs) > 1

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "type": self.type,
            "next": list(self.out_funcs),
            "foreach": self.foreach,
            "join": self.is_join,
            "doc": self.doc,
            "in": list(self.in_funcs),
            "matching_join": self.matching_join,
            "decorators": [d.to_dict() for d in self.decorators],
        }


class FlowGraph:
    """A validated flow DAG; iterate it for the steps in source order."""

    def __init__(self, flow_name: str, nodes: list[StepNode], partial: bool = False) -> None:
        """``partial=True`` skips validation: a notebook flow while it is being written,
        whose single steps can run before the whole graph exists."""
        self.name = flow_name
        self.cli_decorators: list = []
        self.nodes: dict[str, StepNode] = {}
        for node in nodes:
            if node.name in self.nodes:
                raise GraphError(f"Flow {flow_name}: two steps are named '{node.name}'.")
            self.nodes[node.name] = node
        if partial:
            self._link()
        else:
            self._validate()

    def _link(self) -> None:
        for node in self.nodes.values():
            node.in_funcs = []
        for node in self.nodes.values():
            for target in node.out_funcs:
                if target in self.nodes:
                    self.nodes[target].in_funcs.append(node.name)

    # ------------------------------------------------------------------ building
    @classmethod
    def from_flow_class(cls, flow_cls: type) -> FlowGraph:
        """Parse the steps of a FlowSpec subclass and their ``self.next`` calls."""
        sources = _StepSources()
        nodes = [
            _node_from_function(flow_cls.__name__, attr_name, getattr(flow_cls, attr_name), sources)
            for attr_name in _step_attribute_names(flow_cls)
        ]
        sources.cache.save()
        _check_targets_are_steps(flow_cls, nodes)
        return cls(flow_cls.__name__, nodes)

    def apply_decospecs(self, specs: list) -> None:
        """Add ``--with`` decorators to every step that does not already have them."""
        self.cli_decorators = list(self.cli_decorators) + list(specs)
        for node in self.nodes.values():
            present = {d.name for d in node.decorators}
            node.decorators = node.decorators + [s for s in specs if s.name not in present]

    # ------------------------------------------------------------------ access
    def __getitem__(self, name: str) -> StepNode:
        return self.nodes[name]

    def __contains__(self, name: object) -> bool:
        return name in self.nodes

    def __iter__(self) -> Iterator[StepNode]:
        return iter(self.sorted_nodes())

    def sorted_nodes(self) -> list[StepNode]:
        """Steps in topological order, ties broken by position in the source."""
        order = self._topological_order()
        rank = {name: i for i, name in enumerate(order)}
        return sorted(self.nodes.values(), key=lambda n: rank.get(n.name, len(rank)))

    def to_dict(self) -> dict:
        return {"name": self.name, "steps": [n.to_dict() for n in self.sorted_nodes()]}

    def describe(self) -> str:
        """The text ``python flow.py show`` prints: steps, docstrings, transitions."""
        lines = []
        for node in self.sorted_nodes():
            lines.append(f"Step {node.name}")
            if node.doc:
                for doc_line in node.doc.splitlines():
                    lines.append(f"    {doc_line}".rstrip())
            if node.type == "end":
                pass
            elif node.foreach is not None:
                lines.append(f"    => {node.out_funcs[0]} (foreach over '{node.foreach}')")
            else:
                lines.append("    => " + ", ".join(node.out_funcs))
            lines.append("")
        return "\n".join(lines).rstrip() + "\n"

    # ------------------------------------------------------------------ validation
    def _validate(self) -> None:
        flow = self.name
        for required in ("start", "end"):
            if required not in self.nodes:
                raise GraphError(f"Flow {flow} has no '{required}' step: every flow needs one.")
        for node in self.nodes.values():
            if node.name == "end":
                if node.out_funcs:
                    raise GraphError(
                        f"Flow {flow}: step 'end' calls self.next(...); "
                        "the end step must not have a transition."
                    )
                continue
            if not node.out_funcs:
                raise GraphError(
                    f"Flow {flow}: step '{node.name}' has no self.next(...); every step "
                    "but 'end' must end with a transition."
                )
            if node.foreach is not None and len(node.out_funcs) != 1:
                raise GraphError(
                    f"Flow {flow}: step '{node.name}' uses foreach with "
                    f"{len(node.out_funcs)} target steps; a foreach goes to exactly one step."
                )
            if len(set(node.out_funcs)) != len(node.out_funcs):
                raise GraphError(
                    f"Flow {flow}: step '{node.name}' names the same step twice in self.next."
                )
            for target in node.out_funcs:
                if target not in self.nodes:
                    raise GraphError(
                        f"Flow {flow}: step '{node.name}' calls self.next(self.{target}), "
                        f"but the flow has no step '{target}'."
                    )
        self._link()
        if self.nodes["start"].in_funcs:
            raise GraphError(
                f"Flow {flow}: step 'start' is the target of "
                f"{', '.join(repr(p) for p in self.nodes['start'].in_funcs)}; "
                "nothing may go back to start."
            )
        self._check_cycles()
        self._check_reachable()
        self._assign_split_stacks()

    def _check_cycles(self) -> None:
        white, grey, black = 0, 1, 2
        color = {name: white for name in self.nodes}

        def visit(name: str, path: list[str]) -> None:
            color[name] = grey
            path.append(name)
            for target in self.nodes[name].out_funcs:
                if color[target] == grey:
                    cycle = path[path.index(target) :] + [target]
                    raise GraphError(
                        f"Flow {self.name} has a cycle: {' -> '.join(cycle)}. A flow must be a DAG."
                    )
                if color[target] == white:
                    visit(target, path)
            path.pop()
            color[name] = black

        for name in self.nodes:
            if color[name] == white:
                visit(name, [])

    def _check_reachable(self) -> None:
        seen = set()
        todo = ["start"]
        while todo:
            name = todo.pop()
            if name in seen:
                continue
            seen.add(name)
            todo.extend(self.nodes[name].out_funcs)
        unreachable = [n for n in self.nodes if n not in seen]
        if unreachable:
            raise GraphError(
                f"Flow {self.name}: step(s) {', '.join(repr(n) for n in unreachable)} "
                "cannot be reached from 'start'."
            )

    def _topological_order(self) -> list[str]:
        indegree = {name: len(node.in_funcs) for name, node in self.nodes.items()}
        if not self.nodes:
            return []
        by_line = sorted(self.nodes.values(), key=lambda n: n.lineno or 0)
        position = {n.name: i for i, n in enumerate(by_line)}
        ready = sorted((n for n, d in indegree.items() if d == 0), key=position.__getitem__)
        order = []
        while ready:
            name = ready.pop(0)
            order.append(name)
            for target in self.nodes[name].out_funcs:
                if target not in indegree:  # a partial graph may name steps not written yet
                    continue
                indegree[target] -= 1
                if indegree[target] == 0:
                    ready.append(target)
                    ready.sort(key=position.__getitem__)
        return order

    def _out_stack(self, parent: StepNode, child: str) -> tuple[Frame, ...]:
        if parent.foreach is not None:
            return parent.split_stack + ((parent.name, ""),)
        if len(parent.out_funcs) > 1:
            return parent.split_stack + ((parent.name, child),)
        return parent.split_stack

    def _assign_split_stacks(self) -> None:
        flow = self.name
        for name in self._topological_order():
            node = self.nodes[name]
            if name == "start":
                node.split_stack = ()
                if node.is_join:
                    raise GraphError(f"Flow {flow}: step 'start' cannot be a join.")
                continue
            parent_stacks = {p: self._out_stack(self.nodes[p], name) for p in node.in_funcs}
            if node.is_join:
                node.split_stack = self._join_stack(node, parent_stacks)
            else:
                if len(node.in_funcs) > 1:
                    raise GraphError(
                        f"Flow {flow}: step '{name}' has several parents "
                        f"({', '.join(node.in_funcs)}) but is not a join; declare it as "
                        f"'def {name}(self, inputs)' (in a notebook: %%step {name} --join)."
                    )
                node.split_stack = parent_stacks[node.in_funcs[0]]
        end = self.nodes["end"]
        if end.split_stack:
            split_name = end.split_stack[-1][0]
            raise GraphError(
                f"Flow {flow}: the split at step '{split_name}' has no matching join "
                f"(its branches reach 'end' without being joined){self._join_hint(split_name)}."
            )

    def _join_hint(self, split_name: str) -> str:
        """Which step was probably meant to join the split: the steps after its first
        branch's first step, on the way to 'end'."""
        path = []
        name = self.nodes[split_name].out_funcs[0]
        while name != "end" and name not in path:
            path.append(name)
            name = self.nodes[name].out_funcs[0]
        candidates = path[1:]
        if len(candidates) == 1:
            (join,) = candidates
            return f": declare step '{join}' as 'def {join}(self, inputs)'"
        if candidates:
            shown = ", ".join(f"'{c}'" for c in candidates)
            return f": the step among {shown} that joins it must take inputs ('def NAME(self, inputs)')"
        return ": add a join step, 'def join(self, inputs)', before 'end'"

    def _join_stack(self, node: StepNode, parent_stacks: dict[str, tuple]) -> tuple:
        flow = self.name
        name = node.name
        if any(not stack for stack in parent_stacks.values()):
            raise GraphError(
                f"Flow {flow}: step '{name}' takes inputs (a join) but "
                f"'{node.in_funcs[0]}' is not part of a split or foreach."
            )
        tops = {p: stack[-1] for p, stack in parent_stacks.items()}
        split_names = {top[0] for top in tops.values()}
        prefixes = {stack[:-1] for stack in parent_stacks.values()}
        if len(split_names) > 1 or len(prefixes) > 1:
            origins = ", ".join(f"'{p}' (from split '{tops[p][0]}')" for p in node.in_funcs)
            raise GraphError(
                f"Flow {flow}: join step '{name}' joins steps from different splits: "
                f"{origins}. A join must join the branches of one split."
            )
        split = self.nodes[split_names.pop()]
        if split.foreach is None:
            branches = {top[1] for top in tops.values()}
            if len(node.in_funcs) < 2:
                raise GraphError(
                    f"Flow {flow}: join step '{name}' has only one input "
                    f"('{node.in_funcs[0]}'); the other branches of split '{split.name}' "
                    "must reach it too."
                )
            missing = [b for b in split.out_funcs if b not in branches]
            if missing:
                raise GraphError(
                    f"Flow {flow}: join step '{name}' does not receive branch(es) "
                    f"{', '.join(repr(m) for m in missing)} of split '{split.name}'."
                )
        split.matching_join = name
        return prefixes.pop()


# ---------------------------------------------------------------------- parsing
def _step_attribute_names(flow_cls: type) -> list[str]:
    names = []
    seen = set()
    for klass in flow_cls.__mro__:
        for attr_name, value in vars(klass).items():
            if attr_name in seen:
                continue
            seen.add(attr_name)
            if callable(value) and getattr(value, "_flowbook_step", False):
                names.append(attr_name)
    return names


class _StepSources:
    """What the step functions' sources say, read once per file: from the graph
    cache (graph_cache.py) when the file has not changed, else parsed with ``ast``."""

    def __init__(self) -> None:
        self.cache = GraphCache()
        self.trees: dict[str, ast.Module | None] = {}

    def shape(self, flow_name: str, step_name: str, func) -> list | None:
        """[number of parameters, next steps, foreach] of a step function, or None
        when its source cannot be found."""
        code = func.__code__
        where = (code.co_filename, func.__name__, code.co_firstlineno)
        shape = self.cache.get(*where)
        if shape is None:
            func_def = _find_function_def(*where, self.trees)
            if func_def is None:
                return None
            out_funcs, foreach = _read_transitions(flow_name, step_name, func_def, 1)
            shape = [len(func_def.args.args), out_funcs, foreach]
            self.cache.put(*where, shape)
        return shape


def _node_from_function(flow_name: str, step_name: str, func, sources: _StepSources) -> StepNode:
    while hasattr(func, "__wrapped__"):  # a decorator that used functools.wraps
        func = func.__wrapped__
    code = func.__code__
    shape = sources.shape(flow_name, step_name, func)
    if shape is None:
        raise GraphError(
            f"Flow {flow_name}: cannot read the source of step '{step_name}' "
            f"({code.co_filename}, line {code.co_firstlineno}); "
            "flowbook reads self.next(...) from the source."
        )
    param_count, out_funcs, foreach = shape
    return StepNode(
        name=step_name,
        out_funcs=list(out_funcs),
        foreach=foreach,
        is_join=param_count >= 2,
        doc=_clean_doc(func.__doc__),
        lineno=code.co_firstlineno,
        source_file=code.co_filename,
        decorators=list(getattr(func, "_flowbook_decorators", [])),
    )


def _find_function_def(
    filename: str, name: str, first_line: int, parsed: dict[str, ast.Module | None]
) -> ast.FunctionDef | None:
    """The ``def`` of function ``name`` whose code starts at ``first_line`` (its first
    decorator, or the def itself) in ``filename``, read through linecache, which also
    knows the sources a notebook registers. Each file is parsed once per graph."""
    import ast

    if filename not in parsed:
        import linecache

        try:
            parsed[filename] = ast.parse("".join(linecache.getlines(filename)) or "\n")
        except (SyntaxError, ValueError):
            parsed[filename] = None
    tree = parsed[filename]
    if tree is None:
        return None
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == name:
            starts = [node.lineno] + [d.lineno for d in node.decorator_list]
            if min(starts) == first_line:
                return node
    return None


def _clean_doc(doc: str | None) -> str:
    """A docstring without its indentation (what ``inspect.cleandoc`` gives)."""
    if not doc:
        return ""
    lines = doc.expandtabs().splitlines()
    indents = [len(line) - len(line.lstrip()) for line in lines[1:] if line.strip()]
    margin = min(indents, default=0)
    cleaned = [lines[0].strip()] + [line[margin:].rstrip() for line in lines[1:]]
    return "\n".join(cleaned).strip()


def _read_transitions(
    flow_name: str, step_name: str, func_def: ast.AST, first_line: int
) -> tuple[list[str], str | None]:
    import ast

    found: list[tuple[list[str], str | None]] = []
    for sub in ast.walk(func_def):
        if not (
            isinstance(sub, ast.Call)
            and isinstance(sub.func, ast.Attribute)
            and sub.func.attr == "next"
            and isinstance(sub.func.value, ast.Name)
            and sub.func.value.id == "self"
        ):
            continue
        where = f"step '{step_name}' (line {first_line + sub.lineno - 1})"
        targets = []
        for arg in sub.args:
            if (
                isinstance(arg, ast.Attribute)
                and isinstance(arg.value, ast.Name)
                and arg.value.id == "self"
            ):
                targets.append(arg.attr)
            else:
                raise GraphError(
                    f"Flow {flow_name}: {where} calls self.next with "
                    f"{ast.unparse(arg)}; pass steps as self.<step_name>."
                )
        foreach = None
        for keyword in sub.keywords:
            if keyword.arg == "foreach":
                if not (
                    isinstance(keyword.value, ast.Constant) and isinstance(keyword.value.value, str)
                ):
                    raise GraphError(
                        f"Flow {flow_name}: {where}: foreach= must be the artifact's name "
                        "as a string literal, e.g. foreach='items'."
                    )
                foreach = keyword.value.value
            else:
                raise GraphError(
                    f"Flow {flow_name}: {where}: self.next() does not take '{keyword.arg}='."
                )
        if not targets:
            raise GraphError(f"Flow {flow_name}: {where} calls self.next() with no step.")
        found.append((targets, foreach))
    if not found:
        return [], None
    distinct = {(tuple(t), f) for t, f in found}
    if len(distinct) > 1:
        raise GraphError(
            f"Flow {flow_name}: step '{step_name}' calls self.next with different "
            "targets in different places; a step has exactly one transition."
        )
    return found[0]


def _check_targets_are_steps(flow_cls: type, nodes: list[StepNode]) -> None:
    """A ``self.next(self.x)`` whose ``x`` is a method without ``@step``: say so (the
    graph alone would only see that there is no step 'x')."""
    names = {node.name for node in nodes}
    for node in nodes:
        for target in node.out_funcs:
            if target not in names and callable(getattr(flow_cls, target, None)):
                raise GraphError(
                    f"Flow {flow_cls.__name__}: step '{node.name}' calls "
                    f"self.next(self.{target}), but '{target}' is a method without @step; "
                    f"decorate 'def {target}' with @step."
                )
