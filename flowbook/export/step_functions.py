"""A flow compiled to an AWS Step Functions state machine (Amazon States Language).

Pure functions of the flow class, its graph (with ``--with`` decorators applied) and
:class:`SfnSettings`: nothing here reads the environment or the network.

The shape (see docs/step_functions.md):

- ``flowbook-begin`` (Choice) and ``flowbook-run-id`` (Pass): the execution input's
  ``Parameters`` (an escaped JSON string, ``"{}"`` when absent, an object turned into
  its JSON text) and the run id ``sfn-<execution name>`` become the state's data
  ``{"Parameters", "run_id", "split_path": ""}``;
- ``flowbook-init``: a Batch job running ``python flow.py init`` (docs/one_task.md)
  with ``FLOWBOOK_PARAMETERS`` from ``$.Parameters`` and the defaults (deploy-time
  functions called once, here) as ``FLOWBOOK_RUN_<NAME>``;
- one Task state per step submitting an AWS Batch job
  (``arn:aws:states:::batch:submitJob.sync``) whose container runs
  ``python -m flowbook.deploy.batch`` (fetch the code package) and then
  ``python flow.py step STEP ...``. The command is a fixed argv list; the values of an
  execution (run id, task id, input paths, split index, retry count) reach it only
  as environment variables of the job, which the bootstrap turns into arguments: no
  shell ever sees them;
- a static split is a ``Parallel`` state (one branch per ``self.next`` target, up to
  the join), its join the state after it;
- a foreach task writes its split indexes to DynamoDB (``pathspec`` ->
  ``for_each_cardinality``, a number set, as Metaflow does); a ``dynamodb:getItem``
  state reads them and a ``Map`` state (``MaxConcurrency`` = ``--max-workers``) runs
  the foreach's body once per index (``$$.Map.Item.Value``); each iteration ends with
  a Pass giving its last task's id, so the Map's result is the join's input list;
- task ids are deterministic: the step's name plus the split path inside foreaches
  (``body-2``, ``inner-2-0``), so a retried job reuses its task id;
- ``@retry`` / ``--with retry`` is the Task state's ``Retry`` (the attempt number is
  ``$$.State.RetryCount``); ``@resources`` the job's ``ResourceRequirements``;
  ``@timeout`` the job's ``Timeout``;
- every top-level state but init catches ``States.ALL`` into ``flowbook-mark-failed``
  (``python flow.py mark-failed``) and then the ``flowbook-failed`` Fail state.
"""

from __future__ import annotations

import math

from ..decorators import step_settings
from ..deploy.naming import MAX_AWS_NAME, aws_name, short_hash
from ..deploy.schedule import schedule_aws_cron, schedule_of
from ..exceptions import FlowbookError
from ..graph import FlowGraph
from ..parameters import JSONType, flow_parameters, parameter_env_name
from .common import DEFAULT_MAX_WORKERS, DeploySettings, parameter_text

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

BATCH_RESOURCE = "arn:aws:states:::batch:submitJob.sync"
DYNAMODB_GET_ITEM = "arn:aws:states:::dynamodb:getItem"
#: The parameters task's id.
PARAMETERS_TASK = "params"
#: The user name runs on Step Functions record.
SFN_USER = "step-functions"
#: Batch refuses a shorter attempt timeout.
MIN_BATCH_TIMEOUT = 60
#: The execution input a schedule sends.
SCHEDULE_INPUT = '{"Parameters": "{}"}'

BEGIN = "flowbook-begin"
DEFAULTS = "flowbook-no-parameters"
TO_TEXT = "flowbook-parameters-as-text"
RUN_ID = "flowbook-run-id"
INIT = "flowbook-init"
MARK_FAILED = "flowbook-mark-failed"
FAILED = "flowbook-failed"

#: Environment variables the bootstrap (flowbook.deploy.batch) turns into arguments.
ENV_RUN_ID = "FLOWBOOK_SFN_RUN_ID"
ENV_TASK_ID = "FLOWBOOK_SFN_TASK_ID"
ENV_INPUT_PATHS = "FLOWBOOK_SFN_INPUT_PATHS"
ENV_SPLIT_INDEX = "FLOWBOOK_SFN_SPLIT_INDEX"
ENV_RETRY_COUNT = "FLOWBOOK_SFN_RETRY_COUNT"
ENV_FOREACH_JOIN = "FLOWBOOK_SFN_FOREACH_OUTPUTS"
ENV_REASON = "FLOWBOOK_SFN_REASON"


class SfnSettings(DeploySettings):
    """What a Step Functions deployment needs besides the flow: the shared settings,
    plus the Batch queue and job definition, the DynamoDB table for foreach
    cardinalities and the region."""

    def __init__(
        self,
        datastore: str,
        package_key: str,
        package_sha: str,
        job_queue: str,
        job_definition: str,
        dynamodb_table: str | None = None,
        max_workers: int = DEFAULT_MAX_WORKERS,
        decospecs: list[str] | None = None,
        tags: list[str] | None = None,
        region: str | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        super().__init__(datastore, package_key, package_sha, max_workers, decospecs, tags, env)
        self.job_queue = job_queue
        self.job_definition = job_definition
        self.dynamodb_table = dynamodb_table
        self.region = region


def state_machine_name(flow_name: str) -> str:
    """The state machine's (and the schedule rule's) name: the flow's name, AWS-safe."""
    return aws_name(flow_name)


def job_definition_name(flow_name: str) -> str:
    return aws_name(f"flowbook-{flow_name}", 128)


def production_token(flow_name: str, region: str, datastore: str) -> str:
    """The production namespace's token: the same for every create of one flow in one
    region and datastore."""
    return (
        f"{state_machine_name(flow_name).lower()}-{short_hash(f'{region}|{datastore}|{flow_name}')}"
    )


def has_foreach(graph: FlowGraph) -> bool:
    return any(node.foreach is not None for node in graph.nodes.values())


def parameter_defaults(flow_cls: type) -> dict[str, str]:
    """Every parameter with a default -> its text (a deploy-time function called now,
    once), each checked by the parameter's own conversion."""
    found = {}
    for param in flow_parameters(flow_cls).values():
        if param.is_file:
            raise FlowbookError(
                f"Flow {flow_cls.__name__}: IncludeFile '{param.name}' cannot be deployed "
                "to AWS Step Functions yet (its file would have to be uploaded); use a "
                "Parameter holding the content or a path in the datastore."
            )
        default = param.resolve_default(flow_cls.__name__)
        if default is not None:
            param.convert(default, flow_cls.__name__)  # refused now, not in a job
            found[param.name] = parameter_text(default, param.type is JSONType)
    return found


def _format(template: str, *paths: str) -> str:
    """An ``States.Format`` call; ``template`` holds only name characters and ``{}``."""
    assert not set(template) & set("'\\"), template
    return f"States.Format('{template}', {', '.join(paths)})"


class _Compiler:
    def __init__(self, flow_cls: type, graph: FlowGraph, settings: SfnSettings) -> None:
        self.flow_cls = flow_cls
        self.graph = graph
        self.settings = settings
        self.used: set[str] = {BEGIN, DEFAULTS, TO_TEXT, RUN_ID, INIT, MARK_FAILED, FAILED}
        self.task_bases = self._task_bases()
        if has_foreach(graph) and not settings.dynamodb_table:
            raise FlowbookError(
                f"Flow {graph.name} has a foreach, which needs a DynamoDB table for its "
                "split counts: set FLOWBOOK_SFN_DYNAMO_DB_TABLE (or --dynamodb-table)."
            )

    def _task_bases(self) -> dict[str, str]:
        """Every step -> the start of its task ids (a name in names.py's grammar)."""
        bases: dict[str, str] = {}
        seen: dict[str, str] = {}
        for step in self.graph.nodes:
            base = step if step[0].isalnum() else "s" + step
            if base in seen:
                raise FlowbookError(
                    f"steps '{seen[base]}' and '{step}' would share task ids on Step "
                    "Functions; rename one of them."
                )
            seen[base] = step
            bases[step] = base
        return bases

    def state(self, wanted: str) -> str:
        """A unique state name within AWS's limits."""
        name = aws_name(wanted, MAX_AWS_NAME)
        if name in self.used:
            raise FlowbookError(
                f"Flow {self.graph.name}: two states would be named '{name}' on Step "
                "Functions; rename the step."
            )
        self.used.add(name)
        return name

    # -------------------------------------------------------------- batch jobs
    def command(self, flow_args: list[str], own: list[str] | None = None) -> list[str]:
        s = self.settings
        return [
            "python",
            "-m",
            "flowbook.deploy.batch",
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

    def batch_parameters(
        self,
        job: str,
        command: list[str],
        dynamic: dict[str, str],
        static: dict[str, str] | None = None,
        node: Any = None,
    ) -> dict[str, Any]:
        s = self.settings
        env = {"FLOWBOOK_USER": SFN_USER, "PYTHONUNBUFFERED": "1"}
        if s.region:
            env["AWS_DEFAULT_REGION"] = s.region
        env.update(s.env)
        env.update(static or {})
        environment: list[dict[str, str]] = [
            {"Name": k, "Value": v} for k, v in sorted(env.items())
        ]
        environment += [{"Name": k, "Value.$": v} for k, v in dynamic.items()]
        overrides: dict[str, Any] = {"Command": command, "Environment": environment}
        parameters: dict[str, Any] = {
            "JobName": aws_name(f"{self.graph.name}-{job}", 128),
            "JobQueue": s.job_queue,
            "JobDefinition": s.job_definition,
            "ContainerOverrides": overrides,
        }
        if node is not None:
            requirements = self.resources(node)
            if requirements:
                overrides["ResourceRequirements"] = requirements
            timeout = step_settings(node.decorators, node.name)["timeout"]
            if timeout:
                seconds = max(MIN_BATCH_TIMEOUT, int(math.ceil(timeout)))
                parameters["Timeout"] = {"AttemptDurationSeconds": seconds}
        return parameters

    def resources(self, node: Any) -> list[dict[str, str]]:
        spec = next((d for d in node.decorators if d.name == "resources"), None)
        if spec is None:
            return []
        attrs = spec.attributes
        found = []
        try:
            if attrs.get("cpu") is not None:
                cpu = float(attrs["cpu"])
                if cpu <= 0:
                    raise ValueError(cpu)
                found.append({"Type": "VCPU", "Value": _number(cpu)})
            if attrs.get("memory") is not None:
                found.append({"Type": "MEMORY", "Value": str(int(float(attrs["memory"])))})
            if attrs.get("gpu"):
                found.append({"Type": "GPU", "Value": str(int(attrs["gpu"]))})
        except (TypeError, ValueError):
            raise FlowbookError(
                f"@resources on step '{node.name}' has an invalid value: {attrs}."
            ) from None
        return found

    def task_id_expression(self, step: str) -> str:
        return _format(self.task_bases[step] + "{}", "$.split_path")

    def static_inputs(self, parents: list[str]) -> str:
        """``States.Format`` of the input paths of tasks of these steps in this split path."""
        template = ",".join(f"{{}}/{p}/{self.task_bases[p]}{{}}" for p in parents)
        return _format(template, *["$.run_id", "$.split_path"] * len(parents))

    def step_state(self, step: str, inputs: dict[str, str], own: list[str]) -> dict[str, Any]:
        node = self.graph[step]
        settings = step_settings(node.decorators, step)
        retries = settings["max_attempts"] - 1
        dynamic = {ENV_RUN_ID: "$.run_id", ENV_TASK_ID: self.task_id_expression(step)}
        dynamic.update(inputs)
        if retries > 0:
            dynamic[ENV_RETRY_COUNT] = _format("{}", "$$.State.RetryCount")
        if node.foreach is not None:
            own = [*own, "--dynamodb-table", str(self.settings.dynamodb_table)]
        flow_args = ["step", step, "--max-user-code-retries", str(retries)]
        state: dict[str, Any] = {
            "Type": "Task",
            "Resource": BATCH_RESOURCE,
            "Parameters": self.batch_parameters(
                step, self.command(flow_args, own), dynamic, node=node
            ),
            "ResultPath": None,
        }
        if retries > 0:
            state["Retry"] = [
                {
                    "ErrorEquals": ["States.ALL"],
                    "IntervalSeconds": max(1, int(math.ceil(settings["retry_delay"]))),
                    "MaxAttempts": retries,
                    "BackoffRate": 1.0,
                }
            ]
        return state

    # -------------------------------------------------------------- the graph
    def walk(
        self,
        step: str,
        inputs: dict[str, str],
        own: list[str],
        stop_at: str | None,
        states: dict[str, dict[str, Any]],
        top: bool,
    ) -> tuple[str, str | None]:
        """Add the states of ``step`` and what follows up to ``stop_at`` (exclusive);
        (the first state's name, the last step before ``stop_at``)."""
        first: str | None = None
        previous: dict[str, Any] | None = None

        def add(name: str, state: dict[str, Any]) -> None:
            nonlocal first, previous
            if previous is not None:
                previous["Next"] = name
            first = first or name
            if top and state["Type"] in ("Task", "Map", "Parallel"):
                state["Catch"] = [
                    {"ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": MARK_FAILED}
                ]
            states[name] = state
            previous = state

        while True:
            node = self.graph[step]
            add(self.state(step), self.step_state(step, inputs, own))
            own = []
            if node.type == "end":
                previous["End"] = True  # type: ignore[index]
                return first, None  # type: ignore[return-value]
            if node.foreach is not None:
                add(self.state(f"{step}-cardinality"), self.cardinality_state(step))
                add(self.state(f"{step}-foreach"), self.map_state(step))
                body_last = self._last_body_step(step)
                step = node.matching_join  # type: ignore[assignment]
                inputs = {ENV_FOREACH_JOIN: "States.JsonToString($.foreach_outputs)"}
                own = ["--foreach-join-step", body_last]
            elif len(node.out_funcs) > 1:
                branches = []
                lasts = []
                for target in node.out_funcs:
                    branch_states: dict[str, dict[str, Any]] = {}
                    start, last = self.walk(
                        target,
                        {ENV_INPUT_PATHS: self.static_inputs([step])},
                        [],
                        node.matching_join,
                        branch_states,
                        False,
                    )
                    branches.append({"StartAt": start, "States": branch_states})
                    lasts.append(last)
                add(
                    self.state(f"{step}-split"),
                    {"Type": "Parallel", "Branches": branches, "ResultPath": None},
                )
                step = node.matching_join  # type: ignore[assignment]
                inputs = {ENV_INPUT_PATHS: self.static_inputs(lasts)}  # type: ignore[arg-type]
            else:
                following = node.out_funcs[0]
                if following == stop_at:
                    previous["End"] = True  # type: ignore[index]
                    return first, step  # type: ignore[return-value]
                inputs = {ENV_INPUT_PATHS: self.static_inputs([step])}
                step = following

    def _last_body_step(self, step: str) -> str:
        node = self.graph[step]
        return next(p for p in self.graph[node.matching_join].in_funcs)  # type: ignore[index]

    def cardinality_state(self, step: str) -> dict[str, Any]:
        key = _format(f"{{}}/{step}/{self.task_bases[step]}{{}}", "$.run_id", "$.split_path")
        return {
            "Type": "Task",
            "Resource": DYNAMODB_GET_ITEM,
            "Parameters": {
                "TableName": self.settings.dynamodb_table,
                "Key": {"pathspec": {"S.$": key}},
                "ConsistentRead": True,
            },
            "ResultSelector": {"splits.$": "$.Item.for_each_cardinality.NS"},
            "ResultPath": "$.cardinality",
            "Retry": [
                {
                    "ErrorEquals": ["States.TaskFailed"],
                    "IntervalSeconds": 2,
                    "MaxAttempts": 3,
                    "BackoffRate": 2.0,
                }
            ],
        }

    def map_state(self, step: str) -> dict[str, Any]:
        node = self.graph[step]
        body: dict[str, dict[str, Any]] = {}
        start, last = self.walk(
            node.out_funcs[0],
            {ENV_INPUT_PATHS: "$.input_paths", ENV_SPLIT_INDEX: "$.split_index"},
            [],
            node.matching_join,
            body,
            False,
        )
        assert last is not None
        last_state = next(s for s in body.values() if s.get("End"))  # the top-level end
        output = self.state(f"{last}-output")
        del last_state["End"]
        last_state["Next"] = output
        body[output] = {
            "Type": "Pass",
            "Parameters": {"task-id.$": self.task_id_expression(last)},
            "End": True,
        }
        return {
            "Type": "Map",
            "ItemsPath": "$.cardinality.splits",
            "MaxConcurrency": self.settings.max_workers,
            "ItemSelector": {
                "run_id.$": "$.run_id",
                "split_index.$": "$$.Map.Item.Value",
                "split_path.$": _format("{}-{}", "$.split_path", "$$.Map.Item.Value"),
                "input_paths.$": _format(
                    f"{{}}/{step}/{self.task_bases[step]}{{}}", "$.run_id", "$.split_path"
                ),
            },
            "ItemProcessor": {
                "ProcessorConfig": {"Mode": "INLINE"},
                "StartAt": start,
                "States": body,
            },
            "ResultPath": "$.foreach_outputs",
        }

    # -------------------------------------------------------------- around
    def begin_states(self) -> dict[str, dict[str, Any]]:
        return {
            BEGIN: {
                "Type": "Choice",
                "Choices": [
                    {
                        "And": [
                            {"Variable": "$.Parameters", "IsPresent": True},
                            {"Variable": "$.Parameters", "IsString": True},
                        ],
                        "Next": RUN_ID,
                    },
                    {"Variable": "$.Parameters", "IsPresent": True, "Next": TO_TEXT},
                ],
                "Default": DEFAULTS,
            },
            DEFAULTS: {
                "Type": "Pass",
                "Result": "{}",
                "ResultPath": "$.Parameters",
                "Next": RUN_ID,
            },
            TO_TEXT: {
                "Type": "Pass",
                "Parameters": {"Parameters.$": "States.JsonToString($.Parameters)"},
                "Next": RUN_ID,
            },
            RUN_ID: {
                "Type": "Pass",
                "Parameters": {
                    "Parameters.$": "$.Parameters",
                    "run_id.$": _format("sfn-{}", "$$.Execution.Name"),
                    "split_path": "",
                },
                "Next": INIT,
            },
        }

    def init_state(self) -> dict[str, Any]:
        defaults = parameter_defaults(self.flow_cls)
        static = {parameter_env_name(name): text for name, text in defaults.items()}
        tags = [word for tag in self.settings.tags for word in ("--tag", tag)]
        command = self.command(["init", "--task-id", PARAMETERS_TASK, *tags])
        return {
            "Type": "Task",
            "Resource": BATCH_RESOURCE,
            "Parameters": self.batch_parameters(
                "init",
                command,
                {ENV_RUN_ID: "$.run_id", "FLOWBOOK_PARAMETERS": "$.Parameters"},
                static,
            ),
            "ResultPath": None,
            "Retry": [
                {
                    "ErrorEquals": ["States.ALL"],
                    "IntervalSeconds": 2,
                    "MaxAttempts": 2,
                    "BackoffRate": 2.0,
                }
            ],
        }

    def failure_states(self) -> dict[str, dict[str, Any]]:
        reason = _format(
            "Step Functions execution {} failed: {}", "$$.Execution.Name", "$.error.Error"
        )
        return {
            MARK_FAILED: {
                "Type": "Task",
                "Resource": BATCH_RESOURCE,
                "Parameters": self.batch_parameters(
                    "mark-failed",
                    self.command(["mark-failed"]),
                    {ENV_RUN_ID: "$.run_id", ENV_REASON: reason},
                ),
                "ResultPath": None,
                "Catch": [{"ErrorEquals": ["States.ALL"], "ResultPath": None, "Next": FAILED}],
                "Next": FAILED,
            },
            FAILED: {
                "Type": "Fail",
                "Error": "FlowFailed",
                "Cause": f"A step of flow {self.graph.name} failed; the run is marked failed.",
            },
        }

    def compile(self) -> dict[str, Any]:
        states = self.begin_states()
        states[INIT] = self.init_state()
        start_inputs = {ENV_INPUT_PATHS: _format(f"{{}}/_parameters/{PARAMETERS_TASK}", "$.run_id")}
        body: dict[str, dict[str, Any]] = {}
        first, _ = self.walk("start", start_inputs, [], None, body, True)
        states[INIT]["Next"] = first
        states.update(body)
        states.update(self.failure_states())
        s = self.settings
        return {
            "Comment": f"flowbook flow {self.graph.name} (code package {s.package_sha[:12]})",
            "StartAt": BEGIN,
            "States": states,
        }


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


# ---------------------------------------------------------------------- public
def state_machine(flow_cls: type, graph: FlowGraph, settings: SfnSettings) -> dict[str, Any]:
    """The flow's state machine definition. FlowbookError (one line) for what cannot
    be deployed."""
    return _Compiler(flow_cls, graph, settings).compile()


def schedule_expression(flow_cls: type) -> str | None:
    """The EventBridge ``cron(...)`` of the flow's ``@schedule`` (None without one)."""
    schedule = schedule_of(flow_cls)
    if schedule is None:
        return None
    if schedule.get("timezone"):
        raise FlowbookError(
            f"@schedule(timezone={schedule['timezone']!r}): EventBridge rules run in UTC; "
            "give the cron in UTC and no timezone for AWS Step Functions."
        )
    return f"cron({schedule_aws_cron(schedule)})"


def execution_input(parameters: dict[str, Any]) -> str:
    """The input ``trigger`` gives an execution: ``{"Parameters": "<JSON text>"}``."""
    import json

    return json.dumps({"Parameters": json.dumps(parameters)})
