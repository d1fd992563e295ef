"""The datastore: content-addressed blobs, unpicklable artifacts, `dump`, bad datastores."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest
from conftest import assert_refused

from flowbook.datastore.blobs import INLINE_LIMIT
from flowbook.exceptions import CorruptBlobError


def _blob_files(datastore: Path) -> dict[str, Path]:
    root = datastore / "blobs"
    return {p.name: p for p in root.glob("*/*") if p.is_file()}


def test_equal_values_share_one_blob(run_flow, client, tmp_path):
    result = run_flow("dedup", "run")
    assert result.returncode == 0, result
    run = client.Flow("DedupFlow").latest_run
    a = run["a"].task["payload"]
    b = run["b"].task["payload"]
    assert a.data == b.data
    assert a.sha == b.sha
    assert run["a"].task["own"].sha != run["b"].task["own"].sha
    blobs = _blob_files(tmp_path / ".flowbook")
    assert a.sha in blobs
    assert blobs[a.sha].parent.name == a.sha[:2]
    # every artifact is a blob file or, when small, travels inline in its task's
    # record; no blob is stored twice and no small value gets a file
    artifacts = [artifact for step in run for task in step for artifact in task]
    inline = {a.sha for a in artifacts if a.size <= INLINE_LIMIT}
    stored = {a.sha for a in artifacts if a.size > INLINE_LIMIT}
    assert {run["join"].task["small"].sha, run["a"].task["own"].sha} <= inline
    assert {a.sha, run["join"].task["long_text"].sha} == stored
    assert set(blobs) == stored
    # an artifact passed on unchanged is not stored again
    assert run["join"].task["payload"].sha == a.sha
    assert run["end"].task["payload"].sha == a.sha

    # atomic writes leave no temporary file behind
    assert list((tmp_path / ".flowbook" / "tmp").iterdir()) == []

    # a second run of the same flow adds no blob for values already stored
    again = run_flow(None, "run")
    assert again.returncode == 0, again
    assert set(_blob_files(tmp_path / ".flowbook")) == set(blobs)


UNPICKLABLE = """
import threading

from flowbook import FlowSpec, step


class UnpicklableFlow(FlowSpec):
    @step
    def start(self):
        self.fine = 1
        self.next(self.bad)

    @step
    def bad(self):
        self.ok = "stored"
        self.{name} = {value}
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    UnpicklableFlow()
"""


@pytest.mark.parametrize(
    ("name", "value", "type_name"),
    [
        ("gen", "(i for i in range(3))", "generator"),
        ("mutex", "threading.Lock()", "lock"),
    ],
)
def test_unpicklable_artifact_fails_naming_it_and_its_type(
    run_flow, client, name, value, type_name
):
    source = UNPICKLABLE.replace("{name}", name).replace("{value}", value)
    result = run_flow(source, "run")
    assert_refused(result, "'bad'", f"'{name}'", type_name)
    run = client.Flow("UnpicklableFlow").latest_run
    assert not run.successful
    bad = run["bad"].task
    assert not bad.successful
    assert f"'{name}'" in bad.exception
    assert name not in bad  # a failed task publishes no artifacts
    assert "end" not in run


def test_task_killed_leaves_no_artifacts_and_fails_the_run(run_flow, client):
    source = """
import os
import signal

from flowbook import FlowSpec, step


class KilledFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.victim)

    @step
    def victim(self):
        self.partial = "never stored"
        os.kill(os.getpid(), signal.SIGKILL)
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    KilledFlow()
"""
    result = run_flow(source, "run")
    assert_refused(result, "'victim'", "SIGKILL")
    run = client.Flow("KilledFlow").latest_run
    assert run.finished and not run.successful
    victim = run["victim"].task
    assert not victim.successful
    assert "partial" not in victim


# ---------------------------------------------------------------------- dump
@pytest.fixture
def dedup_run(run_flow, client):
    result = run_flow("dedup", "run")
    assert result.returncode == 0, result
    return result, client.Flow("DedupFlow").latest_run


def _dump_lines(text: str) -> dict[str, tuple[str, str]]:
    rows = {}
    for line in text.splitlines():
        if line.startswith("  "):
            name, kind, value = line.split(None, 2)
            rows[name] = (kind, value)
    return rows


def test_dump_prints_names_types_and_short_values(run_flow, dedup_run):
    result, run = dedup_run
    join = run["join"].task
    dump = run_flow(None, "dump", f"{result.run_id}/join/{join.id}")
    assert dump.returncode == 0, dump
    assert join.pathspec in dump.stdout
    rows = _dump_lines(dump.stdout)
    assert set(rows) == {"payload", "long_text", "small", "pair"}
    assert rows["small"] == ("int", "3")
    assert rows["pair"] == ("tuple", "(1, 'two')")
    assert rows["long_text"][0] == "str"
    assert rows["long_text"][1].startswith("'xxxx")
    assert len(rows["long_text"][1]) < 200  # shortened
    assert rows["payload"][0] == "dict"
    assert len(rows["payload"][1]) < 200


def test_dump_of_a_step_prints_each_task(run_flow, dedup_run):
    result, run = dedup_run
    dump = run_flow(None, "dump", f"{result.run_id}/a")
    assert dump.returncode == 0, dump
    rows = _dump_lines(dump.stdout)
    assert rows["own"] == ("str", "'a'")
    assert run["a"].task.pathspec in dump.stdout


def test_corrupt_blob_is_detected(run_flow, dedup_run, client, tmp_path):
    result, run = dedup_run
    artifact = run["join"].task["long_text"]
    path = _blob_files(tmp_path / ".flowbook")[artifact.sha]
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    os.chmod(path, 0o644)
    path.write_bytes(bytes(data))
    with pytest.raises(Exception, match="corrupt") as info:
        run["join"].task["long_text"].data  # noqa: B018
    assert "'long_text'" in str(info.value)
    dump = run_flow(None, "dump", f"{result.run_id}/join")
    assert_refused(dump, "'long_text'", "corrupt")


@pytest.mark.parametrize("record", ["join/*/0.done.json", "join.tasks.json"])
def test_corrupt_inline_artifact_is_detected(run_flow, dedup_run, client, tmp_path, record):
    """A small artifact lives inline in its task's record and in the step's index;
    either copy, once altered, is refused by its hash, naming the artifact."""
    result, run = dedup_run
    entry = run["join"].task["small"]._entry
    run_dir = tmp_path / ".flowbook" / "flows" / "DedupFlow" / result.run_id
    (path,) = run_dir.glob(record)
    text = path.read_text()
    assert text.count(entry["inline"]) == 1
    altered = base64.b64encode(base64.b64decode(entry["inline"])[:-1] + b"!").decode()
    path.write_text(text.replace(entry["inline"], altered))
    if not record.endswith("tasks.json"):  # without the index, the task's own record is read
        (run_dir / "join.tasks.json").unlink()
    with pytest.raises(CorruptBlobError, match="'small'.*corrupt"):
        client.Flow("DedupFlow")[result.run_id]["join"].task["small"].data  # noqa: B018
    dump = run_flow(None, "dump", f"{result.run_id}/join")
    assert_refused(dump, "'small'", "corrupt")


# ---------------------------------------------------------------------- locations
def test_datastore_option_and_environment(run_flow, client, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    result = run_flow("dedup", "--datastore", str(elsewhere), "run")
    assert result.returncode == 0, result
    assert (elsewhere / "flows" / "DedupFlow" / result.run_id / "run.json").is_file()
    assert not (tmp_path / ".flowbook" / "flows").exists()


def test_default_datastore_is_dot_flowbook_in_the_working_directory(run_flow, tmp_path):
    run_flow.env.pop("FLOWBOOK_DATASTORE")
    result = run_flow("dedup", "run")
    assert result.returncode == 0, result
    assert (tmp_path / ".flowbook" / "flows" / "DedupFlow" / result.run_id).is_dir()


def test_missing_datastore_parent_is_refused(run_flow, tmp_path):
    missing = tmp_path / "no" / "such" / "place"
    result = run_flow("dedup", "run", env={"FLOWBOOK_DATASTORE": str(missing)})
    assert_refused(result, str(missing))
    assert not missing.exists()


MUTATE = """
from flowbook import FlowSpec, step


class MutateFlow(FlowSpec):
    @step
    def start(self):
        self.numbers = [1]
        self.untouched = {"k": "v"}
        self.next(self.grow)

    @step
    def grow(self):
        self.numbers.append(2)  # changed in place, never reassigned
        print(self.untouched)  # read, not changed
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    MutateFlow()
"""


def test_in_place_change_is_a_new_version_and_old_ones_stay(run_flow, client):
    result = run_flow(MUTATE, "run")
    assert result.returncode == 0, result
    run = client.Flow("MutateFlow").latest_run
    start, grow, end = (run[s].task for s in ("start", "grow", "end"))
    assert start.data.numbers == [1]
    assert grow.data.numbers == [1, 2]
    assert end.data.numbers == [1, 2]
    assert start["numbers"].sha != grow["numbers"].sha
    # an artifact read but not changed keeps its blob
    assert start["untouched"].sha == grow["untouched"].sha == end["untouched"].sha


MUTATE_LARGE = """
import numpy as np
from flowbook import FlowSpec, step


class LargeMutateFlow(FlowSpec):
    @step
    def start(self):
        self.big = np.arange(5_000_000)  # 40 MB: blob files, read by mapping them
        self.other = np.ones(3_000_000)
        self.next(self.left, self.right)

    @step
    def left(self):
        self.total = int(self.big.sum())  # read, not changed
        self.other[7] = 5.0  # changed in place, never reassigned
        self.next(self.join)

    @step
    def right(self):
        self.next(self.join)

    @step
    def join(self, inputs):
        self.big = inputs.right.big  # reassigned from an input, unchanged
        self.other = inputs.left.other
        self.total = inputs.left.total
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    LargeMutateFlow()
"""


def test_large_arrays_read_and_kept_are_not_stored_again(run_flow, client):
    pytest.importorskip("numpy")
    result = run_flow(MUTATE_LARGE, "run")
    assert result.returncode == 0, result
    run = client.Flow("LargeMutateFlow").latest_run
    start, left, join, end = (run[s].task for s in ("start", "left", "join", "end"))
    assert start["big"].sha == left["big"].sha == join["big"].sha == end["big"].sha
    assert start["other"].sha != left["other"].sha == join["other"].sha
    assert left.data.total == sum(range(5_000_000))
    assert start.data.other[7] == 1.0 and end.data.other[7] == 5.0
    blobs = [p for p in (run_flow.datastore / "blobs").rglob("*") if p.is_file()]
    assert sorted(p.stat().st_size > 20_000_000 for p in blobs).count(True) == 3
    assert not list((run_flow.datastore / "tmp").iterdir())


def test_a_large_blob_edited_in_place_after_the_run_is_still_caught(run_flow, client):
    pytest.importorskip("numpy")
    assert run_flow(MUTATE_LARGE, "run").returncode == 0
    start = client.Flow("LargeMutateFlow").latest_run["start"].task
    path = run_flow.datastore / "blobs" / start["big"].sha[:2] / start["big"].sha
    before = path.stat()
    with open(path, "r+b") as handle:  # same size, and the modification time put back
        handle.seek(before.st_size - 8)
        handle.write(b"\xff" * 8)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    with pytest.raises(CorruptBlobError, match=r"Artifact 'big' of task LargeMutateFlow/"):
        _ = start.data.big
    assert start.data.other[7] == 1.0  # the other blob is untouched and reads fine


INHERITED_FOREACH = """
from flowbook import FlowSpec, step


class InheritedForeach(FlowSpec):
    @step
    def start(self):
        self.letters = ["a", "b", "c"]  # small: it travels inline
        self.next(self.fan)

    @step
    def fan(self):  # splits over a list it only inherited
        self.next(self.shout, foreach="letters")

    @step
    def shout(self):
        self.word = self.input.upper()
        self.next(self.gather)

    @step
    def gather(self, inputs):
        self.words = [i.word for i in inputs]
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    InheritedForeach()
"""


def test_foreach_over_an_inherited_inline_list(run_flow, client):
    result = run_flow(INHERITED_FOREACH, "run")
    assert result.returncode == 0, result
    run = client.Flow("InheritedForeach").latest_run
    assert "inline" in run["start"].task["letters"]._entry
    assert run["end"].task.data.words == ["A", "B", "C"]


def test_step_indexes_gather_the_final_records_of_a_successful_run(
    run_flow, dedup_run, client, tmp_path
):
    """A successful run gets one <step>.tasks.json per step; a failed run none, and
    the Client reads both the same way."""
    import json

    result, run = dedup_run
    run_dir = tmp_path / ".flowbook" / "flows" / "DedupFlow" / result.run_id
    indexes = {p.name: json.loads(p.read_text()) for p in run_dir.glob("*.tasks.json")}
    assert set(indexes) == {f"{s}.tasks.json" for s in ("start", "a", "b", "join", "end")}
    for step in run:
        (task,) = step
        on_disk = json.loads((run_dir / step.id / task.id / "0.done.json").read_text())
        assert indexes[f"{step.id}.tasks.json"]["tasks"] == {task.id: on_disk}
    from_index = {t.pathspec: t["payload"].data for t in run["join"]}

    for index in run_dir.glob("*.tasks.json"):
        index.unlink()
    fresh = client.Flow("DedupFlow")[result.run_id]
    assert {t.pathspec: t["payload"].data for t in fresh["join"]} == from_index

    failing = run_flow(UNPICKLABLE.format(name="mutex", value="threading.Lock()"), "run")
    assert failing.returncode != 0
    failed_dir = tmp_path / ".flowbook" / "flows" / "UnpicklableFlow" / failing.run_id
    assert failed_dir.is_dir() and not list(failed_dir.glob("*.tasks.json"))
    assert client.Flow("UnpicklableFlow").latest_run["start"].task.data.fine == 1


PARAMETER_FOREACH = """
from flowbook import FlowSpec, JSONType, Parameter, step


class ParameterForeach(FlowSpec):
    letters = Parameter("letters", type=JSONType, default='["x", "y"]')

    @step
    def start(self):  # splits over a small list that only exists as a parameter
        self.next(self.shout, foreach="letters")

    @step
    def shout(self):
        self.word = self.input.upper()
        self.next(self.gather)

    @step
    def gather(self, inputs):
        self.words = [i.word for i in inputs]
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    ParameterForeach()
"""


def test_foreach_over_a_small_parameter(run_flow, client):
    result = run_flow(PARAMETER_FOREACH, "run", "--letters", '["a", "b", "c"]')
    assert result.returncode == 0, result
    assert client.Flow("ParameterForeach").latest_run["end"].task.data.words == ["A", "B", "C"]
