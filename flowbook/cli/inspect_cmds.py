"""``logs``, ``dump`` and ``explain``: print what a past run stored, addressed by
``RUN/STEP[/TASK]`` (``explain``: by ``RUN``).

Each part of the pathspec is checked against flowbook's grammar (names.py) before
anything is read. ``logs`` needs no task record, so it prints the output of a task
whose record is corrupt; ``dump`` prints every task it can read, names each record
it cannot (on stderr), and then exits 1.
"""

from __future__ import annotations

import click

from ..exceptions import ClientError, CorruptRecordError, FlowbookError, InvalidNameError
from ..names import check, shown

_FORM = "RUN_ID/STEP[/TASK_ID]"


def check_task_pathspec(flow_name: str, pathspec: str, command: str) -> list[str]:
    """The parts of a ``RUN_ID/STEP[/TASK_ID]`` pathspec given to ``command``, checked."""
    parts = pathspec.strip("/").split("/")
    if len(parts) not in (2, 3):
        raise InvalidNameError(
            f"Flow {flow_name}: {command} {shown(pathspec)} is not a pathspec of the form {_FORM}."
        )
    labels = ("run id", "step name", "task id")
    for label, part in zip(labels, parts, strict=False):
        try:
            check(part, label, leading_underscore=label == "step name")
        except InvalidNameError as exc:
            raise InvalidNameError(
                f"Flow {flow_name}: {command} {shown(pathspec)}: {exc}"
            ) from None
    return parts


def _tasks(flow_name: str, pathspec: str, datastore: str | None, command: str) -> list:
    from .. import client

    parts = check_task_pathspec(flow_name, pathspec, command)
    try:
        step = client.Step(
            f"{flow_name}/{parts[0]}/{parts[1]}", datastore=datastore or None, namespace=None
        )
        return [step[parts[2]]] if len(parts) == 3 else list(step)
    except ClientError as exc:
        raise FlowbookError(str(exc)) from None


def short_repr(value: object, limit: int = 80) -> str:
    try:
        text = repr(value)
    except Exception as exc:  # a user's __repr__ may fail
        text = f"<unprintable: {type(exc).__name__}>"
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def add_inspection_commands(cli: click.Group, flow_name: str) -> None:
    @cli.command(help="Print the stored output of a task: RUN_ID/STEP[/TASK_ID].")
    @click.argument("pathspec")
    @click.option("--stderr", "show_stderr", is_flag=True, help="Print stderr instead.")
    @click.pass_context
    def logs(ctx: click.Context, pathspec: str, show_stderr: bool) -> None:
        tasks = _tasks(flow_name, pathspec, ctx.obj["datastore"], "logs")
        for task in tasks:
            text = task.stderr if show_stderr else task.stdout
            if len(tasks) > 1:
                click.echo(f"--- {task.pathspec} ---")
            click.echo(text, nl=False)

    @cli.command(help="Print the artifacts of a task: RUN_ID/STEP[/TASK_ID].")
    @click.argument("pathspec")
    @click.pass_context
    def dump(ctx: click.Context, pathspec: str) -> None:
        tasks = _tasks(flow_name, pathspec, ctx.obj["datastore"], "dump")
        unreadable = 0
        for task in tasks:
            try:
                successful = task.successful
            except CorruptRecordError as exc:
                unreadable += 1
                click.echo(f"{task.pathspec}: {exc}", err=True)
                continue
            click.echo(f"{task.pathspec} ({'successful' if successful else 'not successful'})")
            artifacts = sorted(task, key=lambda a: a.id)
            width = max((len(a.id) for a in artifacts), default=0)
            type_width = max((len(a.type) for a in artifacts), default=0)
            for artifact in artifacts:
                value = short_repr(artifact.data)
                click.echo(f"  {artifact.id:<{width}}  {artifact.type:<{type_width}}  {value}")
        if unreadable:
            raise FlowbookError(
                f"Flow {flow_name}: {unreadable} of {len(tasks)} task(s) of {pathspec} have "
                "a corrupt record (named above)."
            )

    @cli.command(
        help="Print, for every task of a run, whether it was reused or ran and why "
        "(see --reuse). RUN_ID defaults to the latest run."
    )
    @click.argument("run_id", required=False)
    @click.pass_context
    def explain(ctx: click.Context, run_id: str | None) -> None:
        from .. import client

        try:
            if run_id is None:
                run = client.Flow(
                    flow_name, datastore=ctx.obj["datastore"] or None, namespace=None
                ).latest_run
                if run is None:
                    raise FlowbookError(f"Flow {flow_name} has no run to explain.")
            else:
                check(run_id, "run id")
                run = client.Run(
                    f"{flow_name}/{run_id}", datastore=ctx.obj["datastore"] or None, namespace=None
                )
            click.echo(f"Run {run.pathspec}:")
            for line in run.explain():
                click.echo(f"  {line}")
        except ClientError as exc:
            raise FlowbookError(str(exc)) from None
