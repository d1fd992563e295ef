"""``python flow.py COMMAND``: the command line every FlowSpec file gets.

Commands: ``check``, ``show``, ``run``, ``logs``, ``dump`` (and ``help``). Top-level
options come before the command, as in Metaflow: ``--datastore``, ``--quiet``,
``--no-pylint`` (accepted for compatibility; flowbook runs no linter). Every error a
user can cause is printed as one line naming the flow and exits with status 1.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from ..decorators import parse_decospec
from ..exceptions import FlowbookError
from ..graph import FlowGraph
from ..parameters import convert_given, flow_parameters, resolve_parameters
from . import inspect_cmds


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(f"FLOWBOOK_RUN_{name}") or os.environ.get(f"METAFLOW_RUN_{name}")
    try:
        return int(value) if value else default
    except ValueError:
        raise click.BadParameter(f"FLOWBOOK_RUN_{name}={value!r} is not an integer") from None


def fail(message: str) -> None:
    click.secho(message, fg="red", err=True)
    sys.exit(1)


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
        from ..runtime.console import Console
        from ..runtime.launch import run_flow

        given = {p.name: kwargs.pop(_option_key(p.name)) for p in parameters.values()}
        given = {name: value for name, value in given.items() if value is not None}
        if resume:  # only the values given now, checked against the origin run's
            values = convert_given(flow_name, parameters, given)
        else:
            values = resolve_parameters(flow_name, parameters, given)
        outcome = run_flow(
            flow_cls,
            graph,
            values,
            datastore_url=ctx.obj["datastore"],
            max_workers=kwargs["max_workers"],
            max_num_splits=kwargs["max_num_splits"],
            tags=list(kwargs["tags"]),
            console=Console(quiet=ctx.obj["quiet"]),
            resume=resume,
            origin_run_id=kwargs.get("origin_run_id"),
            resume_step=kwargs.get("step_to_rerun"),
            run_id_file=kwargs.get("run_id_file"),
        )
        if not outcome.successful:
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


def main(flow_cls: type, args: list[str] | None = None, graph: FlowGraph | None = None) -> None:
    """Validate the flow, then run the command line; never returns.

    ``graph`` is given when the class's source is not readable here (a flow class
    defined in a notebook and sent to a subprocess by NBRunner).
    """
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
