"""One corrupt or partial record does not break the rest (real runs, real corrupt bytes).

Listings skip a run whose ``run.json`` cannot be read, with a CorruptRecordWarning
naming it; opening it raises CorruptRecordError naming the file; ``resume`` from it
is refused in one line; a corrupt ``<step>.tasks.json`` (a read-side copy) falls
back to the task records; a corrupt task record of an origin run makes that task
run again.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from conftest import TRACEBACK, assert_refused

from flowbook.exceptions import CorruptRecordError, CorruptRecordWarning, DatastoreError

CORRUPTIONS = {
    "truncated": lambda data: data[: len(data) // 2],
    "random bytes": lambda data: random.Random(13).randbytes(300),
    "a list": lambda data: b"[]",
    "empty": lambda data: b"",
    "a string": lambda data: b'"run"',
    "nested too deep": lambda data: b"[" * 200_000,
    "NUL bytes": lambda data: b"\x00" * 64,
}
RUN_FIELD_CORRUPTIONS = {
    "tags not a list": lambda data: b'{"tags": 5, "system_tags": []}',
    "graph not an object": lambda data: b'{"graph": [], "tags": []}',
    "parameters not an object": lambda data: b'{"parameters": "x"}',
}


def _corrupt(path: Path, how) -> None:
    path.write_bytes(how(path.read_bytes()))


def _resumed_id(result) -> str:
    return result.output.split(" as run ", 1)[1].split(":", 1)[0]


def _check_one_line(exc: BaseException, *needles: str) -> None:
    text = str(exc)
    assert "\n" not in text, text
    for needle in needles:
        assert needle in text, (needle, text)


@pytest.fixture
def two_runs(run_flow, client):
    """Two successful runs of SimpleFlow; returns (run directory, id) of each, oldest first."""
    ids = []
    for label in ("one", "two"):
        result = run_flow("simple", "run", "--label", label)
        assert result.returncode == 0, result
        ids.append(result.run_id)
    base = run_flow.datastore / "flows" / "SimpleFlow"
    return [(base / run_id, run_id) for run_id in ids]


# ---------------------------------------------------------------------- run.json
@pytest.mark.parametrize("how", list(CORRUPTIONS) + list(RUN_FIELD_CORRUPTIONS))
def test_a_corrupt_run_json_is_skipped_in_listings_and_named_when_opened(two_runs, client, how):
    (_, good), (bad_dir, bad) = two_runs
    _corrupt(bad_dir / "run.json", {**CORRUPTIONS, **RUN_FIELD_CORRUPTIONS}[how])

    flow = client.Flow("SimpleFlow")
    with pytest.warns(CorruptRecordWarning, match=bad):
        assert [r.id for r in flow.runs()] == [good]
    with pytest.warns(CorruptRecordWarning, match="run.json"):
        assert flow.latest_run.id == good
    with pytest.warns(CorruptRecordWarning):
        assert flow.latest_successful_run.data.final == "one:2:P,Q"
    assert [f.id for f in client.Metaflow().flows] == ["SimpleFlow"]

    for open_it in (lambda: client.Run(f"SimpleFlow/{bad}"), lambda: flow[bad]):
        with pytest.raises(CorruptRecordError) as info:
            open_it()
        _check_one_line(info.value, str(bad_dir / "run.json"), "Corrupt record")
        assert isinstance(info.value, DatastoreError)
    with pytest.raises(CorruptRecordError, match="run.json"):
        client.Task(f"SimpleFlow/{bad}/start/1")


def test_resume_from_a_corrupt_run_says_what_is_wrong(two_runs, run_flow):
    (_, good), (bad_dir, bad) = two_runs
    _corrupt(bad_dir / "run.json", CORRUPTIONS["a list"])
    refused = run_flow(None, "resume", "--origin-run-id", bad)
    assert_refused(refused, str(bad_dir / "run.json"), "Corrupt record", f"run {bad}")
    assert len(refused.output.strip().splitlines()) == 1, refused

    # without --origin-run-id, the latest readable run is resumed, and the bad one named
    resumed = run_flow(None, "resume")
    assert resumed.returncode == 0, resumed
    assert f"Resuming run {good}" in resumed.output, resumed
    assert str(bad_dir / "run.json") in resumed.output, resumed
    assert TRACEBACK not in resumed.output


# ---------------------------------------------------------------------- status.json
@pytest.mark.parametrize("how", ["truncated", "random bytes", "a list", "successful not a bool"])
def test_a_corrupt_status_json(two_runs, client, how):
    (_, good), (bad_dir, bad) = two_runs
    corruptions = {**CORRUPTIONS, "successful not a bool": lambda data: b'{"successful": "no"}'}
    _corrupt(bad_dir / "status.json", corruptions[how])
    flow = client.Flow("SimpleFlow")
    assert [r.id for r in flow.runs()] == [bad, good]  # run.json is fine
    run = client.Run(f"SimpleFlow/{bad}")
    assert run.data.final == "two:2:P,Q"
    for attribute in ("successful", "finished", "finished_at", "failures"):
        with pytest.raises(CorruptRecordError) as info:
            getattr(run, attribute)
        _check_one_line(info.value, str(bad_dir / "status.json"))
    with pytest.warns(CorruptRecordWarning, match="status.json"):
        assert flow.latest_successful_run.id == good


# ---------------------------------------------------------------------- <step>.tasks.json
@pytest.mark.parametrize(
    "content",
    [
        b'{"v": 1, "tasks": {"5": {"st',
        b"[]",
        b'{"v": 1, "tasks": []}',
        b'{"v": 1, "tasks": {"5": []}}',
        b'{"v": 1, "tasks": {"5": {"status": "successful"}}}',
        b'{"v": 1, "tasks": {"../x": {"attempt": 0}}}',
    ],
)
def test_a_corrupt_step_index_falls_back_to_the_task_records(two_runs, client, run_flow, content):
    _, (bad_dir, bad) = two_runs
    (bad_dir / "end.tasks.json").write_bytes(content)
    run = client.Run(f"SimpleFlow/{bad}")
    with pytest.warns(CorruptRecordWarning, match="end.tasks.json"):
        assert run.data.final == "two:2:P,Q"
    with pytest.warns(CorruptRecordWarning, match="end.tasks.json"):
        assert [t.successful for t in run["end"]] == [True]

    resumed = run_flow(None, "resume", "end", "--origin-run-id", bad)
    assert resumed.returncode == 0, resumed
    assert client.Run(f"SimpleFlow/{_resumed_id(resumed)}").data.final == "two:2:P,Q"


# ---------------------------------------------------------------------- task records
@pytest.mark.parametrize("how", ["truncated", "random bytes", "a list", "artifacts not an object"])
def test_a_corrupt_done_json_is_named_and_the_rest_reads(two_runs, client, run_flow, how):
    _, (bad_dir, bad) = two_runs
    corruptions = {
        **CORRUPTIONS,
        "artifacts not an object": lambda data: b'{"status": "successful", "artifacts": [1]}',
    }
    each_tasks = sorted((bad_dir / "each").iterdir(), key=lambda p: int(p.name))
    done = each_tasks[0] / "0.done.json"
    _corrupt(done, corruptions[how])
    broken, fine = (f"SimpleFlow/{bad}/each/{p.name}" for p in each_tasks)

    with pytest.raises(CorruptRecordError) as info:
        client.Task(broken).successful  # noqa: B018
    _check_one_line(info.value, str(done), "Corrupt record")
    assert client.Task(fine).data.item in ("P", "Q")
    assert client.Task(broken).stdout == ""  # the log needs no record
    assert client.Task(broken).stderr.startswith("each ")
    # the step index of the finished run still serves the step as a whole
    assert sorted(t.data.item for t in client.Run(f"SimpleFlow/{bad}")["each"]) == ["P", "Q"]

    logs = run_flow(None, "logs", "--stderr", f"{bad}/each")
    assert logs.returncode == 0, logs
    assert logs.stdout.count("each ") == 2, logs
    dump = run_flow(None, "dump", f"{bad}/each/{each_tasks[1].name}")
    assert dump.returncode == 0, dump
    (bad_dir / "each.tasks.json").unlink()  # now the step is read task by task
    dump = run_flow(None, "dump", f"{bad}/each")
    assert dump.returncode == 1, dump
    assert fine in dump.stdout and "item" in dump.stdout, dump
    assert str(done) in dump.stderr, dump
    assert TRACEBACK not in dump.output, dump


def test_a_corrupt_start_json_of_a_running_task_is_named(two_runs, client):
    _, (bad_dir, bad) = two_runs
    task_dir = next((bad_dir / "end").iterdir())
    (task_dir / "0.done.json").unlink()
    (task_dir / "0.start.json").write_bytes(b"{")
    with pytest.raises(CorruptRecordError) as info:
        client.Task(f"SimpleFlow/{bad}/end/{task_dir.name}").finished  # noqa: B018
    _check_one_line(info.value, str(task_dir / "0.start.json"))


def test_read_attempt_done_raises_naming_the_file(tmp_path):
    from flowbook.datastore import Datastore

    ds = Datastore(str(tmp_path / "ds"))
    ds.write_attempt_done("F", "1", "start", "1", 0, {"status": "successful", "artifacts": {}})
    assert ds.read_attempt_done("F", "1", "start", "1", 0)["status"] == "successful"
    assert ds.read_attempt_done("F", "1", "start", "1", 1) is None
    path = tmp_path / "ds" / "flows" / "F" / "1" / "start" / "1" / "0.done.json"
    for content in (b'{"status": "succ', b"\xff\xfe\x00garbage", b"[1, 2]", b'{"status": 1}'):
        path.write_bytes(content)
        with pytest.raises(CorruptRecordError) as info:
            ds.read_attempt_done("F", "1", "start", "1", 0)
        _check_one_line(info.value, str(path))


BROKEN = """
import os
from flowbook import FlowSpec, step

class Broken(FlowSpec):
    @step
    def start(self):
        self.x = 1
        self.next(self.middle)

    @step
    def middle(self):
        print("middle ran")
        self.y = self.x + 1
        self.next(self.end)

    @step
    def end(self):
        if os.path.exists("fail_end"):
            raise RuntimeError("end fails")
        self.z = self.y + 1

if __name__ == "__main__":
    Broken()
"""


def test_resume_runs_a_task_again_when_its_origin_record_is_corrupt(run_flow, client):
    marker = run_flow.workdir / "fail_end"
    marker.write_text("x")
    failed = run_flow(BROKEN, "run")
    assert failed.returncode != 0, failed
    marker.unlink()
    run_dir = run_flow.datastore / "flows" / "Broken" / failed.run_id
    done = next((run_dir / "middle").iterdir()) / "0.done.json"
    _corrupt(done, CORRUPTIONS["truncated"])

    resumed = run_flow(None, "resume")
    assert resumed.returncode == 0, resumed
    assert str(done) in resumed.output and "again" in resumed.output, resumed
    assert TRACEBACK not in resumed.output
    run = client.Run(f"Broken/{_resumed_id(resumed)}")
    assert run.data.z == 3
    assert run["start"].task.origin_pathspec is not None  # cloned
    assert run["middle"].task.origin_pathspec is None  # ran again
    assert run["middle"].task.stdout == "middle ran\n"
