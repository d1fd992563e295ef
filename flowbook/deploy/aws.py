"""The AWS APIs a Step Functions deployment uses, through boto3 (``pip install
'flowbook[aws]'``): Batch (the job definition), Step Functions (the state machine,
executions) and EventBridge (the schedule rule). Every AWS error becomes one line
(FlowbookError) naming what failed. ``AWS_ENDPOINT_URL`` (boto3's own setting) points
it at another endpoint, e.g. moto in the tests.
"""

from __future__ import annotations

from ..exceptions import FlowbookError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

#: The Batch job definition's defaults (a step's @resources overrides them).
DEFAULT_VCPUS = "1"
DEFAULT_MEMORY = "4096"
TARGET_ID = "flowbook"


class AwsApi:
    """Batch, Step Functions and EventBridge clients of one region."""

    def __init__(self, region: str | None = None) -> None:
        try:
            import boto3
        except ImportError:
            raise FlowbookError(
                "AWS Step Functions needs boto3: pip install 'flowbook[aws]'."
            ) from None
        session = boto3.session.Session(region_name=region)
        if not session.region_name:
            raise FlowbookError(
                "No AWS region: set AWS_DEFAULT_REGION (or a region in ~/.aws/config)."
            )
        self.region: str = session.region_name
        self.sfn = session.client("stepfunctions")
        self.events = session.client("events")
        self.batch = session.client("batch")

    def _call(self, what: str, function: Any, **kwargs: Any) -> Any:
        try:
            return function(**kwargs)
        except Exception as exc:  # botocore's errors: client, credentials, endpoint
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise FlowbookError(f"AWS refused to {what}: {message}") from None

    # ------------------------------------------------------------ Batch
    def ensure_job_definition(self, name: str, image: str, job_role: str | None = None) -> str:
        """The job definition ``name`` with this image and role: the newest active
        revision if it has them, else a new revision. Its ARN."""
        found = self._call(
            f"describe the Batch job definition {name}",
            self.batch.describe_job_definitions,
            jobDefinitionName=name,
            status="ACTIVE",
        )["jobDefinitions"]
        if found:
            newest = max(found, key=lambda d: d["revision"])
            props = newest.get("containerProperties", {})
            if props.get("image") == image and props.get("jobRoleArn") == job_role:
                return newest["jobDefinitionArn"]
        properties: dict[str, Any] = {
            "image": image,
            "command": ["python", "-m", "flowbook.deploy.batch"],
            "resourceRequirements": [
                {"type": "VCPU", "value": DEFAULT_VCPUS},
                {"type": "MEMORY", "value": DEFAULT_MEMORY},
            ],
        }
        if job_role:
            properties["jobRoleArn"] = job_role
        created = self._call(
            f"register the Batch job definition {name}",
            self.batch.register_job_definition,
            jobDefinitionName=name,
            type="container",
            containerProperties=properties,
        )
        return created["jobDefinitionArn"]

    # ------------------------------------------------------------ Step Functions
    def find_state_machine(self, name: str) -> str | None:
        """The ARN of the state machine ``name``, or None."""
        token = None
        while True:
            kwargs: dict[str, Any] = {"maxResults": 1000}
            if token:
                kwargs["nextToken"] = token
            page = self._call("list state machines", self.sfn.list_state_machines, **kwargs)
            for machine in page.get("stateMachines", []):
                if machine["name"] == name:
                    return machine["stateMachineArn"]
            token = page.get("nextToken")
            if not token:
                return None

    def put_state_machine(
        self, name: str, definition: str, role: str, description: str
    ) -> tuple[str, str, bool]:
        """Create or update the state machine ``name``, publishing a new version:
        (its ARN, the version's ARN, whether it was created)."""
        arn = self.find_state_machine(name)
        if arn is None:
            made = self._call(
                f"create the state machine {name}",
                self.sfn.create_state_machine,
                name=name,
                definition=definition,
                roleArn=role,
                type="STANDARD",
                publish=True,
                versionDescription=description,
            )
            return made["stateMachineArn"], made.get("stateMachineVersionArn", ""), True
        updated = self._call(
            f"update the state machine {name}",
            self.sfn.update_state_machine,
            stateMachineArn=arn,
            definition=definition,
            roleArn=role,
            publish=True,
            versionDescription=description,
        )
        return arn, updated.get("stateMachineVersionArn", ""), False

    def start_execution(self, arn: str, input_text: str, name: str | None = None) -> str:
        """Start an execution; its name."""
        kwargs: dict[str, Any] = {"stateMachineArn": arn, "input": input_text}
        if name:
            kwargs["name"] = name
        started = self._call("start an execution", self.sfn.start_execution, **kwargs)
        return started["executionArn"].rsplit(":", 1)[-1]

    # ------------------------------------------------------------ EventBridge
    def put_schedule(
        self, rule: str, expression: str, target_arn: str, role: str, input_text: str
    ) -> None:
        """Create or update the rule ``rule`` starting ``target_arn`` on ``expression``
        with the execution input ``input_text``."""
        self._call(
            f"put the EventBridge rule {rule}",
            self.events.put_rule,
            Name=rule,
            ScheduleExpression=expression,
            State="ENABLED",
            Description=f"flowbook: runs the state machine {target_arn.rsplit(':', 1)[-1]}",
        )
        self._call(
            f"set the target of the EventBridge rule {rule}",
            self.events.put_targets,
            Rule=rule,
            Targets=[{"Id": TARGET_ID, "Arn": target_arn, "RoleArn": role, "Input": input_text}],
        )

    def delete_schedule(self, rule: str) -> bool:
        """Remove the rule ``rule`` (and its target); False when there is none."""
        try:
            self.events.describe_rule(Name=rule)
        except Exception as exc:
            if "ResourceNotFound" in type(exc).__name__ or "ResourceNotFound" in str(exc):
                return False
            raise FlowbookError(
                f"AWS refused to describe the EventBridge rule {rule}: {exc}"
            ) from None
        self._call(
            f"remove the target of the EventBridge rule {rule}",
            self.events.remove_targets,
            Rule=rule,
            Ids=[TARGET_ID],
        )
        self._call(f"delete the EventBridge rule {rule}", self.events.delete_rule, Name=rule)
        return True
