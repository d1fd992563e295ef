"""A notebook's flow as a readable, standalone FlowSpec file.

Setup cells go to module level, the parameters cell becomes ``Parameter(...)``
attributes, step cells become ``@step`` methods (with their decorators), and
exploration cells are left out. ``target="metaflow"`` writes the same file importing
Metaflow instead of flowbook, which real Metaflow runs unchanged.
"""

from __future__ import annotations

import json
import textwrap

from ..exceptions import FlowbookError
from ..notebook.builder import body_declares_transition, step_node
from ..notebook.cells import NotebookSource, StepCell, strip_ipython_lines

TARGETS = ("flowbook", "metaflow")


def _decorator_lines(cell: StepCell, target: str) -> tuple[list[str], set[str]]:
    lines, names = [], set()
    for deco in cell.decorators:
        attrs = deco.attributes
        if deco.name == "reuse":
            if target == "metaflow":  # Metaflow has no reuse: it runs every step
                continue
            lines.append(f"    @reuse({bool(attrs.get('enabled', True))!r})")
            names.add("reuse")
            continue
        names.add(deco.name)
        if deco.name == "retry":
            args = f"times={attrs['times']!r}, minutes_between_retries={attrs['minutes_between_retries']!r}"
        elif deco.name == "catch":
            args = f"var={attrs['var']!r}, print_exception={attrs['print_exception']!r}"
        elif deco.name == "timeout":
            args = ", ".join(f"{k}={v!r}" for k, v in attrs.items() if v)
        else:
            args = ", ".join(f"{k}={v!r}" for k, v in attrs.items() if v is not None)
        lines.append(f"    @{deco.name}({args})")
    return lines, names


def _parameter_line(name: str, value: object) -> tuple[str, bool]:
    if isinstance(value, (dict, list)):
        return (
            f"    {name} = Parameter({name!r}, default={json.dumps(value)!r}, type=JSONType)",
            True,
        )
    if value is None:
        return f"    {name} = Parameter({name!r})", False
    return f"    {name} = Parameter({name!r}, default={value!r})", False


def flow_file_source(source: NotebookSource, target: str = "flowbook") -> str:
    if target not in TARGETS:
        raise FlowbookError(f"Cannot export to {target!r}; choose one of {', '.join(TARGETS)}.")
    if not source.steps:
        raise FlowbookError(f"Notebook flow {source.flow_name} has no step cells to export.")
    imports = {"FlowSpec", "step"}
    class_lines: list[str] = []
    for name, value in source.parameters.items():
        line, uses_json = _parameter_line(name, value)
        class_lines.append(line)
        imports.add("Parameter")
        if uses_json:
            imports.add("JSONType")
    for cell in source.steps.values():
        node, _ = step_node(cell, source.flow_name)  # validates the cell, finds its transition
        deco_lines, names = _decorator_lines(cell, target)
        imports |= names
        body = textwrap.dedent(cell.body).rstrip() or "pass"
        if node.out_funcs and not body_declares_transition(cell, source.flow_name):
            call = "self.next(" + ", ".join(f"self.{n}" for n in node.out_funcs)
            call += f", foreach={node.foreach!r})" if node.foreach else ")"
            body += "\n" + call
        params = "self, inputs" if cell.join else "self"
        class_lines.append("")
        class_lines += deco_lines
        class_lines.append("    @step")
        class_lines.append(f"    def {cell.name}({params}):")
        class_lines.append(textwrap.indent(body, " " * 8))
    parts = [
        f'"""The flow {source.flow_name}, exported by flowbook'
        + (f" from {source.path}" if source.path else "")
        + '."""',
        "",
        f"from {target} import {', '.join(sorted(imports))}",
    ]
    for code in source.setup:
        code = textwrap.dedent(strip_ipython_lines(code)).strip()
        if code:
            parts += ["", code]
    parts += ["", "", f"class {source.flow_name}(FlowSpec):"]
    parts += class_lines
    parts += ["", "", 'if __name__ == "__main__":', f"    {source.flow_name}()", ""]
    return "\n".join(parts)


def export_flow_file(source: NotebookSource, path: str, target: str = "flowbook") -> str:
    text = flow_file_source(source, target)
    with open(path, "w") as handle:
        handle.write(text)
    return path
