"""``python flow.py COMMAND``: the command line every FlowSpec file gets, with click.

Commands: ``check``, ``show``, ``run``, ``resume``, ``logs``, ``dump``, and the
orchestrators' ``init``, ``step`` and ``mark-failed`` (docs/one_task.md; and
``--help``). Top-level options come before the command, as in Metaflow:
``--datastore``, ``--quiet``, ``--with``, ``--no-pylint`` (accepted for
compatibility; flowbook runs no linter). The options of the group and of every
command are built from the table in :mod:`flowbook.options`. Every error a user can
cause is printed as one line naming the flow and exits with status 1. A plain
``run`` or ``resume`` never gets here: :mod:`flowbook.cli.entry` reads those without
importing click; a plain ``init``/``step``/``mark-failed`` is read here, before click
is imported (:func:`run_click_cli`), because every orchestrated task pays for it.
So click is imported inside the functions that build the command line, never when
this module is.
"""

from __future__ import annotations

import os
import sys

from ..exceptions import FlowbookError
from ..graph import FlowGraph
from ..options import (
    COMMANDS,
    INIT,
    MARK_FAILED,
    RESUME,
    RESUME_STEP,
    RUN,
    STEP,
    TASK_COMMANDS,
    TASK_STEP,
    TOP,
    Option,
    env_default,
    options_for,
)
from ..parameters import JSONType, Parameter, flow_parameters
from .entry import exit_process, fail, start_run

TYPE_CHECKING = False  # typing costs ~6 ms to import; annotations are strings here
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    import click

    Starter = Callable[[type, FlowGraph, dict[str, Any]], bool]
    TaskStarter = Callable[[type, FlowGraph, dict[str, Any]], int]

COMMAND_HELP = {
    RUN: "Run the flow.",
    RESUME: "Run again from STEP (default: the failed steps), reusing the successful "
    "tasks of an earlier run.",
    INIT: "Create a run with the given id and its parameters task (for orchestrators).",
    STEP: "Run one attempt of one task of STEP in this process (for orchestrators).",
    MARK_FAILED: "Mark a run failed (an orchestrator's exit handler).",
}


def build_cli(
    flow_cls: type,
    graph: FlowGraph,
    start: Starter = start_run,
    start_task: TaskStarter | None = None,
) -> click.Group:
    """The click command line of ``flow_cls``; ``run``/``resume`` call ``start`` with
    their settings (the same as :func:`flowbook.cli.entry.read_plain_start` gives),
    ``init``/``step``/``mark-failed`` call ``start_task`` (the same as
    :func:`flowbook.cli.task_cmds.read_plain_task` gives) and exit with its code."""
    import click

    from ..decorators import parse_decospec
    from . import inspect_cmds
    from .task_cmds import start_task_command

    start_task = start_task or start_task_command
    flow_name = flow_cls.__name__
    parameters = flow_parameters(flow_cls)

    def group(ctx: click.Context, **top: Any) -> None:
        ctx.obj = top
        if top["decospecs"] and ctx.invoked_subcommand not in COMMANDS:
            graph.apply_decospecs([parse_decospec(text) for text in top["decospecs"]])
        if ctx.invoked_subcommand is None:
            click.echo(f"Flow {flow_name}: the graph looks good ({len(graph.nodes)} steps).")
            click.echo(ctx.get_help())

    cli = click.Group(
        invoke_without_command=True,
        help=f"Commands of flow {flow_name}.",
        callback=click.pass_context(group),
        params=[_click_option(option) for option in options_for(TOP)],
    )

    @cli.command(help="Validate the flow's graph without running anything.")
    def check() -> None:
        click.echo(f"Flow {flow_name}: the graph looks good ({len(graph.nodes)} steps).")

    @cli.command(help="Show the flow's steps, their docstrings and transitions.")
    def show() -> None:
        if flow_cls.__doc__:
            click.echo(flow_cls.__doc__.strip() + "\n")
        click.echo(graph.describe(), nl=False)

    def starter(command: str) -> Callable[..., None]:
        def callback(**kwargs: Any) -> None:
            given = {p.name: kwargs.pop(_option_key(p.name)) for p in parameters.values()}
            settings = {"command": command, **click.get_current_context().obj}
            for option in options_for(command):
                value = kwargs.pop(option.key)
                settings[option.key] = list(value) if option.repeatable else value
            settings["decospecs"] = list(settings["decospecs"])
            settings["parameters"] = {n: v for n, v in given.items() if v is not None}
            if command == RESUME:
                settings[RESUME_STEP] = kwargs.pop(RESUME_STEP)
            if not start(flow_cls, graph, settings):
                sys.exit(1)

        return callback

    for command in COMMANDS:
        params: list[click.Parameter] = []
        if command == RESUME:
            params.append(click.Argument([RESUME_STEP], required=False, metavar="[STEP]"))
        params += [_click_option(option) for option in options_for(command)]
        params += [_parameter_option(param) for param in parameters.values()]
        cli.add_command(
            click.Command(
                command, callback=starter(command), params=params, help=COMMAND_HELP[command]
            )
        )

    def task_starter(command: str) -> Callable[..., None]:
        def callback(**kwargs: Any) -> None:
            settings = {"command": command, **click.get_current_context().obj}
            settings["decospecs"] = list(settings["decospecs"])
            settings["parameters"] = {}
            if command == INIT:
                given = {p.name: kwargs.pop(_option_key(p.name)) for p in parameters.values()}
                settings["parameters"] = {n: v for n, v in given.items() if v is not None}
            for option in options_for(command):
                value = kwargs.pop(option.key)
                settings[option.key] = list(value) if option.repeatable else value
            if command == STEP:
                settings[TASK_STEP] = kwargs.pop(TASK_STEP)
            sys.exit(start_task(flow_cls, graph, settings))

        return callback

    for command in TASK_COMMANDS:
        params = []
        if command == STEP:
            params.append(click.Argument([TASK_STEP], metavar="STEP"))
        params += [_click_option(option) for option in options_for(command)]
        if command == INIT:
            params += [_parameter_option(param) for param in parameters.values()]
        cli.add_command(
            click.Command(
                command,
                callback=task_starter(command),
                params=params,
                help=COMMAND_HELP[command],
            )
        )
    inspect_cmds.add_inspection_commands(cli, flow_name)
    from .deploy_cmds import add_deploy_commands  # argo-workflows create|trigger

    add_deploy_commands(cli, flow_cls, graph)
    return cli


def _click_option(option: Option) -> click.Option:
    """A click option from the table (its default read from the environment when run)."""
    import click
    from click.core import ParameterSource

    callback = None
    help_text = option.help
    if option.env:  # the table's default unless the environment gives one

        def callback(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
            if ctx.get_parameter_source(param.name) is ParameterSource.DEFAULT:
                return env_default(option)  # a FlowbookError names the variable
            return value

        help_text += f" (default from ${option.env[0]} if set)"
    if option.is_flag:
        return click.Option(
            [f"{option.name}/{option.negative}", option.key],
            default=option.default,
            help=help_text,
            hidden=option.hidden,
            callback=callback,
        )
    return click.Option(
        [option.name, option.key],
        type=click.INT if option.kind is int else click.STRING,
        multiple=option.repeatable,
        default=() if option.repeatable else option.default,
        show_default=option.default is not None,
        metavar=option.metavar,
        help=help_text,
        hidden=option.hidden,
        callback=callback,
    )


_PARAMETER_TEXT: list[type] = []


def _parameter_text(param: Parameter) -> click.ParamType:
    """A parameter's value as given: converted later by :mod:`flowbook.parameters`,
    with the same errors as the fast reading gets; named by the parameter's type.
    (The class is made on first use: click is not imported with this module.)"""
    if not _PARAMETER_TEXT:
        import click

        class ParameterText(click.ParamType):
            def __init__(self, param: Parameter) -> None:
                if param.is_file:
                    self.name = "file"
                elif param.type is JSONType:
                    self.name = "json"
                else:
                    self.name = {int: "integer", float: "float", bool: "boolean", str: "text"}.get(
                        param.type, param.type_name
                    )

            def convert(self, value: Any, param: Any, ctx: Any) -> Any:
                return value

        _PARAMETER_TEXT.append(ParameterText)
    return _PARAMETER_TEXT[0](param)


def _parameter_option(param: Parameter) -> click.Option:
    import click

    notes = []
    if param.required:
        notes.append("required")
    if param.default is not None and not callable(param.default) and param.show_default:
        notes.append(f"default: {param.default!r}")
    help_text = param.help + (f"  [{'; '.join(notes)}]" if notes else "")
    return click.Option(
        [f"--{param.name}", _option_key(param.name)],
        type=_parameter_text(param),
        default=None,
        help=help_text.strip(),
    )


def _option_key(name: str) -> str:
    return "param_" + name.replace("-", "_")


def run_click_cli(flow_cls: type, graph: FlowGraph | None, args: list[str]) -> None:
    """Run the full command line (see :func:`flowbook.cli.entry.main`); never returns.

    A plain ``init``/``step``/``mark-failed`` is read and run before click is imported
    (:func:`flowbook.cli.task_cmds.read_plain_task`)."""
    try:
        graph = graph or FlowGraph.from_flow_class(flow_cls)
        if any(word in TASK_COMMANDS for word in args):
            from .task_cmds import read_plain_task, start_task_command

            names = {p.name for p in flow_parameters(flow_cls).values()}
            settings = read_plain_task(args, names)
            if settings is not None:
                exit_process(start_task_command(flow_cls, graph, settings))
    except FlowbookError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        fail("Interrupted.")
    import click

    try:
        cli = build_cli(flow_cls, graph)
        cli.main(args=args, prog_name=os.path.basename(sys.argv[0]), standalone_mode=False)
    except FlowbookError as exc:
        fail(str(exc))
    except click.exceptions.Abort:  # click's form of Ctrl-C
        fail("Interrupted: the run was stopped.")
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        fail("Interrupted.")
    sys.exit(0)
