"""Argo Workflows end to end without a cluster: ``create`` and ``trigger`` against a
fake Kubernetes API on 127.0.0.1 (recording requests), the code package uploaded to
S3 served by moto, and the recorded WorkflowTemplate run by tests/argo_interpreter.py,
every pod a real subprocess. The Client reads the runs; their artifacts equal a local
``run``'s."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from argo_interpreter import Interpreter, validate, wait_for
from conftest import MOTO_BUCKET, assert_refused, example_source

from flowbook.datastore import Datastore

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

KILLED_FLOW = """
import os, time
from flowbook import FlowSpec, retry, step

class KilledFlow(FlowSpec):
    @step
    def start(self):
        self.xs = [1, 2]
        self.next(self.body, foreach='xs')

    @retry(times=2, minutes_between_retries=0)
    @step
    def body(self):
        marker = os.path.join(os.environ['MARKER_DIR'], 'started-%d' % self.input)
        if self.input == 2 and not os.path.exists(marker):
            open(marker, 'w').close()
            time.sleep(60)  # the pod is killed here
        self.y = self.input * 10
        self.next(self.join)

    @step
    def join(self, inputs):
        self.total = sum(i.y for i in inputs)
        self.next(self.end)

    @step
    def end(self):
        print('total', self.total)

if __name__ == '__main__':
    KilledFlow()
"""


# ---------------------------------------------------------------------- fake Kubernetes
class FakeKubernetes:
    """Argo's custom resources in memory, served over plain HTTP; every request recorded."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict | None]] = []
        self.objects: dict[tuple[str, str, str], dict] = {}
        self.counter = 0
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _body(self):
                length = int(self.headers.get("Content-Length") or 0)
                return json.loads(self.rfile.read(length)) if length else None

            def _send(self, status, body):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _route(self):
                parts = self.path.split("?")[0].strip("/").split("/")
                # apis/argoproj.io/v1alpha1/namespaces/NS/PLURAL[/NAME]
                assert parts[:3] == ["apis", "argoproj.io", "v1alpha1"], self.path
                return parts[4], parts[5], parts[6] if len(parts) > 6 else None

            def do_GET(self):
                ns, plural, name = self._route()
                fake.requests.append(("GET", self.path, None))
                found = fake.objects.get((ns, plural, name))
                if found is None:
                    self._send(404, {"kind": "Status", "message": "not found", "code": 404})
                else:
                    self._send(200, found)

            def do_POST(self):
                ns, plural, _ = self._route()
                body = self._body()
                fake.requests.append(("POST", self.path, body))
                meta = body["metadata"]
                if "name" not in meta:
                    fake.counter += 1
                    meta["name"] = f"{meta['generateName']}{fake.counter:05d}"
                if (ns, plural, meta["name"]) in fake.objects:
                    self._send(409, {"kind": "Status", "message": "exists", "code": 409})
                    return
                meta["resourceVersion"] = "1"
                fake.objects[(ns, plural, meta["name"])] = body
                self._send(201, body)

            def do_PUT(self):
                ns, plural, name = self._route()
                body = self._body()
                fake.requests.append(("PUT", self.path, body))
                old = fake.objects[(ns, plural, name)]
                assert body["metadata"]["resourceVersion"] == old["metadata"]["resourceVersion"]
                body["metadata"]["resourceVersion"] = str(
                    int(old["metadata"]["resourceVersion"]) + 1
                )
                fake.objects[(ns, plural, name)] = body
                self._send(200, body)

            def do_DELETE(self):
                ns, plural, name = self._route()
                fake.requests.append(("DELETE", self.path, None))
                fake.objects.pop((ns, plural, name), None)
                self._send(200, {"kind": "Status", "status": "Success"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def kubeconfig(self, path: Path) -> Path:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "me", "user": {"token": "secret-token"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "me"}}],
            "current-context": "fake",
        }
        path.write_text(json.dumps(config))
        return path

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def kube(tmp_path):
    fake = FakeKubernetes()
    yield fake
    fake.stop()


@pytest.fixture
def deploy_env(kube, tmp_path, moto_s3):
    url = f"s3://{MOTO_BUCKET}/{uuid.uuid4().hex[:8]}"
    env = {
        **moto_s3,
        "FLOWBOOK_DATASTORE": url,
        "KUBECONFIG": str(kube.kubeconfig(tmp_path / "kubeconfig")),
        "FLOWBOOK_ARGO_NAMESPACE": "flows",
    }
    return env


def _run(run_flow, template, env, parameters=None, on_pod=None):
    workdir = run_flow.workdir / f"argo-{uuid.uuid4().hex[:6]}"
    workdir.mkdir()
    interpreter = Interpreter(
        template, {**env, "MARKER_DIR": str(run_flow.workdir)}, workdir, parameters, on_pod
    )
    status = interpreter.run()
    return interpreter, status


def _template(kube):
    found = [v for (ns, plural, _), v in kube.objects.items() if plural == "workflowtemplates"]
    assert len(found) == 1
    assert found[0]["metadata"]["namespace"] == "flows"
    validate(found[0])
    return found[0]


def _compare(client, flow, theirs, ours):
    """Both runs successful, every task's artifacts equal (keyed by step and place in
    the splits, as test_one_task compares them)."""
    from test_one_task import artifacts_by_position

    their_run = client.Flow(flow)[theirs]
    assert their_run.successful and their_run.finished
    store = Datastore(client.get_datastore())
    mine, local = (
        artifacts_by_position(store, flow, theirs),
        artifacts_by_position(store, flow, ours),
    )
    assert mine.keys() == local.keys() and mine == local


@pytest.fixture
def s3_client(moto_s3, deploy_env, monkeypatch):
    import flowbook.client as fb_client

    for key, value in moto_s3.items():
        monkeypatch.setenv(key, value)
    fb_client.datastore(deploy_env["FLOWBOOK_DATASTORE"])
    fb_client.namespace(None)
    yield fb_client
    fb_client.datastore(None)
    fb_client.default_namespace()


# ---------------------------------------------------------------------- tests
def test_seed_parameter_flow_create_trigger_and_run(run_flow, kube, deploy_env, s3_client):
    created = run_flow(SEED_PARAMETER_FLOW, "--with", "retry", "argo-workflows", "create",
                       filename="parameter_flow.py", env=deploy_env)  # fmt: skip
    assert created.returncode == 0, created
    assert "Production namespace: production:" in created.stdout
    template = _template(kube)
    assert template["spec"]["arguments"]["parameters"][0] == {
        "name": "alpha", "description": "Learning rate", "value": "0.01"}  # fmt: skip
    steps = {t["name"]: t for t in template["spec"]["templates"] if "container" in t}
    assert steps["start"]["retryStrategy"]["limit"] == 3
    assert [r[0] for r in kube.requests] == ["GET", "POST", "GET"]  # created; no cron
    # the package is in S3 under its hash
    sha = template["metadata"]["annotations"]["flowbook.io/package-sha"]
    store = Datastore(deploy_env["FLOWBOOK_DATASTORE"])
    assert store.storage.exists(f"packages/ParameterFlow/{sha}.tgz")

    again = run_flow(None, "--with", "retry", "argo-workflows", "create",
                     filename="parameter_flow.py", env=deploy_env)  # fmt: skip
    assert again.returncode == 0, again
    assert [r[0] for r in kube.requests[3:]] == ["GET", "PUT", "GET"]  # updated; no cron

    triggered = run_flow(None, "argo-workflows", "trigger", "--alpha", "0.5",
                         filename="parameter_flow.py", env=deploy_env)  # fmt: skip
    assert triggered.returncode == 0, triggered
    workflow = kube.requests[-1][2]
    assert kube.requests[-1][0] == "POST" and workflow["kind"] == "Workflow"
    assert workflow["spec"]["arguments"]["parameters"] == [{"name": "alpha", "value": "0.5"}]
    validate(workflow)
    name = kube.objects[("flows", "workflows", workflow["metadata"]["name"])]["metadata"]["name"]
    assert f"ParameterFlow/argo-{name}" in triggered.stdout

    bad = run_flow(None, "argo-workflows", "trigger", "--alpha", "fast",
                   filename="parameter_flow.py", env=deploy_env)  # fmt: skip
    assert_refused(bad, "alpha", "float")

    interpreter = Interpreter(template, {**deploy_env}, run_flow.workdir, {"alpha": "0.5"},
                              workflow_name=name)  # fmt: skip
    assert interpreter.run() == "Succeeded", interpreter.pods
    run = s3_client.Flow("ParameterFlow")[f"argo-{name}"]
    assert run.successful and run.data.alpha == 0.5
    assert "alpha is still 0.500000" in run["end"].task.stdout
    assert any(t.startswith("production:") for t in run.tags)
    local = run_flow(None, "run", "--alpha", "0.5", filename="parameter_flow.py", env=deploy_env)
    _compare(s3_client, "ParameterFlow", f"argo-{name}", local.run_id)


@pytest.mark.parametrize("kind", ["foreach", "branch"])
def test_foreach_and_branch_flows_match_a_local_run(run_flow, kube, deploy_env, s3_client, kind):
    source = example_source("foreach" if kind == "foreach" else "counter_branch")
    created = run_flow(source, "argo-workflows", "create", "--max-workers", "7", env=deploy_env)
    assert created.returncode == 0, created
    template = _template(kube)
    assert template["spec"]["parallelism"] == 7
    interpreter, status = _run(run_flow, template, deploy_env)
    assert status == "Succeeded", interpreter.pods
    flow = template["metadata"]["annotations"]["flowbook.io/flow-name"]
    local = run_flow(None, "run", env=deploy_env)
    _compare(s3_client, flow, f"argo-{interpreter.name}", local.run_id)
    if kind == "foreach":
        starts = [p for p in interpreter.pods if p["template"] == "analyze-creatures"]
        assert len(starts) == 3
        assert [p["argv"][p["argv"].index("--split-index") + 1] for p in starts] == ["0", "1", "2"]


def test_nested_foreach_matches_a_local_run(run_flow, kube, deploy_env, s3_client):
    created = run_flow("nested", "argo-workflows", "create", env=deploy_env)
    assert created.returncode == 0, created
    template = _template(kube)
    interpreter, status = _run(run_flow, template, deploy_env)
    assert status == "Succeeded", interpreter.pods
    local = run_flow(None, "run", env=deploy_env)
    flow = template["metadata"]["annotations"]["flowbook.io/flow-name"]
    _compare(s3_client, flow, f"argo-{interpreter.name}", local.run_id)


def test_a_pod_killed_mid_task_is_retried_into_one_successful_run(
    run_flow, kube, deploy_env, s3_client
):
    created = run_flow(KILLED_FLOW, "argo-workflows", "create", env=deploy_env)
    assert created.returncode == 0, created
    template = _template(kube)
    killed = []

    def on_pod(name, attempt, process):
        args = process.args
        if name == "body" and attempt == 0 and args[args.index("--split-index") + 1] == "1":
            wait_for(run_flow.workdir / "started-2")
            time.sleep(0.3)  # the task is inside its step
            os.killpg(process.pid, signal.SIGKILL)
            killed.append(process.pid)

    interpreter, status = _run(run_flow, template, deploy_env, on_pod=on_pod)
    assert killed and status == "Succeeded", interpreter.pods
    bodies = [p for p in interpreter.pods if p["template"] == "body"]
    assert [(p["attempt"], p["returncode"]) for p in bodies] == [(0, 0), (0, -9), (1, 0)]
    run = s3_client.Flow("KilledFlow")[f"argo-{interpreter.name}"]
    assert run.successful and run.data.total == 30
    tasks = list(run["body"])
    assert len(tasks) == 2  # the retried pod reused its task id


def test_a_hostile_parameter_value_reaches_the_flow_literally(
    run_flow, kube, deploy_env, s3_client, tmp_path
):
    created = run_flow(TEXT_FLOW, "argo-workflows", "create", env=deploy_env)
    assert created.returncode == 0, created
    template = _template(kube)
    pwned = Path("/tmp/pwned")
    if pwned.exists():
        pwned.unlink()
    for value in ["$(touch /tmp/pwned)", "'; rm -rf /", "--run-id x"]:
        interpreter, status = _run(run_flow, template, deploy_env, {"text": value})
        assert status == "Succeeded", interpreter.pods
        assert s3_client.Flow("TextFlow")[f"argo-{interpreter.name}"].data.seen == value
    assert not pwned.exists()


def test_create_refuses_a_local_datastore_and_bad_schedules(run_flow, kube, deploy_env):
    env = {**deploy_env, "FLOWBOOK_DATASTORE": str(run_flow.workdir / "local")}
    refused = run_flow(SEED_PARAMETER_FLOW, "argo-workflows", "create", env=env)
    assert_refused(refused, "--datastore s3://")
    bad_cron = SEED_PARAMETER_FLOW.replace(
        "class ParameterFlow", "@schedule(cron='0 10 * * ? 2024')\nclass ParameterFlow"
    ).replace("import FlowSpec", "import FlowSpec, schedule")
    refused = run_flow(bad_cron, "argo-workflows", "create", env=deploy_env)
    assert_refused(refused, "0 10 * * ? 2024")
    assert kube.requests == []


def test_a_scheduled_flow_gets_a_cron_workflow_and_loses_it(run_flow, kube, deploy_env):
    hourly = SEED_PARAMETER_FLOW.replace(
        "class ParameterFlow", "@schedule(cron='0 10 * * ? *')\nclass ParameterFlow"
    ).replace("import FlowSpec", "import FlowSpec, schedule")
    created = run_flow(hourly, "argo-workflows", "create", env=deploy_env)
    assert created.returncode == 0, created
    cron = kube.objects[("flows", "cronworkflows", "parameterflow")]
    validate(cron)
    assert cron["spec"]["schedules"] == ["0 10 * * *"]
    assert cron["spec"]["workflowSpec"]["workflowTemplateRef"] == {"name": "parameterflow"}
    again = run_flow(SEED_PARAMETER_FLOW, "argo-workflows", "create", env=deploy_env)
    assert again.returncode == 0 and "Removed CronWorkflow" in again.stdout, again
    assert ("flows", "cronworkflows", "parameterflow") not in kube.objects


def test_trigger_of_a_flow_never_deployed_is_refused(run_flow, kube, deploy_env):
    refused = run_flow(SEED_PARAMETER_FLOW, "argo-workflows", "trigger", env=deploy_env)
    assert_refused(refused, "not deployed", "argo-workflows create")


def test_a_notebooks_flow_deploys_and_runs_like_flowbook_run(run_flow, kube, deploy_env, s3_client):
    """``flowbook argo-workflows create NB.ipynb``: the package holds the notebook's
    exported flow (no exploration cell), and the run equals ``flowbook run NB.ipynb``."""
    import shutil
    import subprocess
    import sys

    notebook = run_flow.workdir / "foreach.ipynb"
    shutil.copy(Path(__file__).parent.parent / "notebooks" / "foreach.ipynb", notebook)
    env = {**run_flow.env, **deploy_env}

    def flowbook(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "flowbook", *args],
            cwd=run_flow.workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )

    created = flowbook("argo-workflows", "create", str(notebook))
    assert created.returncode == 0, created.stderr
    template = _template(kube)
    assert template["metadata"]["annotations"]["flowbook.io/flow-name"] == "ForeachFlow"
    interpreter, status = _run(run_flow, template, deploy_env)
    assert status == "Succeeded", interpreter.pods
    local = flowbook("run", str(notebook))
    assert local.returncode == 0, local.stderr
    local_run = s3_client.Flow("ForeachFlow").latest_run
    assert local_run.id != f"argo-{interpreter.name}"
    _compare(s3_client, "ForeachFlow", f"argo-{interpreter.name}", local_run.id)


def test_flow_deploy_in_a_kernel_prints_the_documents(run_flow, deploy_env, monkeypatch):
    """``%flow deploy argo-workflows --only-json`` in a real kernel: the notebook's flow
    as a valid WorkflowTemplate; an exploration name blocks it unless --force."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    cells = [
        "%load_ext flowbook\n%flow name KernelDeployFlow",
        "%%step start --next end\nself.x = 1",
        "%%step end\nprint(self.x)",
        "%flow deploy argo-workflows --only-json",
        "helper = 3",
        "%%step end\nprint(self.x, helper)",
        "%flow deploy argo-workflows --only-json",
        "%flow deploy argo-workflows --only-json --force",
    ]
    nb.cells = [nbformat.v4.new_code_cell(source) for source in cells]
    for key, value in {**deploy_env, "USER": "tester"}.items():
        monkeypatch.setenv(key, value)
    NotebookClient(nb, kernel_name="python3", timeout=180, allow_errors=True).execute(
        cwd=str(run_flow.workdir)
    )

    def outputs(index: int) -> tuple[str, list[str]]:
        cell = nb.cells[index]
        text = "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")
        errors = [o["evalue"] for o in cell.outputs if o.output_type == "error"]
        return text, errors

    for index in (3, 7):
        text, errors = outputs(index)
        assert not errors, errors
        documents = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
        assert [d["kind"] for d in documents] == ["WorkflowTemplate"], text
        validate(documents[0])
        assert documents[0]["metadata"]["annotations"]["flowbook.io/flow-name"] == (
            "KernelDeployFlow"
        )
    text, errors = outputs(6)
    assert errors and "helper" in errors[0] and "--force" in errors[0], (text, errors)
