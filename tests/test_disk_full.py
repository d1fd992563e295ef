"""A full disk under the datastore: a real 2 MiB tmpfs, real runs in subprocesses.

What must hold: the message says the disk is full and where, and names the artifact
and the task; a failed write leaves no temporary file behind; a task that cannot
even write its record says why on the terminal and exits with EXIT_CANNOT_RECORD.
"""

from __future__ import annotations

import errno
import os
import subprocess
import uuid
from pathlib import Path

import pytest

from flowbook.datastore.blobs import BlobStore
from flowbook.datastore.storage import DatastoreWriteError, LocalStorage, open_storage
from flowbook.runtime.task import EXIT_CANNOT_RECORD

pytestmark = pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0,
    reason="needs root: mounts a small tmpfs to fill",
)

BIG_ARTIFACT = """
from flowbook import FlowSpec, step


class BigFlow(FlowSpec):
    @step
    def start(self):
        self.small = 1
        self.model = b"m" * {size}
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    BigFlow()
"""

FILLS_THE_DISK = """
import os

from flowbook import FlowSpec, step


class FillFlow(FlowSpec):
    @step
    def start(self):
        # fill the datastore's disk to the last byte, say nothing, and end well
        fd = os.open(os.path.join(os.environ["FLOWBOOK_DATASTORE"], "filler"),
                     os.O_WRONLY | os.O_CREAT, 0o644)
        block = b"f" * 4096
        try:
            while True:
                os.write(fd, block)
        except OSError:
            pass
        try:
            while True:
                os.write(fd, b"f")
        except OSError:
            pass
        os.close(fd)
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    FillFlow()
"""

CHATTY = """
from flowbook import FlowSpec, step


class ChattyFlow(FlowSpec):
    @step
    def start(self):
        for _ in range(40000):  # 4 MB of output into the attempt's log on a 2 MiB disk
            print("x" * 99)
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    ChattyFlow()
"""


@pytest.fixture
def tiny_disk(tmp_path: Path):
    """A 2 MiB tmpfs, unmounted after the test whatever happens."""
    mount_point = tmp_path / f"tiny-{uuid.uuid4().hex[:8]}"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m,mode=0755", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        if subprocess.run(["umount", str(mount_point)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


def _fill(directory: Path) -> Path:
    """Fill the file system of ``directory`` to the last byte."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as handle:
        for size in (1 << 16, 4096, 1):
            try:
                while True:
                    handle.write(b"f" * size)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
    return filler


# ------------------------------------------------------------------ storage
def test_a_write_to_a_full_disk_names_the_reason_and_leaves_nothing(tiny_disk):
    store = LocalStorage(str(tiny_disk / "ds"))
    with pytest.raises(DatastoreWriteError) as info:
        store.write_bytes("flows/F/1/status.json", b"x" * (3 << 20))
    exc = info.value
    assert exc.errno == errno.ENOSPC
    assert str(exc) == f"Datastore {store.root} is full: cannot write flows/F/1/status.json."
    assert exc.reason == os.strerror(errno.ENOSPC) and exc.root == store.root
    assert not store.exists("flows/F/1/status.json")
    assert store.list("tmp") == []  # the temporary file went with the failure


@pytest.mark.parametrize("size", [3 << 20, 20 << 20], ids=["3MiB", "20MiB-hashed-while-written"])
def test_a_blob_that_does_not_fit_names_the_artifact(tiny_disk, size):
    store = LocalStorage(str(tiny_disk / "ds"))
    blobs = BlobStore(store)
    with pytest.raises(DatastoreWriteError) as info:
        blobs.put(b"m" * size, "model")
    assert str(info.value) == f"Datastore {store.root} is full: cannot write artifact 'model'."
    assert store.list("tmp") == []
    assert store.list("blobs") == []
    # the space is back: a small blob still fits
    blobs.put(b"s" * 10000, "small")


def test_space_problem_says_the_disk_is_full_and_where(tiny_disk):
    store = LocalStorage(str(tiny_disk / "ds"))
    assert store.space_problem() is None
    filler = _fill(tiny_disk)
    problem = store.space_problem()
    assert problem is not None
    assert problem.startswith(f"the disk holding {store.root} is full (")
    assert "free)" in problem
    filler.unlink()
    assert store.space_problem() is None


def test_space_problem_of_an_object_store_is_unknown():
    assert open_storage("memory://flowbook-space-test").space_problem() is None


# ------------------------------------------------------------------ runs
@pytest.mark.parametrize("size", [3 << 20, 20 << 20], ids=["3MiB", "20MiB-hashed-while-written"])
def test_a_step_whose_artifact_does_not_fit_fails_naming_it(run_flow, tiny_disk, size):
    store = tiny_disk / "ds"
    result = run_flow(BIG_ARTIFACT.format(size=size), "run", env={"FLOWBOOK_DATASTORE": str(store)})
    assert result.returncode == 1, result
    run_id = result.run_id
    assert run_id, result
    expected = (
        f"Flow BigFlow, task {run_id}/start/1: cannot store artifact 'model' "
        f"({os.strerror(errno.ENOSPC)}, {store})."
    )
    assert expected in result.output, result
    assert "cannot write blobs/" not in result.output
    assert "without recording a result" not in result.output

    # the stored run says the same: the task failed, and why
    from flowbook.datastore import Datastore

    datastore = Datastore(str(store))
    _, record = datastore.latest_attempt("BigFlow", run_id, "start", "1")
    assert record["status"] == "failed"
    assert record["exception"]["message"] == expected
    assert record["exception"]["type"].endswith("DatastoreWriteError")
    status = datastore.read_run_status("BigFlow", run_id)
    assert status is not None and not status.get("successful", True), status
    assert os.listdir(store / "tmp") == []


def test_a_task_that_cannot_write_its_record_says_why_on_the_terminal(run_flow, tiny_disk):
    store = tiny_disk / "ds"
    result = run_flow(FILLS_THE_DISK, "run", env={"FLOWBOOK_DATASTORE": str(store)})
    assert result.returncode != 0, result
    run_id = result.run_id
    assert run_id, result
    lines = [line for line in result.stderr.splitlines() if "could not record its result" in line]
    task_lines = [line for line in lines if line.startswith("Flow FillFlow, task")]
    assert len(task_lines) == 1, result
    line = task_lines[0]
    assert line.startswith(f"Flow FillFlow, task {run_id}/start/1 (attempt 0) ")
    assert (
        f"Datastore {store} is full: cannot write flows/FillFlow/{run_id}/start/1/0.done.json"
        in line
    )
    assert f"the disk holding {store} is full" in line
    # the scheduler knew the distinctive exit code (EXIT_CANNOT_RECORD) and names the disk
    assert any(
        "Task failed: could not record its result in the datastore: the disk holding" in line
        for line in lines
    ), result
    assert "without recording a result" not in result.output


def test_output_that_fills_the_disk_is_named_on_the_terminal(run_flow, tiny_disk):
    """The step's print() fails (its log is on the full disk), then its record cannot
    be written either: the one terminal line tells both, and where the disk is full."""
    store = tiny_disk / "ds"
    result = run_flow(CHATTY, "run", env={"FLOWBOOK_DATASTORE": str(store)})
    assert result.returncode != 0, result
    lines = [
        line
        for line in result.stderr.splitlines()
        if line.startswith("Flow ChattyFlow, task") and "could not record its result" in line
    ]
    assert len(lines) == 1, result.stderr[-3000:]
    line = lines[0]
    assert "the step had failed with OSError: [Errno 28] No space left on device" in line
    assert f"the disk holding {store} is full" in line
    assert os.listdir(store / "tmp") == []


def test_exit_cannot_record_is_ex_tempfail():
    assert EXIT_CANNOT_RECORD == 75
