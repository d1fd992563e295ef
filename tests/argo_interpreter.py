"""Test-only: validate Argo documents strictly, and run a WorkflowTemplate locally.

:func:`validate` checks a document against its kind's definition in the official
Argo JSON schema (``../shared/reference/argo-workflows-schema.json``) made strict:
``additionalProperties: false`` on every definition with ``properties`` and
``IntOrString`` allowed to be an integer; then that every DAG task's template exists
and every ``{{tasks.X.outputs.parameters.Y}}`` / ``{{inputs.parameters.Y}}`` names
something declared.

:class:`Interpreter` plays the Argo controller for one Workflow: it walks the DAG
(dependencies, ``withParam`` fan-out, input and output parameters, aggregated outputs
of a fan-out, ``retryStrategy``, ``activeDeadlineSeconds``, ``onExit``) and runs each
container's argv as a local subprocess (``python`` is this interpreter), its
``/mnt/out`` a directory of its own. Substitution is strict: an unknown ``{{...}}``
fails the test.
"""

from __future__ import annotations

import copy
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import jsonschema

SCHEMA_PATH = (
    Path(__file__).resolve().parents[2] / "shared" / "reference" / "argo-workflows-schema.json"
)
if not SCHEMA_PATH.exists():  # the checkout may sit elsewhere
    SCHEMA_PATH = Path("/work/shared/reference/argo-workflows-schema.json")
PREFIX = "io.argoproj.workflow.v1alpha1."
VARIABLE = re.compile(r"\{\{([^{}]*)\}\}")
TASK_OUTPUT = re.compile(
    r"\{\{tasks\.([A-Za-z0-9-]+)\.outputs\.parameters(?:\.([A-Za-z0-9_-]+))?\}\}"
)
INPUT = re.compile(r"\{\{inputs\.parameters\.([A-Za-z0-9_-]+)\}\}")
_SCHEMA: dict = {}


def strict_definitions() -> dict:
    if not _SCHEMA:
        schema = json.loads(SCHEMA_PATH.read_text())
        for definition in schema["definitions"].values():
            if "properties" in definition:
                definition["additionalProperties"] = False
        schema["definitions"]["io.k8s.apimachinery.pkg.util.intstr.IntOrString"] = {
            "type": ["string", "integer"]
        }
        _SCHEMA.update(schema)
    return _SCHEMA["definitions"]


def schema_errors(document: dict) -> list[str]:
    definitions = strict_definitions()
    schema = {"$ref": f"#/definitions/{PREFIX}{document['kind']}", "definitions": definitions}
    validator = jsonschema.Draft7Validator(schema)
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator.iter_errors(document)
    ]


def reference_errors(document: dict) -> list[str]:
    spec = document["spec"]
    templates = {t["name"]: t for t in spec.get("templates", [])}
    errors = []
    if spec.get("entrypoint") and spec["entrypoint"] not in templates:
        errors.append(f"entrypoint {spec['entrypoint']} is no template")
    if spec.get("onExit") and spec["onExit"] not in templates:
        errors.append(f"onExit {spec['onExit']} is no template")
    for template in templates.values():
        declared = {p["name"] for p in template.get("inputs", {}).get("parameters", [])}
        for name in INPUT.findall(json.dumps(template.get("container", {}))):
            if name not in declared:
                errors.append(f"template {template['name']} uses input {name}, not declared")
        if "dag" not in template:
            continue
        tasks = {t["name"]: t for t in template["dag"]["tasks"]}
        text = json.dumps(template)
        for name in INPUT.findall(text):
            if name not in declared:
                errors.append(f"dag {template['name']} uses input {name}, not declared")
        for task in tasks.values():
            if task["template"] not in templates:
                errors.append(f"task {task['name']} names template {task['template']}, missing")
                continue
            target = templates[task["template"]]
            wanted = {p["name"] for p in target.get("inputs", {}).get("parameters", [])}
            given = {p["name"] for p in task.get("arguments", {}).get("parameters", [])}
            if wanted != given:
                errors.append(f"task {task['name']} gives {sorted(given)}, wants {sorted(wanted)}")
            for dep in task.get("dependencies", []):
                if dep not in tasks:
                    errors.append(f"task {task['name']} depends on missing {dep}")
        for task_name, output in TASK_OUTPUT.findall(text):
            if task_name not in tasks:
                errors.append(f"{{{{tasks.{task_name}...}}}} in {template['name']}: no such task")
                continue
            target = templates.get(tasks[task_name]["template"], {})
            outputs = {p["name"] for p in target.get("outputs", {}).get("parameters", [])}
            if output and output not in outputs:
                errors.append(f"tasks.{task_name}.outputs.parameters.{output}: not declared")
    return errors


def validate(document: dict) -> None:
    """Assert ``document`` is valid for its kind (strict schema) and self-consistent."""
    errors = schema_errors(document)
    if document["kind"] in ("WorkflowTemplate", "Workflow") and "templates" in document["spec"]:
        errors += reference_errors(document)
    assert errors == [], "\n".join(errors)


# ---------------------------------------------------------------------- interpreter
class PodFailed(Exception):
    pass


class Interpreter:
    """Runs one Workflow of a WorkflowTemplate locally. ``env`` is added to every pod
    (e.g. the S3 credentials); ``on_pod(template, attempt, process)`` is called when
    a pod starts (a test may kill it)."""

    def __init__(
        self,
        template: dict,
        env: dict[str, str],
        workdir: Path,
        parameters: dict[str, str] | None = None,
        on_pod: Callable[[str, int, subprocess.Popen], None] | None = None,
        workflow_name: str | None = None,
    ) -> None:
        self.doc = copy.deepcopy(template)
        self.spec = self.doc["spec"]
        self.templates = {t["name"]: t for t in self.spec["templates"]}
        self.env = env
        self.workdir = workdir
        self.on_pod = on_pod
        self.name = workflow_name or f"{self.doc['metadata']['name']}-{uuid.uuid4().hex[:5]}"
        self.parameters = {
            p["name"]: p.get("value") for p in self.spec.get("arguments", {}).get("parameters", [])
        }
        for key, value in (parameters or {}).items():
            assert key in self.parameters, f"no workflow parameter {key}"
            self.parameters[key] = value
        self.pods: list[dict] = []  # every pod: template, argv, returncode, attempt
        self.status = "Running"

    # ------------------------------------------------------------ substitution
    def substitute(self, text: str, scope: dict[str, str]) -> str:
        def value(match: re.Match) -> str:
            key = match.group(1).strip()
            if key in scope:
                return scope[key]
            if key == "workflow.name":
                return self.name
            if key == "workflow.status":
                return self.status
            if key.startswith("workflow.parameters."):
                found = self.parameters[key[len("workflow.parameters.") :]]
                assert found is not None, f"workflow parameter {key} has no value"
                return found
            raise AssertionError(f"unknown variable {{{{{key}}}}} in {text!r}")

        return VARIABLE.sub(value, text)

    # ------------------------------------------------------------ running
    def run(self) -> str:
        try:
            self.run_template(self.spec["entrypoint"], {})
            self.status = "Succeeded"
        except PodFailed:
            self.status = "Failed"
        if self.spec.get("onExit"):
            try:
                self.run_template(self.spec["onExit"], {})
            except PodFailed:
                pass
        return self.status

    def run_template(self, name: str, inputs: dict[str, str]) -> dict[str, str]:
        template = self.templates[name]
        declared = [p["name"] for p in template.get("inputs", {}).get("parameters", [])]
        assert sorted(declared) == sorted(inputs), (name, declared, inputs)
        scope = {f"inputs.parameters.{k}": v for k, v in inputs.items()}
        if "dag" in template:
            return self.run_dag(template, scope)
        return self.run_container(template, scope)

    def run_dag(self, template: dict, scope: dict[str, str]) -> dict[str, str]:
        tasks = {t["name"]: t for t in template["dag"]["tasks"]}
        done: dict[str, dict] = {}
        scope = dict(scope)
        while len(done) < len(tasks):
            ready = [
                t
                for name, t in tasks.items()
                if name not in done and all(d in done for d in t.get("dependencies", []))
            ]
            assert ready, f"DAG {template['name']} is stuck: {sorted(set(tasks) - set(done))}"
            for task in ready:
                args = {
                    p["name"]: p["value"] for p in task.get("arguments", {}).get("parameters", [])
                }
                if "withParam" in task:
                    items = json.loads(self.substitute(task["withParam"], scope))
                    assert isinstance(items, list)
                    results = []
                    for item in items:
                        item_scope = {
                            **scope,
                            "item": json.dumps(item)
                            if not isinstance(item, (str, int))
                            else str(item),
                        }
                        values = {k: self.substitute(v, item_scope) for k, v in args.items()}
                        results.append(self.run_template(task["template"], values))
                    scope[f"tasks.{task['name']}.outputs.parameters"] = json.dumps(results)
                    for key in {k for r in results for k in r}:
                        scope[f"tasks.{task['name']}.outputs.parameters.{key}"] = json.dumps(
                            [r.get(key) for r in results]
                        )
                else:
                    values = {k: self.substitute(v, scope) for k, v in args.items()}
                    outputs = self.run_template(task["template"], values)
                    scope[f"tasks.{task['name']}.outputs.parameters"] = json.dumps(outputs)
                    for key, value in outputs.items():
                        scope[f"tasks.{task['name']}.outputs.parameters.{key}"] = value
                done[task["name"]] = task
        outputs = {}
        for param in template.get("outputs", {}).get("parameters", []):
            outputs[param["name"]] = self.substitute(param["valueFrom"]["parameter"], scope)
        return outputs

    def run_container(self, template: dict, scope: dict[str, str]) -> dict[str, str]:
        strategy = template.get("retryStrategy") or {}
        limit = int(strategy.get("limit", 0))
        for attempt in range(limit + 1):
            try:
                return self.run_pod(template, {**scope, "retries": str(attempt)}, attempt)
            except PodFailed:
                if attempt == limit:
                    raise
        raise AssertionError("unreachable")

    def run_pod(self, template: dict, scope: dict[str, str], attempt: int) -> dict[str, str]:
        container = template["container"]
        out = Path(tempfile.mkdtemp(prefix="out-", dir=self.workdir))
        mount = container["volumeMounts"][0]["mountPath"]
        argv = [self.substitute(word, scope) for word in container["command"] + container["args"]]
        assert argv[0] == "python", argv
        argv[0] = sys.executable
        env = {k: v for k, v in os.environ.items() if not k.startswith(("FLOWBOOK_", "METAFLOW_"))}
        env.update(self.env)
        for item in container.get("env", []):
            env[item["name"]] = self.substitute(item["value"], scope)
        env["FLOWBOOK_OUTPUT_DIR"] = str(out)
        env["FLOWBOOK_PACKAGE_DIR"] = str(self.workdir / "packages")
        process = subprocess.Popen(
            argv,
            cwd=self.workdir,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # a pod: killing it kills everything in it
        )
        if self.on_pod:
            self.on_pod(template["name"], attempt, process)
        deadline = template.get("activeDeadlineSeconds")
        try:
            stdout, stderr = process.communicate(timeout=float(deadline) if deadline else 300)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            stdout, stderr = process.communicate()
        record = {
            "template": template["name"],
            "argv": argv,
            "attempt": attempt,
            "returncode": process.returncode,
            "stdout": stdout,
            "stderr": stderr,
        }
        self.pods.append(record)
        if process.returncode != 0:
            raise PodFailed(record)
        outputs = {}
        for param in template.get("outputs", {}).get("parameters", []):
            path = param["valueFrom"]["path"]
            assert path.startswith(mount + "/"), path
            outputs[param["name"]] = (out / path[len(mount) + 1 :]).read_text()
        return outputs


def wait_for(path: Path, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.05)
