"""``python flow.py COMMAND``: the command line every FlowSpec file gets, with click.

Commands: ``check``, ``show``, ``run``, ``resume``, ``logs``, ``dump`` (and
``--help``). Top-level options come before the command, as in Metaflow:
``--datastore``, ``--quiet``, ``--with``, ``--no-pylint`` (accepted for
compatibility; flowbook runs no linter). Every error a user can cause is printed as
one line naming the flow and exits with status 1. A plain ``run`` or ``resume``
never gets here: :mod:`flowbook.cli.entry` reads those without importing click.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from ..decorators import parse_decospec
from ..exceptions import FlowbookError
from ..graph import FlowGraph
from ..parameters import flow_parameters
from . import inspect_cmds
from .entry import env_int, fail, start_run


def _env_int(name: str, default: int) -> int:
    try:
        return env_int(name, default)
    except ValueError:
        value = os.environ.get(f"FLOWBOOK_RUN_{name}") or os.environ.get(f"METAFLOW_RUN_{name}")
        raise click.BadParameter(f"FLOWBOOK_RUN_{name}={value!r} is not an integer") from None


def build_cli(flow_cls: type, graph: FlowGraph) -> click.Group:
    flow_name = flow_cls.__name__
    parameters = flow_parameters(flow_cls)

    @click.group(invoke_without_command=True, help=f"Commands of flow {flow_name}.")
    @click.option("--datastore", default=None, help="Datastore URL (default ./.flowbook).")
    @click.option("--quiet/--not-quiet", default=False, help="Show only errors.")
    @click.option("--pylint/--no-pylint", default=True, help="Accepted for Metaflow compatibility.")
    @click.option(
        "--with",
        "decospecs",
        multiple=True,
        help="Add a decorator to every step, e.g. --with retry:times=2 (repeatable).",
    )
    @click.pass_context
    def cli(
        ctx: click.Context,
        datastore: str | None,
        quiet: bool,
        pylint: bool,
        decospecs: tuple[str, ...],
    ) -> None:
        ctx.obj = {"datastore": datastore, "quiet": quiet}
        if decospecs:
            graph.apply_decospecs([parse_decospec(text) for text in decospecs])
        if ctx.invoked_subcommand is None:
            click.echo(f"Flow {flow_name}: the graph looks good ({len(graph.nodes)} steps).")
            click.echo(ctx.get_help())

    @cli.command(help="Validate the flow's graph without running anything.")
    def check() -> None:
        click.echo(f"Flow {flow_name}: the graph looks good ({len(graph.nodes)} steps).")

    @cli.command(help="Show the flow's steps, their docstrings and transitions.")
    def show() -> None:
        if flow_cls.__doc__:
            click.echo(flow_cls.__doc__.strip() + "\n")
        click.echo(graph.describe(), nl=False)

    def start(kwargs: dict[str, Any], resume: bool) -> None:
        ctx = click.get_current_context()
        given = {p.name: kwargs.pop(_option_key(p.name)) for p in parameters.values()}
        settings = dict(
            kwargs,
            command="resume" if resume else "run",
            parameters={name: value for name, value in given.items() if value is not None},
            datastore=ctx.obj["datastore"],
            quiet=ctx.obj["quiet"],
            decospecs=[],  # applied by the group callback
            step=kwargs.get("step_to_rerun"),
        )
        if not start_run(flow_cls, graph, settings):
            sys.exit(1)

    common = [
        click.Option(
            ["--max-workers"],
            type=int,
            default=lambda: _env_int("MAX_WORKERS", 16),
            show_default="16",
            help="How many tasks run at once.",
        ),
        click.Option(
            ["--max-num-splits"],
            type=int,
            default=lambda: _env_int("MAX_NUM_SPLITS", 100),
            show_default="100",
            help="The most splits one foreach may make.",
        ),
        click.Option(["--tag", "tags"], multiple=True, help="A tag for the run (repeatable)."),
        click.Option(["--run-id-file"], default=None, hidden=True),
    ]
    for param in parameters.values():
        common.append(
            click.Option(
                [f"--{param.name}", _option_key(param.name)],
                type=str,
                default=None,
                help=(param.help or "")
                + f" [{param.type_name}"
                + (", required" if param.required else "")
                + (
                    f", default: {param.default!r}"
                    if param.default is not None and not callable(param.default)
                    else ""
                )
                + "]",
            )
        )
    cli.add_command(
        click.Command(
            "run",
            callback=lambda **kwargs: start(kwargs, resume=False),
            params=list(common),
            help="Run the flow.",
        )
    )
    cli.add_command(
        click.Command(
            "resume",
            callback=lambda **kwargs: start(kwargs, resume=True),
            params=[
                click.Argument(["step_to_rerun"], required=False),
                click.Option(
                    ["--origin-run-id"],
                    default=None,
                    help="The run to resume (default: your latest run of this flow).",
                ),
                *common,
            ],
            help="Run again from STEP (default: the failed steps), reusing the "
            "successful tasks of an earlier run.",
        )
    )
    inspect_cmds.add_inspection_commands(cli, flow_name)
    return cli


def _option_key(name: str) -> str:
    return "param_" + name.replace("-", "_")


def run_click_cli(flow_cls: type, graph: FlowGraph | None, args: list[str]) -> None:
    """Run the full command line (see :func:`flowbook.cli.entry.main`); never returns."""
    try:
        graph = graph or FlowGraph.from_flow_class(flow_cls)
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
