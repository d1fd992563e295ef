"""Running flows: task processes, concurrency, foreach limits, foreach bodies, joins."""

from __future__ import annotations

import pytest
from conftest import (
    FlowRunner,
    assert_no_internal_frames,
    assert_refused,
    assert_task_failed,
    client_for,
    flow_source,
    max_overlap,
)


# ---------------------------------------------------------------------- processes
def test_every_task_is_its_own_process(run_flow, client):
    result = run_flow("pids", "run")
    assert result.returncode == 0, result
    run = client.Flow("PidFlow").latest_run
    tasks = [task for step in run for task in step]
    assert len(tasks) == 1 + 2 + 1 + 3 + 1 + 1
    pids = [task.data.pid for task in tasks]
    assert len(set(pids)) == len(pids), pids
    assert result.pid not in pids  # the scheduler (`python flow.py run`) runs no step
    assert all(task.data.ppid != result.pid for task in tasks)  # forked from a server
    # the pid printed on the console is the pid the task ran in
    console = {(m["step"], m["task_id"]): int(m["pid"]) for m in result.task_lines()}
    for task in tasks:
        assert console[(task.step_name, task.id)] == task.data.pid
        assert task.metadata_dict["pid"] == task.data.pid


# ---------------------------------------------------------------------- concurrency
def _intervals(client) -> list[tuple[float, float]]:
    run = client.Flow("SleepyFlow").latest_run
    assert run.successful
    intervals = [(t.data.started, t.data.ended) for t in run["work"]]
    assert len(intervals) == len(run.data.intervals)
    return intervals


def test_max_workers_caps_concurrency(run_flow, client):
    result = run_flow("sleepy", "run", "--max-workers", "2")
    assert result.returncode == 0, result
    intervals = _intervals(client)
    assert len(intervals) == 6
    assert max_overlap(intervals) <= 2


def test_max_workers_from_environment(run_flow, client):
    result = run_flow(
        "sleepy",
        "run",
        "--splits",
        "3",
        "--nap",
        "0.3",
        env={"FLOWBOOK_RUN_MAX_WORKERS": "1"},
    )
    assert result.returncode == 0, result
    assert max_overlap(_intervals(client)) == 1


def test_max_workers_option_wins_over_environment(run_flow, client):
    result = run_flow(
        "sleepy",
        "run",
        "--splits",
        "4",
        "--nap",
        "1.0",
        "--max-workers",
        "4",
        env={"FLOWBOOK_RUN_MAX_WORKERS": "1"},
    )
    assert result.returncode == 0, result
    # with the cap of 1 from the environment no two tasks could overlap
    assert max_overlap(_intervals(client)) >= 2


# ---------------------------------------------------------------------- max-num-splits
def test_max_num_splits_exceeded_fails_the_run(run_flow, client):
    result = run_flow("sleepy", "run", "--splits", "5", "--nap", "0", "--max-num-splits", "3")
    assert_refused(result, "'start'", "5", "--max-num-splits", "3")
    run = client.Flow("SleepyFlow").latest_run
    assert run.finished
    assert not run.successful
    assert "work" not in run  # no split was started


def test_max_num_splits_from_environment(run_flow):
    result = run_flow(
        "sleepy",
        "run",
        "--splits",
        "5",
        "--nap",
        "0",
        env={"FLOWBOOK_RUN_MAX_NUM_SPLITS": "4"},
    )
    assert_refused(result, "'start'", "5", "--max-num-splits", "4")


def test_max_num_splits_option_wins_over_environment(run_flow):
    result = run_flow(
        "sleepy",
        "run",
        "--splits",
        "5",
        "--nap",
        "0",
        "--max-num-splits",
        "5",
        env={"FLOWBOOK_RUN_MAX_NUM_SPLITS": "2"},
    )
    assert result.returncode == 0, result


def test_default_max_num_splits_is_100(run_flow):
    result = run_flow("sleepy", "run", "--splits", "101", "--nap", "0")
    assert_refused(result, "'start'", "101", "--max-num-splits", "100")


# ---------------------------------------------------------------------- foreach
FOREACH_BODY = """
from flowbook import FlowSpec, step


class BodyFlow(FlowSpec):
    @step
    def start(self):
        self.letters = ["x", "y", "z"]
        self.outside_index = self.index
        self.next(self.body, foreach="letters")

    @step
    def body(self):
        self.got = (self.index, self.input)
        self.next(self.join)

    @step
    def join(self, inputs):
        self.got = [i.got for i in inputs]
        self.indexes = [i.index for i in inputs]
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    BodyFlow()
"""


def test_foreach_body_sees_input_and_index(run_flow, client):
    result = run_flow(FOREACH_BODY, "run")
    assert result.returncode == 0, result
    run = client.Flow("BodyFlow").latest_run
    assert run["start"].task.data.outside_index is None
    bodies = sorted(run["body"], key=lambda t: t.index)
    assert [t.data.got for t in bodies] == [(0, "x"), (1, "y"), (2, "z")]
    assert [t.index for t in bodies] == [0, 1, 2]
    assert run["join"].task.data.got == [(0, "x"), (1, "y"), (2, "z")]
    assert run["join"].task.data.indexes == [0, 1, 2]


NOT_A_LIST = """
from flowbook import FlowSpec, step


class NotListFlow(FlowSpec):
    @step
    def start(self):
        self.things = {value}
        self.next(self.body, foreach="things")

    @step
    def body(self):
        self.next(self.join)

    @step
    def join(self, inputs):
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    NotListFlow()
"""


@pytest.mark.parametrize(
    ("value", "type_name"),
    [("7", "int"), ("{'a': 1}", "dict"), ("None", "NoneType"), ("(i for i in [1])", "generator")],
)
def test_foreach_over_a_non_list_fails_naming_artifact_and_type(run_flow, client, value, type_name):
    result = run_flow(NOT_A_LIST.replace("{value}", value), "run")
    assert_refused(result, "'start'", "'things'", type_name)
    run = client.Flow("NotListFlow").latest_run
    assert not run.successful
    assert "body" not in run
    assert "things" in run["start"].task.exception


def test_foreach_over_an_empty_list_fails_naming_it(run_flow):
    result = run_flow(NOT_A_LIST.replace("{value}", "[]"), "run")
    assert_refused(result, "'start'", "'things'")


def test_foreach_over_a_tuple_and_a_range_work(run_flow, client):
    for value in ("(1, 2)", "range(2)"):
        result = run_flow(NOT_A_LIST.replace("{value}", value), "run")
        assert result.returncode == 0, result
        assert len(list(client.Flow("NotListFlow").latest_run["body"])) == 2


# ---------------------------------------------------------------------- joins
@pytest.fixture(scope="module")
def join_run(tmp_path_factory):
    """One run of JoinFlow, shared by the join tests."""
    runner = FlowRunner(tmp_path_factory.mktemp("joins"))
    result = runner("joins", "run")
    assert result.returncode == 0, result
    return runner, result


@pytest.fixture
def join_client(join_run, monkeypatch):
    """The shared JoinFlow run, read through the Client API."""
    with client_for(join_run[0], monkeypatch) as fb_client:
        yield fb_client.Flow("JoinFlow").latest_run


def test_join_inputs_by_index_name_and_iteration(join_client):
    data = join_client["join"].task.data
    assert data.by_index == ["L", "R"]  # in the order of self.next(self.left, self.right)
    assert data.by_name == ("L", "R")
    assert data.by_iteration == ["L", "R"]
    assert data.n_inputs == 2
    assert data.input_steps == ["left", "right"]


def test_parameters_visible_in_joins_inputs_and_after(join_client):
    join = join_client["join"].task.data
    assert join.greeting_in_join == "hi"
    assert join.greeting_in_inputs == ["hi", "hi"]
    assert join_client.data.greeting_at_end == "hi"
    assert join_client.data.greeting == "hi"


def test_reassigned_artifact_survives_join_and_others_do_not(join_client):
    end = join_client["end"].task
    assert end.data.shared == "same everywhere"
    for name in ("dropped", "side", "common"):
        assert name not in end
        assert name not in join_client["join"].task


JOIN_DROPPED = """
from flowbook import FlowSpec, step


class DroppedFlow(FlowSpec):
    @step
    def start(self):
        self.kept = 1
        self.lost = 2
        self.next(self.a, self.b)

    @step
    def a(self):
        self.next(self.join)

    @step
    def b(self):
        self.next(self.join)

    @step
    def join(self, inputs):
        self.kept = inputs.a.kept
        self.next(self.end)

    @step
    def end(self):
        print("kept", self.kept)
        print("lost", self.lost)


if __name__ == "__main__":
    DroppedFlow()
"""


def test_artifact_not_reassigned_in_join_cannot_be_read_after_it(run_flow, client):
    result = run_flow(JOIN_DROPPED, "run")
    assert_task_failed(result, "end", "'lost'", "'join'")
    run = client.Flow("DroppedFlow").latest_run
    end = run["end"].task
    assert not end.successful
    assert "kept 1" in end.stdout
    assert "'lost'" in end.exception
    assert "'join'" in end.exception


@pytest.mark.parametrize("mode", ["exclude", "include", "assigned"])
def test_merge_artifacts(run_flow, client, mode):
    result = run_flow("merge", "run", "--mode", mode)
    assert result.returncode == 0, result
    join = client.Flow("MergeFlow").latest_run["join"].task
    assert join.data.creature == "dog"
    if mode == "exclude":
        assert join.data.count == 2
        assert join.data.only_one == "one"  # present in one input only: not divergent
        assert "increment" not in join
    elif mode == "include":
        assert "count" not in join
        assert "increment" not in join
        assert "only_one" not in join
    else:  # values assigned in the join are kept, not merged over
        assert join.data.count == -1
        assert join.data.increment == -1
    assert "creature dog" in client.Flow("MergeFlow").latest_run["end"].task.stdout


@pytest.mark.parametrize(
    ("mode", "needles"),
    [
        ("include-divergent", ["'count'"]),
        ("include-missing", ["'nothing_like_this'"]),
        ("both", ["creature", "include", "exclude"]),
    ],
)
def test_merge_artifacts_refuses_bad_include(run_flow, mode, needles):
    result = run_flow("merge", "run", "--mode", mode)
    assert_task_failed(result, "join", *needles)


def test_merge_artifacts_refuses_divergent_values(run_flow, client):
    result = run_flow("merge", "run", "--mode", "divergent")
    assert_task_failed(result, "join", "'count'", "'increment'")
    assert "'creature'" not in result.stderr.split("merge_artifacts()", 1)[-1]
    join = client.Flow("MergeFlow").latest_run["join"].task
    assert not join.successful
    assert "'count'" in join.exception


# ---------------------------------------------------------------------- failures
SLOW = """
import os
import time

from flowbook import FlowSpec, step


class SlowFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.slow)

    @step
    def slow(self):
        print("sleeping in", os.getpid(), flush=True)
        time.sleep(60)
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    SlowFlow()
"""


def test_ctrl_c_stops_the_run_and_its_tasks(run_flow, client):
    import os
    import re
    import signal
    import subprocess
    import sys
    import time

    path = run_flow.write(SLOW)
    proc = subprocess.Popen(
        [sys.executable, str(path), "run"],
        cwd=run_flow.workdir,
        env=run_flow.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.time() + 30
        task_pid = None
        while time.time() < deadline and task_pid is None:
            time.sleep(0.1)
            for log in (run_flow.datastore / "flows").glob("SlowFlow/*/slow/*/0.stdout"):
                found = re.search(r"sleeping in (\d+)", log.read_text())
                task_pid = int(found.group(1)) if found else None
        assert task_pid, "the slow task never started"
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode != 0, output
    assert "Interrupted" in output
    assert "Traceback (most recent call last)" not in output, output
    time.sleep(0.2)
    try:
        os.kill(task_pid, 0)
        alive = True
    except ProcessLookupError:
        alive = False
    assert not alive, f"task process {task_pid} outlived the interrupted run"
    run = client.Flow("SlowFlow").latest_run
    assert run.finished
    assert not run.successful
    assert not run["slow"].task.successful
    assert "end" not in run


FAILING = """
from flowbook import FlowSpec, step


class FailFlow(FlowSpec):
    @step
    def start(self):
        print("before the error")
        self.next(self.boom)

    @step
    def boom(self):
        print("about to fail")
        raise ValueError("kaboom in boom")
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    FailFlow()
"""


def test_failing_step_fails_the_run_with_users_traceback(run_flow, client):
    result = run_flow(FAILING, "run")
    assert_task_failed(result, "boom", "ValueError", "kaboom in boom")
    assert "flow.py" in result.stderr and "line 14" in result.stderr  # the user's frame
    assert_no_internal_frames(result)
    run = client.Flow("FailFlow").latest_run
    assert run.finished and not run.successful
    assert "end" not in run
    boom = run["boom"].task
    assert boom.finished and not boom.successful
    assert boom.exception == "ValueError: kaboom in boom"
    assert "about to fail" in boom.stdout
    assert "kaboom in boom" in boom.stderr
    assert run["start"].task.successful


def test_two_runs_at_once_in_one_datastore(run_flow, client):
    import subprocess
    import sys

    path = run_flow.write(flow_source("pids"))
    procs = [
        subprocess.Popen(
            [sys.executable, str(path), "run"],
            cwd=run_flow.workdir,
            env=run_flow.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    runs = list(client.Flow("PidFlow").runs())
    assert len(runs) == 2
    assert runs[0].id != runs[1].id
    assert all(r.successful for r in runs)
    for r in runs:
        assert len(list(r["body"])) == 3


FAIL_FIRST = """
from flowbook import FlowSpec, step


class FailFirstFlow(FlowSpec):
    @step
    def start(self):
        self.items = list(range(5))
        self.next(self.body, foreach="items")

    @step
    def body(self):
        if self.input == 0:
            raise RuntimeError("the first split fails")
        self.next(self.join)

    @step
    def join(self, inputs):
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    FailFirstFlow()
"""


def test_no_new_task_starts_after_a_failure(run_flow, client):
    result = run_flow(FAIL_FIRST, "run", "--max-workers", "1")
    assert_task_failed(result, "body", "RuntimeError", "the first split fails")
    run = client.Flow("FailFirstFlow").latest_run
    assert [t.successful for t in run["body"]] == [False]
    assert "join" not in run
    assert len(run.failures) == 1
    assert "'body'" in run.failures[0]
