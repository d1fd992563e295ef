"""Compiling flows to Step Functions state machines: statelint (PyPI) and flowbook's
own rules on every definition, decorators to Retry/ResourceRequirements/Timeout,
names within AWS's limits, the seed's deploy-time parameters and schedules through
--only-json (which contacts nothing), AWS cron, notebooks (flowbook step-functions
create NB.ipynb, %flow deploy step-functions in a kernel)."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import nbformat
import pytest
from conftest import EXAMPLES_DIR, FLOWS_DIR, assert_refused
from nbclient import NotebookClient
from sfn_walker import all_states, problems, validate

from flowbook.deploy.naming import aws_name, is_aws_name
from flowbook.deploy.schedule import CronError, check_six_fields, schedule_aws_cron
from flowbook.export.step_functions import SfnSettings, state_machine
from flowbook.graph import FlowGraph
from flowbook.loader import load_flow_class

S3 = "s3://bucket/prefix"
#: Enough for --only-json; the endpoint leads nowhere, so contacting AWS would fail.
ONLY_JSON_ENV = {
    "FLOWBOOK_DATASTORE": S3,
    "FLOWBOOK_BATCH_JOB_QUEUE": "queue",
    "FLOWBOOK_SFN_DYNAMO_DB_TABLE": "table",
    "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
    "AWS_DEFAULT_REGION": "us-east-1",
}

DEPLOYMENT_INFO_FLOW = """
from flowbook import FlowSpec, Parameter, step, JSONType
from datetime import datetime
import json

def deployment_info(context):
    with open('calls.txt', 'a') as handle:
        handle.write('called\\n')
    return json.dumps({'who': context.user_name,
                       'when': datetime.now().isoformat()})

class DeploymentInfoFlow(FlowSpec):
    info = Parameter('deployment_info',
                     type=JSONType,
                     default=deployment_info)

    @step
    def start(self):
        print('This flow was deployed at %s by %s'\\
              % (self.info['when'], self.info['who']))
        self.next(self.end)

    @step
    def end(self):
        pass

if __name__ == '__main__':
    DeploymentInfoFlow()
"""

HOURLY_FLOW = """
from flowbook import FlowSpec, schedule, step
from datetime import datetime

@schedule(hourly=True)
class HourlyFlow(FlowSpec):

    @step
    def start(self):
        now = datetime.now().strftime('%Y-%m-%d %H:%M:%S')
        print('time is %s' % now)
        self.next(self.end)

    @step
    def end(self):
        pass

if __name__ == '__main__':
    HourlyFlow()
"""

DECORATED_FLOW = """
from flowbook import FlowSpec, resources, retry, step, timeout

class DecoratedFlow(FlowSpec):
    @resources(cpu=2, memory=4000, gpu=1)
    @timeout(minutes=5)
    @step
    def start(self):
        self.next(self.do_not_retry)

    @retry(times=0)
    @step
    def do_not_retry(self):
        self.next(self.quick)

    @timeout(seconds=5)
    @step
    def quick(self):
        self.next(self.end)

    @retry(times=4, minutes_between_retries=1)
    @step
    def end(self):
        pass

if __name__ == '__main__':
    DecoratedFlow()
"""

LONG = "a" * 90
LONG_FLOW = f"""
from flowbook import FlowSpec, step

class {"Very" + "Long" * 25}Flow(FlowSpec):
    @step
    def start(self):
        self.next(self.step_{LONG})

    @step
    def step_{LONG}(self):
        self.next(self.end)

    @step
    def end(self):
        pass

if __name__ == '__main__':
    {"Very" + "Long" * 25}Flow()
"""


def _compile(path, *decospecs, table="table", max_workers=100):
    flow_cls = load_flow_class(str(path))
    graph = FlowGraph.from_flow_class(flow_cls)
    if decospecs:
        from flowbook.decorators import parse_decospec

        graph.apply_decospecs([parse_decospec(d) for d in decospecs])
    settings = SfnSettings(S3, "packages/F/abc.tgz", "ab" * 32, "queue", "flowbook-F", table,
                           max_workers=max_workers, decospecs=list(decospecs))  # fmt: skip
    return state_machine(flow_cls, graph, settings)


def _env(state):
    return {
        e["Name"]: e.get("Value", e.get("Value.$"))
        for e in state["Parameters"]["ContainerOverrides"]["Environment"]
    }


FLOW_FILES = sorted(
    [p for p in FLOWS_DIR.glob("*.py")]
    + [p for p in EXAMPLES_DIR.glob("*.py") if p.name != "__init__.py"]
)


@pytest.mark.parametrize("path", FLOW_FILES, ids=lambda p: p.name)
def test_every_flow_compiles_to_a_definition_statelint_accepts(path):
    try:
        flow_cls = load_flow_class(str(path))
    except Exception:
        pytest.skip("not a single-flow file")
    try:
        definition = _compile(path)
    except Exception as exc:  # only IncludeFile is refused, with one line
        assert "IncludeFile" in str(exc), exc
        return
    validate(definition)
    graph = FlowGraph.from_flow_class(flow_cls)
    tasks = {
        n for n, s in all_states(definition) if s["Type"] == "Task" and "batch" in s["Resource"]
    }
    assert set(graph.nodes) <= tasks


def test_the_validators_catch_a_typo_a_bad_reference_and_a_shell(tmp_path):
    (tmp_path / "flow.py").write_text(DECORATED_FLOW)
    definition = _compile(tmp_path / "flow.py")
    validate(definition)
    typo = copy.deepcopy(definition)
    typo["States"]["start"]["Nextt"] = "end"
    assert any("Nextt" in p for p in problems(typo))
    dangling = copy.deepcopy(definition)
    dangling["States"]["start"]["Next"] = "nowhere"
    assert any("nowhere" in p for p in problems(dangling))
    shell = copy.deepcopy(definition)
    shell["States"]["start"]["Parameters"]["ContainerOverrides"]["Command"] = ["bash", "-c", "x"]
    assert any("shell" in p or "bootstrap" in p for p in problems(shell))


def test_decorators_become_retries_resources_and_timeouts(tmp_path):
    (tmp_path / "flow.py").write_text(DECORATED_FLOW)
    states = _compile(tmp_path / "flow.py")["States"]
    start = states["start"]
    assert start["Parameters"]["ContainerOverrides"]["ResourceRequirements"] == [
        {"Type": "VCPU", "Value": "2"}, {"Type": "MEMORY", "Value": "4000"},
        {"Type": "GPU", "Value": "1"}]  # fmt: skip
    assert start["Parameters"]["Timeout"] == {"AttemptDurationSeconds": 300}
    assert states["quick"]["Parameters"]["Timeout"] == {
        "AttemptDurationSeconds": 60
    }  # Batch's least
    assert "Retry" not in start and "Retry" not in states["do_not_retry"]
    assert states["end"]["Retry"] == [{"ErrorEquals": ["States.ALL"], "IntervalSeconds": 60,
                                      "MaxAttempts": 4, "BackoffRate": 1.0}]  # fmt: skip
    assert (
        _env(states["end"])["FLOWBOOK_SFN_RETRY_COUNT"]
        == "States.Format('{}', $$.State.RetryCount)"
    )
    assert states["end"]["Parameters"]["ContainerOverrides"]["Command"][-2:] == [
        "--max-user-code-retries", "4"]  # fmt: skip
    with_retry = _compile(tmp_path / "flow.py", "retry")["States"]
    assert with_retry["start"]["Retry"][0]["MaxAttempts"] == 3  # --with retry: Metaflow's 3
    assert "Retry" not in with_retry["do_not_retry"]  # @retry(times=0) wins
    command = with_retry["start"]["Parameters"]["ContainerOverrides"]["Command"]
    assert command[command.index("--") :][:5] == ["--", "--datastore", S3, "--with", "retry"]


def test_max_workers_and_the_foreach_map(tmp_path):
    definition = _compile(EXAMPLES_DIR / "foreach.py", max_workers=500)
    maps = [s for _, s in all_states(definition) if s["Type"] == "Map"]
    assert len(maps) == 1 and maps[0]["MaxConcurrency"] == 500
    assert maps[0]["ItemsPath"] == "$.cardinality.splits"
    assert maps[0]["ItemSelector"]["split_index.$"] == "$$.Map.Item.Value"
    assert _compile(EXAMPLES_DIR / "foreach.py")["States"]
    getters = [s for _, s in all_states(definition) if s.get("Resource", "").endswith("getItem")]
    assert len(getters) == 1 and getters[0]["Parameters"]["TableName"] == "table"
    with pytest.raises(Exception, match="FLOWBOOK_SFN_DYNAMO_DB_TABLE"):
        _compile(EXAMPLES_DIR / "foreach.py", table=None)


def test_long_names_fit_aws_limits(tmp_path):
    (tmp_path / "flow.py").write_text(LONG_FLOW)
    definition = _compile(tmp_path / "flow.py")
    validate(definition)  # every state name 1-80 of [A-Za-z0-9_-], unique
    assert all(len(n) <= 80 for n, _ in all_states(definition))
    name = aws_name("Very" + "Long" * 25 + "Flow")
    assert len(name) == 80 and is_aws_name(name) and name != aws_name("Very" + "Long" * 25 + "Flox")
    assert aws_name("Flöw Name!") == "Fl-w-Name-" and is_aws_name(aws_name("Flöw Name!"))


def test_seed_deploy_time_parameter_is_evaluated_once_at_create(run_flow):
    result = run_flow(
        DEPLOYMENT_INFO_FLOW, "step-functions", "create", "--only-json", env=ONLY_JSON_ENV
    )
    assert result.returncode == 0, result
    definition = json.loads(result.stdout)
    validate(definition)
    info = json.loads(_env(definition["States"]["flowbook-init"])["FLOWBOOK_RUN_DEPLOYMENT_INFO"])
    assert info["who"] == "tester" and "when" in info
    assert (run_flow.workdir / "calls.txt").read_text() == "called\n"


def test_only_json_contacts_nothing_and_needs_no_roles(run_flow):
    result = run_flow(HOURLY_FLOW, "step-functions", "create", "--only-json", env=ONLY_JSON_ENV)
    assert result.returncode == 0, result
    validate(json.loads(result.stdout))
    refused = run_flow(HOURLY_FLOW, "step-functions", "create", env=ONLY_JSON_ENV)
    assert_refused(refused, "FLOWBOOK_SFN_IAM_ROLE")


@pytest.mark.parametrize(
    "schedule, expression",
    [({"hourly": True}, "0 * * * ? *"), ({"daily": True}, "0 0 * * ? *"),
     ({"weekly": True}, "0 0 ? * SUN *"), ({"cron": "0 10 * * ? *"}, "0 10 * * ? *"),
     ({"cron": "0 1 * * 1"}, "0 1 ? * 2 *"), ({"cron": "15 10 ? * 6L 2022-2023"}, "15 10 ? * 6L 2022-2023"),
     ({"cron": "0 12 L * ? *"}, "0 12 L * ? *"), ({"cron": "0 10 ? * 2#1 *"}, "0 10 ? * 2#1 *")],
)  # fmt: skip
def test_schedules_become_aws_cron(schedule, expression):
    assert schedule_aws_cron(schedule) == expression


@pytest.mark.parametrize(
    "cron", ["0 10 * * * *", "0 10 ? * ? *", "61 10 * * ? *", "0 10 * * ? 1800", "bad",
             "0 10 ? * 9 *", "0 10 ? * 2#7 *", "0 10 * * ?"],
)  # fmt: skip
def test_invalid_aws_cron_is_refused_naming_it(cron):
    with pytest.raises(CronError, match="Invalid cron expression"):
        schedule_aws_cron({"cron": cron})
    if len(cron.split()) == 6:
        with pytest.raises(CronError, match=cron.replace("?", r"\?").replace("*", r"\*")):
            check_six_fields(cron)


NOTEBOOK_CELLS = [
    "%%setup\nimport math",
    "%%parameters\nalpha = 0.5",
    "scale = 3  # exploration",
    "%%step start --next end\nself.x = math.floor(alpha * 10)",
    "%%step end\nprint(self.x)",
]


def test_flowbook_step_functions_create_a_notebook(run_flow, tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(text) for text in NOTEBOOK_CELLS]
    nb.metadata["flowbook"] = {"flow_name": "NotebookFlow"}
    path = tmp_path / "analysis.ipynb"
    nbformat.write(nb, str(path))
    command = [
        sys.executable,
        "-m",
        "flowbook",
        "step-functions",
        "create",
        str(path),
        "--only-json",
    ]
    env = {**run_flow.env, **ONLY_JSON_ENV}
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    definition = json.loads(result.stdout)
    validate(definition)
    assert _env(definition["States"]["flowbook-init"])["FLOWBOOK_RUN_ALPHA"] == "0.5"
    assert definition["States"]["start"]["Parameters"]["JobName"] == "NotebookFlow-start"


def test_flow_deploy_step_functions_in_a_kernel(tmp_path, monkeypatch):
    for key, value in ONLY_JSON_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("FLOWBOOK_DATASTORE", str(tmp_path / "local"))  # the session's own
    cells = ["%load_ext flowbook\n%flow name KernelSfnFlow", "%%setup\nimport math",
             "%%step start --next end\nself.x = math.floor(2.5)", "%%step end\nprint(self.x)",
             f"%flow deploy step-functions --only-json --max-workers 9 --datastore {S3}",
             "%flow deploy step-functions --only-json"]  # fmt: skip
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nb.cells = [nbformat.v4.new_code_cell(c) for c in cells]
    NotebookClient(nb, kernel_name="python3", timeout=180, allow_errors=True).execute(
        cwd=str(tmp_path)
    )
    assert [o for c in nb.cells[:-1] for o in c.outputs if o.output_type == "error"] == []
    out = "".join(o.get("text", "") for o in nb.cells[-2].outputs if o.output_type == "stream")
    definition = json.loads(out)
    validate(definition)
    assert definition["Comment"].startswith("flowbook flow KernelSfnFlow")
    assert definition["States"]["end"]["Parameters"]["JobName"] == "KernelSfnFlow-end"
    # the session's local datastore cannot be deployed: one line naming it
    errors = [o for o in nb.cells[-1].outputs if o.output_type == "error"]
    assert len(errors) == 1 and "s3://" in errors[0].evalue
