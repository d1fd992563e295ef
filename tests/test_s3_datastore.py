"""The datastore on S3: an S3 API served by moto on 127.0.0.1, reached through fsspec (s3fs)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest
from conftest import MOTO_BUCKET, example_source


@pytest.fixture
def s3_env(moto_s3):
    """The environment of a process that reaches the session's moto S3 server."""
    return dict(os.environ, **moto_s3, USER="tester")


def test_a_foreach_flow_runs_and_reads_back_on_s3(s3_env, tmp_path):
    flow = tmp_path / "foreach.py"
    flow.write_text(example_source("foreach"))
    env = dict(s3_env, FLOWBOOK_DATASTORE=f"s3://{MOTO_BUCKET}/{uuid.uuid4().hex[:8]}")
    run = subprocess.run(
        [sys.executable, str(flow), "run"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    assert "mouse won!" in run.stdout
    assert not (tmp_path / ".flowbook").exists()  # nothing went to the local default
    read = subprocess.run(
        [
            sys.executable,
            "-c",
            "from flowbook import Flow, namespace\n"
            "namespace(None)\n"
            "run = Flow('ForeachFlow').latest_run\n"
            "print(run.successful, run.data.best)\n"
            "print(sorted(t.data.score for t in run['analyze_creatures']))\n"
            "print(sorted(t.stdout.strip() for t in run['analyze_creatures']))\n"
            "print(repr(run['start'].task.stderr), repr(run['start'].task.stdout))\n",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert read.returncode == 0, read.stderr
    lines = read.stdout.splitlines()
    assert lines[0] == "True mouse"
    assert lines[1] == "[3, 4, 5]"
    assert lines[2] == "['Analyzing bird', 'Analyzing dog', 'Analyzing mouse']"
    assert lines[3] == "'' ''"  # empty logs are not uploaded and read as empty


def test_a_missing_bucket_is_one_line_before_anything_runs(s3_env, tmp_path):
    flow = tmp_path / "hello.py"
    flow.write_text(example_source("helloworld"))
    env = dict(s3_env, FLOWBOOK_DATASTORE="s3://no-such-bucket-here/ds")
    run = subprocess.run(
        [sys.executable, str(flow), "run"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert run.returncode == 1
    assert "Traceback" not in run.stderr
    assert "s3://no-such-bucket-here/ds" in run.stderr
    assert "Workflow starting" not in run.stdout


def test_forked_tasks_share_the_parsed_s3_model(moto_s3, monkeypatch):
    """Every S3 datastore of a process uses one botocore session, made before the task
    server forks, so a task's client does not parse S3's service model again."""
    from conftest import MOTO_BUCKET

    from flowbook.datastore import storage

    for key, value in moto_s3.items():
        monkeypatch.setenv(key, value)
    first = storage.open_storage(f"s3://{MOTO_BUCKET}/shared-a")
    first.write_bytes("x.json", b"{}")
    session = storage._s3_session()
    assert first.fs.session is session
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # a task: a new datastore object, the parent's session
        code = 1
        try:
            child = storage.open_storage(f"s3://{MOTO_BUCKET}/shared-b")
            child.write_bytes("y.json", b"{}")
            same = child.fs.session is session and child.fs is not first.fs
            os.write(write, b"yes" if same else b"no")
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    answer = os.read(read, 3)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0 and answer == b"yes"
    assert storage.open_storage(f"s3://{MOTO_BUCKET}/shared-b").read_bytes("y.json") == b"{}"
