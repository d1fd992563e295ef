"""Reuse of unchanged steps (``--reuse``): what is reused, what runs, and why.

Every test runs real flows twice or more as subprocesses on one datastore and
checks the one-line decision each step prints, the records the Client reads
(``reused_from``, ``run_reason``) and that the reused run's data is what running
it would have made.
"""

from __future__ import annotations

import re
import textwrap

import pytest
from conftest import FlowRunner

FLOW = """
import os
from flowbook import FlowSpec, Parameter, step, retry, reuse, current
from helpers import double

SCALE = 3
UNUSED = 1


class ReuseFlow(FlowSpec):
    alpha = Parameter("alpha", default=0.1)
    label = Parameter("label", default="a")

    @step
    def start(self):
        self.base = double(SCALE)
        self.items = [1, 2, 3]
        self.next(self.prepare)

    @step
    def prepare(self):
        self.features = self.base + 1
        self.next(self.train)

    @step
    def train(self):
        self.model = self.features * self.alpha
        self.next(self.end)

    @step
    def end(self):
        print("model", self.model)


if __name__ == "__main__":
    ReuseFlow()
"""

HELPERS = "def double(x):\n    return 2 * x\n"


def decisions(output: str) -> dict[str, str]:
    """``step -> what the run printed about it`` (``reused from ...`` / ``runs (...)``)."""
    found = {}
    for line in output.splitlines():
        match = re.search(r"\d ([a-z_]+): ((reused from|runs) .*)$", line)
        if match:
            found.setdefault(match.group(1), match.group(2))
    return found


@pytest.fixture
def reuse_flow(run_flow: FlowRunner):
    (run_flow.workdir / "helpers.py").write_text(HELPERS)

    def run(source: str = FLOW, *args: str, env: dict | None = None):
        result = run_flow(source, "run", "--reuse", *args, env=env)
        assert result.returncode == 0, result
        return result

    return run


def test_a_second_run_reuses_every_step_and_its_data_is_the_same(reuse_flow, client):
    first = reuse_flow()
    assert decisions(first.stdout) == {
        step: "runs (no earlier task with this key)"
        for step in ("start", "prepare", "train", "end")
    }
    second = reuse_flow()
    said = decisions(second.stdout)
    assert set(said) == {"start", "prepare", "train", "end"}
    for step, text in said.items():
        assert re.fullmatch(
            rf"reused from {first.run_id}/{step}/\d+ \(same code, inputs and parameters\)", text
        ), text
    assert "model" not in second.stdout  # no task ran
    old = client.Run(f"ReuseFlow/{first.run_id}")
    new = client.Run(f"ReuseFlow/{second.run_id}")
    assert new.successful
    for step in ("start", "prepare", "train", "end"):
        task, earlier = new[step].task, old[step].task
        assert task.reused_from == earlier.pathspec
        assert task.origin_pathspec == earlier.pathspec
        assert task.run_reason == said[step]
        assert {a.id: a.sha for a in task} == {a.id: a.sha for a in earlier}
    assert new.data.model == pytest.approx(0.7)
    assert old["end"].task.run_reason == "runs (no earlier task with this key)"


def test_a_code_edit_runs_that_step_and_what_reads_its_output(reuse_flow, client):
    first = reuse_flow()
    edited = FLOW.replace("self.features * self.alpha", "self.features * self.alpha * 2")
    second = reuse_flow(edited)
    said = decisions(second.stdout)
    line = edited.splitlines().index("        self.model = self.features * self.alpha * 2") + 1
    assert said["start"].startswith(f"reused from {first.run_id}/start/")
    assert said["prepare"].startswith(f"reused from {first.run_id}/prepare/")
    assert said["train"] == f"runs (its code changed: line {line} of flow.py)"
    assert said["end"] == "runs (input 'model' changed, from step 'train')"
    assert client.Run(f"ReuseFlow/{second.run_id}").data.model == pytest.approx(1.4)


def test_module_level_code_counts_only_when_a_step_uses_it(reuse_flow):
    reuse_flow()
    unused = reuse_flow(FLOW.replace("UNUSED = 1", "UNUSED = 2"))
    assert all(t.startswith("reused from") for t in decisions(unused.stdout).values())
    used = reuse_flow(FLOW.replace("SCALE = 3", "SCALE = 4"))
    said = decisions(used.stdout)
    assert said["start"] == "runs (the module-level code it uses changed: flow.py:6)"
    assert said["prepare"] == "runs (input 'base' changed, from step 'start')"


def test_a_helper_module_of_the_flows_directory_counts(reuse_flow, run_flow):
    reuse_flow()
    (run_flow.workdir / "helpers.py").write_text("def double(x):\n    return x + x\n")
    said = decisions(reuse_flow().stdout)
    assert said["start"] == "runs (helper module helpers.py changed)"
    # the same bytes from a re-run parent do not make its children run
    assert said["prepare"].startswith("reused from")
    assert said["train"].startswith("reused from")


def test_a_parameter_counts_only_for_the_steps_that_read_it(reuse_flow, client):
    first = reuse_flow()
    second = reuse_flow(FLOW, "--alpha", "0.2", "--label", "b")
    said = decisions(second.stdout)
    assert said["start"].startswith(f"reused from {first.run_id}/start/")
    assert said["prepare"].startswith(f"reused from {first.run_id}/prepare/")
    assert said["train"] == "runs (parameter alpha 0.1 -> 0.2)"
    # a reused task passes on this run's values of what it did not read
    run = client.Run(f"ReuseFlow/{second.run_id}")
    assert run["prepare"].task.data.label == "b"
    assert run["prepare"].task.data.alpha == 0.2
    assert run.data.model == pytest.approx(1.4)


def test_run_decorators_do_not_change_what_a_step_computes(reuse_flow, run_flow):
    reuse_flow()
    retried = FLOW.replace(
        "    @step\n    def train", "    @retry(times=2)\n    @step\n    def train"
    )
    said = decisions(reuse_flow(retried).stdout)
    assert all(text.startswith("reused from") for text in said.values()), said
    result = run_flow(None, "--with", "timeout:seconds=60", "run", "--reuse")
    assert result.returncode == 0, result
    assert all(text.startswith("reused from") for text in decisions(result.stdout).values())


def test_reuse_false_opts_a_step_out(reuse_flow):
    source = FLOW.replace(
        "    @step\n    def prepare", "    @reuse(False)\n    @step\n    def prepare"
    )
    reuse_flow(source)
    said = decisions(reuse_flow(source).stdout)
    assert said["prepare"] == "runs (@reuse(False))"
    assert said["start"].startswith("reused from")
    assert said["train"].startswith("reused from")  # prepare made the same bytes again


FOREACH = """
from flowbook import FlowSpec, Parameter, step


class SplitReuseFlow(FlowSpec):
    items = Parameter("items", default="1,2,3")

    @step
    def start(self):
        self.values = [int(v) for v in self.items.split(",")]
        self.next(self.square, foreach="values")

    @step
    def square(self):
        print("squaring", self.input)
        self.result = self.input * self.input
        self.next(self.join)

    @step
    def join(self, inputs):
        self.total = sum(i.result for i in inputs)
        self.merge_artifacts(inputs, exclude=["result"])
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    SplitReuseFlow()
"""


def test_a_foreach_is_reused_split_by_split_and_its_list_counts(run_flow, client):
    first = run_flow(FOREACH, "run", "--reuse")
    assert first.returncode == 0, first
    second = run_flow(None, "run", "--reuse")
    said = decisions(second.stdout)
    assert said["square"].startswith(f"reused from {first.run_id}/square/")
    assert "square: 3 of 3 tasks reused, 0 ran." in second.stdout
    assert "squaring" not in second.stdout
    third = run_flow(None, "run", "--reuse", "--items", "1,2,3,4")
    said = decisions(third.stdout)
    assert said["start"] == "runs (parameter items '1,2,3' -> '1,2,3,4')"
    assert said["square"] == ("runs (its foreach input changed: the list 'values' of step 'start')")
    assert said["join"] == "runs (no earlier task with this key)" or said["join"].startswith(
        "runs ("
    )
    run = client.Run(f"SplitReuseFlow/{third.run_id}")
    assert run.data.total == 1 + 4 + 9 + 16
    assert sorted(t.data.result for t in run["square"]) == [1, 4, 9, 16]


def test_a_failed_task_is_never_reused_and_a_retried_success_is(run_flow, client):
    source = """
    from flowbook import FlowSpec, Parameter, current, retry, step

    class FlakyFlow(FlowSpec):
        fail = Parameter("fail", default=False)

        @retry(times=1, minutes_between_retries=0)
        @step
        def start(self):
            if current.retry_count == 0:
                raise RuntimeError("first attempt fails")
            self.x = 1
            self.next(self.end)

        @step
        def end(self):
            if self.fail:
                raise RuntimeError("end fails")

    if __name__ == "__main__":
        FlakyFlow()
    """
    failed = run_flow(source, "run", "--reuse", "--fail", "true")
    assert failed.returncode == 1, failed
    again = run_flow(None, "run", "--reuse", "--fail", "true")
    said = decisions(again.stdout)
    assert said["start"].startswith(f"reused from {failed.run_id}/start/")  # retried, then fine
    assert said["end"] == "runs (no earlier task with this key)"  # its only task failed
    assert again.returncode == 1


def test_resume_and_reuse_together(run_flow, client):
    source = FOREACH.replace(
        'print("squaring", self.input)',
        'print("squaring", self.input)\n        assert self.input != int(__import__("os").environ.get("BAD", -1))',
    )
    failed = run_flow(source, "run", "--reuse", env={"BAD": "2"})
    assert failed.returncode == 1, failed
    resumed = run_flow(None, "resume", "--reuse")
    assert resumed.returncode == 0, resumed
    assert re.search(rf"Resuming run {failed.run_id} as run \d+:", resumed.stdout)
    said = decisions(resumed.stdout)
    # resume cloned start and the good splits; the failed split had no earlier success
    assert "Cloned from" in resumed.stdout
    assert said["square"] == "runs (no earlier task with this key)"
    forced = run_flow(None, "resume", "square", "--reuse")
    assert forced.returncode == 0, forced
    said = decisions(forced.stdout)
    assert said["square"] == "runs (resume was asked to run step 'square' again)"
    run = client.Flow("SplitReuseFlow").latest_run
    assert run.successful and run.data.total == 14
    assert run["square"].task.run_reason == "runs (resume was asked to run step 'square' again)"


def test_explain_lists_every_task(reuse_flow, run_flow):
    first = reuse_flow()
    second = reuse_flow(FLOW, "--alpha", "0.5")
    result = run_flow(None, "explain", second.run_id)
    assert result.returncode == 0, result
    lines = result.stdout.splitlines()
    assert lines[0] == f"Run ReuseFlow/{second.run_id}:"
    assert re.fullmatch(
        rf"  start/1: reused from {first.run_id}/start/1 \(same code, inputs and parameters\)",
        lines[1],
    )
    assert lines[3] == "  train/3: runs (parameter alpha 0.1 -> 0.5)"
    # the `flowbook` program, with no flow file: FLOW/RUN_ID
    import subprocess
    import sys

    program = subprocess.run(
        [sys.executable, "-m", "flowbook", "explain", f"ReuseFlow/{second.run_id}"],
        cwd=run_flow.workdir,
        env=run_flow.env,
        capture_output=True,
        text=True,
    )
    assert program.returncode == 0, program.stderr
    assert program.stdout.splitlines() == lines
    missing = subprocess.run(
        [sys.executable, "-m", "flowbook", "explain", "ReuseFlow/123"],
        cwd=run_flow.workdir,
        env=run_flow.env,
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 1 and "Run ReuseFlow/123 does not exist" in missing.stderr
    plain = run_flow(None, "run")
    assert run_flow(None, "explain").stdout.splitlines()[1] == "  start/1: ran (reuse was off)"
    assert plain.returncode == 0


def test_the_environment_turns_reuse_on_and_the_runner_takes_it(run_flow, client):
    (run_flow.workdir / "helpers.py").write_text(HELPERS)
    first = run_flow(FLOW, "run", env={"FLOWBOOK_RUN_REUSE": "1"})
    assert decisions(first.stdout)["start"] == "runs (no earlier task with this key)"
    off = run_flow(None, "run", env={"FLOWBOOK_RUN_REUSE": "0"})
    assert decisions(off.stdout) == {}
    bad = run_flow(None, "run", env={"FLOWBOOK_RUN_REUSE": "maybe"})
    assert bad.returncode != 0 and "FLOWBOOK_RUN_REUSE='maybe'" in bad.stderr
    from flowbook import Runner

    runner = Runner(
        str(run_flow.workdir / "flow.py"), show_output=False, env=run_flow.env, cwd=run_flow.workdir
    )
    executing = runner.run(reuse=True)
    assert executing.status == "successful"
    assert executing.run["end"].task.reused_from == f"ReuseFlow/{first.run_id}/end/4"


# ---------------------------------------------------------------------- code it reaches
def _twice(run_flow: FlowRunner, source: str, edit, **files: str) -> tuple:
    """Run ``source`` with --reuse, apply ``edit(workdir)``, run again; both results."""
    for name, text in files.items():
        (run_flow.workdir / name).parent.mkdir(parents=True, exist_ok=True)
        (run_flow.workdir / name).write_text(text)
    first = run_flow(source, "run", "--reuse")
    assert first.returncode == 0, first
    edit(run_flow.workdir)
    second = run_flow(None, "run", "--reuse")
    assert second.returncode == 0, second
    return first, second


def _flow(body: str, head: str = "", bases: str = "FlowSpec") -> str:
    return f"""
from flowbook import FlowSpec, step
{head}

class CodeFlow({bases}):
    @step
    def start(self):
{textwrap.indent(textwrap.dedent(body), "        ")}
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    CodeFlow()
"""


def _write(name: str, text: str):
    return lambda workdir: (workdir / name).write_text(text)


def _replace(old: str, new: str):
    def edit(workdir):
        path = workdir / "flow.py"
        assert old in path.read_text()
        path.write_text(path.read_text().replace(old, new))

    return edit


@pytest.mark.parametrize(
    "case",
    ["constant", "import_in_step", "package", "nested_import", "mixin", "base_in_file"],
)
def test_every_local_module_and_class_the_step_reaches_counts(run_flow, client, case):
    files: dict[str, str] = {}
    changed = None
    if case == "constant":  # from config import THRESHOLD: a value has no __module__
        source = _flow("self.t = THRESHOLD", "from config import THRESHOLD")
        files = {"config.py": "THRESHOLD = 0.5\n"}
        edit, expected, changed = _write("config.py", "THRESHOLD = 0.9\n"), 0.9, "config.py"
    elif case == "import_in_step":  # imported only when the step runs
        source = _flow("import helper\nself.t = helper.f()")
        files = {"helper.py": "def f():\n    return 1\n"}
        edit, expected, changed = _write("helper.py", "def f():\n    return 2\n"), 2, "helper.py"
    elif case == "package":  # a package's __init__ and a module it imports relatively
        source = _flow("self.t = tool()", "from pkg.sub import tool")
        files = {
            "pkg/__init__.py": "",
            "pkg/sub.py": "from .consts import K\n\n\ndef tool():\n    return K\n",
            "pkg/consts.py": "K = 1\n",
        }
        edit, expected, changed = _write("pkg/consts.py", "K = 3\n"), 3, "pkg/consts.py"
    elif case == "nested_import":  # a local module importing another one in a function
        source = _flow("self.t = features.make()", "import features")
        files = {
            "features.py": "def make():\n    from consts import K\n    return K\n",
            "consts.py": "K = 1\n",
        }
        edit, expected, changed = _write("consts.py", "K = 4\n"), 4, "consts.py"
    elif case == "mixin":  # a helper method of a base class from a local module
        source = _flow("self.t = self.helper()", "from mixins import Mixin", "Mixin, FlowSpec")
        files = {"mixins.py": "class Mixin:\n    def helper(self):\n        return 1\n"}
        edit = _write("mixins.py", "class Mixin:\n    def helper(self):\n        return 5\n")
        expected, changed = 5, "mixins.py"
    else:  # a base class in the flow file itself
        head = "class Base(FlowSpec):\n    def helper(self):\n        return 1\n"
        source = _flow("self.t = self.helper()", head, "Base")
        edit, expected = _replace("return 1", "return 6"), 6
    first, second = _twice(run_flow, source, edit, **files)
    said = decisions(second.stdout)
    if changed:
        assert said["start"] == f"runs (helper module {changed} changed)"
    else:
        assert said["start"].startswith("runs (the module-level code it uses changed")
    assert client.Flow("CodeFlow").latest_run["start"].task.data.t == expected


def test_a_wrapping_decorator_of_the_user_and_what_the_body_calls_count(run_flow, client):
    head = """
import functools

SCALE = 10


def scaled(func):
    @functools.wraps(func)
    def wrapper(self):
        func(self)
        self.x = self.x * 1
    return wrapper


def compute():
    return SCALE + 1
"""
    source = _flow("self.x = compute()", head).replace(
        "    @step\n    def start", "    @step\n    @scaled\n    def start"
    )
    first, second = _twice(run_flow, source, _replace("SCALE = 10", "SCALE = 20"))
    assert decisions(second.stdout)["start"].startswith("runs (the module-level code")
    assert client.Flow("CodeFlow").latest_run["start"].task.data.x == 21
    _replace("self.x * 1", "self.x * 2")(run_flow.workdir)
    third = run_flow(None, "run", "--reuse")
    assert decisions(third.stdout)["start"].startswith("runs (the module-level code")
    assert client.Flow("CodeFlow").latest_run["start"].task.data.x == 42


def test_module_level_statements_that_change_a_used_value_count(run_flow, client):
    head = """
WEIGHTS = [1]
for w in (2,):
    WEIGHTS.append(w)
REG = {}


def register(name):
    def deco(f):
        REG[name] = f
        return f
    return deco


@register("sq")
def square(v):
    return v * v
"""
    source = _flow("self.a = sum(WEIGHTS)\nself.c = REG['sq'](3)", head)
    first, second = _twice(run_flow, source, _replace("for w in (2,)", "for w in (6,)"))
    assert decisions(second.stdout)["start"].startswith("runs (the module-level code")
    _replace("return v * v", "return v + 100")(run_flow.workdir)
    third = run_flow(None, "run", "--reuse")
    assert decisions(third.stdout)["start"].startswith("runs (the module-level code")
    data = client.Flow("CodeFlow").latest_run["start"].task.data
    assert (data.a, data.c) == (7, 103)


def test_a_docstring_or_the_main_block_do_not_count(run_flow):
    source = '"""A flow."""\n' + _flow("self.x = 1")

    def edit(workdir):
        _replace('"""A flow."""', '"""A better flow."""')(workdir)
        _replace("    CodeFlow()", "    import logging\n    CodeFlow()")(workdir)

    first, second = _twice(run_flow, source, edit)
    assert decisions(second.stdout)["start"].startswith("reused from")


MERGE = """
from flowbook import FlowSpec, step


class MergeFlow(FlowSpec):
    @step
    def start(self):
        self.shared = 1
        self.next(self.a, self.b)

    @step
    def a(self):
        self.va = 1
        self.next(self.join)

    @step
    def b(self):
        self.vb = 2
        self.next(self.join)

    @step
    def join(self, inputs):
        self.merge_artifacts(inputs)
        self.next(self.end)

    @step
    def end(self):
        self.seen = hasattr(self, "extra")


if __name__ == "__main__":
    MergeFlow()
"""


def test_a_join_that_merges_sees_an_artifact_new_in_its_inputs(run_flow, client):
    edit = _replace("self.shared = 1", "self.shared = 1\n        self.extra = 5")
    first, second = _twice(run_flow, MERGE, edit)
    said = decisions(second.stdout)
    assert said["a"].startswith("reused from")  # a and b never read 'extra'
    assert said["join"] == "runs (the artifacts it merges changed, from step 'a')"
    run = client.Flow("MergeFlow").latest_run
    assert run["join"].task.data.extra == 5 and run.data.seen is True


def test_resume_with_reuse_does_not_clone_a_step_whose_code_changed(run_flow, client):
    first = run_flow(FOREACH, "run", "--reuse")
    assert first.returncode == 0, first
    _replace("self.input * self.input", "self.input * 10")(run_flow.workdir)
    resumed = run_flow(None, "resume", "--reuse")
    assert resumed.returncode == 0, resumed
    said = decisions(resumed.stdout)
    assert said["square"].startswith("runs (its code changed: line")
    assert "Cloned from" in resumed.stdout  # start is still cloned by resume
    assert client.Flow("SplitReuseFlow").latest_run.data.total == 60


def test_a_malformed_earlier_record_does_not_stop_a_run(reuse_flow, run_flow, client):
    import json

    first = reuse_flow()
    index = run_flow.datastore / "flows" / "ReuseFlow" / first.run_id / "train.tasks.json"
    assert index.exists(), sorted(p.name for p in index.parent.iterdir())
    data = json.loads(index.read_text())
    (task,) = data["tasks"].values()
    task["reads"] = 5  # not a list of rows
    index.write_text(json.dumps(data))
    said = decisions(reuse_flow().stdout)
    assert said["train"].startswith("runs (reuse could not decide: TypeError")
    assert said["prepare"].startswith("reused from")
    assert client.Flow("ReuseFlow").latest_run.data.model == pytest.approx(0.7)


def test_a_bad_reuse_value_is_refused_before_a_run_is_recorded(reuse_flow, run_flow):
    result = run_flow(FLOW, "--with", "reuse:enabled=no", "run")
    assert result.returncode == 1
    assert "@reuse on step 'start' has an invalid value: {'enabled': 'no'}." in result.stderr
    assert "Traceback" not in result.stderr
    assert not (run_flow.datastore / "flows").exists()
    bad = FLOW.replace("    @step\n    def prepare", "    @reuse('no')\n    @step\n    def prepare")
    result = run_flow(bad, "run")
    assert result.returncode == 1
    assert "@reuse takes True or False, not 'no'." in result.stderr
