"""The layers of flowbook, read from the source with ``ast``.

- The core (the flow model, parameters, the datastore, the runtime, the option table,
  the loader) imports none of the faces over it: ``cli/``, ``notebook/``,
  ``widgets/``, ``export/``, ``runner``, ``client``; not at module level and not
  inside a function. The one documented exception is the upward hook of
  ``FlowSpec()``, which hands a flow file's command line to ``cli.entry.main``.
- No import cycle among flowbook's modules at module level (an import inside a
  function runs later and may close a cycle; one under ``if TYPE_CHECKING:`` never runs).
- The modules every plain ``python flow.py run`` imports before it knows it is one
  import none of the stdlib modules the import budget of docs/architecture.md keeps
  off the run path.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parent.parent / "flowbook"

#: Modules above the core: nothing in the core may import them.
FACES = ("flowbook.cli", "flowbook.notebook", "flowbook.widgets", "flowbook.export")
FACE_MODULES = ("flowbook.runner", "flowbook.client")
#: Top-level modules that are not part of the core.
NOT_CORE = ("flowbook", "flowbook.__main__", *FACE_MODULES)
#: (importer, imported) pairs allowed although they cross the layers upwards.
ALLOWED_UPWARD = {
    # `FlowSpec()` at the end of a flow file runs its command line: the one hook
    # from the flow model up to the command line (imported when it is called).
    ("flowbook.flowspec", "flowbook.cli.entry"),
}
#: Upward imports known and being fixed. Empty when none.
KNOWN_BEING_FIXED: set[tuple[str, str]] = set()
#: What a plain run imports before it knows it is one, and what they must not import.
RUN_PATH = ("flowbook.options", "flowbook.cli.entry")
OFF_THE_RUN_PATH = {"click", "json", "re", "typing", "dataclasses", "enum", "inspect"}


def module_files() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        if "examples" in parts:  # user-level flows, not flowbook itself
            continue
        modules[".".join(parts)] = path
    return modules


MODULES = module_files()


class Import:
    def __init__(self, target: str, line: int, module_level: bool) -> None:
        self.target = target
        self.line = line
        self.module_level = module_level


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(module: str) -> list[Import]:
    """Every import in ``module``: its target module, line, and whether it runs at import."""
    path = MODULES[module]
    is_package = path.name == "__init__.py"
    found: list[Import] = []

    def targets(node: ast.Import | ast.ImportFrom) -> list[str]:
        if isinstance(node, ast.Import):
            return [alias.name for alias in node.names]
        if node.level:
            base = module.split(".") if is_package else module.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)]
            source = ".".join(base + ([node.module] if node.module else []))
        else:
            source = node.module or ""
        names = [f"{source}.{alias.name}" for alias in node.names]
        return [name if name in MODULES else source for name in names]

    def visit(node: ast.AST, module_level: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                found.extend(Import(t, child.lineno, module_level) for t in targets(child))
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                visit(child, False)
            elif isinstance(child, ast.If) and _is_type_checking(child):
                visit_type_checking(child)
            else:
                visit(child, module_level)

    def visit_type_checking(node: ast.If) -> None:
        # never runs: it neither closes a cycle nor costs an import; but a layer
        # violation there is still a dependency of the code
        for child in node.body:
            visit(ast.Module(body=[child], type_ignores=[]), False)
        for child in node.orelse:
            visit(ast.Module(body=[child], type_ignores=[]), True)

    visit(ast.parse(path.read_text(), str(path)), True)
    return found


def is_core(module: str) -> bool:
    return module not in NOT_CORE and not module.startswith(FACES)


def is_face(module: str) -> bool:
    return module in FACE_MODULES or module.startswith(FACES)


def test_the_core_imports_no_face():
    violations = []
    for module in sorted(MODULES):
        if not is_core(module):
            continue
        for found in imports_of(module):
            pair = (module, found.target)
            if is_face(found.target) and pair not in ALLOWED_UPWARD | KNOWN_BEING_FIXED:
                violations.append(
                    f"{MODULES[module]}:{found.line}: {module} imports {found.target}"
                )
    assert violations == [], "\n".join(violations)


def test_the_known_exceptions_still_exist():
    """An allowed or known upward import that is gone must leave these lists too."""
    for module, target in ALLOWED_UPWARD | KNOWN_BEING_FIXED:
        assert target in {found.target for found in imports_of(module)}, (module, target)


def module_level_graph() -> dict[str, set[str]]:
    return {
        module: {
            found.target
            for found in imports_of(module)
            if found.module_level and found.target in MODULES and found.target != module
        }
        for module in MODULES
    }


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return found


def test_no_import_cycle_at_module_level():
    assert cycles(module_level_graph()) == []


def test_the_cycle_finder_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]


@pytest.mark.parametrize("module", RUN_PATH)
def test_the_run_path_imports_nothing_the_budget_keeps_off_it(module):
    heavy = [
        f"{MODULES[module]}:{found.line}: {found.target}"
        for found in imports_of(module)
        if found.module_level and found.target.split(".")[0] in OFF_THE_RUN_PATH
    ]
    assert heavy == []
