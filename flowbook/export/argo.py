"""A flow compiled to Argo Workflows documents: a WorkflowTemplate, a CronWorkflow
when the flow has ``@schedule``, and the Workflow ``trigger`` submits.

Pure functions of the flow class, its graph (with ``--with`` decorators applied)
and :class:`ArgoSettings`: nothing here reads the environment or the network.

The shape (see docs/argo.md):

- one container template per step, running ``python -m flowbook.deploy.pod`` (fetch
  the code package) and then ``python flow.py step STEP ...`` (docs/one_task.md),
  every value one argument of an argv list (no shell);
- the ``init`` template creates the run and its parameters task from the workflow's
  parameters, given as ``FLOWBOOK_RUN_<NAME>`` environment variables;
- the ``dag`` template: one task per step, ``dependencies`` as in the flow; a static
  split's branches are parallel tasks; a foreach is a task fanning out with
  ``withParam`` over the foreach task's ``splits`` output into a nested DAG template
  holding the foreach's body, each split receiving its ``split-index``; a foreach's
  join reads the task ids of the body's last tasks (``--foreach-join``);
- task ids are deterministic within a workflow (the step's name, and inside a
  foreach its split path such as ``2-0``), so a retried pod reuses its task id;
- the run id is ``argo-<workflow name>``; ``onExit`` runs ``mark-failed``.
"""

from __future__ import annotations

import json
import math

from ..decorators import step_settings
from ..deploy.naming import (
    MAX_CRON_NAME,
    resource_name,
    short_hash,
    step_template_names,
)
from ..deploy.schedule import schedule_cron, schedule_of
from ..exceptions import FlowbookError
from ..graph import FlowGraph
from ..parameters import JSONType, flow_parameters, parameter_env_name
from .common import DEFAULT_MAX_WORKERS, DeploySettings, parameter_text

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

API_VERSION = "argoproj.io/v1alpha1"
#: Where a task writes its outputs (``FLOWBOOK_OUTPUT_DIR``) in its container.
OUTPUT_DIR = "/mnt/out"
#: The run id every task of a workflow uses.
RUN_ID = "argo-{{workflow.name}}"
#: The parameters task's id.
PARAMETERS_TASK = "params"
#: The user name runs on Argo record.
ARGO_USER = "argo-workflows"
DEFAULT_IMAGE = "python:3.11"
LABEL = "flowbook.io/flow"


class ArgoSettings(DeploySettings):
    """What an Argo deployment needs besides the flow: the shared settings, plus the
    container image, the Kubernetes namespace and who deployed it."""

    def __init__(
        self,
        datastore: str,
        package_key: str,
        package_sha: str,
        image: str = DEFAULT_IMAGE,
        namespace: str = "default",
        max_workers: int = DEFAULT_MAX_WORKERS,
        decospecs: list[str] | None = None,
        tags: list[str] | None = None,
        deployer: str = "unknown",
        env: dict[str, str] | None = None,
    ) -> None:
        super().__init__(datastore, package_key, package_sha, max_workers, decospecs, tags, env)
        self.image = image
        self.namespace = namespace
        self.deployer = deployer


def template_name_of(flow_name: str) -> str:
    """The WorkflowTemplate's name: the flow's name as a DNS-1123 name."""
    return resource_name(flow_name)


def cron_name_of(flow_name: str) -> str:
    return resource_name(flow_name, MAX_CRON_NAME)


def production_token(flow_name: str, namespace: str, datastore: str) -> str:
    """The production namespace's token: the same for every create of one flow in one
    Kubernetes namespace and datastore, so each new version stays in it."""
    return f"{template_name_of(flow_name)}-{short_hash(f'{namespace}|{datastore}|{flow_name}')}"


# ---------------------------------------------------------------------- parameters
def workflow_parameters(flow_cls: type) -> list[dict[str, Any]]:
    """``spec.arguments.parameters``: every parameter with its default (a deploy-time
    function called now, once), checked by the parameter's own conversion."""
    found = []
    for param in flow_parameters(flow_cls).values():
        if param.is_file:
            raise FlowbookError(
                f"Flow {flow_cls.__name__}: IncludeFile '{param.name}' cannot be deployed "
                "to Argo Workflows yet (its file would have to be uploaded); use a "
                "Parameter holding the content or a path in the datastore."
            )
        entry: dict[str, Any] = {"name": param.name}
        if param.help:
            entry["description"] = param.help
        default = param.resolve_default(flow_cls.__name__)
        if default is not None:
            param.convert(default, flow_cls.__name__)  # refused now, not in a pod
            entry["value"] = parameter_text(default, param.type is JSONType)
        elif not param.required:
            entry["value"] = ""
        found.append(entry)
    return found


# ---------------------------------------------------------------------- templates
class _Compiler:
    def __init__(self, flow_cls: type, graph: FlowGraph, settings: ArgoSettings) -> None:
        self.flow_cls = flow_cls
        self.graph = graph
        self.settings = settings
        self.names = step_template_names(list(graph.nodes))
        self.templates: list[dict[str, Any]] = []
        self.used: dict[str, str] = {}
        self._parameters: list[dict[str, Any]] = []

    def claim(self, name: str, what: str) -> str:
        """Reserve a template name; refuse one that two things would take."""
        if name in self.used:
            raise FlowbookError(
                f"Flow {self.graph.name}: {what} and {self.used[name]} both become the "
                f"Argo template name '{name}'; rename the step."
            )
        self.used[name] = what
        return name

    # -------------------------------------------------------------- containers
    def pod_command(self, flow_args: list[str], own: list[str] | None = None) -> list[str]:
        s = self.settings
        return [
            "python",
            "-m",
            "flowbook.deploy.pod",
            "--datastore",
            s.datastore,
            "--package",
            s.package_key,
            "--sha",
            s.package_sha,
            *(own or []),
            "--",
            "--datastore",
            s.datastore,
            *[word for spec in s.decospecs for word in ("--with", spec)],
            *flow_args,
        ]

    def container(self, command: list[str], env: list[dict] | None = None) -> dict[str, Any]:
        base_env = [
            {"name": "FLOWBOOK_OUTPUT_DIR", "value": OUTPUT_DIR},
            {"name": "FLOWBOOK_USER", "value": ARGO_USER},
            {"name": "PYTHONUNBUFFERED", "value": "1"},
        ]
        base_env += [{"name": k, "value": v} for k, v in sorted(self.settings.env.items())]
        return {
            "name": "main",
            "image": self.settings.image,
            "command": command[:1],
            "args": command[1:],
            "env": base_env + list(env or []),
            "volumeMounts": [{"name": "out", "mountPath": OUTPUT_DIR}],
        }

    @staticmethod
    def output(name: str, file: str) -> dict[str, Any]:
        return {"name": name, "valueFrom": {"path": f"{OUTPUT_DIR}/{file}"}}

    def step_template(self, step: str) -> dict[str, Any]:
        node = self.graph[step]
        settings = step_settings(node.decorators, step)
        retries = settings["max_attempts"] - 1
        inputs = [{"name": "task-id"}]
        flow_args = ["step", step, "--run-id", RUN_ID, "--task-id", "{{inputs.parameters.task-id}}"]
        own: list[str] = []
        parent = self.graph[node.in_funcs[0]] if len(node.in_funcs) == 1 else None
        if self.is_foreach_join(node):
            inputs.append({"name": "foreach-outputs"})
            own = ["--foreach-join", f"{RUN_ID}/{node.in_funcs[0]}"]
            own.append("{{inputs.parameters.foreach-outputs}}")
        else:
            inputs.append({"name": "input-paths"})
            flow_args += ["--input-paths", "{{inputs.parameters.input-paths}}"]
        if parent is not None and parent.foreach is not None:
            inputs.append({"name": "split-index"})
            flow_args += ["--split-index", "{{inputs.parameters.split-index}}"]
        if retries > 0:
            flow_args += ["--retry-count", "{{retries}}"]
        flow_args += ["--max-user-code-retries", str(retries)]
        outputs = [self.output("task-id", "task_id")]
        if node.foreach is not None:
            outputs += [
                self.output("splits", "splits"),
                self.output("split-cardinality", "split_cardinality"),
            ]
        container = self.container(self.pod_command(flow_args, own))
        resources = self.resources(node)
        if resources:
            container["resources"] = resources
        template: dict[str, Any] = {
            "name": self.claim(self.names[step], f"step '{step}'"),
            "inputs": {"parameters": inputs},
            "outputs": {"parameters": outputs},
            "metadata": {"labels": {"flowbook.io/step": self.names[step]}},
            "container": container,
        }
        retry = self.retry_strategy(retries, settings["retry_delay"])
        if retry:
            template["retryStrategy"] = retry
        if settings["timeout"]:
            template["activeDeadlineSeconds"] = int(math.ceil(settings["timeout"]))
        return template

    def is_foreach_join(self, node: Any) -> bool:
        if not node.is_join or len(node.in_funcs) != 1:
            return False
        return any(
            n.foreach is not None and n.matching_join == node.name
            for n in self.graph.nodes.values()
        )

    @staticmethod
    def retry_strategy(retries: int, delay_seconds: float) -> dict[str, Any] | None:
        if retries <= 0:
            return None
        strategy: dict[str, Any] = {"limit": retries, "retryPolicy": "Always"}
        if delay_seconds > 0:
            strategy["backoff"] = {"duration": f"{int(math.ceil(delay_seconds))}s"}
        return strategy

    def resources(self, node: Any) -> dict[str, Any]:
        spec = next((d for d in node.decorators if d.name == "resources"), None)
        if spec is None:
            return {}
        attrs = spec.attributes
        requests: dict[str, str] = {}
        limits: dict[str, str] = {}
        try:
            if attrs.get("cpu") is not None:
                requests["cpu"] = _quantity(attrs["cpu"])
            if attrs.get("memory") is not None:
                requests["memory"] = f"{int(float(attrs['memory']))}M"
            if attrs.get("disk") is not None:
                requests["ephemeral-storage"] = f"{int(float(attrs['disk']))}M"
            if attrs.get("gpu"):
                limits["nvidia.com/gpu"] = str(int(attrs["gpu"]))
        except (TypeError, ValueError):
            raise FlowbookError(
                f"@resources on step '{node.name}' has an invalid value: {attrs}."
            ) from None
        found: dict[str, Any] = {"requests": requests}
        if limits:
            found["limits"] = limits
        return found

    def init_template(self) -> dict[str, Any]:
        env = [
            {
                "name": parameter_env_name(p["name"]),
                "value": f"{{{{workflow.parameters.{p['name']}}}}}",
            }
            for p in self._parameters
        ]
        tags = [word for tag in self.settings.tags for word in ("--tag", tag)]
        command = self.pod_command(
            ["init", "--run-id", RUN_ID, "--task-id", PARAMETERS_TASK, *tags]
        )
        return {
            "name": self.claim("init", "the parameters task"),
            "container": self.container(command, env),
            "retryStrategy": {"limit": 2, "retryPolicy": "Always"},
        }

    def exit_template(self) -> dict[str, Any]:
        command = self.pod_command(
            [
                "mark-failed",
                "--run-id",
                RUN_ID,
                "--reason",
                "Argo workflow {{workflow.name}} ended: {{workflow.status}}",
            ]
        )
        return {
            "name": self.claim("exit-handler", "the exit handler"),
            "container": self.container(command),
        }

    # -------------------------------------------------------------- the DAG
    def task_id(self, step: str, in_foreach: bool) -> str:
        name = self.names[step]
        return f"{name}-{{{{inputs.parameters.split-path}}}}" if in_foreach else name

    def walk(
        self,
        step: str,
        in_args: dict[str, str],
        deps: list[str],
        stop_at: str | None,
        tasks: list[dict[str, Any]],
        in_foreach: bool,
    ) -> tuple[str, str] | None:
        """Add the tasks of ``step`` and what follows up to ``stop_at``; the (task
        name, step) arriving at ``stop_at``, None at the end."""
        while True:
            node = self.graph[step]
            name = self.names[step]
            arguments = {"task-id": self.task_id(step, in_foreach), **in_args}
            tasks.append(_dag_task(name, name, deps, arguments))
            here = f"{RUN_ID}/{step}/{{{{tasks.{name}.outputs.parameters.task-id}}}}"
            if node.type == "end":
                return None
            if node.foreach is not None:
                nested = self.foreach_template(step)
                fan = self.claim(f"{name}-foreach", f"the foreach of step '{step}'")
                split_path = (
                    "{{inputs.parameters.split-path}}-{{item}}" if in_foreach else "{{item}}"
                )
                task = _dag_task(
                    fan,
                    nested,
                    [name],
                    {"input-paths": here, "split-index": "{{item}}", "split-path": split_path},
                )
                task["withParam"] = f"{{{{tasks.{name}.outputs.parameters.splits}}}}"
                tasks.append(task)
                if TYPE_CHECKING:  # a foreach has its join
                    assert node.matching_join is not None
                step = node.matching_join
                in_args = {"foreach-outputs": f"{{{{tasks.{fan}.outputs.parameters}}}}"}
                deps = [fan]
            elif len(node.out_funcs) > 1:
                arrivals = [
                    self.walk(
                        b, {"input-paths": here}, [name], node.matching_join, tasks, in_foreach
                    )
                    for b in node.out_funcs
                ]
                paths = [  # type: ignore[misc]  # (each branch arrives: walk gives no None)
                    f"{RUN_ID}/{s}/{{{{tasks.{t}.outputs.parameters.task-id}}}}"
                    for t, s in arrivals
                ]
                if TYPE_CHECKING:  # a split has its join
                    assert node.matching_join is not None
                step = node.matching_join
                in_args = {"input-paths": ",".join(paths)}
                deps = [t for t, _ in arrivals]  # type: ignore[misc]
            else:
                following = node.out_funcs[0]
                if following == stop_at:
                    return name, step
                step, in_args, deps = following, {"input-paths": here}, [name]

    def foreach_template(self, step: str) -> str:
        """The nested DAG of a foreach's body (one instance per split); its name."""
        node = self.graph[step]
        name = self.claim(f"{self.names[step]}-body", f"the body of foreach step '{step}'")
        tasks: list[dict[str, Any]] = []
        arrival = self.walk(
            node.out_funcs[0],
            {
                "input-paths": "{{inputs.parameters.input-paths}}",
                "split-index": "{{inputs.parameters.split-index}}",
            },
            [],
            node.matching_join,
            tasks,
            True,
        )
        assert arrival is not None
        last_task, _ = arrival
        self.templates.append(
            {
                "name": name,
                "inputs": {
                    "parameters": [
                        {"name": "input-paths"},
                        {"name": "split-index"},
                        {"name": "split-path"},
                    ]
                },
                "outputs": {
                    "parameters": [
                        {
                            "name": "task-id",
                            "valueFrom": {
                                "parameter": f"{{{{tasks.{last_task}.outputs.parameters.task-id}}}}"
                            },
                        }
                    ]
                },
                "dag": {"tasks": tasks},
            }
        )
        return name

    def compile(self) -> dict[str, Any]:
        self._parameters = workflow_parameters(self.flow_cls)
        init = self.init_template()
        exit_handler = self.exit_template()
        steps = [self.step_template(step) for step in self.graph.nodes]
        dag_name = self.claim("dag", "the flow's DAG")
        tasks = [_dag_task("init", "init", [], {})]
        del tasks[0]["arguments"]
        start_inputs = {"input-paths": f"{RUN_ID}/_parameters/{PARAMETERS_TASK}"}
        self.walk("start", start_inputs, ["init"], None, tasks, False)
        templates = [{"name": dag_name, "dag": {"tasks": tasks}}, *self.templates]
        templates += [init, *steps, exit_handler]
        flow = self.graph.name
        s = self.settings
        return {
            "apiVersion": API_VERSION,
            "kind": "WorkflowTemplate",
            "metadata": {
                "name": template_name_of(flow),
                "namespace": s.namespace,
                "labels": {LABEL: template_name_of(flow)},
                "annotations": {
                    "flowbook.io/flow-name": flow,
                    "flowbook.io/package-sha": s.package_sha,
                    "flowbook.io/datastore": s.datastore,
                    "flowbook.io/deployed-by": s.deployer,
                    "flowbook.io/tags": json.dumps(s.tags),
                },
            },
            "spec": {
                "entrypoint": dag_name,
                "onExit": exit_handler["name"],
                "parallelism": s.max_workers,
                "arguments": {"parameters": self._parameters},
                "podMetadata": {"labels": {LABEL: template_name_of(flow)}},
                "volumes": [{"name": "out", "emptyDir": {}}],
                "templates": templates,
            },
        }


def _quantity(value: Any) -> str:
    number = float(value)
    if number <= 0:
        raise ValueError(value)
    return str(int(number)) if number.is_integer() else str(number)


def _dag_task(name: str, template: str, deps: list[str], arguments: dict[str, str]) -> dict:
    task: dict[str, Any] = {"name": name, "template": template}
    if deps:
        task["dependencies"] = list(deps)
    task["arguments"] = {"parameters": [{"name": k, "value": v} for k, v in arguments.items()]}
    return task


# ---------------------------------------------------------------------- public
def workflow_template(flow_cls: type, graph: FlowGraph, settings: ArgoSettings) -> dict[str, Any]:
    """The flow's WorkflowTemplate. FlowbookError (one line) for what cannot be deployed."""
    return _Compiler(flow_cls, graph, settings).compile()


def cron_workflow(
    flow_cls: type, graph: FlowGraph, settings: ArgoSettings
) -> dict[str, Any] | None:
    """The CronWorkflow of a flow with ``@schedule`` (None without one)."""
    schedule = schedule_of(flow_cls)
    if schedule is None:
        return None
    cron = schedule_cron(schedule)
    spec: dict[str, Any] = {
        "schedules": [cron],
        "concurrencyPolicy": "Allow",
        "workflowSpec": {"workflowTemplateRef": {"name": template_name_of(graph.name)}},
    }
    if schedule.get("timezone"):
        spec["timezone"] = str(schedule["timezone"])
    return {
        "apiVersion": API_VERSION,
        "kind": "CronWorkflow",
        "metadata": {
            "name": cron_name_of(graph.name),
            "namespace": settings.namespace,
            "labels": {LABEL: template_name_of(graph.name)},
        },
        "spec": spec,
    }


def submitted_workflow(
    flow_name: str, namespace: str, parameters: dict[str, str]
) -> dict[str, Any]:
    """The Workflow ``trigger`` submits: the template with these parameter texts."""
    spec: dict[str, Any] = {"workflowTemplateRef": {"name": template_name_of(flow_name)}}
    if parameters:
        spec["arguments"] = {"parameters": [{"name": k, "value": v} for k, v in parameters.items()]}
    return {
        "apiVersion": API_VERSION,
        "kind": "Workflow",
        "metadata": {"generateName": template_name_of(flow_name) + "-", "namespace": namespace},
        "spec": spec,
    }
