"""Tasks on a real Dask cluster: ``dask scheduler`` and ``dask worker --nworkers 2
--nthreads 1`` processes on 127.0.0.1, artifacts on an S3 API (moto) on 127.0.0.1.

The contract tests run the same flows on both executors (local, and Dask + S3) from
one parametrized fixture; the rest are Dask's own: logs while tasks run, a worker
killed mid-task, the scheduler going away, the datastore check.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest
from conftest import (
    MOTO_BUCKET,
    TEST_USER,
    TRACEBACK,
    FlowResult,
    FlowRunner,
    example_source,
)

distributed = pytest.importorskip("distributed")

DASK = str(Path(sys.executable).parent / "dask")


class DaskCluster:
    """A scheduler process and a ``dask worker --nworkers N`` process on 127.0.0.1."""

    def __init__(self, workdir: Path, env: dict[str, str], nworkers: int = 2) -> None:
        self.workdir = workdir
        self.scheduler_file = workdir / "scheduler.json"
        self.log = open(workdir / "dask.log", "ab")  # noqa: SIM115
        self.env = dict(os.environ, **env)
        self.scheduler = subprocess.Popen(
            [DASK, "scheduler", "--host", "127.0.0.1", "--port", "0"]
            + ["--dashboard-address", "127.0.0.1:0"]
            + ["--scheduler-file", str(self.scheduler_file)],
            stdout=self.log,
            stderr=self.log,
            env=self.env,
        )
        deadline = time.time() + 30
        while not self.scheduler_file.exists() or not self.scheduler_file.read_text():
            if self.scheduler.poll() is not None or time.time() > deadline:
                self.stop()
                pytest.fail("the Dask scheduler did not start")
            time.sleep(0.1)
        time.sleep(0.2)
        self.address = json.loads(self.scheduler_file.read_text())["address"]
        self.workers = subprocess.Popen(
            [DASK, "worker", self.address, "--nworkers", str(nworkers), "--nthreads", "1"]
            + ["--host", "127.0.0.1", "--no-dashboard", "--local-directory", str(workdir)],
            stdout=self.log,
            stderr=self.log,
            env=self.env,
        )
        with self.client() as client:
            client.wait_for_workers(nworkers, timeout=60)

    @contextlib.contextmanager
    def client(self):
        client = distributed.Client(self.address, timeout=20, set_as_default=False)
        try:
            yield client
        finally:
            client.close()

    def worker_pids(self) -> dict[str, int]:
        with self.client() as client:
            return client.run(os.getpid)

    def stop(self) -> None:
        for proc in (getattr(self, "workers", None), self.scheduler):
            if proc is not None and proc.poll() is None:
                proc.terminate()
        for proc in (getattr(self, "workers", None), self.scheduler):
            if proc is not None:
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self.log.close()


@pytest.fixture(scope="session")
def dask_cluster(tmp_path_factory, moto_s3):
    """One Dask cluster for the session, its workers able to reach the moto S3."""
    cluster = DaskCluster(tmp_path_factory.mktemp("dask"), moto_s3)
    yield cluster
    cluster.stop()


class ExecutorRunner:
    """Runs flows on one executor: ``local`` (a local datastore) or ``dask`` (the
    session's Dask cluster, a fresh prefix of the moto bucket as datastore)."""

    def __init__(self, kind: str, runner: FlowRunner, cluster: DaskCluster | None, s3_env: dict):
        self.kind = kind
        self.runner = runner
        self.cluster = cluster
        self.s3_env = s3_env
        if kind == "dask":
            self.datastore = f"s3://{MOTO_BUCKET}/{uuid.uuid4().hex}"
            runner.env.update(s3_env)
            runner.env["FLOWBOOK_DATASTORE"] = self.datastore
        else:
            self.datastore = str(runner.datastore)

    def args(self, command: str) -> list[str]:
        if self.kind == "dask":
            return [command, "--executor", "dask", "--dask-scheduler", self.cluster.address]
        return [command]

    def __call__(self, source: str | None, command: str, *args: str, **kw) -> FlowResult:
        return self.runner(source, *self.args(command), *args, **kw)

    @contextlib.contextmanager
    def client(self, monkeypatch: pytest.MonkeyPatch):
        import flowbook.client as fb_client

        monkeypatch.setenv("USER", TEST_USER)
        for var in ("FLOWBOOK_USER", "METAFLOW_USER", "FLOWBOOK_DATASTORE"):
            monkeypatch.delenv(var, raising=False)
        if self.kind == "dask":
            for name, value in self.s3_env.items():
                monkeypatch.setenv(name, value)
        fb_client.datastore(self.datastore)
        fb_client.namespace(None)
        try:
            yield fb_client
        finally:
            fb_client.datastore(None)
            fb_client.default_namespace()


@pytest.fixture(params=["local", "dask"])
def on_executor(request, run_flow, moto_s3):
    """The contract fixture: each test using it runs on both executors."""
    cluster = request.getfixturevalue("dask_cluster") if request.param == "dask" else None
    return ExecutorRunner(request.param, run_flow, cluster, moto_s3)


def _ran_on_dask(result: FlowResult, executor: ExecutorRunner) -> None:
    if executor.kind == "dask":
        assert f"Running tasks on Dask scheduler {executor.cluster.address}" in result.output


# ---------------------------------------------------------------------- contract
def test_branches_joins_and_parameters(on_executor, monkeypatch):
    result = on_executor("branches", "run", "--scale", "2")
    assert result.returncode == 0, result
    _ran_on_dask(result, on_executor)
    with on_executor.client(monkeypatch) as client:
        join = client.Flow("BranchesFlow").latest_run["join"].task
        assert join.data.result == {"left_join": ["la", "lb"], "each_join": [6, 4, 2, 0]}
        assert join.data.order == ["left_join", "each_join"]
        assert join.data.scale == 2


def test_nested_foreach(on_executor, monkeypatch):
    result = on_executor("nested", "run")
    assert result.returncode == 0, result
    _ran_on_dask(result, on_executor)
    with on_executor.client(monkeypatch) as client:
        run = client.Flow("NestedFlow").latest_run
        summary = run["outer_join"].task.data.summary
        assert summary == [(1, ["1a", "1b", "1c"], 1100), (2, ["2a", "2b", "2c"], 2200)]
        assert "summary" in run["end"].task.stdout


def test_merge_artifacts(on_executor, monkeypatch):
    result = on_executor("merge", "run", "--mode", "exclude")
    assert result.returncode == 0, result
    with on_executor.client(monkeypatch) as client:
        join = client.Flow("MergeFlow").latest_run["join"].task
        assert join.data.creature == "dog"
        assert join.data.count == 2
        assert join.data.only_one == "one"
        assert "increment" not in join


RETRY_CATCH_TIMEOUT = """
import time
from flowbook import FlowSpec, catch, current, retry, step, timeout


class FaultsFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.flaky, self.broken, self.slow)

    @retry(times=1, minutes_between_retries=0)
    @step
    def flaky(self):
        print("attempt", current.retry_count)
        if current.retry_count == 0:
            raise RuntimeError("first attempt fails")
        self.v = "flaky ok"
        self.next(self.join)

    @catch(var="err")
    @step
    def broken(self):
        raise ValueError("always broken")
        self.next(self.join)

    @catch(var="err")
    @timeout(seconds=2)
    @step
    def slow(self):
        time.sleep(60)
        self.next(self.join)

    @step
    def join(self, inputs):
        self.v = inputs.flaky.v
        self.broken_err = inputs.broken.err.exception
        self.slow_err = str(inputs.slow.err)
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    FaultsFlow()
"""


def test_retry_catch_and_timeout(on_executor, monkeypatch):
    started = time.time()
    result = on_executor(RETRY_CATCH_TIMEOUT, "run")
    assert result.returncode == 0, result
    assert time.time() - started < 50  # the 60 s sleep was cut by @timeout
    assert "first attempt fails" in result.output
    assert "Retrying: attempt 2 of 2" in result.output
    assert "timed out after 2 s (@timeout)" in result.output
    with on_executor.client(monkeypatch) as client:
        join = client.Flow("FaultsFlow").latest_run["join"].task
        assert join.data.v == "flaky ok"
        assert "always broken" in join.data.broken_err
        assert "timed out" in join.data.slow_err


RESUMABLE = """
import os
from flowbook import FlowSpec, step

MARKER = {marker!r}


class ResumableFlow(FlowSpec):
    @step
    def start(self):
        self.items = [1, 2, 3]
        self.next(self.body, foreach="items")

    @step
    def body(self):
        if self.input == 2 and not os.path.exists(MARKER):
            raise RuntimeError("not yet")
        self.v = self.input * 10
        self.next(self.join)

    @step
    def join(self, inputs):
        self.total = sum(i.v for i in inputs)
        self.next(self.end)

    @step
    def end(self):
        print("total", self.total)


if __name__ == "__main__":
    ResumableFlow()
"""


@pytest.mark.parametrize("resume_on", ["local", "dask"])
def test_resume(on_executor, monkeypatch, resume_on, tmp_path, request):
    marker = tmp_path / "marker"
    first = on_executor(RESUMABLE.format(marker=str(marker)), "run")
    assert first.returncode != 0, first
    assert "not yet" in first.output
    marker.touch()
    if resume_on == on_executor.kind:
        args = on_executor.args("resume")
    elif resume_on == "local":
        args = ["resume"]
    else:  # a local run (local datastore) resumed on Dask workers of this machine
        address = request.getfixturevalue("dask_cluster").address
        args = ["resume", "--executor", "dask", "--dask-scheduler", address]
    second = on_executor.runner(None, *args)
    assert second.returncode == 0, second
    assert "Cloned from" in second.output
    assert "total 60" in second.output
    with on_executor.client(monkeypatch) as client:
        run = client.Flow("ResumableFlow").latest_run
        assert run.successful
        assert run["join"].task.data.total == 60


def test_reuse(on_executor, monkeypatch):
    """--reuse on both executors: the second run reuses every task (the datastore is
    S3 on Dask), a changed parameter runs only the step that reads it."""
    first = on_executor("branches", "run", "--reuse", "--scale", "2")
    assert first.returncode == 0, first
    second = on_executor(None, "run", "--reuse", "--scale", "2")
    assert second.returncode == 0, second
    assert "start: reused from" in second.output and "end: reused from" in second.output
    assert "Task is starting" not in second.output  # no task ran
    third = on_executor(None, "run", "--reuse", "--scale", "3")
    assert third.returncode == 0, third
    assert "parameter scale 2 -> 3" in third.output
    with on_executor.client(monkeypatch) as client:
        run = client.Flow("BranchesFlow").latest_run
        assert run["join"].task.data.scale == 3
        assert run["join"].task.data.result["each_join"] == [9, 6, 3, 0]


# ---------------------------------------------------------------------- Dask only
CHATTY = """
import time
from flowbook import FlowSpec, step


class ChattyFlow(FlowSpec):
    @step
    def start(self):
        print("tick", flush=True)
        time.sleep(4)
        print("tock", flush=True)
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    ChattyFlow()
"""


def _popen(executor: ExecutorRunner, source: str, *args: str) -> subprocess.Popen:
    path = executor.runner.write(source)
    return subprocess.Popen(
        [sys.executable, str(path), *args],
        cwd=executor.runner.workdir,
        env=executor.runner.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.fixture
def on_dask(run_flow, dask_cluster, moto_s3):
    return ExecutorRunner("dask", run_flow, dask_cluster, moto_s3)


def test_logs_stream_back_while_the_task_runs(on_dask):
    proc = _popen(on_dask, CHATTY, *on_dask.args("run"))
    seen: dict[str, float] = {}
    lines = []
    for line in proc.stdout:
        lines.append(line)
        for word in ("tick", "tock"):
            if line.rstrip().endswith(f"] {word}") and word not in seen:
                seen[word] = time.time()
    assert proc.wait(timeout=120) == 0, "".join(lines)
    assert set(seen) == {"tick", "tock"}, "".join(lines)
    # tick came while the task slept, not with tock at its end
    assert seen["tock"] - seen["tick"] > 2.5, "".join(lines)


LONG_ONCE = """
import os, time
from flowbook import FlowSpec, current, retry, step

MARKER = {marker!r}


class LongOnceFlow(FlowSpec):
    @retry(times=1, minutes_between_retries=0)
    @step
    def start(self):
        if current.retry_count == 0:
            with open(MARKER, "w") as handle:
                handle.write(str(os.getpid()))
            time.sleep(120)
        print("survived on attempt", current.retry_count)
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    LongOnceFlow()
"""


def _wait_for(path: Path, proc: subprocess.Popen, seconds: float = 60) -> int:
    deadline = time.time() + seconds
    while not (path.exists() and path.read_text()):
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() < deadline, "the task did not start"
        time.sleep(0.1)
    return int(path.read_text())


def test_a_worker_killed_mid_task_fails_the_attempt_and_retry_runs_elsewhere(
    on_dask, tmp_path, monkeypatch
):
    import psutil

    marker = tmp_path / "task.pid"
    before = on_dask.cluster.worker_pids()
    proc = _popen(on_dask, LONG_ONCE.format(marker=str(marker)), *on_dask.args("run"))
    task_pid = _wait_for(marker, proc)
    # the task's process -> the worker's subprocess -> the worker process
    worker_pid = psutil.Process(task_pid).parent().parent().pid
    address = next(a for a, pid in before.items() if pid == worker_pid)
    os.kill(worker_pid, signal.SIGKILL)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, output
    assert f"the Dask worker {address} running task" in output, output
    assert "was lost" in output
    assert f"Task failed: its Dask worker {address} was lost" in output
    assert "Retrying: attempt 2 of 2" in output
    assert "survived on attempt 1" in output
    assert not psutil.pid_exists(task_pid) or psutil.Process(task_pid).status() == "zombie"
    with on_dask.client(monkeypatch) as client:
        task = client.Flow("LongOnceFlow").latest_run["start"].task
        assert task.successful
        assert task.current_attempt == 1


def test_a_run_killed_with_sigkill_takes_its_tasks_off_the_workers(on_dask, tmp_path):
    marker = tmp_path / "task.pid"
    proc = _popen(on_dask, LONG_ONCE.format(marker=str(marker)), *on_dask.args("run"))
    task_pid = _wait_for(marker, proc)
    proc.kill()  # kill -9 of `python flow.py run`: no chance to stop anything itself
    proc.communicate(timeout=30)
    # Dask cancels the vanished client's tasks; the worker stops the task's process
    deadline = time.time() + 20
    while _alive(task_pid) and time.time() < deadline:
        time.sleep(0.2)
    assert not _alive(task_pid)
    # and the worker is free for the next run
    again = on_dask(example_source("helloworld"), "run", timeout=120)
    assert again.returncode == 0, again


UNLOADABLE_ON_WORKERS = """
import sys
from flowbook import FlowSpec, step

if sys.argv[0].endswith("server.py"):  # a worker's task server, not `python flow.py`
    import helper_only_on_the_laptop


class UnloadableFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    UnloadableFlow()
"""


def test_a_flow_the_workers_cannot_import_fails_naming_the_import_error(on_dask):
    result = on_dask(UNLOADABLE_ON_WORKERS, "run", timeout=120)
    assert result.returncode == 1, result
    expected = (
        "could not load the flow: ModuleNotFoundError: No module named 'helper_only_on_the_laptop'"
    )
    failed = [line for line in result.output.splitlines() if "Task failed:" in line]
    assert failed and expected in failed[0], result.output
    assert "killed by signal" not in result.output, result.output


def test_the_scheduler_going_away_fails_the_run_clearly(run_flow, moto_s3, tmp_path):
    own = tmp_path / "own"
    own.mkdir()
    cluster = DaskCluster(own, moto_s3, nworkers=1)
    try:
        executor = ExecutorRunner("dask", run_flow, cluster, moto_s3)
        marker = tmp_path / "task.pid"
        proc = _popen(executor, LONG_ONCE.format(marker=str(marker)), *executor.args("run"))
        task_pid = _wait_for(marker, proc)
        cluster.scheduler.kill()
        output, _ = proc.communicate(timeout=60)
        assert proc.returncode != 0, output
        assert f"the Dask scheduler {cluster.address} went away" in output, output
        assert TRACEBACK not in output, output
    finally:
        cluster.stop()
    deadline = time.time() + 20  # the worker's end took the task's process with it
    while _alive(task_pid) and time.time() < deadline:
        time.sleep(0.2)
    assert not _alive(task_pid)


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != "zombie"
    except psutil.NoSuchProcess:
        return False


def test_a_local_datastore_works_when_every_worker_is_on_this_machine(run_flow, dask_cluster):
    result = run_flow(
        "nested", "run", "--executor", "dask", "--dask-scheduler", dask_cluster.address
    )
    assert result.returncode == 0, result
    assert "summary [(1," in result.output


def test_a_local_datastore_is_refused_when_a_worker_is_elsewhere(tmp_path):
    from flowbook.datastore import Datastore
    from flowbook.runtime.dask_executor import DaskExecutor, DaskSetupError

    class FakeClient:
        def scheduler_info(self):
            return {"workers": {"tcp://10.1.2.3:4000": {}}}

        def run(self, function, *args):
            return {"tcp://10.1.2.3:4000": {"host": "elsewhere.example", "missing": []}}

    executor = DaskExecutor.__new__(DaskExecutor)
    executor.client = FakeClient()
    executor.address = "tcp://10.1.2.3:8786"
    executor.loader = ["file", __file__, "X", []]
    datastore = Datastore(str(tmp_path / "ds"))
    with pytest.raises(DaskSetupError, match="runs on host elsewhere.example"):
        executor._check_workers(datastore, allow_local_datastore=False)
    executor._check_workers(datastore, allow_local_datastore=True)  # the user says it is shared


def test_an_unknown_executor_is_refused(run_flow):
    result = run_flow("nested", "run", "--executor", "ray")
    assert result.returncode != 0
    assert "--executor 'ray': expected one of local, dask" in result.output
    assert TRACEBACK not in result.output
    result = run_flow(None, "run", env={"FLOWBOOK_EXECUTOR": "daks"})
    assert result.returncode != 0
    assert "FLOWBOOK_EXECUTOR 'daks': expected one of local, dask" in result.output


def test_a_scheduler_given_for_a_local_run_is_pointed_out(run_flow):
    result = run_flow("nested", "run", "--dask-scheduler", "tcp://127.0.0.1:9")
    assert result.returncode == 0, result
    assert "Warning: --dask-scheduler is for --executor dask; this run's tasks run on " in (
        result.output
    )
    quiet = run_flow(None, "run", env={"FLOWBOOK_DASK_SCHEDULER": "tcp://127.0.0.1:9"})
    assert quiet.returncode == 0 and "Warning" not in quiet.output, quiet


def test_an_unreachable_scheduler_is_refused(run_flow):
    result = run_flow(
        "nested", "run", "--executor", "dask", "--dask-scheduler", "tcp://127.0.0.1:9"
    )
    assert result.returncode != 0
    assert "Cannot connect to the Dask scheduler tcp://127.0.0.1:9" in result.output
    assert TRACEBACK not in result.output


@pytest.mark.parametrize(
    ("content", "args", "needle"),
    [
        ("{bad", ["--dask-scheduler-file", "sched.json"], "sched.json: it is not JSON text."),
        ("{}", ["--dask-scheduler-file", "sched.json"], "it names no scheduler address."),
        (None, ["--dask-scheduler-file", "gone.json"], "file gone.json does not exist."),
        (None, ["--dask-scheduler", "foo://bar"], "unknown address scheme 'foo'"),
    ],
)
def test_a_bad_scheduler_file_or_address_is_one_line_at_once(run_flow, content, args, needle):
    if content is not None:
        (run_flow.workdir / "sched.json").write_text(content)
    started = time.time()
    result = run_flow("nested", "run", "--executor", "dask", *args)
    assert result.returncode != 0
    assert needle in result.output, result.output
    assert TRACEBACK not in result.output and "Exception ignored" not in result.output
    assert time.time() - started < 20  # not Dask's 30 s wait to close a client


def test_executor_from_the_environment_and_the_runner(run_flow, dask_cluster):
    from flowbook import Runner

    path = run_flow.write("nested")
    env = {k: v for k, v in run_flow.env.items() if k.startswith(("FLOWBOOK", "USER"))}
    env["FLOWBOOK_DASK_SCHEDULER"] = dask_cluster.address
    with Runner(
        str(path), show_output=False, env=env, cwd=str(run_flow.workdir), executor="dask"
    ) as runner:
        run = runner.run().run
        assert run.successful
    result = run_flow(
        None,
        "run",
        env={"FLOWBOOK_EXECUTOR": "dask", "FLOWBOOK_DASK_SCHEDULER": dask_cluster.address},
    )
    assert result.returncode == 0, result
    assert f"Running tasks on Dask scheduler {dask_cluster.address}" in result.output


NB_RUNNER_SCRIPT = """
from flowbook import FlowSpec, NBRunner, step


class CellFlow(FlowSpec):  # defined in __main__, as in a notebook's cell
    @step
    def start(self):
        self.x = 41
        self.next(self.end)

    @step
    def end(self):
        self.x += 1


run = NBRunner(CellFlow, show_output=False, executor="dask", dask_scheduler={address!r}).nbrun()
print("result", run.successful, run.data.x)
"""


def test_nbrunner_runs_a_class_sent_from_a_notebook_on_dask(on_dask):
    script = on_dask.runner.workdir / "cell.py"
    script.write_text(NB_RUNNER_SCRIPT.format(address=on_dask.cluster.address))
    proc = subprocess.run(
        [sys.executable, str(script)],
        cwd=on_dask.runner.workdir,
        env=on_dask.runner.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "result True 42" in proc.stdout, proc.stdout + proc.stderr


def test_no_scheduler_starts_a_local_cluster_and_says_so(run_flow):
    result = run_flow("nested", "run", "--executor", "dask", timeout=180)
    assert result.returncode == 0, result
    assert "No Dask scheduler given: started a local Dask cluster for this run" in result.output


def test_a_local_run_does_not_import_dask(run_flow):
    probe = textwrap.dedent(
        """
        import sys
        import flowbook.cli.entry, flowbook.runtime.launch, flowbook.runtime.scheduler
        print(sorted(m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed')))
        """
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert out.stdout.strip() == "[]", out


def test_a_notebook_runs_on_dask(tmp_path, dask_cluster, moto_s3, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.v4.new_notebook()
    nb.metadata["flowbook"] = {"flow_name": "NotebookOnDask"}
    nb.cells = [
        nbformat.v4.new_code_cell("%%setup\nFACTOR = 7"),
        nbformat.v4.new_code_cell(
            "%%step start --next body --foreach items\nself.items = [1, 2, 3]"
        ),
        nbformat.v4.new_code_cell(
            "%%step body --next join\nself.v = self.input * FACTOR\nprint('body', self.v)"
        ),
        nbformat.v4.new_code_cell(
            "%%step join --next end --join\nself.total = sum(i.v for i in inputs)"
        ),
        nbformat.v4.new_code_cell("%%step end\nprint('total', self.total)"),
    ]
    path = tmp_path / "analysis.ipynb"
    nbformat.write(nb, str(path))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLOWBOOK_", "METAFLOW_"))}
    datastore = f"s3://{MOTO_BUCKET}/{uuid.uuid4().hex}"
    env.update(moto_s3, USER=TEST_USER, FLOWBOOK_DATASTORE=datastore)
    result = subprocess.run(
        [str(Path(sys.executable).parent / "flowbook"), "run", str(path)]
        + ["--executor", "dask", "--dask-scheduler", dask_cluster.address],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert f"Running tasks on Dask scheduler {dask_cluster.address}" in output
    assert "body 14" in output
    assert "total 42" in output


RESOURCES = """
from flowbook import FlowSpec, resources, step


class ResourcesFlow(FlowSpec):
    @resources(cpu=2, memory=1000, gpu=1)
    @step
    def start(self):
        self.next(self.end)

    @step
    def end(self):
        pass
"""


def test_resources_map_to_the_dask_resources_the_workers_declare(tmp_path):
    from flowbook.graph import FlowGraph
    from flowbook.loader import load_flow_class
    from flowbook.runtime.dask_executor import DaskExecutor

    path = tmp_path / "resources_flow.py"
    path.write_text(RESOURCES)
    executor = DaskExecutor.__new__(DaskExecutor)
    executor.graph = FlowGraph.from_flow_class(load_flow_class(str(path)))
    executor.worker_resources = {"CPU", "MEMORY"}  # no worker declares GPU
    assert executor._resources("start") == {"CPU": 2.0, "MEMORY": 1000.0 * 2**20}
    assert executor._resources("end") is None
    executor.worker_resources = set()  # workers without resources: nothing asked
    assert executor._resources("start") is None


def test_a_step_no_worker_can_take_is_refused_before_the_run(tmp_path):
    from flowbook.graph import FlowGraph
    from flowbook.loader import load_flow_class
    from flowbook.runtime.dask_executor import DaskExecutor, DaskSetupError

    path = tmp_path / "resources_flow.py"
    path.write_text(RESOURCES)
    executor = DaskExecutor.__new__(DaskExecutor)
    executor.graph = FlowGraph.from_flow_class(load_flow_class(str(path)))
    executor.worker_resources = {"CPU", "MEMORY"}
    small = {"resources": {"CPU": 4, "MEMORY": 1e9}}  # 1e9 bytes < 1000 MiB
    big = {"resources": {"CPU": 1, "MEMORY": 2e9}}
    with pytest.raises(DaskSetupError) as refused:
        executor._check_resources({"workers": {"tcp://a:1": small, "tcp://b:1": big}})
    assert str(refused.value) == (
        "Flow ResourcesFlow, step 'start': @resources asks for CPU=2 MEMORY=1.04858e+09 "
        "(MEMORY in bytes: @resources' memory is in MiB), but no Dask worker has that much "
        "(the most any worker declares: CPU=4 MEMORY=2e+09); lower @resources or start "
        "workers with more."
    )
    # one worker with both is enough
    fits = {"resources": {"CPU": 2, "MEMORY": 2e9}}
    executor._check_resources({"workers": {"tcp://a:1": small, "tcp://c:1": fits}})


def test_flow_run_in_a_kernel_runs_on_dask(tmp_path, dask_cluster, monkeypatch):
    """``%flow run --executor dask`` in a real kernel: the notebook's flow travels to the
    workers by value, the live panel follows the run, the results come back."""
    nbformat = pytest.importorskip("nbformat")
    from nbclient import NotebookClient

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nb.cells = [
        nbformat.v4.new_code_cell(source)
        for source in [
            "%load_ext flowbook\n%flow name KernelOnDask",
            "%%setup\nFACTOR = 5",
            "%%step start --next body --foreach items\nself.items = [1, 2, 3]",
            "%%step body --next join\nself.v = self.input * FACTOR",
            "%%step join --next end --join\nself.total = sum(i.v for i in inputs)",
            "%%step end\nprint('total', self.total)",
            f"%flow run --executor dask --dask-scheduler {dask_cluster.address}",
            "print(flow.last_run.data.total, flow.last_run.successful)",
        ]
    ]
    for key in [k for k in os.environ if k.startswith(("FLOWBOOK_", "METAFLOW_"))]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("FLOWBOOK_DATASTORE", str(tmp_path / ".flowbook"))
    monkeypatch.setenv("USER", TEST_USER)
    NotebookClient(nb, kernel_name="python3", timeout=180, allow_errors=True).execute(
        cwd=str(tmp_path)
    )

    def text(index: int) -> str:
        outputs = nb.cells[index].outputs
        errors = [o["evalue"] for o in outputs if o.output_type == "error"]
        assert not errors, errors
        return "".join(o.get("text", "") for o in outputs if o.output_type == "stream")

    run_output = text(6)
    assert f"Running tasks on Dask scheduler {dask_cluster.address}" in run_output, run_output
    widget_state = json.dumps(nb.metadata.get("widgets", {}))  # the live panel, as saved
    assert ">Dask dashboard</a>" in widget_state
    assert text(7).split() == ["30", "True"], text(7)
    from flowbook.client import Flow

    run = Flow("KernelOnDask", datastore=str(tmp_path / ".flowbook"), namespace=None).latest_run
    assert run.successful and run.data.total == 30
    assert len(list(run["body"])) == 3


def test_task_records_come_back_with_the_exit_not_from_s3(dask_cluster, moto_s3, monkeypatch):
    """A task on a Dask worker (on any machine) sends its final record back with its
    exit event, so the scheduler fetches no ``done.json`` from S3: counted here, in a
    scheduler run in this process (the workers' own requests are theirs)."""
    from flowbook.datastore import s3direct
    from flowbook.graph import FlowGraph
    from flowbook.loader import load_flow_class
    from flowbook.runtime.launch import run_flow

    for name, value in moto_s3.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("USER", TEST_USER)
    flow_cls = load_flow_class(str(Path(__file__).parent / "flows" / "nested.py"))
    sent: list[str] = []
    monkeypatch.setattr(s3direct.DirectS3, "observers", [sent.append])
    outcome = run_flow(
        flow_cls,
        FlowGraph.from_flow_class(flow_cls),
        {},
        datastore_url=f"s3://{MOTO_BUCKET}/records-{uuid.uuid4().hex[:8]}",
        executor_settings={"executor": "dask", "dask_scheduler": dask_cluster.address},
    )
    assert outcome.successful
    assert sent.count("GetObject") == 0, sent  # 16 tasks, no record fetched
    assert "PutObject" in sent  # (the run's own records: this process does send)
