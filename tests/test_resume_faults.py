"""Resume, retries, catch, timeouts and faults that lose nothing (real processes)."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import TRACEBACK, assert_refused, assert_task_failed

# A flow whose failures are switched by marker files in its working directory, so the
# same file fails the first time and succeeds on resume.
FAILING = """
import glob, os, time
from flowbook import FlowSpec, Parameter, step, current

def settle(prefix, count):
    # A failure stops new tasks: fail only once the tasks that run before this one
    # in an uninterrupted run have run, so what resume clones does not depend on timing.
    deadline = time.time() + 20
    while len(glob.glob(prefix + "*")) < count and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)

def fail_if(name, after=None):
    if os.path.exists(name):
        if after:
            settle(*after)
        raise RuntimeError(f"failing because {name} exists")

class Failing(FlowSpec):
    alpha = Parameter("alpha", default=1)

    @step
    def start(self):
        fail_if("fail_start")
        self.items = [[1, 2], [3, 4, 5]]
        self.next(self.outer, foreach="items")

    @step
    def outer(self):
        fail_if("fail_outer")
        open(f"ran_outer_{self.index}", "w").close()
        self.inner_items = self.input
        self.next(self.inner, foreach="inner_items")

    @step
    def inner(self):
        open(f"ran_inner_{self.input}", "w").close()
        if os.path.exists(f"fail_inner_{self.input}"):
            settle("ran_outer_", 2)
            raise ValueError(f"inner {self.input} failed")
        self.value = self.input * 10 * self.alpha
        self.next(self.inner_join)

    @step
    def inner_join(self, inputs):
        fail_if("fail_inner_join", after=("ran_inner_", 5))
        self.subtotal = sum(i.value for i in inputs)
        self.next(self.outer_join)

    @step
    def outer_join(self, inputs):
        fail_if("fail_outer_join")
        self.total = sum(i.subtotal for i in inputs)
        self.next(self.end)

    @step
    def end(self):
        fail_if("fail_end")
        self.origin = current.origin_run_id
        print("total", self.total)

if __name__ == "__main__":
    Failing()
"""


def _marker(run_flow, name: str) -> Path:
    path = run_flow.workdir / name
    path.write_text("x")
    return path


@pytest.mark.parametrize(
    "marker, failed_step",
    [
        ("fail_start", "start"),
        ("fail_outer", "outer"),
        ("fail_inner_4", "inner"),
        ("fail_inner_join", "inner_join"),
        ("fail_outer_join", "outer_join"),
        ("fail_end", "end"),
    ],
)
def test_resume_after_a_failure_anywhere_finishes_like_an_uninterrupted_run(
    run_flow, client, marker, failed_step
):
    flag = _marker(run_flow, marker)
    first = run_flow(FAILING, "run")
    assert_task_failed(first, failed_step)
    origin_files = sorted(p for p in run_flow.datastore.rglob("*") if p.is_file())
    origin_bytes = {p: p.read_bytes() for p in origin_files if "/flows/" in str(p)}
    flag.unlink()
    second = run_flow(None, "resume")
    assert second.returncode == 0, second
    runs = list(client.Flow("Failing"))
    resumed, origin = runs[0], runs[1]
    assert resumed.id != origin.id
    assert resumed.successful and not origin.successful
    assert resumed.data.total == 150
    assert resumed.data.origin == origin.id
    assert resumed.origin_run_id == origin.id
    # The origin run is untouched.
    for path, data in origin_bytes.items():
        assert path.read_bytes() == data, path
    # Tasks before the failure were cloned, pointing at the same blobs; the failed
    # step and what follows ran again.
    # (A failure in one split of `inner` leaves the other outer split's `inner` and,
    # if it ran before the failure stopped new tasks, `inner_join` reusable: cloned too.)
    order = ["start", "outer", "inner", "inner_join", "outer_join", "end"]
    partly_cloned = {"inner", "inner_join"} if failed_step == "inner" else set()
    for step in order:
        for task in resumed[step]:
            cloned = task.origin_pathspec is not None
            if order.index(step) < order.index(failed_step):
                assert cloned, task
                source = client.Task(task.origin_pathspec)
                assert {a.id: a.sha for a in task} == {a.id: a.sha for a in source}
            elif step not in partly_cloned:
                assert not cloned, task
    if failed_step == "inner":  # whether the other split's join ran before the failure
        assert sorted(t.index for t in resumed["inner_join"] if t.origin_pathspec) in ([], [0])


def test_only_the_failed_splits_of_a_foreach_run_again(run_flow, client):
    flags = [_marker(run_flow, "fail_inner_2"), _marker(run_flow, "fail_inner_4")]
    first = run_flow(FAILING, "run")
    assert_task_failed(first, "inner")
    # Whichever failing split ran first stopped new tasks; the other may not have run.
    assert "inner 2 failed" in first.output or "inner 4 failed" in first.output
    for flag in flags:
        flag.unlink()
    assert run_flow(None, "resume").returncode == 0
    resumed = client.Flow("Failing").latest_run
    rerun = sorted(t.data.value for t in resumed["inner"] if t.origin_pathspec is None)
    cloned = sorted(t.data.value for t in resumed["inner"] if t.origin_pathspec is not None)
    assert rerun == [20, 40]
    assert cloned == [10, 30, 50]
    assert resumed.data.total == 150


def test_resume_from_a_named_step_reruns_it_and_what_follows(run_flow, client):
    assert run_flow(FAILING, "run").returncode == 0
    origin = client.Flow("Failing").latest_run
    result = run_flow(None, "resume", "inner_join", "--origin-run-id", origin.id)
    assert result.returncode == 0, result
    resumed = client.Flow("Failing").latest_run
    assert all(t.origin_pathspec for t in resumed["inner"])
    assert not any(t.origin_pathspec for t in resumed["inner_join"])
    assert not any(t.origin_pathspec for t in resumed["end"])


def test_resume_keeps_the_origin_parameters_and_refuses_other_values(run_flow, client):
    flag = _marker(run_flow, "fail_end")
    assert run_flow(FAILING, "run", "--alpha", "2").returncode != 0
    flag.unlink()
    refused = run_flow(None, "resume", "--alpha", "3")
    assert_refused(refused, "alpha", "cannot change")
    accepted = run_flow(None, "resume", "--alpha", "2")
    assert accepted.returncode == 0, accepted
    assert client.Flow("Failing").latest_run.data.total == 300


def test_resume_of_an_unknown_step_or_run_is_refused(run_flow):
    assert run_flow(FAILING, "run").returncode == 0
    assert_refused(run_flow(None, "resume", "nosuchstep"), "nosuchstep")
    assert_refused(run_flow(None, "resume", "--origin-run-id", "12345"), "12345")


SLOW_FOREACH = """
import os, time
from flowbook import FlowSpec, step

class Slow(FlowSpec):
    @step
    def start(self):
        self.items = list(range(8))
        self.next(self.work, foreach="items")

    @step
    def work(self):
        if self.input >= 4 and not os.path.exists("fast"):
            open(f"started_{self.input}", "w").close()
            time.sleep(60)
        self.square = self.input ** 2
        self.next(self.join)

    @step
    def join(self, inputs):
        self.total = sum(i.square for i in inputs)
        self.next(self.end)

    @step
    def end(self):
        pass

if __name__ == "__main__":
    Slow()
"""


def _start_in_background(run_flow, source: str) -> subprocess.Popen:
    path = run_flow.write(source)
    return subprocess.Popen(
        [sys.executable, str(path), "run", "--max-workers", "8"],
        cwd=run_flow.workdir,
        env=run_flow.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _wait_for(predicate, timeout: float = 30.0) -> None:
    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.05)


def _processes_in_session(sid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":  # session id, not a zombie
            found.append(int(entry))
    return found


def test_a_run_killed_with_sigkill_is_unfinished_and_resume_completes_it(run_flow, client):
    proc = _start_in_background(run_flow, SLOW_FOREACH)
    _wait_for(
        lambda: (
            len(list(run_flow.workdir.glob("started_*"))) == 4
            and len(list(run_flow.datastore.glob("flows/Slow/*/work/*/0.done.json"))) == 4
        )
    )
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed = client.Flow("Slow").latest_run
    assert not killed.finished and not killed.successful
    done = [t for t in killed["work"] if t.successful]
    assert len(done) == 4
    (run_flow.workdir / "fast").write_text("x")
    result = run_flow(None, "resume")
    assert result.returncode == 0, result
    resumed = client.Flow("Slow").latest_run
    assert resumed.data.total == sum(i * i for i in range(8))
    assert sorted(t.index for t in resumed["work"] if t.origin_pathspec) == [0, 1, 2, 3]
    # The blobs of a complete run equal those of an uninterrupted one.
    assert run_flow(None, "run").returncode == 0
    fresh = client.Flow("Slow").latest_run
    assert fresh.data.total == resumed.data.total
    assert fresh["join"].task["total"].sha == resumed["join"].task["total"].sha


def test_ctrl_c_stops_the_tasks_and_marks_the_run_failed(run_flow, client):
    proc = _start_in_background(run_flow, SLOW_FOREACH)
    _wait_for(lambda: len(list(run_flow.workdir.glob("started_*"))) == 4)
    os.kill(proc.pid, signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode != 0
    assert TRACEBACK not in stdout + stderr
    _wait_for(lambda: not _processes_in_session(proc.pid), timeout=10)
    run = client.Flow("Slow").latest_run
    assert run.finished and not run.successful


RETRIES = """
from flowbook import FlowSpec, step, retry, current

class Retries(FlowSpec):
    @retry(times=2, minutes_between_retries=0)
    @step
    def start(self):
        print("attempt", current.retry_count)
        if current.retry_count < 2:
            raise RuntimeError(f"flaky {current.retry_count}")
        self.attempts = current.retry_count + 1
        self.next(self.end)

    @step
    def end(self):
        pass

if __name__ == "__main__":
    Retries()
"""


def test_retry_keeps_every_attempt_inspectable(run_flow, client):
    result = run_flow(RETRIES, "run")
    assert result.returncode == 0, result
    assert "Retrying: attempt 2 of 3" in result.output
    task = client.Flow("Retries").latest_run["start"].task
    assert task.current_attempt == 2
    assert task.stdout == "attempt 2\n"
    assert task.data.attempts == 3
    first = run_flow.datastore / "flows/Retries" / task.run_id / "start" / task.id / "0.stdout"
    assert first.read_text() == "attempt 0\n"


FLAKY_WITHOUT_DECORATOR = """
from flowbook import FlowSpec, step, current

class Flaky(FlowSpec):
    @step
    def start(self):
        if current.retry_count < 1:
            raise RuntimeError("flaky")
        self.next(self.end)

    @step
    def end(self):
        self.retries = current.retry_count

if __name__ == "__main__":
    Flaky()
"""


@pytest.mark.parametrize("spec", ["retry", "retry:times=1,minutes_between_retries=0"])
def test_with_retry_on_the_command_line(run_flow, client, spec):
    source = FLAKY_WITHOUT_DECORATOR
    if spec == "retry":  # the default waits 2 minutes between retries
        source = source.replace("if current.retry_count < 1:", "if False:")
    result = run_flow(source, "--with", spec, "run")
    assert result.returncode == 0, result
    assert run_flow(source, "run").returncode == (0 if spec == "retry" else 1)


CATCH_AND_TIMEOUT = """
import time
from flowbook import FlowSpec, step, catch, timeout, retry, resources

class Guarded(FlowSpec):
    @catch(var="boom")
    @resources(cpu=2, memory=1000, gpu=0)
    @step
    def start(self):
        raise KeyError("missing thing")
        self.next(self.slow)

    @retry(times=1, minutes_between_retries=0)
    @catch(var="slow_error", print_exception=False)
    @timeout(seconds=1)
    @step
    def slow(self):
        time.sleep(30)
        self.next(self.end)

    @step
    def end(self):
        self.summary = (self.boom.type, self.slow_error.message)

if __name__ == "__main__":
    Guarded()
"""


def test_catch_stores_the_exception_and_timeout_kills_the_task(run_flow, client):
    started = time.time()
    result = run_flow(CATCH_AND_TIMEOUT, "run")
    assert result.returncode == 0, result
    assert time.time() - started < 25  # the 30 s sleeps were killed
    assert "timed out after 1 s" in result.output
    run = client.Flow("Guarded").latest_run
    boom = run["start"].task.data.boom
    assert boom.type == "KeyError" and "missing thing" in boom.message
    assert "raise KeyError" in boom.traceback
    assert run.data.summary == ("KeyError", "timed out after 1 s (@timeout)")
    slow = run["slow"].task
    assert slow.current_attempt == 2  # two timed-out attempts, then the caught one
    graph = client.Run(run.pathspec)._record["graph"]
    start = next(s for s in graph["steps"] if s["name"] == "start")
    resources = next(d for d in start["decorators"] if d["name"] == "resources")
    assert resources["attributes"]["cpu"] == 2


CATCH_WITHOUT_FAILURE = """
from flowbook import FlowSpec, step, catch

class Calm(FlowSpec):
    @catch(var="compute_failed")
    @step
    def start(self):
        self.compute_failed = "set by the step"  # Metaflow sets it to None all the same
        self.next(self.end)

    @step
    def end(self):
        print("failed?", self.compute_failed)

if __name__ == "__main__":
    Calm()
"""


def test_catch_var_is_none_when_the_step_succeeds(run_flow, client):
    result = run_flow(CATCH_WITHOUT_FAILURE, "run")
    assert result.returncode == 0, result
    assert "failed? None" in result.output
    assert client.Flow("Calm").latest_run["start"].task.data.compute_failed is None


CURRENT = """
from flowbook import FlowSpec, Parameter, step, current

class Current(FlowSpec):
    alpha = Parameter("alpha", default=1)

    @step
    def start(self):
        self.seen = dict(
            flow=current.flow_name, run=current.run_id, step=current.step_name,
            task=current.task_id, pathspec=current.pathspec, retry=current.retry_count,
            running=current.is_running_flow, params=current.parameter_names,
            tags=sorted(current.tags),
        )
        self.next(self.end)

    @step
    def end(self):
        pass

if __name__ == "__main__":
    Current()
"""


def test_current_describes_the_running_task(run_flow, client):
    result = run_flow(CURRENT, "run", "--tag", "t1")
    assert result.returncode == 0, result
    run = client.Flow("Current").latest_run
    seen = run["start"].task.data.seen
    task_id = run["start"].task.id
    assert seen == {
        "flow": "Current",
        "run": run.id,
        "step": "start",
        "task": task_id,
        "pathspec": f"Current/{run.id}/start/{task_id}",
        "retry": 0,
        "running": True,
        "params": ["alpha"],
        "tags": ["t1"],
    }
    from flowbook import current

    assert current.is_running_flow is False


KILLED = """
import ctypes, os, signal
from flowbook import FlowSpec, step

class Killed(FlowSpec):
    @step
    def start(self):
        if os.environ.get("HOW") == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        ctypes.string_at(0)
        self.next(self.end)

    @step
    def end(self):
        pass

if __name__ == "__main__":
    Killed()
"""


@pytest.mark.parametrize("how, signal_name", [("kill", "SIGKILL"), ("segfault", "SIGSEGV")])
def test_a_task_killed_by_a_signal_is_reported_with_the_signal(run_flow, how, signal_name):
    result = run_flow(KILLED, "run", env={"HOW": how})
    assert_refused(result, f"killed by signal {signal_name}", "step 'start'")


def test_a_user_exception_shows_the_users_traceback_only(run_flow):
    flag = _marker(run_flow, "fail_outer")
    result = run_flow(FAILING, "run")
    assert flag.exists()
    assert_task_failed(result, "outer", "RuntimeError: failing because fail_outer exists")
    assert 'flow.py", line 17, in fail_if' in result.output
    assert 'flow.py", line 30, in outer' in result.output
    assert "/outer/" in result.output


def test_a_corrupt_blob_is_reported_naming_the_artifact_and_task(run_flow, client):
    assert run_flow(FAILING, "run").returncode == 0
    run = client.Flow("Failing").latest_run
    artifact = run["end"].task["total"]
    # A small value travels inline in the records of the tasks that carry it (and in
    # their steps' indexes): alter every copy.
    inline = artifact._entry["inline"]
    altered = base64.b64encode(base64.b64decode(inline)[:-1] + b"!").decode()
    copies = [
        path
        for path in (run_flow.datastore / "flows" / "Failing" / run.id).rglob("*.json")
        if inline in path.read_text()
    ]
    assert len(copies) >= 2
    for path in copies:
        path.write_text(path.read_text().replace(inline, altered))
    from flowbook.exceptions import CorruptBlobError

    with pytest.raises(CorruptBlobError) as caught:
        client.Flow("Failing")[run.id]["end"].task["total"].data  # noqa: B018 - read afresh
    message = str(caught.value)
    assert "'total'" in message and run["end"].task.pathspec in message
    # A step that reads it fails the same way, naming it.
    result = run_flow(None, "resume", "end", "--origin-run-id", run.id)
    assert_task_failed(result, "end", "corrupt", "'total'")


def test_a_missing_datastore_is_one_line_before_anything_runs(run_flow):
    missing = run_flow.workdir / "no" / "such" / "place"
    result = run_flow(FAILING, "run", env={"FLOWBOOK_DATASTORE": str(missing)})
    assert_refused(result, str(missing), "does not exist")
    assert "Workflow starting" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_a_read_only_datastore_is_one_line_before_anything_runs(run_flow):
    store = run_flow.workdir / "readonly"
    store.mkdir()
    # Tests run as root, where a mode of 0o555 does not stop writes; the immutable
    # attribute does.
    made_immutable = subprocess.run(["chattr", "+i", str(store)], capture_output=True)
    if made_immutable.returncode != 0:
        os.chmod(store, 0o555)
    try:
        result = run_flow(FAILING, "run", env={"FLOWBOOK_DATASTORE": str(store)})
        assert_refused(result, "read-only", str(store))
        assert "Workflow starting" not in result.output
        assert not any(store.iterdir())
    finally:
        subprocess.run(["chattr", "-i", str(store)], capture_output=True)
        os.chmod(store, 0o755)


def test_eight_runs_at_once_on_one_datastore(run_flow, client):
    path = run_flow.write(FAILING)
    procs = [
        subprocess.Popen(
            [sys.executable, str(path), "run", "--alpha", str(i)],
            cwd=run_flow.workdir,
            env=run_flow.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(1, 9)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
    runs = list(client.Flow("Failing"))
    assert len({r.id for r in runs}) == 8
    assert sorted(r.data.total for r in runs) == [150 * i for i in range(1, 9)]
