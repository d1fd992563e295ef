"""The Client API over runs made by real subprocesses, and namespaces."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from conftest import TEST_USER


@pytest.fixture
def simple_runs(run_flow, client):
    """Two runs of SimpleFlow, the second tagged; returns their ids, oldest first."""
    first = run_flow("simple", "run", "--label", "one")
    assert first.returncode == 0, first
    second = run_flow(None, "run", "--label", "two", "--tag", "blue")
    assert second.returncode == 0, second
    return first.run_id, second.run_id


def test_metaflow_lists_flows(simple_runs, client, run_flow):
    result = run_flow("dedup", "run", filename="other.py")
    assert result.returncode == 0, result
    names = [flow.id for flow in client.Metaflow().flows]
    assert sorted(names) == ["DedupFlow", "SimpleFlow"]
    assert all(isinstance(flow, client.Flow) for flow in client.Metaflow())


def test_flow_runs_newest_first_and_latest_run(simple_runs, client):
    first, second = simple_runs
    flow = client.Flow("SimpleFlow")
    assert flow.id == "SimpleFlow"
    assert [r.id for r in flow.runs()] == [second, first]
    assert [r.id for r in flow] == [second, first]
    assert flow.latest_run.id == second
    assert flow.latest_run.pathspec == f"SimpleFlow/{second}"
    assert flow.latest_run.data.final == "two:2:P,Q"
    assert [r.id for r in flow.runs("blue")] == [second]
    assert flow[first].data.final == "one:2:P,Q"


def test_objects_by_pathspec(simple_runs, client):
    _, run_id = simple_runs
    run = client.Run(f"SimpleFlow/{run_id}")
    assert run.id == run_id
    assert run.successful and run.finished
    assert run.data.final == "two:2:P,Q"
    assert run.data.label == "two"
    assert [s.id for s in run] == ["end", "join", "each", "start"]

    step = client.Step(f"SimpleFlow/{run_id}/start")
    task = step.task
    assert task == run["start"].task
    assert client.Task(task.pathspec).data.x == 1
    assert task.data.x == 1
    assert run["join"].task.data.x == 2

    artifact = client.DataArtifact(f"{task.pathspec}/items")
    assert artifact.data == ["p", "q"]
    assert artifact.id == "items"
    assert task["items"].data == ["p", "q"]
    assert "items" in task
    assert {a.id for a in task} >= {"x", "items", "label"}

    each = sorted(client.Step(f"SimpleFlow/{run_id}/each"), key=lambda t: t.index)
    assert [t.data.item for t in each] == ["P", "Q"]
    assert [t.index for t in each] == [0, 1]


def test_task_status_and_logs(simple_runs, client):
    _, run_id = simple_runs
    run = client.Run(f"SimpleFlow/{run_id}")
    start = run["start"].task
    assert start.successful and start.finished
    assert start.exception is None
    assert start.stdout == "start says hi\n"
    assert start.stderr == ""
    each = sorted(run["each"], key=lambda t: t.index)
    assert [t.stderr for t in each] == ["each P\n", "each Q\n"]
    assert run["end"].task.stdout == "final two:2:P,Q\n"


def test_tags_through_the_client(simple_runs, client):
    first, second = simple_runs
    assert client.Run(f"SimpleFlow/{second}").user_tags == frozenset({"blue"})
    assert client.Run(f"SimpleFlow/{first}").user_tags == frozenset()
    assert f"user:{TEST_USER}" in client.Run(f"SimpleFlow/{first}").tags


@pytest.mark.parametrize(
    ("kind", "pathspec", "needle"),
    [
        ("Flow", "NoSuchFlow", "NoSuchFlow"),
        ("Run", "SimpleFlow/123", "123"),
        ("Step", "SimpleFlow/{run}/nosuchstep", "nosuchstep"),
        ("Task", "SimpleFlow/{run}/start/999", "999"),
        ("DataArtifact", "SimpleFlow/{run}/start/1/nothing", "nothing"),
        ("Run", "not/a/run/pathspec/at/all", "not/a/run"),
    ],
)
def test_unknown_objects_raise_errors_naming_them(simple_runs, client, kind, pathspec, needle):
    from flowbook.exceptions import FlowbookError

    _, run_id = simple_runs
    with pytest.raises(FlowbookError, match=needle):
        getattr(client, kind)(pathspec.replace("{run}", run_id))


def test_missing_artifacts_raise_errors_naming_them(simple_runs, client):
    _, run_id = simple_runs
    run = client.Run(f"SimpleFlow/{run_id}")
    with pytest.raises(AttributeError, match="nothing"):
        run.data.nothing  # noqa: B018
    with pytest.raises(KeyError, match="nothing"):
        run["end"].task["nothing"]
    with pytest.raises(KeyError, match="nosuchstep"):
        run["nosuchstep"]


def test_failed_task_through_the_client(run_flow, client):
    source = """
from flowbook import FlowSpec, step


class BrokenFlow(FlowSpec):
    @step
    def start(self):
        self.before = 1
        print("working")
        raise KeyError("missing-key")
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    BrokenFlow()
"""
    result = run_flow(source, "run")
    assert result.returncode != 0, result
    run = client.Flow("BrokenFlow").latest_run
    assert run.finished
    assert not run.successful
    assert run.data is None
    task = run["start"].task
    assert task.finished
    assert not task.successful
    assert task.exception == "KeyError: 'missing-key'"
    assert task.stdout == "working\n"
    assert "missing-key" in task.stderr


def test_unfinished_run_and_task(run_flow, client):
    source = """
import time

from flowbook import FlowSpec, step


class SlowFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.slow)

    @step
    def slow(self):
        print("sleeping", flush=True)
        time.sleep(30)
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    SlowFlow()
"""
    path = run_flow.write(source)
    proc = subprocess.Popen(
        [sys.executable, str(path), "run"],
        cwd=run_flow.workdir,
        env=run_flow.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 30
        task = None
        while time.time() < deadline:
            try:
                run = client.Flow("SlowFlow").latest_run
                if run is not None and "slow" in run:
                    task = run["slow"].task
                    if task is not None and "sleeping" in task.stdout:
                        break
            except Exception:
                pass
            time.sleep(0.1)
        assert task is not None, "the slow step never started"
        assert not run.finished
        assert not run.successful
        assert not task.finished
        assert not task.successful
        assert run["start"].task.finished
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# ---------------------------------------------------------------------- namespaces
@pytest.fixture
def two_users(run_flow):
    """One run by alice, then one by bob (tagged 'team')."""
    alice = run_flow("simple", "run", "--label", "alice", env={"USER": "alice"})
    assert alice.returncode == 0, alice
    bob = run_flow(None, "run", "--label", "bob", "--tag", "team", env={"USER": "bob"})
    assert bob.returncode == 0, bob
    return alice.run_id, bob.run_id


def test_default_namespace_is_the_current_user(two_users, client, monkeypatch):
    alice, bob = two_users
    monkeypatch.setenv("USER", "alice")
    assert client.default_namespace() == "user:alice"
    assert client.get_namespace() == "user:alice"
    flow = client.Flow("SimpleFlow")
    assert flow.latest_run.id == alice  # bob's newer run is hidden
    assert [r.id for r in flow.runs()] == [alice]
    assert "user:alice" in flow.latest_run.tags
    with pytest.raises(Exception, match="namespace") as info:
        client.Run(f"SimpleFlow/{bob}")
    assert bob in str(info.value)


def test_namespace_none_shows_every_run(two_users, client):
    alice, bob = two_users
    assert client.namespace(None) is None
    assert client.get_namespace() is None
    assert [r.id for r in client.Flow("SimpleFlow").runs()] == [bob, alice]
    assert client.Run(f"SimpleFlow/{bob}").data.final.startswith("bob:")
    assert client.Run(f"SimpleFlow/{alice}").data.final.startswith("alice:")


def test_namespace_of_another_user_or_a_tag(two_users, client):
    alice, bob = two_users
    client.namespace("user:bob")
    assert [r.id for r in client.Flow("SimpleFlow").runs()] == [bob]
    client.namespace("team")
    assert [r.id for r in client.Flow("SimpleFlow").runs()] == [bob]
    client.namespace("user:nobody")
    assert client.Flow("SimpleFlow").latest_run is None


def test_namespace_in_a_new_process_defaults_to_user(two_users, run_flow):
    alice, bob = two_users
    script = (
        "from flowbook import Flow, get_namespace\n"
        "print(get_namespace())\n"
        "print(Flow('SimpleFlow').latest_run.id)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=run_flow.workdir,
        env=dict(run_flow.env, USER="alice"),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert out == ["user:alice", alice]


def test_client_datastore_function_points_the_client_elsewhere(simple_runs, run_flow, tmp_path):
    # The README's way to point the Client at a datastore from a notebook or script.
    script = (
        "import sys\n"
        "from flowbook import Flow, namespace\n"
        "from flowbook.client import datastore\n"
        "datastore(sys.argv[1])\n"
        "namespace(None)\n"
        "print(Flow('SimpleFlow').latest_run.data.final)\n"
    )
    env = dict(run_flow.env)
    env.pop("FLOWBOOK_DATASTORE")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = subprocess.run(
        [sys.executable, "-c", script, str(run_flow.datastore)],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "two:2:P,Q"


CLASSES = """
from dataclasses import dataclass

from flowbook import FlowSpec, step


@dataclass
class Point:
    x: int
    y: int

    def norm1(self):
        return abs(self.x) + abs(self.y)


class ClassFlow(FlowSpec):
    @step
    def start(self):
        self.point = Point(1, -2)
        self.triple = lambda v: v * 3
        self.next(self.end)

    @step
    def end(self):
        print(self.point.norm1(), self.triple(2))


if __name__ == "__main__":
    ClassFlow()
"""


def test_artifacts_of_classes_and_functions_defined_in_the_flow(run_flow, client):
    result = run_flow(CLASSES, "run")
    assert result.returncode == 0, result
    run = client.Flow("ClassFlow").latest_run
    assert run["end"].task.stdout == "3 6\n"
    point = run.data.point
    assert (point.x, point.y, point.norm1()) == (1, -2, 3)
    assert run.data.triple(5) == 15
