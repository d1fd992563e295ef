"""The datastore on S3: an S3 API served by moto on 127.0.0.1, reached through fsspec (s3fs)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from typing import Any

import pytest
from conftest import MOTO_BUCKET, example_source


@pytest.fixture
def s3_env(moto_s3):
    """The environment of a process that reaches the session's moto S3 server."""
    return dict(os.environ, **moto_s3, USER="tester")


def python(args: list[str], cwd, env: dict) -> subprocess.CompletedProcess:
    """``python ARGS`` in ``cwd`` with ``env``, its output captured as text."""
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True)


def test_a_foreach_flow_runs_and_reads_back_on_s3(s3_env, tmp_path):
    flow = tmp_path / "foreach.py"
    flow.write_text(example_source("foreach"))
    env = dict(s3_env, FLOWBOOK_DATASTORE=f"s3://{MOTO_BUCKET}/{uuid.uuid4().hex[:8]}")
    env["TMPDIR"] = str(scratch := tmp_path / "tmp")
    scratch.mkdir()
    run = python([str(flow), "run"], tmp_path, env)
    assert run.returncode == 0, run.stderr
    assert "mouse won!" in run.stdout
    assert not (tmp_path / ".flowbook").exists()  # nothing went to the local default
    # the tasks' log spool went with the run (the blob cache stays, bounded)
    assert [p.name for p in scratch.iterdir()] == [f"flowbook-blob-cache-{os.getuid()}"]
    read = python(
        [
            "-c",
            "from flowbook import Flow, namespace\n"
            "namespace(None)\n"
            "run = Flow('ForeachFlow').latest_run\n"
            "print(run.successful, run.data.best)\n"
            "print(sorted(t.data.score for t in run['analyze_creatures']))\n"
            "print(sorted(t.stdout.strip() for t in run['analyze_creatures']))\n"
            "print(repr(run['start'].task.stderr), repr(run['start'].task.stdout))\n",
        ],
        tmp_path,
        env,
    )
    assert read.returncode == 0, read.stderr
    lines = read.stdout.splitlines()
    assert lines[0] == "True mouse"
    assert lines[1] == "[3, 4, 5]"
    assert lines[2] == "['Analyzing bird', 'Analyzing dog', 'Analyzing mouse']"
    assert lines[3] == "'' ''"  # empty logs are not uploaded and read as empty


STOPPED_FLOW = """
from flowbook import FlowSpec, step, timeout


class StoppedFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.slow)

    @timeout(seconds=2)
    @step
    def slow(self):
        import sys, time
        print("before the wait", flush=True)
        print("a warning", file=sys.stderr, flush=True)
        time.sleep(60)
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    StoppedFlow()
"""


def test_a_task_stopped_on_s3_keeps_its_log_and_leaves_no_spool(s3_env, tmp_path):
    flow = tmp_path / "stopped.py"
    flow.write_text(STOPPED_FLOW)
    env = dict(s3_env, FLOWBOOK_DATASTORE=f"s3://{MOTO_BUCKET}/{uuid.uuid4().hex[:8]}")
    env["TMPDIR"] = str(scratch := tmp_path / "tmp")
    scratch.mkdir()
    run = python([str(flow), "run"], tmp_path, env)
    assert run.returncode == 1
    assert "timed out after 2 s" in run.stderr
    assert not [p for p in scratch.iterdir() if p.name.startswith("flowbook-logs-")]
    # the task never got to upload its log: the scheduler did, from its spool
    read = python(
        [
            "-c",
            "from flowbook import Flow, namespace\n"
            "namespace(None)\n"
            "task = Flow('StoppedFlow').latest_run['slow'].task\n"
            "print(repr(task.stdout), repr(task.stderr))\n",
        ],
        tmp_path,
        env,
    )
    assert read.returncode == 0, read.stderr
    assert read.stdout.strip() == "'before the wait\\n' 'a warning\\n'"


def test_a_missing_bucket_is_one_line_before_anything_runs(s3_env, tmp_path):
    flow = tmp_path / "hello.py"
    flow.write_text(example_source("helloworld"))
    env = dict(s3_env, FLOWBOOK_DATASTORE="s3://no-such-bucket-here/ds")
    run = python([str(flow), "run"], tmp_path, env)
    assert run.returncode == 1
    assert "Traceback" not in run.stderr
    assert "s3://no-such-bucket-here/ds" in run.stderr
    assert "Workflow starting" not in run.stdout


def in_forked_child(task: Any) -> str:
    """What ``task()`` returns when run in a forked child (a task), as text."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.write(write, str(task()).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    answer = os.read(read, 1000).decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return answer


def test_forked_tasks_share_the_parsed_s3_model(moto_s3, monkeypatch):
    """Every S3 datastore of a process uses one botocore session, made before the task
    server forks, so a task's client does not parse S3's service model again."""
    from conftest import MOTO_BUCKET

    from flowbook.datastore import storage

    for key, value in moto_s3.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("FLOWBOOK_S3_DIRECT", "0")  # (s3fs's own clients)
    first = storage.open_storage(f"s3://{MOTO_BUCKET}/shared-a")
    first.write_bytes("x.json", b"{}")
    session = storage._s3_session()
    assert first.fs.session is session

    def task() -> bool:  # a new datastore object, the parent's session
        child = storage.open_storage(f"s3://{MOTO_BUCKET}/shared-b")
        child.write_bytes("y.json", b"{}")
        return child.fs.session is session and child.fs is not first.fs

    assert in_forked_child(task) == "True"
    assert storage.open_storage(f"s3://{MOTO_BUCKET}/shared-b").read_bytes("y.json") == b"{}"


# ---------------------------------------------------------------------- requests
def counted_storage(prefix: str) -> Any:
    """A fresh S3 datastore storage on the session's moto server, with ``sent``: the
    S3 requests it sends (operation names, in order), through s3fs or without it."""
    from flowbook.datastore import s3direct, storage

    store = storage.open_storage(f"s3://{MOTO_BUCKET}/{prefix}-{uuid.uuid4().hex[:8]}")
    sent: list[str] = []

    def count(model: Any = None, **_: Any) -> None:
        sent.append(model.name)

    store.fs.connect()
    store.fs._s3.meta.events.register("before-call.s3", count)  # what s3fs sends
    s3direct.DirectS3.observers.append(sent.append)  # what is sent without it
    store.sent = sent
    return store


@pytest.fixture
def s3_storage(moto_s3, monkeypatch):
    """``counted_storage``, requests sent directly where they can be (s3direct)."""
    from flowbook.datastore import s3direct

    for key, value in moto_s3.items():
        monkeypatch.setenv(key, value)
    store = counted_storage("requests")
    assert store.direct is not None
    yield store
    s3direct.DirectS3.observers.clear()


@pytest.fixture
def s3fs_storage(moto_s3, monkeypatch):
    """``counted_storage`` with ``FLOWBOOK_S3_DIRECT=0``: every request through s3fs."""
    from flowbook.datastore import s3direct

    for key, value in moto_s3.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("FLOWBOOK_S3_DIRECT", "0")
    store = counted_storage("s3fs")
    assert store.direct is None
    yield store
    s3direct.DirectS3.observers.clear()


@pytest.fixture(params=["direct", "s3fs"])
def any_s3_storage(request):
    """Each of the two ways to S3 in turn."""
    return request.getfixturevalue("s3_storage" if request.param == "direct" else "s3fs_storage")


def test_an_s3_record_is_one_request_each_way(any_s3_storage):
    any_s3_storage.write_bytes("flows/F/1/s/1/0.done.json", b'{"status": "successful"}')
    assert any_s3_storage.sent == ["PutObject"]
    del any_s3_storage.sent[:]
    assert any_s3_storage.read_bytes("flows/F/1/s/1/0.done.json") == b'{"status": "successful"}'
    assert any_s3_storage.sent == ["GetObject"]  # no HEAD for the size first
    del any_s3_storage.sent[:]
    assert any_s3_storage.exists("flows/F/1/s/1/0.done.json")
    assert not any_s3_storage.exists("flows/F/1/s/1/1.done.json")
    assert any_s3_storage.sent == ["HeadObject", "HeadObject"]  # no LIST for a missing key
    with pytest.raises(FileNotFoundError):
        any_s3_storage.read_bytes("flows/F/1/s/1/1.done.json")
    with pytest.raises(FileNotFoundError):
        any_s3_storage.read_buffer("blobs/00/missing")


def test_an_s3_blob_is_written_once_and_never_over(any_s3_storage):
    path = "blobs/ab/abcdef"
    assert any_s3_storage.write_new(path, [b"FBK2", memoryview(b"first")]) is True
    assert any_s3_storage.sent == ["PutObject"]  # a conditional PUT, no HEAD first
    del any_s3_storage.sent[:]
    assert any_s3_storage.write_new(path, [b"other bytes"]) is False
    assert any_s3_storage.sent == ["PutObject"]
    assert any_s3_storage.read_bytes(path) == b"FBK2first"  # the first one stays


def test_a_large_s3_blob_is_looked_for_before_it_is_sent(any_s3_storage, monkeypatch):
    from flowbook.datastore import storage

    monkeypatch.setattr(storage, "CONDITIONAL_PUT_BELOW", 16)
    path = "blobs/cd/cdef"
    assert any_s3_storage.write_new(path, [b"x" * 32]) is True
    assert any_s3_storage.sent == ["HeadObject", "PutObject"]
    del any_s3_storage.sent[:]
    assert any_s3_storage.write_new(path, [b"y" * 32]) is False
    assert any_s3_storage.sent == ["HeadObject"]  # not sent again
    assert any_s3_storage.read_bytes(path) == b"x" * 32


def test_large_s3_objects_go_up_and_down_in_parallel_parts(any_s3_storage, monkeypatch):
    from flowbook.datastore import storage

    monkeypatch.setattr(storage, "MULTIPART_FROM", 6 * 2**20)
    monkeypatch.setattr(storage, "UPLOAD_PART_SIZE", 5 * 2**20)
    monkeypatch.setattr(storage, "PARALLEL_PART_SIZE", 3 * 2**20 + 7)
    data = os.urandom(13 * 2**20 + 5)
    # chunks that do not line up with the parts, one of them a memoryview
    chunks = [data[:100], memoryview(data)[100 : 7 * 2**20], data[7 * 2**20 :]]
    any_s3_storage.write_chunks("blobs/ee/big", chunks)
    assert any_s3_storage.sent == ["CreateMultipartUpload"] + ["UploadPart"] * 3 + [
        "CompleteMultipartUpload"
    ]
    del any_s3_storage.sent[:]
    buffer = any_s3_storage.read_buffer("blobs/ee/big")
    assert isinstance(buffer, bytearray) and buffer == data
    # the first range tells the size: no HEAD, five ranged GETs
    assert any_s3_storage.sent == ["GetObject"] * 5


def test_an_empty_or_small_s3_object_reads_whole(any_s3_storage):
    any_s3_storage.write_bytes("tmp/empty", b"")
    assert any_s3_storage.read_buffer("tmp/empty") == bytearray()
    any_s3_storage.write_bytes("tmp/small", b"abc")
    del any_s3_storage.sent[:]
    assert any_s3_storage.read_buffer("tmp/small") == bytearray(b"abc")
    assert any_s3_storage.sent == ["GetObject"]


def test_a_failed_multipart_upload_leaves_nothing(s3fs_storage, monkeypatch):
    from flowbook.datastore import storage
    from flowbook.datastore.storage import DatastoreWriteError

    monkeypatch.setattr(storage, "MULTIPART_FROM", 6 * 2**20)
    monkeypatch.setattr(storage, "UPLOAD_PART_SIZE", 5 * 2**20)
    real = s3fs_storage.fs._call_s3
    parts = []

    async def failing(method: str, *args: Any, **kwargs: Any) -> Any:
        if method == "upload_part":
            parts.append(kwargs["PartNumber"])
            if kwargs["PartNumber"] == 2:
                raise OSError("connection reset by peer")
        return await real(method, *args, **kwargs)

    monkeypatch.setattr(s3fs_storage.fs, "_call_s3", failing)
    with pytest.raises(DatastoreWriteError, match="connection reset"):
        s3fs_storage.write_chunks("blobs/ff/broken", [os.urandom(12 * 2**20)])
    monkeypatch.setattr(s3fs_storage.fs, "_call_s3", real)
    assert not s3fs_storage.exists("blobs/ff/broken")  # never half an object
    bucket, key = s3fs_storage._s3_key("blobs/ff/broken")
    uploads = s3fs_storage.fs.call_s3("list_multipart_uploads", Bucket=bucket, Prefix=key)
    assert not uploads.get("Uploads")  # aborted, not left behind


def test_a_read_that_breaks_off_goes_on_from_where_it_stopped(s3fs_storage, monkeypatch):
    data = os.urandom(3 * 2**20)
    s3fs_storage.write_bytes("blobs/aa/resumed", data)
    real = s3fs_storage.fs._call_s3
    asked: list[str] = []
    given: list[int] = []

    class Breaking:
        """A body that gives its first chunk, then breaks off."""

        def __init__(self, body: Any) -> None:
            self.body = body

        async def iter_chunks(self, size: int) -> Any:
            async for chunk in self.body.iter_chunks(size):
                given.append(len(chunk))
                yield chunk
                raise ConnectionResetError("the connection broke off")

        def close(self) -> None:
            self.body.close()

    async def breaking_once(method: str, *args: Any, **kwargs: Any) -> Any:
        response = await real(method, *args, **kwargs)
        if method == "get_object":
            asked.append(kwargs.get("Range", "all"))
            if len(asked) == 1:
                response["Body"] = Breaking(response["Body"])
        return response

    monkeypatch.setattr(s3fs_storage.fs, "_call_s3", breaking_once)
    assert s3fs_storage.read_bytes("blobs/aa/resumed") == data
    assert asked == ["all", f"bytes={given[0]}-"] and 0 < given[0] < len(data)


def test_forked_tasks_inherit_the_ssl_context_and_a_fresh_client(moto_s3, monkeypatch):
    """Building an SSL context (and loading the certificate bundle into it) costs
    ~30 ms of CPU, making a client ~12 ms: prepare_for_tasks does both once, without
    sending a request; every client of the process and every task forked from it
    uses that SSL context, and each forked task takes the spare client as its own."""
    from flowbook.datastore import storage

    for key, value in moto_s3.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("FLOWBOOK_S3_DIRECT", "0")  # (s3fs's own clients)
    first = storage.open_storage(f"s3://{MOTO_BUCKET}/ssl-a")
    first.prepare_for_tasks()
    assert storage._SSL_CONTEXTS, "prepare_for_tasks built no SSL context"
    contexts = dict(storage._SSL_CONTEXTS)
    # and a client for the next task, which it takes instead of making its own
    spare_pid, spare_fs = storage._SPARE_CLIENTS[first._options_key()]
    spare_client = spare_fs._s3
    assert spare_pid == os.getpid() and spare_client is not first.fs._s3
    first.write_bytes("x.json", b"{}")
    assert contexts == storage._SSL_CONTEXTS  # the client used the prepared one

    def task() -> str:  # the spare client, the parent's SSL context
        child = storage.open_storage(f"s3://{MOTO_BUCKET}/ssl-b")
        spare = storage._SPARE_CLIENTS.get(child._options_key())
        adopted = spare is None and child.fs._s3 is spare_client
        child.write_bytes("y.json", b"{}")
        built = contexts != storage._SSL_CONTEXTS
        sessions = child.fs._s3._endpoint.http_session._sessions.values()
        used = [session.connector._ssl for session in sessions]
        same = bool(used) and all(c in [v[0] for v in contexts.values()] for c in used)
        return f"{same} {adopted} {built}"

    assert in_forked_child(task) == "True True False"
    assert in_forked_child(task) == "True True False"  # every task has its own copy
    # the parent never sends a request with it: each forked task gets it fresh
    assert spare_client._endpoint.http_session._sessions == {}
    assert storage.open_storage(f"s3://{MOTO_BUCKET}/ssl-b").read_bytes("y.json") == b"{}"


# ---------------------------------------------------------------------- blob cache
@pytest.fixture
def blob_cache(tmp_path, monkeypatch):
    """This machine's blob cache in a directory of the test's own."""
    from flowbook.datastore import blobs

    root = tmp_path / "blob-cache"
    monkeypatch.setenv(blobs.CACHE_ENV, str(root))
    monkeypatch.setattr(blobs, "_CACHE_ROOT", [])
    return root


def test_a_blob_is_downloaded_once_per_machine(s3_storage, blob_cache):
    """The splits of a foreach all read the list they split: the first task on a
    machine downloads it, the others read this machine's copy."""
    from flowbook.datastore import Datastore

    writer = Datastore(storage=s3_storage)
    value = list(range(2000))
    entry = writer.store_artifact(value, "items")
    assert "inline" not in entry
    del s3_storage.sent[:]
    assert Datastore(storage=s3_storage).load_artifact(entry, "items", "F/1/start/1") == value
    assert s3_storage.sent == []  # kept when it was written
    for copy in blob_cache.rglob(entry["sha"]):
        copy.unlink()
    reader = Datastore(storage=s3_storage)
    assert reader.load_artifact(entry, "items", "F/1/start/1") == value
    assert s3_storage.sent == ["GetObject"]
    assert Datastore(storage=s3_storage).load_artifact(entry, "items", "F/1/start/1") == value
    assert s3_storage.sent == ["GetObject"]  # the second reader: the copy


def test_a_bad_copy_in_the_blob_cache_is_dropped_and_the_datastore_read(s3_storage, blob_cache):
    from flowbook.datastore import Datastore

    entry = Datastore(storage=s3_storage).store_artifact(list(range(2000)), "items")
    (copy,) = blob_cache.rglob(entry["sha"])
    data = bytearray(copy.read_bytes())
    data[-3] ^= 0xFF  # e.g. planted by someone else, or a bad disk
    copy.write_bytes(bytes(data))
    del s3_storage.sent[:]
    value = Datastore(storage=s3_storage).load_artifact(entry, "items", "F/1/start/1")
    assert value == list(range(2000))
    assert s3_storage.sent == ["GetObject"]
    assert copy.read_bytes() != bytes(data)  # replaced by the datastore's bytes


def test_the_blob_cache_can_be_turned_off(s3_storage, monkeypatch):
    from flowbook.datastore import Datastore, blobs

    monkeypatch.setenv(blobs.CACHE_ENV, "off")
    monkeypatch.setattr(blobs, "_CACHE_ROOT", [])
    entry = Datastore(storage=s3_storage).store_artifact(list(range(2000)), "items")
    del s3_storage.sent[:]
    for _ in range(2):
        Datastore(storage=s3_storage).load_artifact(entry, "items", "F/1/start/1")
    assert s3_storage.sent == ["GetObject", "GetObject"]


def test_a_value_read_from_the_cache_and_kept_is_still_in_the_datastore(s3_storage, blob_cache):
    """A copy says the datastore had the blob when it was cached; a task that keeps
    such a value makes sure the datastore still has it (it may have been emptied)."""
    from flowbook.datastore import Datastore

    entry = Datastore(storage=s3_storage).store_artifact(list(range(2000)), "items")
    path = f"blobs/{entry['sha'][:2]}/{entry['sha']}"
    s3_storage.delete(path)  # the datastore emptied behind the cache's back
    task = Datastore(storage=s3_storage)
    value, mapped = task.read_artifact(entry, "items", "F/1/start/1")
    again = task.store_artifact(value, "items", read_from=(entry, mapped))
    assert again["sha"] == entry["sha"]
    assert s3_storage.exists(path)  # written again


def test_the_blob_cache_lets_the_least_recently_used_go(s3_storage, blob_cache, monkeypatch):
    from flowbook.datastore import Datastore, blobs

    monkeypatch.setattr(blobs, "CACHE_LIMIT", 15_000)  # about three of these blobs
    datastore = Datastore(storage=s3_storage)
    entries = []
    for n in range(6):
        entries.append(datastore.store_artifact(list(range(n, n + 2000)), "items"))
        for copy in blob_cache.rglob("*"):  # the older a blob, the longer unused
            if copy.is_file():
                os.utime(copy, (copy.stat().st_atime - 10, copy.stat().st_mtime - 10))
    kept = {copy.name for copy in blob_cache.rglob("*") if copy.is_file()}
    total = sum(copy.stat().st_size for copy in blob_cache.rglob("*") if copy.is_file())
    assert total <= 15_000
    assert entries[-1]["sha"] in kept and entries[0]["sha"] not in kept
    # what went is read from the datastore again
    assert datastore.load_artifact(entries[0], "items", "F/1/s/1") == list(range(2000))


def test_a_task_leaves_its_record_for_a_scheduler_on_its_machine(s3_storage, tmp_path):
    """The scheduler reads a remote task's record from the copy the task left on this
    machine (one request fewer per task), removes it, and falls back to the datastore
    when the copy is missing or not a sound record."""
    from flowbook.datastore import Datastore

    datastore = Datastore(storage=s3_storage)
    record = {
        "flow": "F",
        "run_id": "1",
        "step": "s",
        "task_id": "1",
        "attempt": 0,
        "status": "successful",
        "artifacts": {},
    }
    copy = tmp_path / "F_1_s_1_0.done.json"
    datastore.write_attempt_done("F", "1", "s", "1", 0, record, copy_to=str(copy))
    assert s3_storage.sent == ["PutObject"] and copy.exists()
    s3_storage.sent.clear()
    assert datastore.read_attempt_done("F", "1", "s", "1", 0, str(copy)) == record
    assert s3_storage.sent == [] and not copy.exists()
    # no copy: the datastore's record, in one request
    assert datastore.read_attempt_done("F", "1", "s", "1", 0, str(copy)) == record
    assert s3_storage.sent == ["GetObject"]
    # a copy that is not a sound record is not believed
    copy.write_text('{"status": 3}')
    assert datastore.read_attempt_done("F", "1", "s", "1", 0, str(copy)) == record
    # a directory that is gone: the record is still written, the copy is not
    datastore.write_attempt_done(
        "F", "1", "s", "2", 0, record, copy_to=str(tmp_path / "gone" / "x.done.json")
    )
    assert datastore.read_attempt_done("F", "1", "s", "2", 0) == record


def test_a_listing_gives_the_names_under_a_directory(any_s3_storage):
    names = ["a.json", "b c+d=é.json", "sub/x.json", "sub/deeper/y.json", "zz/"]
    for name in names:
        any_s3_storage.write_bytes(f"flows/F/{name}", b"{}")
    any_s3_storage.write_bytes("flows/Fother/not-this.json", b"{}")
    assert sorted(any_s3_storage.list("flows/F")) == ["a.json", "b c+d=é.json", "sub", "zz"]
    assert sorted(any_s3_storage.list("flows/F/sub/")) == ["deeper", "x.json"]
    assert any_s3_storage.list("flows/nothing") == []
