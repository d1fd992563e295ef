"""Test-only: validate Step Functions definitions, and run one locally.

:func:`validate` runs ``statelint`` (the PyPI package, a Python port of AWS's
validator) and then flowbook's own rules: every Task is a Batch ``submitJob.sync`` or
a ``dynamodb:getItem``; every Batch command is an argv list starting with
``python -m flowbook.deploy.batch`` (no shell); every ``Value.$`` of an environment
variable is a path or an intrinsic function; names within AWS's limits.

:class:`Walker` plays Step Functions for one execution of a definition: Choice
(``And``, ``IsPresent``, ``IsString``), Pass (``Parameters``, ``Result``,
``ResultPath``), Task, Map (``ItemsPath``, ``ItemSelector`` with ``$$.Map.Item.Value``,
``MaxConcurrency`` recorded, iterations one after the other), Parallel, ``Retry`` (with
``$$.State.RetryCount``), ``Catch``, Fail. A Batch Task runs its container command as
a local subprocess (``python`` is this interpreter) with the environment the job would
get (the overrides' ``Environment``, plus ``env``: e.g. moto's endpoint and
credentials); a ``dynamodb:getItem`` Task reads the table through boto3. Anything
else in a definition fails the test: the walker is strict, not forgiving.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from statelint.linter import Linter

BATCH = "arn:aws:states:::batch:submitJob.sync"
GET_ITEM = "arn:aws:states:::dynamodb:getItem"
NAME = re.compile(r"^[A-Za-z0-9_-]{1,80}$")
INTRINSIC = re.compile(r"^States\.(Format|JsonToString)\((.*)\)$", re.S)


# ---------------------------------------------------------------------- validation
def _walk_states(states: dict, found: list) -> None:
    for name, state in states.items():
        found.append((name, state))
        for branch in state.get("Branches", []):
            _walk_states(branch["States"], found)
        if "ItemProcessor" in state:
            _walk_states(state["ItemProcessor"]["States"], found)


def all_states(definition: dict) -> list[tuple[str, dict]]:
    found: list = []
    _walk_states(definition["States"], found)
    return found


def problems(definition: dict) -> list[str]:
    errors = list(Linter.validate(copy.deepcopy(definition)))
    names = [name for name, _ in all_states(definition)]
    if len(names) != len(set(names)):
        errors.append(f"state names repeat: {sorted(n for n in names if names.count(n) > 1)}")
    for name, state in all_states(definition):
        if not NAME.match(name):
            errors.append(f"state name {name!r} is not 1-80 of [A-Za-z0-9_-]")
        if state["Type"] != "Task":
            continue
        if state["Resource"] == GET_ITEM:
            continue
        if state["Resource"] != BATCH:
            errors.append(f"{name}: unexpected resource {state['Resource']}")
            continue
        params = state["Parameters"]
        command = params["ContainerOverrides"]["Command"]
        if command[:3] != ["python", "-m", "flowbook.deploy.batch"]:
            errors.append(f"{name}: command {command[:3]} is not the bootstrap")
        if any(word in ("sh", "bash", "-c") for word in command):
            errors.append(f"{name}: a shell in the command {command}")
        if not all(isinstance(word, str) for word in command):
            errors.append(f"{name}: a command word is not text")
        if not re.match(r"^[A-Za-z0-9_-]{1,128}$", params["JobName"]):
            errors.append(f"{name}: job name {params['JobName']!r}")
        for item in params["ContainerOverrides"]["Environment"]:
            if set(item) not in ({"Name", "Value"}, {"Name", "Value.$"}):
                errors.append(f"{name}: environment entry {item}")
            value = item.get("Value.$")
            if value is not None and not (value.startswith("$") or INTRINSIC.match(value)):
                errors.append(f"{name}: {item['Name']} = {value!r} is no path or function")
    return errors


def validate(definition: dict) -> None:
    """Assert the definition passes statelint and flowbook's own rules."""
    found = problems(definition)
    assert found == [], "\n".join(found)


def tasks_as_passes(definition: dict) -> dict:
    """The definition with every Batch Task a Pass recording its evaluated Parameters
    under ``$.recorded`` (``$$.State.RetryCount``, which a Pass has not, as "0")."""
    result = copy.deepcopy(definition)
    for _, state in all_states(result):
        if state.get("Type") == "Task" and state["Resource"] == BATCH:
            params = json.loads(
                json.dumps(state["Parameters"]).replace(
                    "States.Format('{}', $$.State.RetryCount)", "States.Format('{}', '0')"
                )
            )
            keep = {k: state[k] for k in ("Next", "End") if k in state}
            state.clear()
            state.update({"Type": "Pass", "Parameters": params, "ResultPath": "$.recorded"})
            state.update(keep)
    return result


# ---------------------------------------------------------------------- paths
class Missing(Exception):
    pass


def read_path(path: str, data: object, context: dict) -> object:
    if path.startswith("$$"):
        root, rest = context, path[2:]
    else:
        root, rest = data, path[1:]
    value = root
    for key in [k for k in rest.split(".") if k]:
        if not isinstance(value, dict) or key not in value:
            raise Missing(path)
        value = value[key]
    return value


def _split_args(text: str) -> list[str]:
    args, current, quoted, depth = [], "", False, 0
    i = 0
    while i < len(text):
        c = text[i]
        if quoted:
            if c == "\\":
                current += text[i : i + 2]
                i += 2
                continue
            if c == "'":
                quoted = False
        elif c == "'":
            quoted = True
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        elif c == "," and depth == 0:
            args.append(current.strip())
            current = ""
            i += 1
            continue
        current += c
        i += 1
    if current.strip():
        args.append(current.strip())
    return args


def evaluate(expression: str, data: object, context: dict) -> object:
    match = INTRINSIC.match(expression)
    if not match:
        assert expression.startswith("$"), expression
        return read_path(expression, data, context)
    function, inner = match.groups()
    values = []
    for arg in _split_args(inner):
        if arg.startswith("'"):
            assert arg.endswith("'"), arg
            values.append(arg[1:-1].replace("\\'", "'"))
        else:
            values.append(evaluate(arg, data, context))
    if function == "JsonToString":
        assert len(values) == 1
        return json.dumps(values[0], separators=(",", ":"))
    template, *rest = values
    assert isinstance(template, str) and template.count("{}") == len(rest), (template, rest)
    for value in rest:
        text = value if isinstance(value, str) else json.dumps(value)
        template = template.replace("{}", text, 1)
    return template


def fill(template: object, data: object, context: dict) -> object:
    if isinstance(template, dict):
        found = {}
        for key, value in template.items():
            if key.endswith(".$"):
                found[key[:-2]] = evaluate(value, data, context)
            else:
                found[key] = fill(value, data, context)
        return found
    if isinstance(template, list):
        return [fill(v, data, context) for v in template]
    return template


def put_result(data: object, path: str | None, result: object) -> object:
    if path is None:
        return data
    if path == "$":
        return result
    assert path.startswith("$.") and "$$" not in path, path
    data = copy.deepcopy(data)
    target = data
    keys = path[2:].split(".")
    for key in keys[:-1]:
        target = target.setdefault(key, {})  # type: ignore[union-attr]
    target[keys[-1]] = result  # type: ignore[index]
    return data


# ---------------------------------------------------------------------- the walker
class StateFailed(Exception):
    def __init__(self, error: str, cause: str) -> None:
        super().__init__(f"{error}: {cause}")
        self.error = error
        self.cause = cause


KNOWN = {
    "Type", "Next", "End", "Parameters", "Result", "ResultPath", "ResultSelector",
    "Resource", "Retry", "Catch", "Choices", "Default", "ItemsPath", "ItemSelector",
    "ItemProcessor", "MaxConcurrency", "Branches", "Error", "Cause", "Comment",
}  # fmt: skip


class Walker:
    """Runs one execution of ``definition``; ``jobs`` records every Batch job."""

    def __init__(
        self,
        definition: dict,
        env: dict[str, str],
        workdir: Path,
        execution_name: str,
        execution_input: str,
        state_machine: str = "flow",
        fail_job: object = None,
    ) -> None:
        self.definition = definition
        self.env = env
        self.workdir = workdir
        self.name = execution_name
        self.input = json.loads(execution_input)
        self.jobs: list[dict] = []
        self.concurrency: list[int] = []
        self.fail_job = fail_job  # (state name, attempt) -> exit with 1 instead
        self.context_base = {
            "Execution": {"Name": execution_name, "Input": self.input},
            "StateMachine": {"Name": state_machine},
        }

    def run(self) -> tuple[str, object]:
        try:
            return "SUCCEEDED", self.run_states(self.definition, self.input, {})
        except StateFailed as exc:
            return "FAILED", {"error": exc.error, "cause": exc.cause}

    def run_states(self, machine: dict, data: object, extra: dict) -> object:
        name = machine["StartAt"]
        while True:
            state = machine["States"][name]
            unknown = set(state) - KNOWN
            assert not unknown, (name, unknown)
            kind = state["Type"]
            if kind == "Choice":
                name = self.choose(state, data)
                continue
            if kind == "Fail":
                raise StateFailed(state.get("Error", "States.Fail"), state.get("Cause", ""))
            if kind == "Succeed":
                return data
            try:
                data = self.run_with_retry(name, state, data, extra)
            except StateFailed as exc:
                handler = next(
                    (
                        c
                        for c in state.get("Catch", [])
                        if "States.ALL" in c["ErrorEquals"] or exc.error in c["ErrorEquals"]
                    ),
                    None,
                )
                if handler is None:
                    raise
                error = {"Error": exc.error, "Cause": exc.cause}
                data = put_result(data, handler.get("ResultPath", "$"), error)
                name = handler["Next"]
                continue
            if state.get("End"):
                return data
            name = state["Next"]

    def choose(self, state: dict, data: object) -> str:
        def holds(rule: dict) -> bool:
            if "And" in rule:
                return all(holds(r) for r in rule["And"])
            try:
                value = read_path(rule["Variable"], data, {})
                present = True
            except Missing:
                value, present = None, False
            if "IsPresent" in rule:
                return present == rule["IsPresent"]
            if "IsString" in rule:
                return present and isinstance(value, str) == rule["IsString"]
            raise AssertionError(f"unsupported choice rule {rule}")

        for rule in state["Choices"]:
            if holds(rule):
                return rule["Next"]
        return state["Default"]

    def run_with_retry(self, name: str, state: dict, data: object, extra: dict) -> object:
        retries = 0
        while True:
            try:
                context = {
                    **self.context_base,
                    **extra,
                    "State": {"Name": name, "RetryCount": retries},
                }
                return self.run_state(name, state, data, context, extra, retries)
            except StateFailed as exc:
                rule = next(
                    (
                        r
                        for r in state.get("Retry", [])
                        if "States.ALL" in r["ErrorEquals"] or exc.error in r["ErrorEquals"]
                    ),
                    None,
                )
                if rule is None or retries >= rule.get("MaxAttempts", 3):
                    raise
                retries += 1

    def run_state(
        self, name: str, state: dict, data: object, context: dict, extra: dict, attempt: int
    ) -> object:
        kind = state["Type"]
        if kind == "Pass":
            if "Parameters" in state:
                result = fill(state["Parameters"], data, context)
            else:
                result = state.get("Result", data)
            return put_result(data, state.get("ResultPath", "$"), result)
        if kind == "Task":
            try:
                params = fill(state["Parameters"], data, context)
            except Missing as exc:
                raise StateFailed("States.Runtime", f"no path {exc}") from None
            if state["Resource"] == BATCH:
                result = self.run_job(name, params, attempt)
            elif state["Resource"] == GET_ITEM:
                result = self.get_item(params)
            else:
                raise AssertionError(state["Resource"])
            if "ResultSelector" in state:
                try:
                    result = fill(state["ResultSelector"], result, context)
                except Missing as exc:
                    raise StateFailed("States.Runtime", f"no path {exc}") from None
            return put_result(data, state.get("ResultPath", "$"), result)
        if kind == "Parallel":
            results = [self.run_states(b, data, extra) for b in state["Branches"]]
            return put_result(data, state.get("ResultPath", "$"), results)
        if kind == "Map":
            items = read_path(state.get("ItemsPath", "$"), data, context)
            assert isinstance(items, list), items
            self.concurrency.append(state.get("MaxConcurrency", 0))
            results = []
            for index, item in enumerate(items):
                item_context = {**context, "Map": {"Item": {"Index": index, "Value": item}}}
                selected = fill(state["ItemSelector"], data, item_context)
                processor = state["ItemProcessor"]
                assert processor["ProcessorConfig"] == {"Mode": "INLINE"}
                results.append(self.run_states(processor, selected, {}))
            return put_result(data, state.get("ResultPath", "$"), results)
        raise AssertionError(f"unsupported state type {kind}")

    def run_job(self, name: str, params: dict, attempt: int) -> dict:
        overrides = params["ContainerOverrides"]
        argv = list(overrides["Command"])
        assert argv[0] == "python", argv
        argv[0] = sys.executable
        env = {k: v for k, v in os.environ.items() if not k.startswith(("FLOWBOOK_", "METAFLOW_"))}
        env.update(self.env)
        for item in overrides["Environment"]:
            assert isinstance(item["Value"], str), item  # Batch takes only text
            env[item["Name"]] = item["Value"]
        env["FLOWBOOK_PACKAGE_DIR"] = str(self.workdir / "packages")
        if self.fail_job is not None and self.fail_job(name, attempt):
            argv = [sys.executable, "-c", "import sys; sys.exit(1)"]
        process = subprocess.run(
            argv, cwd=self.workdir, env=env, capture_output=True, text=True, timeout=300
        )
        job = {
            "state": name,
            "argv": argv,
            "env": {i["Name"]: i["Value"] for i in overrides["Environment"]},
            "attempt": attempt,
            "returncode": process.returncode,
            "stdout": process.stdout,
            "stderr": process.stderr,
            "parameters": params,
        }
        self.jobs.append(job)
        if process.returncode != 0:
            raise StateFailed(
                "States.TaskFailed", f"job {params['JobName']} exited {process.returncode}"
            )
        return {"JobName": params["JobName"], "Status": "SUCCEEDED"}

    def get_item(self, params: dict) -> dict:
        import boto3

        client = boto3.client(
            "dynamodb",
            endpoint_url=self.env.get("AWS_ENDPOINT_URL"),
            region_name=self.env.get("AWS_DEFAULT_REGION", "us-east-1"),
            aws_access_key_id=self.env.get("AWS_ACCESS_KEY_ID"),
            aws_secret_access_key=self.env.get("AWS_SECRET_ACCESS_KEY"),
        )
        found = client.get_item(**params)
        found.pop("ResponseMetadata", None)
        return found
