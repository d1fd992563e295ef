"""What a notebook's cells mean to flowbook, in either of the two equivalent forms.

* Magics, which the kernel sees: ``%%step NAME --next A B``, ``%%setup``,
  ``%%parameters``.
* Cell tags, which live in the .ipynb file: ``flowbook:step=NAME``,
  ``flowbook:next=A,B``, ``flowbook:foreach=ARTIFACT``, ``flowbook:join``,
  ``flowbook:retry=N``, ``flowbook:catch=VAR``, ``flowbook:timeout=S``,
  ``flowbook:no-reuse``,
  ``flowbook:resources=cpu=2,memory=4000``, ``flowbook:setup``, and papermill's
  ``parameters``.

Both parse into the same :class:`NotebookSource`: setup cells, the parameters cell
and step cells, in notebook order. Other cells are exploration and never part of the
flow. Unknown tags are left alone.
"""

from __future__ import annotations

import argparse
import ast
import re
import shlex
from dataclasses import dataclass, field
from typing import Any, NoReturn, cast

from ..decorators import DecoratorSpec, parse_decospec
from ..exceptions import FlowbookError

TAG_PREFIX = "flowbook:"
_MAGIC_LINE = re.compile(r"^\s*%%(step|setup|parameters)\b(.*)$")


@dataclass
class StepCell:
    name: str
    body: str
    next: list[str] = field(default_factory=list)
    foreach: str | None = None
    join: bool = False
    decorators: list[DecoratorSpec] = field(default_factory=list)
    #: Where the cell is, for messages: "cell 4" or "cell id 5a2f...".
    where: str = ""
    #: Line of the cell on which the body starts (2 below a magic line, else 1).
    first_line: int = 1

    def magic_line(self) -> str:
        parts = ["%%step", self.name]
        if self.next:
            parts += ["--next", *self.next]
        if self.foreach:
            parts += ["--foreach", self.foreach]
        if self.join:
            parts.append("--join")
        for deco in self.decorators:
            attrs = deco.attributes
            if deco.name == "retry":
                parts += ["--retry", str(attrs["times"])]
            elif deco.name == "catch" and attrs.get("var"):
                parts += ["--catch", attrs["var"]]
            elif deco.name == "timeout":
                parts += ["--timeout", str(attrs["seconds"])]
            elif deco.name == "resources":
                parts += ["--resources", _resources_text(attrs)]
            elif deco.name == "reuse" and not attrs.get("enabled", True):
                parts.append("--no-reuse")
        return " ".join(parts)

    def tags(self) -> list[str]:
        tags = [f"{TAG_PREFIX}step={self.name}"]
        if self.next:
            tags.append(f"{TAG_PREFIX}next={','.join(self.next)}")
        if self.foreach:
            tags.append(f"{TAG_PREFIX}foreach={self.foreach}")
        if self.join:
            tags.append(f"{TAG_PREFIX}join")
        for deco in self.decorators:
            attrs = deco.attributes
            if deco.name == "retry":
                tags.append(f"{TAG_PREFIX}retry={attrs['times']}")
            elif deco.name == "catch" and attrs.get("var"):
                tags.append(f"{TAG_PREFIX}catch={attrs['var']}")
            elif deco.name == "timeout":
                tags.append(f"{TAG_PREFIX}timeout={attrs['seconds']}")
            elif deco.name == "resources":
                tags.append(f"{TAG_PREFIX}resources={_resources_text(attrs)}")
            elif deco.name == "reuse" and not attrs.get("enabled", True):
                tags.append(f"{TAG_PREFIX}no-reuse")
        return tags


@dataclass
class ParametersCell:
    #: name -> default value, in the order assigned
    values: dict[str, Any]
    where: str = ""


@dataclass
class NotebookSource:
    """The flow a notebook describes: setup code, parameters, steps (notebook order)."""

    flow_name: str
    setup: list[str] = field(default_factory=list)
    parameters: dict[str, Any] = field(default_factory=dict)
    steps: dict[str, StepCell] = field(default_factory=dict)
    path: str | None = None
    #: Setup names whose value in the kernel is no longer the one their cell made.
    rebound: set[str] = field(default_factory=set)

    def add_step(self, cell: StepCell) -> None:
        if cell.name in self.steps:
            raise FlowbookError(
                f"Notebook flow {self.flow_name}: two cells define step '{cell.name}' "
                f"({self.steps[cell.name].where} and {cell.where})."
            )
        self.steps[cell.name] = cell


# ---------------------------------------------------------------------- magic lines
class _ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # raise instead of exiting the kernel
        raise FlowbookError(f"{self.prog}: {message}")


def _step_parser() -> argparse.ArgumentParser:
    parser = _ArgumentParser(prog="%%step", add_help=False)
    parser.add_argument("name")
    parser.add_argument("--next", nargs="+", default=[])
    parser.add_argument("--foreach", default=None)
    parser.add_argument("--join", action="store_true")
    parser.add_argument("--retry", type=int, default=None)
    parser.add_argument("--catch", default=None)
    parser.add_argument("--timeout", type=float, default=None)
    parser.add_argument("--resources", default=None)
    parser.add_argument("--no-reuse", action="store_true")
    return parser


def parse_step_line(line: str, body: str, where: str = "", first_line: int = 2) -> StepCell:
    """``NAME --next A B ...`` (the text after ``%%step``) and the cell body."""
    try:
        words = shlex.split(line)
    except ValueError as exc:
        raise FlowbookError(f"%%step {line}: {exc}") from None
    args = _step_parser().parse_args(words)
    decorators = []
    if args.retry is not None:
        decorators.append(parse_decospec(f"retry:times={args.retry},minutes_between_retries=0"))
    if args.catch is not None:
        decorators.append(DecoratorSpec("catch", {"var": args.catch, "print_exception": True}))
    if args.timeout is not None:
        decorators.append(parse_decospec(f"timeout:seconds={args.timeout}"))
    if args.resources is not None:
        decorators.append(parse_decospec(f"resources:{args.resources}"))
    if args.no_reuse:
        decorators.append(DecoratorSpec("reuse", {"enabled": False}))
    return StepCell(
        name=_identifier(args.name, "step"),
        body=body,
        next=[_identifier(n, "step") for n in args.next],
        foreach=args.foreach,
        join=args.join,
        decorators=decorators,
        where=where,
        first_line=first_line,
    )


def _identifier(name: str, what: str) -> str:
    if not name.isidentifier():
        raise FlowbookError(f"'{name}' is not a valid {what} name (use a Python identifier).")
    return name


def _resources_text(attrs: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in attrs.items() if v is not None)


def parse_parameters(source: str, where: str = "") -> ParametersCell:
    """Plain assignments (``alpha = 0.01``) with literal values become parameters."""
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        raise FlowbookError(f"The parameters cell ({where}) is not valid Python: {exc}") from None
    values: dict[str, Any] = {}
    for node in tree.body:
        value_node: ast.expr | None
        if isinstance(node, ast.Assign) and all(isinstance(t, ast.Name) for t in node.targets):
            targets = [t.id for t in node.targets if isinstance(t, ast.Name)]  # (all are)
            value_node = node.value
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            targets = [node.target.id]
            value_node = node.value
        else:
            continue
        try:
            value = ast.literal_eval(value_node) if value_node is not None else None
        except ValueError:
            raise FlowbookError(
                f"The parameters cell ({where}): the value of '{targets[0]}' must be a "
                f"literal (a number, string, bool, list or dict), not {ast.unparse(cast(ast.expr, value_node))!r}."
            ) from None
        for target in targets:
            values[target] = value
    return ParametersCell(values, where)


def split_magic(source: str) -> tuple[str | None, str, str]:
    """(magic name or None, the rest of the magic line, the body below it)."""
    first, _, rest = source.partition("\n")
    match = _MAGIC_LINE.match(first)
    if not match:
        return None, "", source
    return match.group(1), match.group(2).strip(), rest


# ---------------------------------------------------------------------- notebooks
def flow_name_from_path(path: str) -> str:
    """``wine_classifier.ipynb`` -> ``WineClassifierFlow``."""
    import os

    stem = os.path.splitext(os.path.basename(path))[0]
    words = [w for w in re.split(r"[^0-9A-Za-z]+", stem) if w]
    name = "".join(w[:1].upper() + w[1:] for w in words) or "Notebook"
    if name[0].isdigit():
        name = "N" + name
    return name if name.endswith("Flow") else name + "Flow"


def _cell_tags(cell: Any) -> list[str]:
    metadata = cell.get("metadata") or {}
    tags = metadata.get("tags") or []
    return [t for t in tags if isinstance(t, str)]


def _tag_values(tags: list[str]) -> dict[str, str | None]:
    values: dict[str, str | None] = {}
    for tag in tags:
        if tag.startswith(TAG_PREFIX):
            key, sep, value = tag[len(TAG_PREFIX) :].partition("=")
            values[key] = value if sep else None
    return values


def step_from_tags(values: dict[str, str | None], source: str, where: str) -> StepCell:
    words = [values["step"] or ""]
    if nexts := values.get("next"):
        words += ["--next", *[n.strip() for n in nexts.split(",") if n.strip()]]
    for key in ("foreach", "retry", "catch", "timeout", "resources"):
        if value := values.get(key):
            words += [f"--{key}", value]
    if "join" in values:
        words.append("--join")
    if "no-reuse" in values:
        words.append("--no-reuse")
    return parse_step_line(shlex.join(words), source, where=where, first_line=1)


def read_notebook(path: str, flow_name: str | None = None) -> NotebookSource:
    """The flow of a notebook file, from magics or tags (no kernel needed)."""
    import nbformat

    try:
        nb = nbformat.read(path, as_version=4)
    except (OSError, ValueError) as exc:
        raise FlowbookError(f"Cannot read notebook {path}: {exc}") from None
    meta = (nb.get("metadata") or {}).get("flowbook") or {}
    name = flow_name or meta.get("flow_name") or flow_name_from_path(path)
    source = NotebookSource(flow_name=name, path=path)
    for index, cell in enumerate(nb.cells):
        if cell.get("cell_type") != "code":
            continue
        where = f"cell {index + 1}" + (f" (id {cell['id']})" if cell.get("id") else "")
        text = cell.get("source") or ""
        tags = _cell_tags(cell)
        values = _tag_values(tags)
        magic, line, body = split_magic(text)
        if "injected-parameters" in tags:
            continue  # papermill's values reach the run as parameters, not defaults
        if magic == "step":
            source.add_step(parse_step_line(line, body, where=where, first_line=2))
        elif "step" in values:
            if not values["step"]:
                raise FlowbookError(f"{path}, {where}: the tag flowbook:step needs =NAME.")
            source.add_step(step_from_tags(values, text, where))
        elif magic == "setup":
            source.setup.append(body)
        elif "setup" in values:
            source.setup.append(strip_ipython_lines(text))
        elif magic == "parameters":
            source.parameters.update(parse_parameters(body, where).values)
        elif "parameters" in tags:
            source.parameters.update(parse_parameters(strip_ipython_lines(text), where).values)
    return source


def strip_ipython_lines(text: str) -> str:
    """Blank out line magics and shell escapes, which are not Python outside IPython."""
    return "\n".join(
        "" if line.lstrip().startswith(("%", "!")) else line for line in text.splitlines()
    )
