"""A step's code fingerprint: everything its result depends on besides its inputs.

Reuse (runtime/reuse.py) may hand a step the result of an earlier task only when the
code that would run is the same. A step's fingerprint is made of

* ``step``: its own source: the method with its decorators (a flow file), or the
  cell's ``%%step`` line and body (a notebook). flowbook's own step decorators
  (``@retry``, ``@catch``, ``@timeout``, ``@resources``, ``@reuse``) do not change
  what a successful task computes and are left out, also when ``--with`` adds them;
* ``support``: the module-level code it uses: the top-level statements of the flow
  file (or the notebook's setup cells) that define a name the step uses, directly
  or through another such statement; every top-level statement that could change a
  used name as it runs (anything but a plain ``def`` or ``import`` that mentions
  one: ``WEIGHTS.append(2)``, a registering decorator); every statement that
  defines no name (``random.seed(0)``); the flow class's bases and its other
  members the step names (helper methods, class attributes; not its Parameters,
  whose values are inputs). A module docstring and the ``if __name__ ==
  "__main__":`` block are not code a task runs;
* ``helpers``: the content of every module of the flow's own directory that this
  code imports (``from config import THRESHOLD``, also inside the step) or whose
  functions and classes it uses, and of the local modules those import, anywhere
  in them;
* the ``python`` and ``flowbook`` versions.

Names are found conservatively: every name in the step's bytecode and source
(attributes and decorators included) counts as used. Each part is a SHA-256; the
texts of ``step`` and ``support`` are kept as blobs so that a later run can say which
line changed.

A fingerprint without a ``key`` is never matched, and says why (``stale``): a local
module changed on disk after this process imported it (a kernel still runs the old
code), or a notebook's setup name was given a new value outside its setup cell.
"""

from __future__ import annotations

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

#: flowbook's step decorators: they change how a task is run, not what it computes.
RUN_DECORATORS = frozenset({"step", "retry", "catch", "timeout", "resources", "reuse"})


class Statement:
    """A top-level statement: where it is, its text, the names it binds at the top
    level, the names it refers to (attributes included), the names it loads, the
    modules it imports anywhere in it, and whether running it only binds names."""

    __slots__ = ("at", "text", "defines", "refs", "loads", "imports", "inert")

    def __init__(self, at: str, text: str, node: Any) -> None:
        import ast

        self.at, self.text = at, text
        self.defines: set[str] = set()
        todo = [node]
        while todo:  # the names bound at this level: not inside a def, class or lambda
            sub = todo.pop()
            if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                self.defines.add(sub.name)
                continue
            if isinstance(sub, (ast.Import, ast.ImportFrom)):
                self.defines.update((a.asname or a.name).split(".")[0] for a in sub.names)
            elif isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Store):
                self.defines.add(sub.id)
            if not isinstance(sub, ast.Lambda):
                todo.extend(ast.iter_child_nodes(sub))
        self.loads = {
            sub.id
            for sub in ast.walk(node)
            if isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Load)
        }
        self.refs = self.loads | {s.attr for s in ast.walk(node) if isinstance(s, ast.Attribute)}
        self.imports = imports_in(node)
        plain_def = isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        self.inert = (plain_def and not node.decorator_list) or isinstance(
            node, (ast.Import, ast.ImportFrom)
        )


def sha256_text(text: str) -> str:
    import hashlib  # not on a plain run's path (see LAZY_MODULES in runtime/task.py)

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
        func = _unwrap(getattr(flow_cls, node.name, None))
        code = getattr(func, "__code__", None)
        step = source.step_text(node.name)
        if code is None or step is None:
            continue
        text, first_line, where, key_text, tree = step
        names = _code_names(code) | source.extra_names
        if tree is not None:
            names |= {n for n in _tree_names(tree)}
        support, used = _support_closure(source.statements, names)
        # the key hashes the statements, not where they are: a line added above a
        # statement moves it without changing it; the kept text says where for messages
        support_key = sha256_text("\n".join(s.text.rstrip("\n") for s in support))
        support_text = "".join(f"{HEADER}{s.at}\n{s.text.rstrip()}\n" for s in support)
        imports = imports_in(tree) if tree is not None else []
        for statement in support:
            imports.extend(statement.imports)
        helpers, changed = _local_modules(
            used, func.__globals__, imports, source.base_dir, source.own_file
        )
        print_: dict[str, Any] = {
            "step": sha256_text(key_text),
            "support": support_key,
            "helpers": helpers,
            **versions,
        }
        rebound = sorted(used & source.rebound)
        if changed:
            print_["stale"] = (
                f"{changed[0]} changed on disk after it was imported here (the tasks would "
                "run the old code); restart the kernel to run the new one"
            )
        elif rebound:
            print_["stale"] = (
                f"'{rebound[0]}' was given a new value outside its %%setup cell (run that "
                "cell again to make this step reusable)"
            )
        else:
            print_["key"] = sha256_text(jsonio.dumps(print_, sort_keys=True))
        print_["line"] = first_line
        print_["where"] = where
        if datastore is not None:
            print_["texts"] = [_keep(datastore, text), _keep(datastore, support_text)]
        prints[node.name] = print_
    return prints


def sha256_bytes(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def _unwrap(func: Any) -> Any:
    """The step's own function under decorators that used ``functools.wraps``."""
    while hasattr(func, "__wrapped__"):
        func = func.__wrapped__
    return func


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


def _tree_names(tree: Any) -> set[str]:
    """Every name and attribute a syntax tree mentions (its decorators included)."""
    import ast

    found = set()
    for sub in ast.walk(tree):
        if isinstance(sub, ast.Name):
            found.add(sub.id)
        elif isinstance(sub, ast.Attribute):
            found.add(sub.attr)
    return found


def _support_closure(
    statements: list[Statement], names: set[str]
) -> tuple[list[Statement], set[str]]:
    """The statements the names reach (in source order) and every name used on the way.

    A statement is taken when it defines a used name, when it defines none, or when
    it mentions a used name (or a function that mentions one) and running it may do
    more than bind names (it may change that name's value)."""
    used = set(names)
    # functions that touch a used name when called: a statement that calls one at
    # the top level (``@register("sq")``) may change that name's value
    touching: set[str] = set()
    chosen = [not s.defines for s in statements]
    for statement, picked in zip(statements, chosen, strict=True):
        if picked:
            used |= statement.refs
    changed = True
    while changed:
        changed = False
        for index, statement in enumerate(statements):
            if chosen[index]:
                continue
            reaches = statement.loads & (used | touching)
            if statement.inert and reaches and not statement.defines <= touching:
                touching |= statement.defines
                changed = True
            if statement.defines & used or (not statement.inert and reaches):
                chosen[index] = True
                used |= statement.refs | statement.defines
                changed = True
    return [s for s, pick in zip(statements, chosen, strict=True) if pick], used


def imports_in(tree: Any) -> list[tuple[str, int]]:
    """``(module, level)`` of every import anywhere in a syntax tree; ``from a import
    b`` gives ``a`` and ``a.b`` (``b`` may be a submodule)."""
    import ast

    found: list[tuple[str, int]] = []
    for sub in ast.walk(tree):
        if isinstance(sub, ast.Import):
            found.extend((alias.name, 0) for alias in sub.names)
        elif isinstance(sub, ast.ImportFrom):
            base = sub.module or ""
            found.append((base, sub.level))
            found.extend(
                (f"{base}.{alias.name}" if base else alias.name, sub.level)
                for alias in sub.names
                if alias.name != "*"
            )
    return found


def parse_step(text: str) -> Any:
    """The syntax tree of a step's text (a method indented in its class), or None."""
    import ast
    import textwrap

    try:
        return ast.parse(textwrap.dedent(text))
    except SyntaxError:
        return None


def key_text_of(lines: list[str], func_def: Any) -> str:
    """A step method's text without flowbook's own decorators (``@step``, ``@retry``,
    ...): the text its result depends on. ``lines`` are the file's lines."""
    kept = []
    for decorator in func_def.decorator_list:
        if _decorator_name(decorator) not in RUN_DECORATORS:
            kept.extend(lines[decorator.lineno - 1 : decorator.end_lineno])
    return "".join(kept + lines[func_def.lineno - 1 : func_def.end_lineno])


def _decorator_name(node: Any) -> str | None:
    import ast

    if isinstance(node, ast.Call):
        node = node.func
    if isinstance(node, ast.Attribute):
        return node.attr
    return node.id if isinstance(node, ast.Name) else None


# ---------------------------------------------------------------------- sources
class FileCode:
    """A flow file's steps and its other top-level code.

    A source of code for fingerprints has ``statements`` (support statements),
    ``step_text(name)`` -> (text, number of its first line, where, the text its key
    hashes, its syntax tree) or None, ``extra_names`` (names every step uses: the
    flow class's bases), ``rebound`` (names whose value is not what the code says),
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
        self.steps: dict[str, tuple] = {}
        self.extra_names: set[str] = set()
        self.rebound: set[str] = set()
        try:
            tree = ast.parse("".join(self.lines) or "\n")
        except (SyntaxError, ValueError):
            return
        display = os.path.basename(self.filename)
        step_names = {node.name for node in graph}
        parameter_names = set(flow_parameters(flow_cls))
        for position, node in enumerate(tree.body):
            if isinstance(node, ast.ClassDef) and node.name == flow_cls.__name__:
                for part in (*node.bases, *node.keywords, *node.decorator_list):
                    self.extra_names |= _tree_names(part)
                for member in node.body:
                    self._class_member(member, step_names, parameter_names, display)
                continue
            if _not_task_code(node, position):
                continue
            self.statements.append(Statement(f"{display}:{node.lineno}", self._text(node), node))

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
            text = self._text(member)
            self.steps[name] = (
                text,
                start,
                display,
                key_text_of(self.lines, member),
                parse_step(text),
            )
            return
        if isinstance(member, (ast.Assign, ast.AnnAssign)):
            targets = member.targets if isinstance(member, ast.Assign) else [member.target]
            if {getattr(t, "id", None) for t in targets} & parameter_names:
                return  # a Parameter's value is an input, not code
        if isinstance(member, ast.Expr) and isinstance(member.value, ast.Constant):
            return  # the class's docstring
        found = Statement(f"{display}:{member.lineno}", self._text(member), member)
        if not found.defines:
            return  # a class-level expression names nothing a step can reach
        self.statements.append(found)

    def step_text(self, name: str) -> tuple | None:
        return self.steps.get(name)


def _not_task_code(node: Any, position: int) -> bool:
    """A module docstring, or the ``if __name__ == "__main__":`` block."""
    import ast

    if position == 0 and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
        return True
    if isinstance(node, ast.If) and isinstance(node.test, ast.Compare):
        sides = [node.test.left, *node.test.comparators]
        names = {getattr(s, "id", None) for s in sides} | {getattr(s, "value", None) for s in sides}
        return {"__name__", "__main__"} <= names
    return False


# ---------------------------------------------------------------------- helper modules
#: The content of each local module when this process first fingerprinted it while it
#: was loaded: a different content later means the code that runs is not the file's.
#: Reloading the module here does not help: a kernel's task server keeps the copy it
#: imported (notebook/executor.py), so only a new process starts afresh.
_FIRST_SEEN: dict[str, str] = {}


def _loaded_differs(path: str, sha: str) -> bool:
    """Whether the file changed since this process first fingerprinted it loaded."""
    return _FIRST_SEEN.setdefault(path, sha) != sha


def _local_modules(
    names: set[str],
    namespace: dict,
    imports: list[tuple[str, int]],
    base_dir: str,
    own_file: str,
) -> tuple[dict[str, str], list[str]]:
    """``({path relative to base_dir: SHA-256}, [changed since imported])`` of the local
    modules reached from ``names`` (through their values) and ``imports``, and of
    every local module those import (not ``own_file``: its code the rest covers)."""
    if not base_dir:
        return {}, []
    found: dict[str, str] = {}
    changed: list[str] = []
    todo: list[str | None] = [_module_file(namespace.get(n)) for n in names if n in namespace]
    for name, level in imports:
        todo.extend(_resolve(name, level, "", base_dir))
    seen: set[str] = set()
    while todo:
        path = todo.pop()
        if not path or path in seen or path == own_file or not _is_local(path, base_dir):
            continue
        seen.add(path)
        try:
            with open(path, "rb") as handle:
                data = handle.read()
        except OSError:
            continue
        relative = os.path.relpath(path, base_dir)
        found[relative] = sha = sha256_bytes(data)
        module = _module_by_file(path)
        if module is not None and _loaded_differs(path, sha):
            changed.append(relative)
        package = _package_of(module, path, base_dir)
        for name, level in _imports_of_file(data):
            todo.extend(_resolve(name, level, package, base_dir))
        if module is not None:
            todo.extend(_module_file(value) for value in list(vars(module).values()))
    return dict(sorted(found.items())), sorted(changed)


def _imports_of_file(data: bytes) -> list[tuple[str, int]]:
    import ast

    try:
        return imports_in(ast.parse(data))
    except (SyntaxError, ValueError):
        return []


def _package_of(module: Any, path: str, base_dir: str) -> str:
    """The package a local module's relative imports start from."""
    package = getattr(module, "__package__", None) if module is not None else None
    if package is not None:
        return package
    relative = os.path.relpath(path, base_dir)[: -len(".py")].replace(os.sep, ".")
    if relative.endswith(".__init__"):
        return relative[: -len(".__init__")]
    return relative.rpartition(".")[0]


def _resolve(name: str, level: int, package: str, base_dir: str) -> list[str]:
    """The files of module ``name`` (relative to ``package`` when ``level`` > 0) and of
    the packages around it, as far as they are found: loaded modules by their file,
    others only under ``base_dir`` (nothing is imported to find them: a step's
    ``import torch.nn`` must not import torch here)."""
    if level:
        base = package.split(".") if package else []
        if level - 1 > len(base):
            return []
        base = base[: len(base) - (level - 1)]
        name = ".".join([*base, name] if name else base)
    if not name:
        return []
    parts = name.split(".")
    found = []
    for count in range(1, len(parts) + 1):
        dotted = ".".join(parts[:count])
        path = getattr(sys.modules.get(dotted), "__file__", None)
        if isinstance(path, str):
            found.append(os.path.abspath(path))
            continue
        stem = os.path.join(base_dir, *parts[:count])
        for candidate in (stem + ".py", os.path.join(stem, "__init__.py")):
            if os.path.isfile(candidate):
                found.append(os.path.abspath(candidate))
                break
    return found


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
        file = getattr(module, "__file__", None)
        if isinstance(file, str) and os.path.abspath(file) == path:
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
