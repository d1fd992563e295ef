"""Compiling flows to Argo documents: strict schema validity, names, cron, decorators,
parameters (deploy-time functions, JSON), --only-json from a file and a notebook."""

from __future__ import annotations

import copy
import json

import nbformat
import pytest
from argo_interpreter import schema_errors, validate
from conftest import assert_refused

from flowbook.deploy.naming import resource_name, step_template_names
from flowbook.deploy.schedule import CronError, to_five_fields, to_six_fields
from flowbook.exceptions import FlowbookError
from flowbook.export.argo import ArgoSettings, cron_workflow, workflow_template
from flowbook.graph import FlowGraph
from flowbook.loader import load_flow_class

S3 = "s3://bucket/prefix"

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
        self.next(self.end)

    @retry(times=4, minutes_between_retries=1)
    @step
    def end(self):
        pass

if __name__ == '__main__':
    DecoratedFlow()
"""


def _compile(run_flow, source, *decospecs):
    path = run_flow.write(source)
    flow_cls = load_flow_class(str(path))
    graph = FlowGraph.from_flow_class(flow_cls)
    if decospecs:
        from flowbook.decorators import parse_decospec

        graph.apply_decospecs([parse_decospec(d) for d in decospecs])
    settings = ArgoSettings(S3, "packages/F/abc", "abc", decospecs=list(decospecs))
    return workflow_template(flow_cls, graph, settings), cron_workflow(flow_cls, graph, settings)


def _templates(document):
    return {t["name"]: t for t in document["spec"]["templates"]}


def test_the_strict_schema_catches_a_typo_and_a_bad_reference(run_flow):
    template, _ = _compile(run_flow, DECORATED_FLOW)
    validate(template)
    typo = copy.deepcopy(template)
    _templates(typo)["start"]["container"]["resourcez"] = {}
    assert any("resourcez" in e for e in schema_errors(typo))
    broken = copy.deepcopy(template)
    _templates(broken)["dag"]["dag"]["tasks"][1]["template"] = "nowhere"
    with pytest.raises(AssertionError, match="nowhere"):
        validate(broken)
    undeclared = json.loads(
        json.dumps(template).replace("parameters.task-id}}", "parameters.tid}}")
    )
    with pytest.raises(AssertionError, match="tid"):
        validate(undeclared)


def test_decorators_become_resources_retries_and_deadlines(run_flow):
    template, cron = _compile(run_flow, DECORATED_FLOW)
    assert cron is None
    steps = _templates(template)
    start = steps["start"]
    assert start["container"]["resources"] == {
        "requests": {"cpu": "2", "memory": "4000M"},
        "limits": {"nvidia.com/gpu": "1"},
    }
    assert start["activeDeadlineSeconds"] == 300
    assert "retryStrategy" not in steps["do-not-retry"]
    assert steps["end"]["retryStrategy"] == {
        "limit": 4, "retryPolicy": "Always", "backoff": {"duration": "60s"}}  # fmt: skip
    args = steps["end"]["container"]["args"]
    assert args[args.index("--max-user-code-retries") + 1] == "4"
    assert "{{retries}}" in args and "{{retries}}" not in steps["start"]["container"]["args"]
    # --with retry: every step without its own @retry gets one (times=0 keeps none)
    template, _ = _compile(run_flow, DECORATED_FLOW, "retry")
    steps = _templates(template)
    assert steps["start"]["retryStrategy"]["limit"] == 3
    assert steps["start"]["retryStrategy"]["backoff"] == {"duration": "120s"}
    assert "retryStrategy" not in steps["do-not-retry"]
    assert steps["start"]["container"]["args"][11:13] == ["--with", "retry"]
    validate(template)


def test_every_container_is_an_argv_list_without_a_shell(run_flow):
    template, _ = _compile(run_flow, DECORATED_FLOW)
    for t in template["spec"]["templates"]:
        if "container" in t:
            assert t["container"]["command"] == ["python"]
            assert t["container"]["args"][:2] == ["-m", "flowbook.deploy.pod"]
            assert not {"sh", "bash", "-c"} & set(t["container"]["args"])


def test_deploy_time_parameter_is_evaluated_once_at_create(run_flow):
    result = run_flow(DEPLOYMENT_INFO_FLOW, "--datastore", S3, "argo-workflows", "create",
                      "--only-json")  # fmt: skip
    assert result.returncode == 0, result
    documents = [json.loads(line) for line in result.stdout.splitlines()]
    assert [d["kind"] for d in documents] == ["WorkflowTemplate"]
    validate(documents[0])
    (param,) = documents[0]["spec"]["arguments"]["parameters"]
    assert param["name"] == "deployment_info"
    assert json.loads(param["value"])["who"] == "tester"
    assert (run_flow.workdir / "calls.txt").read_text() == "called\n"
    init = _templates(documents[0])["init"]["container"]
    assert {"name": "FLOWBOOK_RUN_DEPLOYMENT_INFO",
            "value": "{{workflow.parameters.deployment_info}}"} in init["env"]  # fmt: skip


def test_schedule_gives_a_cron_workflow(run_flow):
    result = run_flow(HOURLY_FLOW, "--datastore", S3, "argo-workflows", "create", "--only-json")
    assert result.returncode == 0, result
    template, cron = (json.loads(line) for line in result.stdout.splitlines())
    validate(template)
    validate(cron)
    assert cron["spec"]["schedules"] == ["0 * * * *"]
    assert cron["spec"]["workflowSpec"]["workflowTemplateRef"]["name"] == "hourlyflow"


@pytest.mark.parametrize(
    "cron, five",
    [("0 10 * * ? *", "0 10 * * *"), ("*/5 1-3 ? * 2-6 *", "*/5 1-3 * * 1-5"),
     ("0 0 * * 0", "0 0 * * 0"), ("0 12 ? JAN MON *", "0 12 * JAN MON")],
)  # fmt: skip
def test_aws_cron_converts(cron, five):
    assert to_five_fields(cron) == five


@pytest.mark.parametrize(
    "cron, needle",
    [("0 10 * * ? 2030", "year"), ("0 25 * * *", "hour 25"), ("0 10 L * ? *", "'L'"),
     ("1 2 3", "expected 5 fields"), ("0 0 * * MON#1 *", "'#'"), ("0 0 ? * *", "'?'")],
)  # fmt: skip
def test_bad_cron_is_refused_naming_it(cron, needle):
    with pytest.raises(CronError, match=needle.replace("?", r"\?")) as info:
        to_five_fields(cron)
    assert cron in str(info.value)


def test_five_fields_to_aws():
    assert to_six_fields("0 10 * * *") == "0 10 * * ? *"
    assert to_six_fields("0 10 * * 1-5") == "0 10 ? * 2-6 *"
    with pytest.raises(CronError, match="only one"):
        to_six_fields("0 10 1 * 1")


def test_names():
    assert step_template_names(["start", "add_one", "end"]) == {
        "start": "start", "add_one": "add-one", "end": "end"}  # fmt: skip
    with pytest.raises(FlowbookError, match="'Start' and 'start'"):
        step_template_names(["Start", "start"])
    long = "A" * 100 + "Flow"
    name = resource_name(long)
    assert len(name) == 63 and name.startswith("aaaa") and name != resource_name("A" * 101 + "Flow")
    assert len(resource_name(long, 52)) == 52
    assert resource_name("My_Flow") == "my-flow"


NOTEBOOK_CELLS = [
    ("%%setup\nimport math", None),
    ("%%parameters\nalpha = 0.5", None),
    ("scale = 3  # exploration", None),
    ("%%step start --next end\nself.x = math.floor(alpha * 10)", None),
    ("%%step end\nprint(self.x)", None),
]


def _notebook(path, cells):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(text) for text, _ in cells]
    nb.metadata["flowbook"] = {"flow_name": "NotebookFlow"}
    nbformat.write(nb, str(path))


def test_a_notebook_deploys_its_flow_without_exploration_cells(run_flow, tmp_path):
    import subprocess
    import sys

    path = tmp_path / "analysis.ipynb"
    _notebook(path, NOTEBOOK_CELLS)
    command = [sys.executable, "-m", "flowbook", "argo-workflows", "create", str(path),
               "--datastore", S3, "--only-json"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, env=run_flow.env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    template = json.loads(result.stdout.splitlines()[0])
    validate(template)
    assert template["metadata"]["name"] == "notebookflow"
    assert template["spec"]["arguments"]["parameters"] == [{"name": "alpha", "value": "0.5"}]
    from flowbook.deploy.package import build_package
    from flowbook.export.flowfile import flow_file_source
    from flowbook.notebook.cells import read_notebook

    package = build_package("NotebookFlow", flow_source=flow_file_source(read_notebook(str(path))))
    assert template["metadata"]["annotations"]["flowbook.io/package-sha"] == package.sha

    blocked = NOTEBOOK_CELLS[:3] + [
        ("%%step start --next end\nself.x = scale", None),
        NOTEBOOK_CELLS[4],
    ]
    _notebook(path, blocked)
    refused = subprocess.run(
        command, capture_output=True, text=True, env=run_flow.env, cwd=tmp_path
    )
    assert refused.returncode == 1 and "'scale'" in refused.stderr and "--force" in refused.stderr
    assert "Traceback" not in refused.stderr
    forced = subprocess.run(command + ["--force"], capture_output=True, text=True, env=run_flow.env)
    assert forced.returncode == 0, forced.stderr


def test_the_code_package_is_deterministic_and_holds_the_flow_directory(run_flow, tmp_path):
    import io
    import tarfile

    from flowbook.deploy.package import build_package, unpack

    path = run_flow.write(DECORATED_FLOW)
    (run_flow.workdir / "helper.py").write_text("X = 1\n")
    first = build_package("DecoratedFlow", flow_file=str(path))
    second = build_package("DecoratedFlow", flow_file=str(path))
    assert first.sha == second.sha and first.key == f"packages/DecoratedFlow/{first.sha}.tgz"
    with tarfile.open(fileobj=io.BytesIO(first.data)) as tar:
        names = tar.getnames()
    assert {"flow/flow.py", "flow/helper.py", "flowbook/__init__.py", "MANIFEST.json"} <= set(names)
    manifest = unpack(first.data, first.sha, str(tmp_path / "unpacked"))
    assert manifest["flow_file"] == "flow.py" and manifest["flowbook_version"]
    with pytest.raises(FlowbookError, match="SHA-256"):
        unpack(first.data, "0" * 64, str(tmp_path / "other"))


def test_a_local_datastore_is_refused_even_for_only_json(run_flow):
    result = run_flow(DECORATED_FLOW, "argo-workflows", "create", "--only-json")
    assert_refused(result, "--datastore s3://", "FLOWBOOK_DATASTORE")
