"""However a run is killed, none of its tasks (nor what they started) survives it.

Real signals on real process trees: the command line, its task server, the tasks
(each leading a process group) and a grandchild each task starts and never waits
for (``sleep 60``). A process counts as alive until it is gone or a zombie.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import TRACEBACK

#: Two tasks at once, each starting a grandchild and writing the pids down.
STUCK = """
import os, subprocess, sys, time
from flowbook import FlowSpec, step


def note(name):
    child = subprocess.Popen(["sleep", "60"])
    with open(f"pids_{name}.tmp", "w") as handle:
        handle.write(f"{os.getpid()} {os.getppid()} {child.pid}")
    os.rename(f"pids_{name}.tmp", f"pids_{name}")


class Stuck(FlowSpec):
    @step
    def start(self):
        self.next(self.left, self.right)

    @step
    def left(self):
        note("left")
        time.sleep(60)
        self.next(self.join)

    @step
    def right(self):
        note("right")
        time.sleep(60)
        self.next(self.join)

    @step
    def join(self, inputs):
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    Stuck()
"""

#: A step that starts a grandchild, does not wait for it, and ends at once.
LEAVES_A_CHILD = """
import os, subprocess
from flowbook import FlowSpec, step


class Leaves(FlowSpec):
    @step
    def start(self):
        self.child = subprocess.Popen(["sleep", "60"]).pid
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    Leaves()
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            state = handle.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _wait_for(condition, timeout: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or condition}")
        time.sleep(0.02)


def _start(run_flow, source: str) -> tuple[subprocess.Popen, dict[str, list[int]]]:
    """Start ``python flow.py run`` in a process group of its own; wait until both
    stuck tasks have written (task pid, server pid, grandchild pid)."""
    path = run_flow.write(source)
    proc = subprocess.Popen(
        [sys.executable, str(path), "run"],
        cwd=run_flow.workdir,
        env=run_flow.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    files = [run_flow.workdir / f"pids_{name}" for name in ("left", "right")]
    try:
        _wait_for(lambda: all(f.exists() for f in files), what="both tasks to start")
    except AssertionError:
        proc.kill()
        raise AssertionError(proc.communicate()) from None
    pids = {f.name[5:]: [int(p) for p in f.read_text().split()] for f in files}
    return proc, pids


def _all_gone(pids: dict[str, list[int]], within: float = 1.5) -> None:
    """Every task and grandchild is gone within about a second."""
    watched = [p for task, server, child in pids.values() for p in (task, child)]
    deadline = time.monotonic() + within
    while any(map(_alive, watched)) and time.monotonic() < deadline:
        time.sleep(0.02)
    survivors = [p for p in watched if _alive(p)]
    for pid in survivors:  # do not leave them to the next test
        os.kill(pid, signal.SIGKILL)
    assert not survivors, f"processes of the killed run survived: {survivors}"


def _records(run_flow) -> set[str]:
    return {str(p) for p in run_flow.datastore.glob("flows/Stuck/*/**/*.json")}


def _run_status(client):
    run = client.Flow("Stuck").latest_run
    return run, run.finished, run.successful


@pytest.mark.parametrize("target", ["group", "cli"])
def test_kill_9_leaves_no_task(run_flow, client, target):
    """``kill -9 -PGID`` kills the CLI and its task server at once; ``kill -9 PID``
    the CLI alone."""
    proc, pids = _start(run_flow, STUCK)
    if target == "group":
        os.killpg(proc.pid, signal.SIGKILL)
    else:
        os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    _all_gone(pids)
    before = _records(run_flow)
    time.sleep(0.5)
    assert _records(run_flow) == before  # nothing writes into the abandoned run
    run, finished, _ = _run_status(client)
    assert not finished  # nobody was left to mark it: resume completes it


@pytest.mark.parametrize("target", ["group", "cli"])
def test_sigterm_stops_the_tasks_and_marks_the_run_failed(run_flow, client, target):
    """``timeout 3 python flow.py run`` signals the group; ``kill PID`` the CLI only."""
    proc, pids = _start(run_flow, STUCK)
    if target == "group":
        os.killpg(proc.pid, signal.SIGTERM)
    else:
        os.kill(proc.pid, signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode != 0
    assert TRACEBACK not in stdout + stderr, stderr
    assert "terminated (SIGTERM)" in stderr, stderr
    _all_gone(pids)
    run, finished, successful = _run_status(client)
    assert finished and not successful
    assert any("SIGTERM" in failure for failure in run.failures), run.failures
    before = _records(run_flow)
    time.sleep(0.5)
    assert _records(run_flow) == before


def test_kill_9_of_the_task_server_fails_the_run_in_one_line(run_flow, client):
    proc, pids = _start(run_flow, STUCK)
    server = pids["left"][1]
    assert server == pids["right"][1] and server != proc.pid
    os.kill(server, signal.SIGKILL)
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 1, stderr
    assert TRACEBACK not in stdout + stderr, stderr
    assert "RuntimeError" not in stderr
    assert f"the task server (pid {server}) was killed by signal SIGKILL" in stderr, stderr
    _all_gone(pids)
    run, finished, successful = _run_status(client)
    assert finished and not successful
    assert any("task server" in failure for failure in run.failures), run.failures


def test_ctrl_c_prints_nothing_of_flowbooks_internals(run_flow, client):
    proc, pids = _start(run_flow, STUCK)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode != 0
    for needle in (TRACEBACK, "KeyboardInterrupt", "server.py"):
        assert needle not in stdout + stderr, stderr
    _all_gone(pids)
    run, finished, successful = _run_status(client)
    assert finished and not successful


def test_what_a_finished_task_started_ends_with_it(run_flow, client):
    result = run_flow(LEAVES_A_CHILD, "run")
    assert result.returncode == 0, result
    child = client.Flow("Leaves").latest_run["start"].task.data.child
    _wait_for(lambda: not _alive(child), timeout=2, what=f"grandchild {child} to end")


def test_a_kernels_stop_prints_nothing_of_flowbooks_internals(tmp_path):
    """papermill runs step cells in a kernel, then shuts it down: the kernel's task
    server and its spare child stop quietly (they printed a KeyboardInterrupt)."""
    notebook = os.path.join(os.path.dirname(__file__), "..", "notebooks", "hello.ipynb")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWBOOK_")}
    env["FLOWBOOK_DATASTORE"] = str(tmp_path / ".flowbook")
    result = subprocess.run(
        [sys.executable, "-m", "papermill", notebook, str(tmp_path / "out.ipynb")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr
    # (on a loaded machine jupyter_client may interrupt a kernel slow to stop, and
    # ipykernel then logs its own one line "KeyboardInterrupt caught in kernel")
    for needle in (TRACEBACK, "flowbook/runtime", "_run_spare"):
        assert needle not in result.stdout + result.stderr, result.stderr
