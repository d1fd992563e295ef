"""``python flow.py step-functions create|trigger`` (and ``flowbook step-functions ...
NOTEBOOK.ipynb``, ``%flow deploy step-functions``): see docs/step_functions.md.

``create`` compiles the flow (:mod:`flowbook.export.step_functions`), builds the code
package (:mod:`flowbook.deploy.package`, shared with Argo Workflows) and, unless
``--only-json``, uploads it to the datastore, registers the Batch job definition,
creates or updates the state machine (publishing a new version) and the EventBridge
rule of ``@schedule`` (:mod:`flowbook.deploy.aws`). ``trigger`` starts an execution
with ``{"Parameters": "<JSON text>"}`` and prints the run's id.
"""

from __future__ import annotations

import json
import os

from ..exceptions import FlowbookError
from ..export.common import DEFAULT_MAX_WORKERS
from ..graph import FlowGraph
from ..parameters import flow_parameters

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    import click

GROUP = "step-functions"
SUBCOMMANDS = ("create", "trigger")

#: setting -> (environment variable, option) of what create reads.
SETTINGS = {
    "iam_role": ("FLOWBOOK_SFN_IAM_ROLE", "--iam-role"),
    "job_queue": ("FLOWBOOK_BATCH_JOB_QUEUE", "--batch-job-queue"),
    "image": ("FLOWBOOK_IMAGE", "--image"),
    "events_role": ("FLOWBOOK_EVENTS_SFN_ACCESS_IAM_ROLE", "--events-role"),
    "dynamodb_table": ("FLOWBOOK_SFN_DYNAMO_DB_TABLE", "--dynamodb-table"),
    "job_role": ("FLOWBOOK_ECS_S3_ACCESS_IAM_ROLE", "--job-role"),
}


def setting(options: dict[str, Any], key: str, why: str | None = None) -> str | None:
    """An option's value, else its environment variable's; with ``why``, a missing
    one is refused naming both."""
    variable, option = SETTINGS[key]
    value = options.get(key) or os.environ.get(variable) or None
    if value is None and why is not None:
        raise FlowbookError(f"{why} needs {variable} (or {option}): it is not set.")
    return value


def region_name() -> str | None:
    """The AWS region boto3 would use, without importing it when the environment says."""
    found = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if found:
        return found
    try:
        import boto3
    except ImportError:
        return None
    return boto3.session.Session().region_name


def create(
    flow_cls: type,
    graph: FlowGraph,
    *,
    datastore: str | None,
    decospecs: list[str],
    flow_file: str | None = None,
    flow_source: str | None = None,
    max_workers: int = 100,
    only_json: bool = False,
    tags: list[str] | None = None,
    options: dict[str, Any] | None = None,
    echo: Any = print,
) -> dict[str, Any]:
    """Compile, and unless ``only_json`` upload and deploy; the definition."""
    from ..deploy.package import build_package, upload_package
    from ..export import step_functions as sfn
    from ..names import check
    from .deploy_cmds import shared_datastore

    options = dict(options or {})
    datastore = shared_datastore(datastore, "AWS Step Functions", "Batch job")
    for tag in tags or []:
        check(tag.replace(":", "-").replace(".", "-"), "tag")
    creating = None if only_json else "step-functions create"
    job_queue = setting(options, "job_queue", "step-functions create")
    table = setting(options, "dynamodb_table")
    if sfn.has_foreach(graph):
        table = setting(options, "dynamodb_table", f"Flow {graph.name} has a foreach, which")
    role = setting(options, "iam_role", creating)
    image = setting(options, "image", creating)
    expression = sfn.schedule_expression(flow_cls)  # a bad cron is refused here
    events_role = setting(
        options, "events_role", f"@schedule on {graph.name}" if expression and creating else None
    )
    region = region_name()
    package = build_package(graph.name, flow_file=flow_file, flow_source=flow_source)
    token = sfn.production_token(graph.name, region or "", datastore)
    settings = sfn.SfnSettings(
        datastore=datastore,
        package_key=package.key,
        package_sha=package.sha,
        job_queue=job_queue,  # type: ignore[arg-type]
        job_definition=sfn.job_definition_name(graph.name),
        dynamodb_table=table,
        max_workers=max_workers,
        decospecs=decospecs,
        tags=[f"production:{token}", *(tags or [])],
        region=region,
    )
    definition = sfn.state_machine(flow_cls, graph, settings)
    if only_json:
        echo(json.dumps(definition, indent=2))
        return definition
    from ..deploy.aws import AwsApi

    api = AwsApi(region)
    upload_package(package, datastore)
    api.ensure_job_definition(settings.job_definition, image, setting(options, "job_role"))  # type: ignore[arg-type]
    name = sfn.state_machine_name(graph.name)
    arn, version, created = api.put_state_machine(
        name,
        json.dumps(definition),
        role,  # type: ignore[arg-type]
        f"code package {package.sha[:12]}",
    )
    echo(
        f"State machine {name} {'created' if created else 'updated'} (flow {graph.name}, "
        f"code package {package.sha[:12]}, version {version.rsplit(':', 1)[-1] or '?'}); "
        "it is the production version now."
    )
    if expression:
        api.put_schedule(name, expression, arn, events_role, sfn.SCHEDULE_INPUT)  # type: ignore[arg-type]
        echo(f"Scheduled by EventBridge rule {name}: {expression}.")
    elif api.delete_schedule(name):
        echo(f"Removed EventBridge rule {name}: the flow has no @schedule any more.")
    echo(f"Production namespace: production:{token}")
    return definition


def trigger(flow_cls: type, graph: FlowGraph, given: dict[str, str], echo: Any = print) -> str:
    """Start an execution of the deployed state machine; the run id (``sfn-<name>``)."""
    from ..deploy.aws import AwsApi
    from ..export import step_functions as sfn

    by_name = {p.name: p for p in flow_parameters(flow_cls).values()}
    values: dict[str, Any] = {}
    for name, text in given.items():
        value = by_name[name].convert(text, graph.name)  # a ParameterError names it
        # numbers and booleans as JSON values ({"alpha": 0.5}, as the seed shows them)
        values[name] = value if isinstance(value, (bool, int, float)) else text
    api = AwsApi(region_name())
    name = sfn.state_machine_name(graph.name)
    arn = api.find_state_machine(name)
    if arn is None:
        raise FlowbookError(
            f"Flow {graph.name} is not deployed to AWS Step Functions in {api.region} (no "
            f"state machine {name}): run step-functions create first."
        )
    execution = api.start_execution(arn, sfn.execution_input(values))
    run_id = f"sfn-{execution}"
    echo(f"Execution {execution} started; its run is {graph.name}/{run_id}")
    return run_id


# ---------------------------------------------------------------------- click
def add_sfn_commands(cli: click.Group, flow_cls: type, graph: FlowGraph) -> None:
    """Add the ``step-functions`` group (create, trigger) to a flow's command line."""

    import click

    from .deploy_cmds import what_to_deploy
    from .flow_cli import _option_key, _parameter_option

    @cli.group(GROUP, help="Deploy the flow to AWS Step Functions and run it there.")
    def group() -> None:
        pass

    @group.command(help="Compile the flow to a state machine and deploy it.")
    @click.option("--max-workers", type=click.IntRange(min=1), default=DEFAULT_MAX_WORKERS, show_default=True,
                  help="How many tasks of a foreach run at once.")  # fmt: skip
    @click.option(
        "--only-json", is_flag=True, help="Print the definition as JSON; contact nothing."
    )
    @click.option(
        "--iam-role", default=None, help="The state machine's role ($FLOWBOOK_SFN_IAM_ROLE)."
    )
    @click.option("--batch-job-queue", "job_queue", default=None,
                  help="The AWS Batch job queue ($FLOWBOOK_BATCH_JOB_QUEUE).")  # fmt: skip
    @click.option("--image", default=None, help="The jobs' image, with flowbook ($FLOWBOOK_IMAGE).")
    @click.option("--events-role", default=None,
                  help="EventBridge's role to start the state machine ($FLOWBOOK_EVENTS_SFN_ACCESS_IAM_ROLE).")  # fmt: skip
    @click.option("--dynamodb-table", default=None,
                  help="The table of foreach split counts ($FLOWBOOK_SFN_DYNAMO_DB_TABLE).")  # fmt: skip
    @click.option("--job-role", default=None,
                  help="The jobs' role, for S3 and DynamoDB ($FLOWBOOK_ECS_S3_ACCESS_IAM_ROLE).")  # fmt: skip
    @click.option("--tag", "tags", multiple=True, help="A tag for every run (repeatable).")
    @click.option("--force", is_flag=True, help="Deploy a notebook despite exploration names.")
    @click.pass_context
    def create_command(ctx: click.Context, **options: Any) -> None:
        top = ctx.find_root().obj or {}
        flow_file, flow_source = what_to_deploy(graph, options["force"])
        create(
            flow_cls,
            graph,
            datastore=top.get("datastore"),
            decospecs=list(top.get("decospecs") or []),
            flow_file=flow_file,
            flow_source=flow_source,
            max_workers=options["max_workers"],
            only_json=options["only_json"],
            tags=list(options["tags"]),
            options=options,
            echo=click.echo,
        )

    create_command.name = "create"

    params: list[click.Parameter] = [
        _parameter_option(p) for p in flow_parameters(flow_cls).values()
    ]
    keys = {_option_key(p.name): p.name for p in flow_parameters(flow_cls).values()}

    def trigger_callback(**values: Any) -> None:
        given = {keys[k]: v for k, v in values.items() if v is not None}
        trigger(flow_cls, graph, given, echo=click.echo)

    group.add_command(
        click.Command(
            "trigger",
            callback=trigger_callback,
            params=params,
            help="Run the deployed flow on AWS Step Functions with these parameter values.",
        )
    )


# ---------------------------------------------------------------------- notebook
def deploy_from_session(session: Any, words: list[str], echo: Any = print) -> dict[str, Any]:
    """``%flow deploy step-functions [--only-json] [--force] [--max-workers N]
    [--datastore URL] [--with DECO] [--tag T] [--iam-role R] [--batch-job-queue Q]
    [--image I] [--events-role R] [--dynamodb-table T] [--job-role R]``."""
    from .deploy_cmds import deploy_parser, session_flow

    parser = deploy_parser(GROUP)
    for key, (_, option) in SETTINGS.items():
        parser.add_argument(option, dest=key)
    args = parser.parse_args(words)
    flow_cls, graph, datastore, flow_source = session_flow(session, args)
    return create(
        flow_cls,
        graph,
        datastore=datastore,
        decospecs=args.decospecs,
        flow_source=flow_source,
        max_workers=args.max_workers,
        only_json=args.only_json,
        tags=args.tags,
        options={key: getattr(args, key) for key in SETTINGS},
        echo=echo,
    )
