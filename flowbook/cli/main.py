"""The ``flowbook`` program: ``flowbook [--datastore URL] COMMAND FILE [OPTIONS]``.

``flowbook run flow.py --alpha 2`` is the same as ``python flow.py run --alpha 2``;
every command of a flow's own command line works this way.
"""

from __future__ import annotations

import importlib.util
import os
import sys

USAGE = """\
usage: flowbook [--datastore URL] [--quiet] COMMAND FILE [OPTIONS...]

FILE is a FlowSpec file (the same as `python FILE COMMAND`) or a notebook (.ipynb):
  check    validate the flow's graph
  show     print the steps, their docstrings and transitions
  run      run the flow (parameters as --name value)
  resume   run again from the failed steps (or from STEP), reusing the rest
  logs     print a task's stored output: logs FILE RUN_ID/STEP[/TASK_ID]
  dump     print a task's artifacts:     dump FILE RUN_ID/STEP[/TASK_ID]

For notebooks:
  export   write the notebook's flow as a file: export NB --to flow|metaflow -o flow.py
  tag      convert %%step magics to cell tags (--to tags) or back (--to magics)

Use `flowbook COMMAND FILE --help` for a command's options.
"""

TOP_LEVEL_VALUE_OPTIONS = {"--datastore"}
TOP_LEVEL_FLAGS = {"--quiet", "--no-pylint", "--pylint"}


def load_flow_class(path: str, flow_name: str | None = None) -> type:
    """Import a Python file and return the FlowSpec subclass it defines."""
    from ..exceptions import FlowbookError
    from ..flowspec import FlowSpec

    path = os.path.abspath(path)
    if not os.path.isfile(path):
        raise FlowbookError(f"No such flow file: {path}")
    module_name = os.path.splitext(os.path.basename(path))[0]
    sys.path.insert(0, os.path.dirname(path))
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    flows = [
        value
        for value in vars(module).values()
        if isinstance(value, type)
        and issubclass(value, FlowSpec)
        and value is not FlowSpec
        and value.__module__ == module_name
    ]
    if flow_name:
        flows = [f for f in flows if f.__name__ == flow_name]
    if len(flows) != 1:
        names = ", ".join(f.__name__ for f in flows) or "none"
        raise FlowbookError(f"{path} must define exactly one FlowSpec subclass (found: {names}).")
    return flows[0]


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    top: list[str] = []
    while argv and argv[0].startswith("--"):
        option = argv.pop(0)
        if option in ("--help", "-h"):
            print(USAGE, end="")
            return
        top.append(option)
        if option in TOP_LEVEL_VALUE_OPTIONS and argv:
            top.append(argv.pop(0))
        elif option not in TOP_LEVEL_FLAGS and "=" not in option:
            print(f"flowbook: unknown option {option}\n\n{USAGE}", end="", file=sys.stderr)
            sys.exit(2)
    if len(argv) < 2:
        print(USAGE, end="", file=sys.stderr)
        sys.exit(2)
    command, path, rest = argv[0], argv[1], argv[2:]
    from ..exceptions import FlowbookError
    from .entry import fail
    from .entry import main as flow_main

    if command in NOTEBOOK_TOOLS:
        NOTEBOOK_TOOLS[command](path, rest)
        return
    graph = None
    try:
        if path.endswith(".ipynb"):
            from ..notebook.builder import build_flow
            from ..notebook.cells import read_notebook

            flow_cls, graph = build_flow(read_notebook(path))
        else:
            flow_cls = load_flow_class(path)
    except FlowbookError as exc:
        fail(str(exc))
    sys.argv = [path, *top, command, *rest]
    flow_main(flow_cls, [*top, command, *rest], graph=graph)


def _export(path: str, rest: list[str]) -> None:

    from .notebook_tools import export_command

    export_command.main(args=[path, *rest], prog_name="flowbook export")


def _tag(path: str, rest: list[str]) -> None:
    from .notebook_tools import tag_command

    tag_command.main(args=[path, *rest], prog_name="flowbook tag")


NOTEBOOK_TOOLS = {"export": _export, "tag": _tag}
