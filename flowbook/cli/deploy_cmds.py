"""``python flow.py argo-workflows create|trigger`` (and ``flowbook argo-workflows ...
NOTEBOOK.ipynb``, ``%flow deploy argo-workflows``): see docs/argo.md.

``create`` compiles the flow (:mod:`flowbook.export.argo`), builds the code package
(:mod:`flowbook.deploy.package`) and, unless ``--only-json``, uploads the package to
the datastore and creates or updates the WorkflowTemplate (and the CronWorkflow of
``@schedule``) through the Kubernetes API. ``trigger`` submits a Workflow from the
template with parameter values checked first, and prints the run's id.
"""

from __future__ import annotations

import json
import os
import sys

from ..exceptions import FlowbookError
from ..export.common import DEFAULT_MAX_WORKERS
from ..graph import FlowGraph
from ..parameters import flow_parameters

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, NoReturn

    import click

GROUP = "argo-workflows"
#: The subcommands of GROUP, which the ``flowbook`` program reads before FILE.
SUBCOMMANDS = ("create", "trigger")


def shared_datastore(
    url: str | None, orchestrator: str = "Argo Workflows", worker: str = "pod"
) -> str:
    """The datastore URL every pod (Batch job) can reach; FlowbookError for a local one."""
    url = url or os.environ.get("FLOWBOOK_DATASTORE") or ""
    scheme = url.partition("://")[0] if "://" in url else ""
    if not scheme or scheme in ("file", "memory"):
        shown = url or "the default ./.flowbook"
        raise FlowbookError(
            f"{orchestrator} needs a datastore every {worker} can reach, not {shown}: use "
            "--datastore s3://BUCKET/PREFIX (or set FLOWBOOK_DATASTORE)."
        )
    return url


def default_namespace() -> str:
    return os.environ.get("FLOWBOOK_ARGO_NAMESPACE") or "default"


def default_image() -> str:
    version = sys.version_info
    return os.environ.get("FLOWBOOK_ARGO_IMAGE") or f"python:{version.major}.{version.minor}"


def notebook_blockers(source: Any) -> list[str]:
    """Names step cells use that neither setup cells, parameters nor builtins define:
    an exploration cell's names, which a pod would not have."""
    from ..notebook.builder import global_names_used, names_defined, step_node

    defined: set[str] = set(source.parameters)
    for code in source.setup:
        defined |= names_defined(code)
    found = []
    for cell in source.steps.values():
        _, tree = step_node(cell, source.flow_name)
        for name in sorted(global_names_used(tree) - defined):
            found.append(
                f"step '{cell.name}' uses '{name}', which no %%setup cell defines (an "
                "exploration cell's name never reaches the deployed flow)"
            )
    return found


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
    image: str | None = None,
    namespace: str | None = None,
    tags: list[str] | None = None,
    echo: Any = print,
) -> list[dict]:
    """Compile, and unless ``only_json`` upload and apply; the documents."""
    from ..deploy.package import build_package, upload_package
    from ..export import argo
    from ..identity import current_user
    from ..names import check

    datastore = shared_datastore(datastore)
    namespace = namespace or default_namespace()
    for tag in tags or []:
        check(tag.replace(":", "-").replace(".", "-"), "tag")
    package = build_package(graph.name, flow_file=flow_file, flow_source=flow_source)
    token = argo.production_token(graph.name, namespace, datastore)
    settings = argo.ArgoSettings(
        datastore=datastore,
        package_key=package.key,
        package_sha=package.sha,
        image=image or default_image(),
        namespace=namespace,
        max_workers=max_workers,
        decospecs=decospecs,
        tags=[f"production:{token}", *(tags or [])],
        deployer=current_user(),
    )
    template = argo.workflow_template(flow_cls, graph, settings)
    cron = argo.cron_workflow(flow_cls, graph, settings)
    documents = [template] + ([cron] if cron else [])
    if only_json:
        for document in documents:
            echo(json.dumps(document))
        return documents
    from ..deploy.kubernetes import ArgoApi

    api = ArgoApi(namespace)
    upload_package(package, datastore)
    done = api.apply(template)
    name = template["metadata"]["name"]
    echo(
        f"Workflow template {name} {done} in namespace {namespace} (flow {graph.name}, "
        f"code package {package.sha[:12]}); it is the production version now."
    )
    cron_name = argo.cron_name_of(graph.name)
    if cron:
        api.apply(cron)
        echo(f"Scheduled as CronWorkflow {cron_name}: {cron['spec']['schedules'][0]}.")
    elif api.delete("CronWorkflow", cron_name):
        echo(f"Removed CronWorkflow {cron_name}: the flow has no @schedule any more.")
    echo(f"Production namespace: production:{token}")
    return documents


def trigger(
    flow_cls: type,
    graph: FlowGraph,
    given: dict[str, str],
    namespace: str | None = None,
    echo: Any = print,
) -> str:
    """Submit a Workflow from the deployed template; the run id (``argo-<name>``)."""
    from ..deploy.kubernetes import ArgoApi
    from ..export import argo

    parameters = flow_parameters(flow_cls)
    by_name = {p.name: p for p in parameters.values()}
    for name, text in given.items():
        by_name[name].convert(text, graph.name)  # a ParameterError names it
    namespace = namespace or default_namespace()
    api = ArgoApi(namespace)
    name = argo.template_name_of(graph.name)
    if api.read("WorkflowTemplate", name) is None:
        raise FlowbookError(
            f"Flow {graph.name} is not deployed to Argo Workflows in namespace {namespace} "
            f"(no WorkflowTemplate {name}): run argo-workflows create first."
        )
    created = api.submit(argo.submitted_workflow(graph.name, namespace, given))
    workflow = created["metadata"]["name"]
    run_id = f"argo-{workflow}"
    echo(f"Workflow {workflow} submitted; its run is {graph.name}/{run_id}")
    return run_id


# ---------------------------------------------------------------------- click
def add_deploy_commands(cli: click.Group, flow_cls: type, graph: FlowGraph) -> None:
    """Add the ``argo-workflows`` group (create, trigger) to a flow's command line,
    and the ``step-functions`` group (cli/sfn_cmds.py)."""
    import click

    from .sfn_cmds import add_sfn_commands

    add_sfn_commands(cli, flow_cls, graph)

    from .flow_cli import _option_key, _parameter_option

    @cli.group(GROUP, help="Deploy the flow to Argo Workflows and run it there.")
    def group() -> None:
        pass

    @group.command(help="Compile the flow to a WorkflowTemplate and deploy it.")
    @click.option("--max-workers", type=click.IntRange(min=1), default=DEFAULT_MAX_WORKERS, show_default=True,
                  help="How many tasks run at once in a workflow.")  # fmt: skip
    @click.option("--only-json", is_flag=True, help="Print the documents as JSON; contact nothing.")
    @click.option("--image", default=None, help="The container image (with flowbook installed).")
    @click.option("--namespace", default=None, help="The Kubernetes namespace.")
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
            image=options["image"],
            namespace=options["namespace"],
            tags=list(options["tags"]),
            echo=click.echo,
        )

    create_command.name = "create"

    params = [_parameter_option(p) for p in flow_parameters(flow_cls).values()]
    keys = {_option_key(p.name): p.name for p in flow_parameters(flow_cls).values()}

    def trigger_callback(namespace: str | None, **values: Any) -> None:
        given = {keys[k]: v for k, v in values.items() if v is not None}
        trigger(flow_cls, graph, given, namespace=namespace, echo=click.echo)

    group.add_command(
        click.Command(
            "trigger",
            callback=trigger_callback,
            params=[
                click.Option(["--namespace"], default=None, help="The Kubernetes namespace."),
                *params,
            ],
            help="Run the deployed flow on Argo Workflows with these parameter values.",
        )
    )


# ---------------------------------------------------------------------- notebook
def deploy_from_session(session: Any, words: list[str], echo: Any = print) -> list[dict]:
    """``%flow deploy argo-workflows [--only-json] [--force] [--max-workers N]
    [--image I] [--namespace NS] [--tag T] [--datastore URL]``."""
    if words and words[0] == "step-functions":
        from .sfn_cmds import deploy_from_session as deploy_to_step_functions

        return [deploy_to_step_functions(session, words, echo)]

    parser = deploy_parser(GROUP)
    parser.add_argument("--image")
    parser.add_argument("--namespace")
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
        image=args.image,
        namespace=args.namespace,
        tags=args.tags,
        echo=echo,
    )


# ---------------------------------------------------------------------- shared by the targets
def what_to_deploy(graph: FlowGraph, force: bool) -> tuple[str | None, str | None]:
    """(flow file, flow source) of the command line's flow: the file itself, or a
    notebook's exported flow, refused while a step uses a name only an exploration cell
    defines (unless ``force``)."""
    path = sys.argv[0] if sys.argv else ""
    if not path.endswith(".ipynb"):
        return path, None
    from ..export.flowfile import flow_file_source
    from ..notebook.cells import read_notebook

    source = read_notebook(path, flow_name=graph.name)
    blockers = notebook_blockers(source)
    if blockers and not force:
        raise FlowbookError(
            f"Not deploying notebook {path}: {blockers[0]}; define it in a %%setup "
            "cell or give --force."
        )
    return None, flow_file_source(source)


def deploy_parser(target: str) -> Any:
    """The argument parser of ``%flow deploy TARGET`` with the options every target
    takes; a bad argument is a one-line FlowbookError."""
    import argparse

    class Parser(argparse.ArgumentParser):
        def error(self, message: str) -> NoReturn:
            raise FlowbookError(f"%flow deploy: {message}")

    parser = Parser(prog="%flow deploy", add_help=False)
    parser.add_argument("target", choices=[target])
    parser.add_argument("--only-json", action="store_true")
    parser.add_argument("--force", action="store_true")
    parser.add_argument("--max-workers", type=int, default=DEFAULT_MAX_WORKERS)
    parser.add_argument("--datastore")
    parser.add_argument("--with", dest="decospecs", action="append", default=[])
    parser.add_argument("--tag", dest="tags", action="append", default=[])
    return parser


def session_flow(session: Any, args: Any) -> tuple[type, FlowGraph, str | None, str]:
    """(flow class, graph with ``--with``, datastore URL, exported source) of a kernel
    session's flow for ``%flow deploy``; refused while a step uses a name only an
    exploration cell defines (unless ``--force``)."""
    from ..export.flowfile import flow_file_source
    from ..notebook.builder import build_flow

    source = session.source()
    warnings = [w for cell in source.steps.values() for w in session.exploration_warnings(cell)]
    if warnings and not args.force:
        raise FlowbookError(f"Not deploying: {warnings[0]} (or give --force)")
    flow_cls, graph = build_flow(source)
    if args.decospecs:
        from ..decorators import parse_decospec

        graph.apply_decospecs([parse_decospec(text) for text in args.decospecs])
    datastore = args.datastore or os.environ.get("FLOWBOOK_DATASTORE")
    if not datastore and getattr(session, "_datastore", None) is not None:
        datastore = session.datastore.url
    return flow_cls, graph, datastore, flow_file_source(source)
