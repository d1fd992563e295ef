"""A step's code fingerprint: everything its result depends on besides its inputs.

Reuse (runtime/reuse.py) may hand a step the result of an earlier task only when the
code that would run is the same. A step's fingerprint is made of

* ``step``: its own source: the method with its decorators (a flow file), or the
  cell's ``%%step`` line and body (a notebook);
* ``support``: the module-level code it uses: the top-level statements of the flow
  file (or the notebook's setup cells) that define a name the step uses, directly or
  through another such statement, plus every top-level statement that defines no
  name (``random.seed(0)``, ``sys.path.insert(...)``), and the flow class's other
  members it names (helper methods, class attributes; not its Parameters, whose
  values are inputs);
* ``helpers``: the content of every module of the flow's own directory that the step
  or that code uses (``from features import clean``), and of the local modules
  those import;
* ``decorators``, and the ``python`` and ``flowbook`` versions.

Names are found conservatively: every name in the step's bytecode (attributes
included) counts as used. Each part is a SHA-256; the texts of ``step`` and
``support`` are kept as blobs so that a later run can say which line changed.
"""

from __future__ import annotations

import hashlib
import os
import sys

from .. import __version__, jsonio

TYPE_CHECKING = False  # typing costs ~6 ms to import; annotations are strings here
if TYPE_CHECKING:
    from typing import Any

    from ..datastore import Datastore
    from ..graph import FlowGraph

#: What starts each statement's place in a kept support text (``#@ flow.py:12``).
HEADER = "#@ "

#: A support statement: (display name of where it is, its text, the names it
#: defines, the names it uses).
Statement = tuple


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def code_fingerprints(
    flow_cls: type,
    graph: FlowGraph,
    datastore: Datastore | None = None,
    only: set[str] | None = None,
) -> dict[str, dict]:
    """Each step's fingerprint (see the module's docstring), by step name.

    With ``datastore``, the texts of each step and of its support code are stored
    as blobs (once: they are content addressed) so that explanations can quote
    the line that changed. A step whose source cannot be read gets no fingerprint
    (it is never reused). ``only`` limits the work to some steps."""
    # a notebook's flow brings its own (notebook/builder.py: NotebookCode)
    source = getattr(flow_cls, "_flowbook_code", None) or FileCode(flow_cls, graph)
    versions = {"python": sys.version.split()[0], "flowbook": __version__}
    prints = {}
    for node in graph:
        if only is not None and node.name not in only:
            continue
        func = getattr(flow_cls, node.name, None)
        code = getattr(func, "__code__", None)
        step = source.step_text(node.name)
        if code is None or step is None:
            continue
        text, first_line, where = step
        names = _code_names(code)
        support, used = _support_closure(source.statements, names)
        # the key hashes the statements, not where they are: a line added above a
        # statement moves it without changing it; the kept text says where for messages
        support_key = sha256_text("\n".join(body.rstrip("\n") for _, body in support))
        support_text = "".join(f"{HEADER}{at}\n{body.rstrip()}\n" for at, body in support)
        helpers = _local_modules(used, func.__globals__, source.base_dir, source.own_file)
        print_ = {
            "step": sha256_text(text),
            "support": support_key,
            "helpers": helpers,
            "decorators": sorted((d.to_dict() for d in node.decorators), key=lambda d: d["name"]),
            **versions,
        }
        print_["key"] = sha256_text(jsonio.dumps(print_, sort_keys=True))
        print_["line"] = first_line
        print_["where"] = where
        if datastore is not None:
            print_["texts"] = [_keep(datastore, text), _keep(datastore, support_text)]
        prints[node.name] = print_
    return prints


def _keep(datastore: Datastore, text: str) -> str:
    """Store ``text`` as a blob (once); its blob name."""
    return datastore.blobs.put(text, "code").sha


def load_texts(datastore: Datastore, print_: dict) -> tuple[str, str] | None:
    """The (step, support) texts a fingerprint kept, or None when they are gone."""
    try:
        step_sha, support_sha = print_["texts"]
        return datastore.blobs.get(step_sha), datastore.blobs.get(support_sha)
    except Exception:  # an explanation is only ever a hint
        return None


def support_statements(text: str) -> list[tuple[str, str]]:
    """The (place, statement) pairs of a kept support text."""
    found: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        if line.startswith(HEADER):
            found.append((line[len(HEADER) :], []))
        elif found:
            found[-1][1].append(line)
    return [(at, "\n".join(lines)) for at, lines in found]


def first_difference(old: str, new: str) -> int | None:
    """The 0-based index of the first line that differs between two texts."""
    old_lines, new_lines = old.splitlines(), new.splitlines()
    for index, (a, b) in enumerate(zip(old_lines, new_lines, strict=False)):
        if a != b:
            return index
    if len(old_lines) != len(new_lines):
        return min(len(old_lines), len(new_lines))
    return None


# ---------------------------------------------------------------------- names
def _code_names(code: Any) -> set[str]:
    """Every global and attribute name a code object (and its nested ones) uses."""
    names = set(code.co_names)
    for const in code.co_consts:
        if hasattr(const, "co_names"):
            names |= _code_names(const)
    return names


def _support_closure(
    statements: list[Statement], names: set[str]
) -> tuple[list[tuple[str, str]], set[str]]:
    """The statements the names reach (in source order) and every name used on the way."""
    used = set(names)
    chosen = [not defines for _, _, defines, _ in statements]
    for index, picked in enumerate(chosen):
        if picked:
            used |= statements[index][3]
    changed = True
    while changed:
        changed = False
        for index, (_, _, defines, uses) in enumerate(statements):
            if not chosen[index] and defines & used:
                chosen[index] = True
                used |= uses
                changed = True
    return [
        (at, text) for (at, text, _, _), pick in zip(statements, chosen, strict=True) if pick
    ], used


def statement(at: str, text: str, node: Any) -> Statement:
    """A top-level statement with the names it binds at the top level and the names
    (and attributes) it uses anywhere."""
    import ast

    defines: set[str] = set()
    uses: set[str] = set()
    todo = [node]
    while todo:  # the names bound at this level: not inside a def, class or lambda
        sub = todo.pop()
        if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defines.add(sub.name)
            continue
        if isinstance(sub, (ast.Import, ast.ImportFrom)):
            defines.update((a.asname or a.name).split(".")[0] for a in sub.names)
        elif isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Store):
            defines.add(sub.id)
        if not isinstance(sub, ast.Lambda):
            todo.extend(ast.iter_child_nodes(sub))
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Load):
            uses.add(sub.id)
        elif isinstance(sub, ast.Attribute):
            uses.add(sub.attr)
    return (at, text, defines, uses)


# ---------------------------------------------------------------------- sources
class FileCode:
    """A flow file's steps and its other top-level code.

    A source of code for fingerprints has ``statements`` (support statements),
    ``step_text(name)`` -> (text, number of its first line, where) or None,
    ``base_dir`` (where local modules live) and ``own_file`` (the file itself).
    """

    def __init__(self, flow_cls: type, graph: FlowGraph) -> None:
        import ast
        import linecache

        from ..parameters import flow_parameters

        module = sys.modules.get(flow_cls.__module__)
        self.filename = getattr(module, "__file__", None) or ""
        self.own_file = os.path.abspath(self.filename) if self.filename else ""
        self.base_dir = os.path.dirname(os.path.abspath(self.filename)) if self.filename else ""
        self.lines = linecache.getlines(self.filename) if self.filename else []
        self.statements: list[Statement] = []
        self.steps: dict[str, tuple[str, int, str]] = {}
        try:
            tree = ast.parse("".join(self.lines) or "\n")
        except (SyntaxError, ValueError):
            return
        display = os.path.basename(self.filename)
        step_names = {node.name for node in graph}
        parameter_names = set(flow_parameters(flow_cls))
        for node in tree.body:
            if isinstance(node, ast.ClassDef) and node.name == flow_cls.__name__:
                for member in node.body:
                    self._class_member(member, step_names, parameter_names, display)
                continue
            self.statements.append(statement(f"{display}:{node.lineno}", self._text(node), node))

    def _text(self, node: Any) -> str:
        start = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
        return "".join(self.lines[start - 1 : node.end_lineno])

    def _class_member(
        self, member: Any, step_names: set[str], parameter_names: set[str], display: str
    ) -> None:
        import ast

        name = getattr(member, "name", None)
        if isinstance(member, ast.FunctionDef) and name in step_names:
            start = min([member.lineno] + [d.lineno for d in member.decorator_list])
            self.steps[name] = (self._text(member), start, display)
            return
        if isinstance(member, (ast.Assign, ast.AnnAssign)):
            targets = member.targets if isinstance(member, ast.Assign) else [member.target]
            if {getattr(t, "id", None) for t in targets} & parameter_names:
                return  # a Parameter's value is an input, not code
        if isinstance(member, ast.Expr) and isinstance(member.value, ast.Constant):
            return  # the class's docstring
        found = statement(f"{display}:{member.lineno}", self._text(member), member)
        if not found[2]:
            return  # a class-level expression names nothing a step can reach
        self.statements.append(found)

    def step_text(self, name: str) -> tuple[str, int, str] | None:
        return self.steps.get(name)


# ---------------------------------------------------------------------- helper modules
def _local_modules(
    names: set[str], namespace: dict, base_dir: str, own_file: str
) -> dict[str, str]:
    """``{path relative to base_dir: SHA-256}`` of the local modules ``names`` reach
    (not ``own_file``, the flow's file, whose code the other parts cover)."""
    if not base_dir:
        return {}
    found: dict[str, str] = {}
    todo = [_module_file(namespace.get(name)) for name in names if name in namespace]
    seen: set[str] = set()
    while todo:
        path = todo.pop()
        if not path or path in seen or path == own_file or not _is_local(path, base_dir):
            continue
        seen.add(path)
        try:
            with open(path, "rb") as handle:
                found[os.path.relpath(path, base_dir)] = hashlib.sha256(handle.read()).hexdigest()
        except OSError:
            continue
        module = _module_by_file(path)
        if module is not None:
            todo.extend(_module_file(value) for value in list(vars(module).values()))
    return dict(sorted(found.items()))


def _module_file(value: Any) -> str | None:
    if value is None:
        return None
    if type(value).__name__ == "module":
        path = getattr(value, "__file__", None)
    else:
        module = sys.modules.get(getattr(value, "__module__", None) or "")
        path = getattr(module, "__file__", None)
    return os.path.abspath(path) if isinstance(path, str) else None


def _module_by_file(path: str) -> Any:
    for module in list(sys.modules.values()):
        if getattr(module, "__file__", None) and os.path.abspath(module.__file__) == path:
            return module
    return None


_NOT_LOCAL = (f"{os.sep}site-packages{os.sep}", f"{os.sep}dist-packages{os.sep}")
_FLOWBOOK_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def _is_local(path: str, base_dir: str) -> bool:
    """A module of the flow's own directory: not installed, not flowbook itself."""
    if not path.endswith(".py") or any(part in path for part in _NOT_LOCAL):
        return False
    if path.startswith(_FLOWBOOK_DIR):
        return False
    return path.startswith(base_dir.rstrip(os.sep) + os.sep)
