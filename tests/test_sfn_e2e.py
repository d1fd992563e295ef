"""AWS Step Functions end to end without an AWS account: ``create`` and ``trigger``
through boto3 against moto's server on 127.0.0.1 (Step Functions, EventBridge, Batch,
DynamoDB, S3 for the code package and the datastore); the stored definition executed
by moto itself with each Batch Task replaced by a recording Pass (the data plumbing),
and run by tests/sfn_walker.py, every Batch job's command a real subprocess. The
Client reads the runs; their artifacts equal a local ``run``'s."""

from __future__ import annotations

import json
import time
import urllib.request
import uuid
from pathlib import Path

import boto3
import pytest
from conftest import MOTO_BUCKET, assert_refused, example_source
from sfn_walker import Walker, all_states, tasks_as_passes, validate
from test_one_task import artifacts_by_position

from flowbook.datastore import Datastore

ROLE = "arn:aws:iam::123456789012:role/flowbook-sfn"
EVENTS_ROLE = "arn:aws:iam::123456789012:role/flowbook-events"

SEED_PARAMETER_FLOW = """
from flowbook import FlowSpec, Parameter, step

class ParameterFlow(FlowSpec):
    alpha = Parameter('alpha',
                      help='Learning rate',
                      default=0.01)

    @step
    def start(self):
        print('alpha is %f' % self.alpha)
        self.next(self.end)

    @step
    def end(self):
        print('alpha is still %f' % self.alpha)

if __name__ == '__main__':
    ParameterFlow()
"""

TEXT_FLOW = """
from flowbook import FlowSpec, Parameter, step

class TextFlow(FlowSpec):
    text = Parameter('text', default='plain')

    @step
    def start(self):
        self.seen = self.text
        self.next(self.end)

    @step
    def end(self):
        print('seen', self.seen)

if __name__ == '__main__':
    TextFlow()
"""

FLAKY_FLOW = """
import os
from flowbook import FlowSpec, retry, step

class FlakyFlow(FlowSpec):
    @retry(times=2, minutes_between_retries=0)
    @step
    def start(self):
        marker = os.path.join(os.environ['MARKER_DIR'], 'flaky-once')
        if not os.path.exists(marker):
            open(marker, 'w').close()
            raise RuntimeError('first attempt fails')
        self.ok = True
        self.next(self.end)

    @step
    def end(self):
        pass

if __name__ == '__main__':
    FlakyFlow()
"""

FAILING_FLOW = """
from flowbook import FlowSpec, step

class FailingFlow(FlowSpec):
    @step
    def start(self):
        raise ValueError('broken on purpose')
        self.next(self.end)

    @step
    def end(self):
        pass

if __name__ == '__main__':
    FailingFlow()
"""


def _with_schedule(source: str, schedule: str) -> str:
    return source.replace(
        "class ParameterFlow", f"@schedule({schedule})\nclass ParameterFlow"
    ).replace("import FlowSpec", "import FlowSpec, schedule")


# ---------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def aws_moto(moto_s3):
    """moto's server with state machine execution on, and the DynamoDB table."""
    request = urllib.request.Request(
        moto_s3["AWS_ENDPOINT_URL"] + "/moto-api/config",
        data=json.dumps({"stepfunctions": {"execute_state_machine": True}}).encode(),
        method="POST",
    )
    urllib.request.urlopen(request).read()
    table = "flowbook-sfn-cardinality"
    client = _client(moto_s3, "dynamodb")
    if table not in client.list_tables()["TableNames"]:
        client.create_table(
            TableName=table,
            KeySchema=[{"AttributeName": "pathspec", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "pathspec", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
    return {**moto_s3, "table": table}


def _client(env: dict, service: str):
    return boto3.client(
        service,
        endpoint_url=env["AWS_ENDPOINT_URL"],
        region_name=env["AWS_DEFAULT_REGION"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
    )


@pytest.fixture
def deploy_env(aws_moto):
    env = {k: v for k, v in aws_moto.items() if k != "table"}
    return {
        **env,
        "FLOWBOOK_DATASTORE": f"s3://{MOTO_BUCKET}/{uuid.uuid4().hex[:8]}",
        "FLOWBOOK_SFN_IAM_ROLE": ROLE,
        "FLOWBOOK_BATCH_JOB_QUEUE": "flowbook-queue",
        "FLOWBOOK_IMAGE": "python:3.11-flowbook",
        "FLOWBOOK_EVENTS_SFN_ACCESS_IAM_ROLE": EVENTS_ROLE,
        "FLOWBOOK_SFN_DYNAMO_DB_TABLE": aws_moto["table"],
    }


@pytest.fixture
def sfn(aws_moto):
    return _client(aws_moto, "stepfunctions")


@pytest.fixture
def s3_client(aws_moto, deploy_env, monkeypatch):
    import flowbook.client as fb_client

    for key in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_DEFAULT_REGION",
        "AWS_ENDPOINT_URL",
    ):
        monkeypatch.setenv(key, aws_moto[key])
    fb_client.datastore(deploy_env["FLOWBOOK_DATASTORE"])
    fb_client.namespace(None)
    yield fb_client
    fb_client.datastore(None)
    fb_client.default_namespace()


def _machine(sfn, name: str) -> tuple[str, dict]:
    arns = [
        m["stateMachineArn"]
        for m in sfn.list_state_machines()["stateMachines"]
        if m["name"] == name
    ]
    assert len(arns) == 1, arns
    described = sfn.describe_state_machine(stateMachineArn=arns[0])
    assert described["roleArn"] == ROLE
    definition = json.loads(described["definition"])
    validate(definition)
    return arns[0], definition


def _delete(sfn, name: str) -> None:
    for machine in sfn.list_state_machines()["stateMachines"]:
        if machine["name"] == name:
            sfn.delete_state_machine(stateMachineArn=machine["stateMachineArn"])


def _walk(run_flow, definition, env, name=None, execution_input='{"Parameters": "{}"}', **kw):
    workdir = run_flow.workdir / f"sfn-{uuid.uuid4().hex[:6]}"
    workdir.mkdir()
    walker = Walker(
        definition,
        {**env, "MARKER_DIR": str(run_flow.workdir)},
        workdir,
        name or uuid.uuid4().hex[:12],
        execution_input,
        **kw,
    )
    status, output = walker.run()
    return walker, status, output


def _compare(client, flow, theirs, ours):
    their_run = client.Flow(flow)[theirs]
    assert their_run.successful and their_run.finished
    store = Datastore(client.get_datastore())
    mine, local = (
        artifacts_by_position(store, flow, theirs),
        artifacts_by_position(store, flow, ours),
    )
    assert mine.keys() == local.keys() and mine == local


# ---------------------------------------------------------------------- tests
def test_seed_parameter_flow_create_update_trigger_and_run(run_flow, deploy_env, sfn, s3_client):
    _delete(sfn, "ParameterFlow")
    created = run_flow(SEED_PARAMETER_FLOW, "--with", "retry", "step-functions", "create",
                       filename="parameter_flow.py", env=deploy_env)  # fmt: skip
    assert created.returncode == 0, created
    assert "State machine ParameterFlow created" in created.stdout
    assert "Production namespace: production:" in created.stdout
    arn, definition = _machine(sfn, "ParameterFlow")
    start = definition["States"]["start"]
    assert start["Resource"] == "arn:aws:states:::batch:submitJob.sync"
    assert start["Retry"][0]["MaxAttempts"] == 3  # --with retry: 3 retries
    init_env = {
        e["Name"]: e.get("Value", e.get("Value.$"))
        for e in definition["States"]["flowbook-init"]["Parameters"]["ContainerOverrides"][
            "Environment"
        ]
    }
    assert (
        init_env["FLOWBOOK_RUN_ALPHA"] == "0.01"
        and init_env["FLOWBOOK_PARAMETERS"] == "$.Parameters"
    )
    # the package is in S3 under its hash, the job definition registered with the image
    sha = next(w for w in start["Parameters"]["ContainerOverrides"]["Command"] if len(w) == 64)
    assert Datastore(deploy_env["FLOWBOOK_DATASTORE"]).storage.exists(
        f"packages/ParameterFlow/{sha}.tgz"
    )
    batch = _client(deploy_env, "batch")
    jobdefs = batch.describe_job_definitions(jobDefinitionName="flowbook-ParameterFlow")[
        "jobDefinitions"
    ]
    assert jobdefs and jobdefs[0]["containerProperties"]["image"] == "python:3.11-flowbook"

    again = run_flow(None, "--with", "retry", "step-functions", "create",
                     filename="parameter_flow.py", env=deploy_env)  # fmt: skip
    assert again.returncode == 0 and "State machine ParameterFlow updated" in again.stdout, again
    assert _machine(sfn, "ParameterFlow")[0] == arn
    # each create publishes a version (moto serves no ListStateMachineVersions)
    assert ", version 1)" in created.stdout and ", version 2)" in again.stdout, again

    triggered = run_flow(None, "step-functions", "trigger", "--alpha", "0.5",
                         filename="parameter_flow.py", env=deploy_env)  # fmt: skip
    assert triggered.returncode == 0, triggered
    executions = sfn.list_executions(stateMachineArn=arn)["executions"]
    assert len(executions) == 1
    execution = sfn.describe_execution(executionArn=executions[0]["executionArn"])
    assert json.loads(execution["input"]) == {"Parameters": '{"alpha": 0.5}'}
    name = execution["executionArn"].rsplit(":", 1)[-1]
    assert f"ParameterFlow/sfn-{name}" in triggered.stdout

    bad = run_flow(None, "step-functions", "trigger", "--alpha", "fast",
                   filename="parameter_flow.py", env=deploy_env)  # fmt: skip
    assert_refused(bad, "alpha", "float")

    walker, status, _ = _walk(run_flow, definition, deploy_env, name, execution["input"])
    assert status == "SUCCEEDED", walker.jobs
    run = s3_client.Flow("ParameterFlow")[f"sfn-{name}"]
    assert run.successful and run.data.alpha == 0.5
    assert "alpha is still 0.500000" in run["end"].task.stdout
    assert any(t.startswith("production:") for t in run.tags)
    local = run_flow(None, "run", "--alpha", "0.5", filename="parameter_flow.py", env=deploy_env)
    _compare(s3_client, "ParameterFlow", f"sfn-{name}", local.run_id)


@pytest.mark.parametrize("kind", ["foreach", "branch"])
def test_foreach_and_branch_flows_match_a_local_run(run_flow, deploy_env, sfn, s3_client, kind):
    source = example_source("foreach" if kind == "foreach" else "counter_branch")
    created = run_flow(source, "step-functions", "create", "--max-workers", "7", env=deploy_env)
    assert created.returncode == 0, created
    flow = "ForeachFlow" if kind == "foreach" else created.stdout.split("(flow ")[1].split(",")[0]
    _, definition = _machine(sfn, flow)
    types = {s["Type"] for _, s in all_states(definition)}
    assert ("Map" in types) == (kind == "foreach") and ("Parallel" in types) == (kind == "branch")
    walker, status, _ = _walk(run_flow, definition, deploy_env)
    assert status == "SUCCEEDED", walker.jobs
    local = run_flow(None, "run", env=deploy_env)
    _compare(s3_client, flow, f"sfn-{walker.name}", local.run_id)
    if kind == "foreach":
        assert walker.concurrency == [7]
        body = [j for j in walker.jobs if j["state"] == "analyze_creatures"]
        assert [j["env"]["FLOWBOOK_SFN_SPLIT_INDEX"] for j in body] == ["0", "1", "2"]
        assert [j["env"]["FLOWBOOK_SFN_TASK_ID"] for j in body] == [
            "analyze_creatures-0", "analyze_creatures-1", "analyze_creatures-2"]  # fmt: skip


def test_nested_foreach_matches_a_local_run(run_flow, deploy_env, sfn, s3_client):
    created = run_flow("nested", "step-functions", "create", env=deploy_env)
    assert created.returncode == 0, created
    flow = created.stdout.split("(flow ")[1].split(",")[0]
    _, definition = _machine(sfn, flow)
    walker, status, _ = _walk(run_flow, definition, deploy_env)
    assert status == "SUCCEEDED", walker.jobs
    local = run_flow(None, "run", env=deploy_env)
    _compare(s3_client, flow, f"sfn-{walker.name}", local.run_id)


def test_moto_executes_the_data_plumbing(run_flow, deploy_env, sfn, aws_moto):
    """moto runs the definition (Choice, Pass, dynamodb:getItem, Map, Parallel) with
    each Batch Task a recording Pass: each step gets the right values."""
    created = run_flow("nested", "step-functions", "create", "--only-json", env=deploy_env)
    assert created.returncode == 0, created
    definition = json.loads(created.stdout)
    passes = tasks_as_passes(definition)
    name = f"plumbing-{uuid.uuid4().hex[:6]}"
    arn = sfn.create_state_machine(name=name, definition=json.dumps(passes), roleArn=ROLE)[
        "stateMachineArn"
    ]
    execution = f"x{uuid.uuid4().hex[:8]}"
    run_id = f"sfn-{execution}"
    # what the foreach tasks would have written: start 2 splits, outer-0 3, outer-1 1
    dynamo = _client(aws_moto, "dynamodb")
    counts = {
        f"{run_id}/start/start": 2,
        f"{run_id}/outer/outer-0": 3,
        f"{run_id}/outer/outer-1": 1,
    }
    for pathspec, n in counts.items():
        item = {
            "pathspec": {"S": pathspec},
            "for_each_cardinality": {"NS": [str(i) for i in range(n)]},
        }
        dynamo.put_item(TableName=aws_moto["table"], Item=item)
    started = sfn.start_execution(
        stateMachineArn=arn, name=execution, input='{"Parameters": {"k": 1}}'
    )
    for _ in range(300):
        described = sfn.describe_execution(executionArn=started["executionArn"])
        if described["status"] != "RUNNING":
            break
        time.sleep(0.1)
    assert described["status"] == "SUCCEEDED", described
    events = sfn.get_execution_history(executionArn=started["executionArn"], maxResults=1000)[
        "events"
    ]
    recorded: dict[str, list[dict]] = {}
    for event in events:
        if event["type"] == "PassStateExited":
            details = event["stateExitedEventDetails"]
            output = json.loads(details["output"])
            if isinstance(output, dict) and "recorded" in output:
                env = {
                    e["Name"]: e["Value"]
                    for e in output["recorded"]["ContainerOverrides"]["Environment"]
                }
                recorded.setdefault(details["name"], []).append(env)
    # the walker agrees with moto on every value of every job
    walker = Walker(passes, {}, run_flow.workdir, execution, '{"Parameters": {"k": 1}}')
    walker.get_item = lambda params: dynamo.get_item(**params)  # the same table
    status, output = walker.run()
    assert status == "SUCCEEDED"
    assert json.loads(described["output"]) == output

    def values(state, *names):
        return sorted(tuple(e.get(n) for n in names) for e in recorded[state])

    init = recorded["flowbook-init"][0]
    assert init["FLOWBOOK_SFN_RUN_ID"] == run_id and init["FLOWBOOK_PARAMETERS"] == '{"k":1}'
    assert values("start", "FLOWBOOK_SFN_TASK_ID", "FLOWBOOK_SFN_INPUT_PATHS") == [
        ("start", f"{run_id}/_parameters/params")]  # fmt: skip
    assert values("outer", "FLOWBOOK_SFN_TASK_ID", "FLOWBOOK_SFN_SPLIT_INDEX", "FLOWBOOK_SFN_INPUT_PATHS") == [
        ("outer-0", "0", f"{run_id}/start/start"), ("outer-1", "1", f"{run_id}/start/start")]  # fmt: skip
    assert values("inner", "FLOWBOOK_SFN_TASK_ID", "FLOWBOOK_SFN_SPLIT_INDEX", "FLOWBOOK_SFN_INPUT_PATHS") == [
        ("inner-0-0", "0", f"{run_id}/outer/outer-0"), ("inner-0-1", "1", f"{run_id}/outer/outer-0"),
        ("inner-0-2", "2", f"{run_id}/outer/outer-0"), ("inner-1-0", "0", f"{run_id}/outer/outer-1")]  # fmt: skip
    # a foreach join gets the ids of its body's last tasks, a static join its branches'
    joins = values("inner_join", "FLOWBOOK_SFN_TASK_ID", "FLOWBOOK_SFN_FOREACH_OUTPUTS")
    assert [(t, [o["task-id"] for o in json.loads(out)]) for t, out in joins] == [
        ("inner_join-0", ["inner-0-0", "inner-0-1", "inner-0-2"]), ("inner_join-1", ["inner-1-0"])]  # fmt: skip
    assert values("p", "FLOWBOOK_SFN_TASK_ID", "FLOWBOOK_SFN_INPUT_PATHS") == [
        ("p-0", f"{run_id}/inner_join/inner_join-0"), ("p-1", f"{run_id}/inner_join/inner_join-1")]  # fmt: skip
    assert values("body_join", "FLOWBOOK_SFN_INPUT_PATHS") == [
        (f"{run_id}/p/p-{i},{run_id}/q/q-{i}",) for i in (0, 1)]  # fmt: skip
    outer_join = recorded["outer_join"][0]
    assert [o["task-id"] for o in json.loads(outer_join["FLOWBOOK_SFN_FOREACH_OUTPUTS"])] == [
        "body_join-0", "body_join-1"]  # fmt: skip
    assert values("end", "FLOWBOOK_SFN_TASK_ID", "FLOWBOOK_SFN_INPUT_PATHS") == [
        ("end", f"{run_id}/outer_join/outer_join")]  # fmt: skip


def test_a_flaky_step_is_retried_with_its_retry_count(run_flow, deploy_env, sfn, s3_client):
    created = run_flow(FLAKY_FLOW, "step-functions", "create", env=deploy_env)
    assert created.returncode == 0, created
    _, definition = _machine(sfn, "FlakyFlow")
    assert definition["States"]["start"]["Retry"][0]["MaxAttempts"] == 2
    walker, status, _ = _walk(run_flow, definition, deploy_env)
    assert status == "SUCCEEDED", walker.jobs
    starts = [j for j in walker.jobs if j["state"] == "start"]
    assert [(j["env"]["FLOWBOOK_SFN_RETRY_COUNT"], j["returncode"]) for j in starts] == [
        ("0", 1),
        ("1", 0),
    ]
    run = s3_client.Flow("FlakyFlow")[f"sfn-{walker.name}"]
    assert run.successful and run.data.ok is True


def test_a_failed_step_marks_the_run_failed(run_flow, deploy_env, sfn, s3_client):
    created = run_flow(FAILING_FLOW, "step-functions", "create", env=deploy_env)
    assert created.returncode == 0, created
    _, definition = _machine(sfn, "FailingFlow")
    walker, status, output = _walk(run_flow, definition, deploy_env)
    assert status == "FAILED" and output["error"] == "FlowFailed", walker.jobs
    assert [j["state"] for j in walker.jobs] == ["flowbook-init", "start", "flowbook-mark-failed"]
    run = s3_client.Flow("FailingFlow")[f"sfn-{walker.name}"]
    assert run.finished and not run.successful


def test_a_hostile_parameter_value_reaches_the_flow_literally(run_flow, deploy_env, sfn, s3_client):
    created = run_flow(TEXT_FLOW, "step-functions", "create", env=deploy_env)
    assert created.returncode == 0, created
    _, definition = _machine(sfn, "TextFlow")
    pwned = Path("/tmp/pwned-sfn")
    pwned.unlink(missing_ok=True)
    for value in ["$(touch /tmp/pwned-sfn)", "'; rm -rf /", "--run-id x", '{"a": 1}']:
        text = json.dumps({"Parameters": json.dumps({"text": value})})
        walker, status, _ = _walk(run_flow, definition, deploy_env, execution_input=text)
        assert status == "SUCCEEDED", walker.jobs
        assert s3_client.Flow("TextFlow")[f"sfn-{walker.name}"].data.seen == value
    assert not pwned.exists()


def test_schedules_create_update_and_remove_the_rule(run_flow, deploy_env, sfn):
    events = _client(deploy_env, "events")
    for schedule, expression in [("hourly=True", "cron(0 * * * ? *)"),
                                 ("cron='0 10 * * ? *'", "cron(0 10 * * ? *)")]:  # fmt: skip
        created = run_flow(_with_schedule(SEED_PARAMETER_FLOW, schedule), "step-functions", "create",
                           env=deploy_env)  # fmt: skip
        assert created.returncode == 0, created
        arn, _ = _machine(sfn, "ParameterFlow")
        rule = events.describe_rule(Name="ParameterFlow")
        assert rule["ScheduleExpression"] == expression and rule["State"] == "ENABLED"
        targets = events.list_targets_by_rule(Rule="ParameterFlow")["Targets"]
        assert (
            len(targets) == 1 and targets[0]["Arn"] == arn and targets[0]["RoleArn"] == EVENTS_ROLE
        )
        assert json.loads(targets[0]["Input"]) == {"Parameters": "{}"}
    removed = run_flow(SEED_PARAMETER_FLOW, "step-functions", "create", env=deploy_env)
    assert removed.returncode == 0 and "Removed EventBridge rule ParameterFlow" in removed.stdout, (
        removed
    )
    assert "ParameterFlow" not in [r["Name"] for r in events.list_rules()["Rules"]]


def test_create_refuses_what_is_missing_or_wrong_before_contacting_aws(run_flow, deploy_env, sfn):
    _delete(sfn, "ParameterFlow")
    scheduled = _with_schedule(SEED_PARAMETER_FLOW, "daily=True")
    for variable in ["FLOWBOOK_SFN_IAM_ROLE", "FLOWBOOK_BATCH_JOB_QUEUE", "FLOWBOOK_IMAGE",
                     "FLOWBOOK_EVENTS_SFN_ACCESS_IAM_ROLE"]:  # fmt: skip
        env = {**deploy_env, variable: ""}
        refused = run_flow(scheduled, "step-functions", "create", env=env)
        assert_refused(refused, variable)
    env = {**deploy_env, "FLOWBOOK_SFN_DYNAMO_DB_TABLE": ""}
    assert_refused(run_flow(example_source("foreach"), "step-functions", "create", env=env),
                   "FLOWBOOK_SFN_DYNAMO_DB_TABLE")  # fmt: skip
    env = {**deploy_env, "FLOWBOOK_DATASTORE": str(run_flow.workdir / "local")}
    assert_refused(run_flow(SEED_PARAMETER_FLOW, "step-functions", "create", env=env), "s3://")
    for bad in ["'0 10 * * * *'", "'61 * * * ? *'", "'0 10 * * ? 1800'"]:
        refused = run_flow(_with_schedule(SEED_PARAMETER_FLOW, f"cron={bad}"), "step-functions",
                           "create", env=deploy_env)  # fmt: skip
        assert_refused(refused, "Invalid cron expression", bad.strip("'"))
    assert "ParameterFlow" not in [m["name"] for m in sfn.list_state_machines()["stateMachines"]]


def test_trigger_of_a_flow_never_deployed_is_refused(run_flow, deploy_env, sfn):
    _delete(sfn, "TextFlow")
    refused = run_flow(TEXT_FLOW, "step-functions", "trigger", env=deploy_env)
    assert_refused(refused, "not deployed", "step-functions create")
