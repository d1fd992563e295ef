"""Turn a notebook's cells into a real FlowSpec class and its graph.

Each step cell's body becomes the body of a step method, compiled so that its line
numbers are the cell's own (a traceback points at the line you see in the cell).
The transition comes from ``self.next(...)`` in the body or from ``--next`` /
``flowbook:next``; giving both, differently, is an error naming the cell. Setup code
provides the globals the steps see; parameters become ``Parameter`` attributes.
"""

from __future__ import annotations

import ast
import builtins
import linecache
import os
import sys
import types
from typing import TYPE_CHECKING, Any, cast

from ..exceptions import FlowbookError
from ..flowspec import FlowSpec, step
from ..graph import FlowGraph, StepNode, _read_transitions
from ..parameters import Parameter
from ..runtime.fingerprint import Statement
from .cells import NotebookSource, StepCell, strip_ipython_lines

if TYPE_CHECKING:
    from collections.abc import Callable


def step_filename(name: str) -> str:
    return f"<step {name}>"


def register_source(filename: str, text: str) -> None:
    """Make tracebacks able to show the lines of code that came from a cell."""
    lines = [line + "\n" for line in text.splitlines()]
    linecache.cache[filename] = (len(text), None, lines, filename)


def _function_tree(cell: StepCell, flow_name: str) -> ast.Module:
    params = "self, inputs" if cell.join else "self"
    body = cell.body if cell.body.strip() else "pass"
    indented = "\n".join("    " + line for line in body.splitlines())
    text = f"def {cell.name}({params}):\n{indented}\n    pass\n"
    try:
        tree = ast.parse(text)
    except SyntaxError as exc:
        line = (exc.lineno or 1) - 2 + cell.first_line
        raise FlowbookError(
            f"Flow {flow_name}, step '{cell.name}' ({cell.where or 'its cell'}): invalid "
            f"Python on line {line} of the cell: {exc.msg}. (Step cells hold plain Python; "
            "IPython magics and !commands do not work inside a step.)"
        ) from None
    ast.increment_lineno(tree, cell.first_line - 2)
    return tree


def body_declares_transition(cell: StepCell, flow_name: str) -> bool:
    """Whether the cell's body calls ``self.next(...)`` itself."""
    tree = _function_tree(cell, flow_name)
    return bool(_read_transitions(flow_name, cell.name, tree.body[0], 1)[0])


def step_node(cell: StepCell, flow_name: str) -> tuple[StepNode, ast.Module]:
    """The graph node of a step cell, and the syntax tree of its method."""
    tree = _function_tree(cell, flow_name)
    func_def = cast(ast.FunctionDef, tree.body[0])  # the text parsed is one def
    in_body, foreach = _read_transitions(flow_name, cell.name, func_def, 1)
    declared = (list(cell.next), cell.foreach)
    if in_body and cell.next and (in_body, foreach) != declared:
        raise FlowbookError(
            f"Flow {flow_name}, step '{cell.name}' ({cell.where or 'its cell'}): the body "
            f"calls self.next({', '.join(in_body)}) but the cell says --next "
            f"{' '.join(cell.next)}; give the transition once."
        )
    if not in_body and (cell.next or cell.foreach):
        if not cell.next:
            raise FlowbookError(
                f"Flow {flow_name}, step '{cell.name}': --foreach needs --next STEP."
            )
        call = "self.next(" + ", ".join(f"self.{n}" for n in cell.next)
        call += f", foreach={cell.foreach!r})" if cell.foreach else ")"
        statement = ast.parse(call).body[0]
        # Attribute the added call to the magic line (1) or the cell's last line.
        last_line = 1 if cell.first_line == 2 else max(1, len(cell.body.splitlines()))
        ast.increment_lineno(statement, last_line - 1)
        func_def.body.append(statement)
        in_body, foreach = list(cell.next), cell.foreach
    node = StepNode(
        name=cell.name,
        out_funcs=in_body,
        foreach=foreach,
        is_join=cell.join,
        doc=ast.get_docstring(func_def) or "",
        lineno=None,
        source_file=step_filename(cell.name),
        decorators=list(cell.decorators),
    )
    return node, tree


def compile_step(cell: StepCell, tree: ast.Module, globals_dict: dict) -> Callable[..., Any]:
    filename = step_filename(cell.name)
    # Indented as compiled, so that the column markers of tracebacks line up.
    prefix = "\n" if cell.first_line == 2 else ""
    register_source(filename, prefix + "\n".join("    " + line for line in cell.body.splitlines()))
    namespace: dict[str, Any] = {}
    exec(compile(tree, filename, "exec"), globals_dict, namespace)
    func = namespace[cell.name]
    func._flowbook_decorators = list(cell.decorators)
    return step(func)


def build_flow(
    source: NotebookSource, globals_dict: dict | None = None, partial: bool = False
) -> tuple[type, FlowGraph]:
    """The FlowSpec class and validated graph of a notebook's flow.

    ``globals_dict`` is what step code sees as globals; without it the setup cells
    run in a fresh module, registered so that cloudpickle ships its functions and
    classes by value.
    """
    if globals_dict is None:
        globals_dict = setup_module(source).__dict__
    nodes, functions = [], {}
    for position, cell in enumerate(source.steps.values()):
        node, tree = step_node(cell, source.flow_name)
        node.lineno = position
        nodes.append(node)
        functions[cell.name] = compile_step(cell, tree, globals_dict)
    graph = FlowGraph(source.flow_name, nodes, partial=partial)
    attrs: dict[str, Any] = {"__module__": globals_dict.get("__name__", "__main__")}
    for name, default in source.parameters.items():
        attrs[name] = Parameter(name, default=default)
    attrs.update(functions)
    for node in nodes:  # steps named in --next whose cells have not run yet
        for target in node.out_funcs:
            attrs.setdefault(target, _missing_step(target))
    flow_cls: Any = type(source.flow_name, (FlowSpec,), attrs)  # (it gains attributes)
    flow_cls._flowbook_graph = graph
    flow_cls._flowbook_code = NotebookCode(source)  # what reuse fingerprints
    return flow_cls, graph


def _missing_step(name: str) -> Callable[..., None]:
    def missing(self: Any, *args: Any) -> None:
        raise FlowbookError(f"Step '{name}' has no cell yet.")

    missing.__name__ = missing.__qualname__ = name
    return missing


def setup_module(source: NotebookSource) -> types.ModuleType:
    """Run the setup cells in a fresh module, as the headless runner and exports do."""
    import cloudpickle

    name = f"flowbook_notebook_{source.flow_name}"
    module = types.ModuleType(name)
    module.__file__ = source.path or f"<notebook {source.flow_name}>"
    sys.modules[name] = module
    cloudpickle.register_pickle_by_value(module)
    for index, code in enumerate(source.setup):
        filename = f"<setup cell {index + 1}>"
        register_source(filename, code)
        try:
            exec(compile(strip_ipython_lines(code), filename, "exec"), module.__dict__)
        except Exception as exc:
            raise FlowbookError(
                f"Flow {source.flow_name}: setup cell {index + 1} failed: "
                f"{type(exc).__name__}: {exc}"
            ) from None
    return module


def global_names_used(tree: ast.AST) -> set[str]:
    """Names a step body reads that are neither local, nor builtins, nor self/inputs."""
    assigned: set[str]
    loaded: set[str]
    assigned, loaded = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (loaded if isinstance(node.ctx, ast.Load) else assigned).add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            assigned.add(node.name)
            if not isinstance(node, ast.ClassDef):
                assigned.update(a.arg for a in node.args.args + node.args.kwonlyargs)
        elif isinstance(node, ast.Lambda):
            assigned.update(a.arg for a in node.args.args)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            assigned.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.arg):
            assigned.add(node.arg)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            assigned.add(node.name)
    return loaded - assigned - set(dir(builtins)) - {"self", "inputs"}


def names_defined(code: str) -> set[str]:
    """Top-level names a setup cell defines (imports, assignments, defs, classes)."""
    try:
        tree = ast.parse(strip_ipython_lines(code))
    except SyntaxError:
        return set()
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        else:
            for sub in ast.walk(node):
                if isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Store):
                    names.add(sub.id)
    return names


class NotebookCode:
    """A notebook flow's step cells and setup cells, as reuse fingerprints them
    (runtime/fingerprint.py, whose FileCode does the same for a flow file)."""

    def __init__(self, notebook: Any) -> None:
        self.notebook = notebook
        self.own_file = ""
        self.base_dir = os.path.dirname(os.path.abspath(notebook.path)) if notebook.path else ""
        self.base_dir = self.base_dir or os.getcwd()
        self.extra_names: set[str] = set()
        #: setup names whose value in the kernel is not the one their cell made
        self.rebound: set[str] = set(notebook.rebound)
        self.statements: list[Statement] = []
        for index, code in enumerate(notebook.setup):
            text = strip_ipython_lines(code)
            lines = text.splitlines(keepends=True)
            try:
                tree = ast.parse(text or "\n")
            except SyntaxError:
                continue
            for node in tree.body:
                body = "".join(lines[node.lineno - 1 : node.end_lineno])
                at = f"setup cell {index + 1}, line {node.lineno}"
                self.statements.append(Statement(at, body, node))

    def step_text(self, name: str) -> tuple | None:
        cell = self.notebook.steps.get(name)
        if cell is None:
            return None
        # the magic line says next/foreach/join/decorators; the body starts below it.
        # The key leaves out the run decorators (--retry, ...), as for a flow file.
        shape = StepCell(cell.name, "", cell.next, cell.foreach, cell.join).magic_line()
        try:
            tree = ast.parse(cell.body or "\n")
        except SyntaxError:
            tree = None
        text = f"{cell.magic_line()}\n{cell.body}"
        return text, cell.first_line - 1, "cell", f"{shape}\n{cell.body}", tree
