"""Console output, stored logs (`logs`), tags, and command-line errors."""

from __future__ import annotations

import re

import pytest
from conftest import (
    TASK_LINE,
    TEST_USER,
    FlowRunner,
    assert_refused,
    client_for,
    flow_source,
)


@pytest.fixture(scope="module")
def output_run(tmp_path_factory):
    """One run of OutputFlow with two tags, shared by this module's tests."""
    runner = FlowRunner(tmp_path_factory.mktemp("output"))
    result = runner("output", "run", "--tag", "first", "--tag", "second")
    assert result.returncode == 0, result
    return runner, result


@pytest.fixture
def output_client(output_run, monkeypatch):
    """The shared OutputFlow run, read through the Client API."""
    with client_for(output_run[0], monkeypatch) as fb_client:
        yield fb_client.Flow("OutputFlow").latest_run


# ---------------------------------------------------------------------- console
def test_console_lines_are_prefixed_with_time_pathspec_and_pid(output_run):
    _, result = output_run
    run_id = result.run_id
    assert run_id
    lines = result.task_lines()
    assert lines
    assert {m["run_id"] for m in lines} == {run_id}
    assert {m["step"] for m in lines} == {"start", "each", "join", "end"}
    # every line that mentions a task has the full prefix
    for line in result.output.splitlines():
        if f"{run_id}/" in line and "[" in line:
            assert TASK_LINE.match(line), line


def test_console_prefix_has_the_pid_even_when_a_task_prints_at_once(run_flow):
    # 100 tasks that print as soon as they start: the scheduler may see their
    # output before it hears that they started; every line must still carry the pid.
    result = run_flow("chatty", "run", "--max-workers", "100")
    assert result.returncode == 0, result
    unprefixed = [
        line
        for line in result.output.splitlines()
        if "/talk/" in line and not TASK_LINE.match(line)
    ]
    assert unprefixed == [], unprefixed
    seen_start = set()
    out_of_order = []
    for m in result.task_lines():
        if m["text"] == "Task is starting.":
            seen_start.add(m["task_id"])
        elif m["text"].startswith("talk ") and m["task_id"] not in seen_start:
            out_of_order.append(m.group(0))
    assert out_of_order == [], out_of_order
    talks = [m for m in result.task_lines() if m["text"].endswith("says hello")]
    assert len(talks) == 100


def test_console_shows_user_prints_with_their_task(output_run):
    _, result = output_run
    texts = {(m["step"], m["text"]) for m in result.task_lines()}
    assert ("start", "hello from start") in texts
    assert ("each", "word 0 is alpha") in texts
    assert ("each", "word 1 is beta") in texts
    assert ("join", "joined ['alpha', 'beta']") in texts
    assert ("end", "line one") in texts
    assert ("end", "line two") in texts
    assert ("end", "no newline at the end") in texts
    # stderr of a task goes to the console's stderr, prefixed too
    err = [m for m in map(TASK_LINE.match, result.stderr.splitlines()) if m]
    assert ("start", "warning from start") in {(m["step"], m["text"]) for m in err}
    assert "hello from start" not in result.stderr


def test_console_shows_a_tasks_output_between_its_start_and_end(output_run):
    _, result = output_run
    lines = [m for m in map(TASK_LINE.match, result.stdout.splitlines()) if m]
    for step in ("start", "join", "end"):
        texts = [m["text"] for m in lines if m["step"] == step]
        assert texts[0] == "Task is starting.", texts
        assert texts[-1] == "Task finished successfully.", texts
        assert len(texts) > 2


def test_console_announces_run_and_tasks(output_run):
    _, result = output_run
    assert f"Workflow starting (run-id {result.run_id})" in result.stdout
    starting = [m for m in result.task_lines() if m["text"] == "Task is starting."]
    finished = [m for m in result.task_lines() if m["text"] == "Task finished successfully."]
    assert len(starting) == len(finished) == 5
    assert result.stdout.rstrip().endswith("Done!")


def test_quiet_hides_progress_but_keeps_task_output(run_flow):
    result = run_flow("output", "--quiet", "run")
    assert result.returncode == 0, result
    assert "Task is starting" not in result.output
    assert "Workflow starting" not in result.output
    texts = {(m["step"], m["text"]) for m in result.task_lines()}
    assert ("start", "hello from start") in texts


# ---------------------------------------------------------------------- stored logs
def test_task_stdout_and_stderr_are_stored(output_client):
    start = output_client["start"].task
    assert start.stdout == "hello from start\n"
    assert start.stderr == "warning from start\n"
    each = sorted(output_client["each"], key=lambda t: t.index)
    assert [t.stdout for t in each] == ["word 0 is alpha\n", "word 1 is beta\n"]
    assert [t.stderr for t in each] == ["stderr of alpha\n", "stderr of beta\n"]
    end = output_client["end"].task
    assert end.stdout == "line one\nline two\nno newline at the end"
    assert end.stderr == ""


def test_logs_command_prints_a_tasks_stdout(output_run, output_client):
    runner, result = output_run
    start = output_client["start"].task
    logs = runner(None, "logs", f"{result.run_id}/start/{start.id}", filename="flow.py")
    assert logs.returncode == 0, logs
    assert logs.stdout == "hello from start\n"


def test_logs_command_stderr(output_run, output_client):
    runner, result = output_run
    start = output_client["start"].task
    logs = runner(None, "logs", "--stderr", f"{result.run_id}/start/{start.id}")
    assert logs.returncode == 0, logs
    assert logs.stdout == "warning from start\n"


def test_logs_command_for_a_whole_step(output_run):
    runner, result = output_run
    logs = runner(None, "logs", f"{result.run_id}/each")
    assert logs.returncode == 0, logs
    assert "word 0 is alpha" in logs.stdout
    assert "word 1 is beta" in logs.stdout
    assert logs.stdout.count("---") >= 2  # one header per task
    single = runner(None, "logs", f"{result.run_id}/start")
    assert single.stdout == "hello from start\n"


@pytest.mark.parametrize(
    ("pathspec", "needles"),
    [
        ("not-a-pathspec", ["not-a-pathspec", "RUN_ID/STEP"]),
        ("{run}/nosuchstep", ["nosuchstep"]),
        ("{run}/start/999", ["999"]),
        ("12345/start", ["12345"]),
    ],
)
def test_logs_of_unknown_pathspec_is_refused(output_run, pathspec, needles):
    runner, result = output_run
    pathspec = pathspec.replace("{run}", result.run_id)
    for command in ("logs", "dump"):
        refused = runner(None, command, pathspec)
        assert_refused(refused, *needles)


# ---------------------------------------------------------------------- tags
def test_tags(output_client):
    assert output_client.user_tags == frozenset({"first", "second"})
    assert f"user:{TEST_USER}" in output_client.system_tags
    assert {"first", "second", f"user:{TEST_USER}"} <= output_client.tags


def test_run_without_tags_has_no_user_tags(run_flow, client):
    result = run_flow("output", "run")
    assert result.returncode == 0, result
    run = client.Flow("OutputFlow").latest_run
    assert run.user_tags == frozenset()
    assert f"user:{TEST_USER}" in run.system_tags


# ---------------------------------------------------------------------- command-line errors
def test_unknown_option_is_refused(run_flow):
    result = run_flow("output", "run", "--no-such-option", "1")
    assert_refused(result, "--no-such-option")


def test_unknown_command_is_refused(run_flow):
    result = run_flow("output", "fly")
    assert_refused(result, "fly")


def test_bad_max_workers_value_is_refused(run_flow, tmp_path):
    result = run_flow("output", "run", "--max-workers", "many")
    assert_refused(result, "--max-workers", "many")
    assert not (tmp_path / ".flowbook" / "flows").exists()


def test_bad_max_workers_in_environment_is_refused(run_flow, tmp_path):
    result = run_flow("output", "run", env={"FLOWBOOK_RUN_MAX_WORKERS": "lots"})
    assert_refused(result, "FLOWBOOK_RUN_MAX_WORKERS", "lots")
    assert not (tmp_path / ".flowbook" / "flows").exists()


def test_flowbook_program_runs_a_flow_file(run_flow, client):
    import subprocess
    import sys

    path = run_flow.write(flow_source("sleepy"))
    proc = subprocess.run(
        [sys.executable, "-m", "flowbook", "run", str(path), "--splits", "2", "--nap", "0"],
        cwd=run_flow.workdir,
        env=run_flow.env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run = client.Flow("SleepyFlow").latest_run
    assert run.successful
    assert len(run.data.intervals) == 2


def test_flowbook_program_runs_a_flow_file_without_the_py_suffix(run_flow, client):
    import subprocess
    import sys

    path = run_flow.write(flow_source("simple"))
    bare = path.with_suffix("")
    path.rename(bare)
    proc = subprocess.run(
        [sys.executable, "-m", "flowbook", "run", str(bare)],
        cwd=run_flow.workdir,
        env=run_flow.env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert client.Flow("SimpleFlow").latest_run.successful


def test_run_help_lists_options(run_flow):
    result = run_flow("sleepy", "run", "--help")
    assert result.returncode == 0, result
    for option in ("--max-workers", "--max-num-splits", "--tag", "--splits", "--nap"):
        assert option in result.stdout
    text = " ".join(result.stdout.split())
    assert re.search(r"--max-workers INTEGER [^-]*FLOWBOOK_RUN_MAX_WORKERS[^-]*default: 16", text)
    assert re.search(r"--max-num-splits INTEGER [^-]*default: 100", text)
    assert "--run-id-file" not in result.stdout and "--params-file" not in result.stdout


TYPED_FLOW = """
from flowbook import FlowSpec, IncludeFile, JSONType, Parameter, step

class TypedFlow(FlowSpec):
    factor = Parameter("factor", default=3, help="Multiplier")
    rate = Parameter("rate", default=0.5)
    flag = Parameter("flag", default=False)
    name = Parameter("name", default="x")
    config = Parameter("config", type=JSONType, default="{}")
    data = IncludeFile("data", required=True)

    @step
    def start(self):
        self.next(self.end)

    @step
    def end(self):
        pass

if __name__ == "__main__":
    TypedFlow()
"""


def test_run_help_shows_each_parameters_real_type(run_flow):
    result = run_flow(TYPED_FLOW, "run", "--help")
    assert result.returncode == 0, result
    text = " ".join(result.stdout.split())
    assert "--factor INTEGER Multiplier [default: 3]" in text
    assert "--rate FLOAT [default: 0.5]" in text
    assert "--flag BOOLEAN [default: False]" in text
    assert "--name TEXT [default: 'x']" in text
    assert "--config JSON [default: '{}']" in text
    assert "--data FILE [required]" in text
    assert "[int" not in text


def test_run_parameters_still_convert_with_one_message_either_way(run_flow):
    """Typed in the help, values are still converted by flowbook, not by click: the
    same one-line message on the fast road and on click's."""
    (run_flow.workdir / "d.txt").write_text("hi")
    message = "Parameter 'factor' of flow TypedFlow expects int, got 'many'"
    fast = run_flow(TYPED_FLOW, "run", "--data", "d.txt", "--factor", "many")
    assert_refused(fast, message)
    # a repeated parameter is left to click (the last one wins there)
    clicked = run_flow(None, "run", "--data", "d.txt", "--factor", "1", "--factor", "many")
    assert_refused(clicked, message)
    assert fast.stderr == clicked.stderr


@pytest.mark.parametrize(
    "position",
    [
        ["--with", "retry:times=2", "--not-quiet", "--no-pylint", "run", "FLOW"],
        ["run", "FLOW", "--with=retry:times=2", "--not-quiet", "--no-pylint"],
        ["--not-quiet", "run", "FLOW", "--with", "retry:times=2"],
    ],
)
def test_flowbook_program_takes_top_level_options_before_the_command_or_after_the_file(
    run_flow, client, position
):
    import subprocess
    import sys

    path = run_flow.write(flow_source("sleepy"))
    args = [str(path) if word == "FLOW" else word for word in position]
    proc = subprocess.run(
        [sys.executable, "-m", "flowbook", *args, "--splits", "2", "--nap", "0", "--tag", "t"],
        cwd=run_flow.workdir,
        env=run_flow.env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run = client.Flow("SleepyFlow").latest_run
    assert run.successful and run.user_tags == {"t"}
    steps = run._record["graph"]["steps"]
    for step in steps:
        retry = [d for d in step["decorators"] if d["name"] == "retry"]
        assert retry and retry[0]["attributes"]["times"] == 2, step


def test_flowbook_program_refuses_an_unknown_top_level_option(run_flow):
    import subprocess
    import sys

    path = run_flow.write(flow_source("sleepy"))
    proc = subprocess.run(
        [sys.executable, "-m", "flowbook", "--colour", "red", "run", str(path)],
        cwd=run_flow.workdir,
        env=run_flow.env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    first = proc.stderr.splitlines()[0]
    assert first.startswith("flowbook: unknown option --colour (top-level options: --datastore")
