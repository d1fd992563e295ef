"""The ``flowbook`` program: ``flowbook [TOP-LEVEL OPTIONS] COMMAND FILE [OPTIONS]``.

``flowbook run flow.py --alpha 2`` is the same as ``python flow.py run --alpha 2``;
every command of a flow's own command line works this way, and FILE may be a
notebook. The top-level options (:mod:`flowbook.options`: ``--datastore``,
``--with``, ``--quiet``, ...) go before COMMAND as with ``python flow.py``, or after
FILE: ``flowbook run flow.py --with retry`` is ``python flow.py --with retry run``.
"""

from __future__ import annotations

import sys

from ..loader import load_flow_class  # also imported from here by runtime/server.py, for now
from ..options import TOP, by_name, options_for

NOTEBOOK_COMMANDS = ("export", "tag")
#: Command groups whose subcommand comes before FILE: ``flowbook argo-workflows create NB``.
DEPLOY_COMMANDS = {"argo-workflows": ("create", "trigger"), "step-functions": ("create", "trigger")}
#: Options of the deploy commands that take no value (cli/deploy_cmds.py).
DEPLOY_FLAGS = ("--only-json", "--force")


def usage() -> str:
    import textwrap  # only to print this: it imports re

    top = []
    for option in options_for(TOP):
        value = f" {option.metavar or 'VALUE'}" if not option.is_flag else ""
        names = "/".join(option.names)
        top.append(
            textwrap.fill(
                option.help,
                width=86,
                initial_indent=f"  {names + value:<24}",
                subsequent_indent=" " * 26,
            )
        )
    return (
        """\
usage: flowbook [TOP-LEVEL OPTIONS] COMMAND FILE [OPTIONS...]

FILE is a FlowSpec file (the same as `python FILE COMMAND`) or a notebook (.ipynb):
  check    validate the flow's graph
  show     print the steps, their docstrings and transitions
  run      run the flow (parameters as --name value)
  resume   run again from the failed steps (or from STEP), reusing the rest
  logs     print a task's stored output: logs FILE RUN_ID/STEP[/TASK_ID]
  dump     print a task's artifacts:     dump FILE RUN_ID/STEP[/TASK_ID]
  explain  each task of a run, reused or run, and why: explain FILE [RUN_ID], or
           explain FLOW/RUN_ID without the file (docs/reuse.md)
  argo-workflows create|trigger FILE    deploy to / run on Argo Workflows (docs/argo.md)
  step-functions create|trigger FILE    deploy to / run on AWS Step Functions (docs/step_functions.md)

For notebooks:
  export   write the notebook's flow as a file: export NB --to flow|metaflow -o flow.py
  tag      convert %%step magics to cell tags (--to tags) or back (--to magics)

Top-level options, before COMMAND or after FILE:
"""
        + "\n".join(top)
        + "\n\nUse `flowbook COMMAND FILE --help` for a command's options.\n"
    )


class UsageError(Exception):
    """A ``flowbook`` command line that names no command and file, or a bad option."""


def split_args(argv: list[str]) -> tuple[list[str], str, str, list[str]]:
    """``flowbook`` arguments -> (top-level options, COMMAND, FILE, the rest).

    Top-level options are gathered from before COMMAND and from after FILE, so that
    ``[*top, COMMAND, *rest]`` is the flow's own command line. UsageError when
    COMMAND or FILE is missing or an option before COMMAND is not a top-level one.
    """
    top_options = by_name(TOP)
    args = list(argv)
    top: list[str] = []
    while args and args[0].startswith("-"):
        word = args.pop(0)
        name, has_value, _ = word.partition("=")
        option = top_options.get(name)
        if option is None:
            known = ", ".join(top_options)
            raise UsageError(f"unknown option {name} (top-level options: {known})")
        top.append(word)
        if option.is_flag and has_value:
            raise UsageError(f"{name} takes no value")
        if not option.is_flag and not has_value:
            if not args:
                raise UsageError(f"{name} needs a value")
            top.append(args.pop(0))
    if len(args) < 2:
        raise UsageError("give a COMMAND and a FILE")
    command, path, rest = args[0], args[1], args[2:]
    if command in DEPLOY_COMMANDS and path in DEPLOY_COMMANDS[command] and rest:
        path, rest = rest[0], [path, *rest[1:]]  # argo-workflows create FILE ...
    if command in NOTEBOOK_COMMANDS:
        return top, command, path, rest
    flags = {name for name, option in by_name(command).items() if option.is_flag}
    flags.update(DEPLOY_FLAGS if command in DEPLOY_COMMANDS else ())
    kept: list[str] = []
    while rest:
        word = rest.pop(0)
        if word == "--":  # everything after it is an argument
            kept += [word, *rest]
            break
        name, has_value, _ = word.partition("=")
        option = top_options.get(name)
        if option is not None:
            top.append(word)
            if not option.is_flag and not has_value and rest:
                top.append(rest.pop(0))
            continue
        kept.append(word)
        if (
            word.startswith("--")
            and not has_value
            and word not in flags
            and word != "--help"
            and rest
        ):
            kept.append(rest.pop(0))  # an option's value, as click reads it
    return top, command, path, kept


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("--help", "-h"):
        print(usage(), end="", file=sys.stdout if argv else sys.stderr)
        sys.exit(0 if argv else 2)
    try:
        top, command, path, rest = split_args(argv)
    except UsageError as exc:
        print(f"flowbook: {exc}\n\n{usage()}", end="", file=sys.stderr)
        sys.exit(2)
    from ..exceptions import FlowbookError
    from .entry import fail, show_flowbook_warnings
    from .entry import main as flow_main

    show_flowbook_warnings()  # before the flow file is loaded

    if command in NOTEBOOK_COMMANDS:
        _notebook_tool(command, path, rest)
        return
    if command == "explain" and _is_run_pathspec(path):
        try:
            _explain_run(top, path)
        except FlowbookError as exc:
            fail(str(exc))
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


def _is_run_pathspec(path: str) -> bool:
    """``FLOW/RUN_ID`` rather than a file: ``flowbook explain`` needs no flow file."""
    import os

    return (
        path.count("/") == 1 and not path.endswith((".py", ".ipynb")) and not os.path.exists(path)
    )


def _explain_run(top: list[str], pathspec: str) -> None:
    """``flowbook [--datastore URL] explain FLOW/RUN_ID``: print ``Run.explain()``."""
    from .. import client
    from ..exceptions import ClientError, FlowbookError

    datastore = None
    for index, word in enumerate(top):
        if word.startswith("--datastore="):
            datastore = word.partition("=")[2]
        elif word == "--datastore" and index + 1 < len(top):
            datastore = top[index + 1]
    try:
        run = client.Run(pathspec, datastore=datastore, namespace=None)
        lines = run.explain()
    except ClientError as exc:
        raise FlowbookError(str(exc)) from None
    print(f"Run {run.pathspec}:")
    for line in lines:
        print(f"  {line}")


def _notebook_tool(command: str, path: str, rest: list[str]) -> None:
    from .notebook_tools import export_command, tag_command

    tool = export_command if command == "export" else tag_command
    tool.main(args=[path, *rest], prog_name=f"flowbook {command}")
