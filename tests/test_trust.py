"""The datastore as a trust boundary (docs/security.md), with real permissions and users.

Reading a datastore unpickles what is in it, so whoever can write it can run code
as the reader: a local datastore that every user can write is refused unless
FLOWBOOK_TRUST_DATASTORE=1, one owned by another user is warned about once, and a
datastore that only one process can see (memory://) is refused before a run starts.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import textwrap
import warnings
from pathlib import Path

import pytest
from conftest import TRACEBACK, assert_refused

from flowbook.datastore import storage
from flowbook.datastore.storage import (
    DatastoreNotSharedError,
    DatastoreTrustWarning,
    LocalStorage,
    UntrustedDatastoreError,
    open_storage,
)
from flowbook.exceptions import DatastoreError, FlowbookError

HELLO = """
from flowbook import FlowSpec, Parameter, step


class HelloFlow(FlowSpec):
    alpha = Parameter("alpha", default=1)

    @step
    def start(self):
        self.x = self.alpha + 1
        self.next(self.end)

    @step
    def end(self):
        print("x is", self.x)


if __name__ == "__main__":
    HelloFlow()
"""

needs_root = pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0,
    reason="needs root: changes file owners and runs commands as the user nobody",
)


def _nobody() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("there is no user 'nobody' on this machine")


@pytest.fixture(autouse=True)
def _fresh_trust(monkeypatch):
    """Each test starts with no root checked in this process, and no override."""
    monkeypatch.delenv("FLOWBOOK_TRUST_DATASTORE", raising=False)
    monkeypatch.setattr(storage, "_TRUSTED_ROOTS", set())


@pytest.fixture
def shared_dir():
    """A directory under /tmp that every user can reach (tmp_path is root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="flowbook-trust-", dir="/tmp"))
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# ------------------------------------------------------------------ world-writable
@pytest.mark.parametrize("mode", [0o777, 0o1777], ids=["777", "sticky-1777"])
def test_a_world_writable_datastore_is_refused_by_the_cli(run_flow, mode):
    store = run_flow.workdir / "shared"
    store.mkdir()
    os.chmod(store, mode)
    result = run_flow(HELLO, "--datastore", str(store), "run")
    assert_refused(
        result, str(store), "writable by every user", f"{mode:o}", "FLOWBOOK_TRUST_DATASTORE=1"
    )
    assert result.returncode == 1
    assert "Workflow starting" not in result.output
    assert len(result.output.strip().splitlines()) == 1, result
    assert list(store.iterdir()) == []  # nothing written


def test_a_world_writable_datastore_is_accepted_knowingly(run_flow):
    store = run_flow.workdir / "shared"
    store.mkdir()
    os.chmod(store, 0o777)
    result = run_flow(
        HELLO, "--datastore", str(store), "run", env={"FLOWBOOK_TRUST_DATASTORE": "1"}
    )
    assert result.returncode == 0, result
    assert "x is 2" in result.output
    assert "owned by another user" not in result.output


def test_the_refusal_is_a_one_line_flowbook_error(tmp_path):
    store = tmp_path / "shared"
    store.mkdir()
    os.chmod(store, 0o777)
    with pytest.raises(UntrustedDatastoreError) as info:
        open_storage(str(store))
    assert isinstance(info.value, DatastoreError)
    assert isinstance(info.value, FlowbookError)
    assert "\n" not in str(info.value)
    assert str(store) in str(info.value)


def test_the_client_refuses_a_world_writable_datastore(tmp_path, monkeypatch):
    import flowbook.client as fb_client

    store = tmp_path / "shared"
    store.mkdir()
    os.chmod(store, 0o777)
    fb_client.datastore(str(store))
    try:
        with pytest.raises(UntrustedDatastoreError):
            list(fb_client.Metaflow())
    finally:
        fb_client.datastore(None)


@needs_root
@pytest.mark.parametrize("mode", [0o777, 0o1777], ids=["777", "sticky-1777"])
def test_a_pickle_planted_by_another_user_does_not_run(shared_dir, mode):
    """The finding: as nobody, plant a run whose inline parameter pickle runs a
    command in a world-writable datastore; root reading the run's parameters ran it."""
    nobody = _nobody()
    store = shared_dir / "store"
    store.mkdir()
    os.chmod(store, mode)
    marker = shared_dir / "owned"
    run_dir = store / "flows" / "PlantedFlow" / "1700000000000000"
    record = _planted_run_record(f"touch {marker}")
    # nobody writes everything (root only computed the bytes)
    planted = subprocess.run(
        ["runuser", "-u", "nobody", "--", "sh", "-c", 'mkdir -p "$1" && cat > "$1/run.json"']
        + ["sh", str(run_dir)],
        input=record,
        capture_output=True,
    )
    assert planted.returncode == 0, planted
    assert (store / "flows").stat().st_uid == nobody.pw_uid
    reader = textwrap.dedent(
        f"""
        import flowbook.client as c
        c.datastore({str(store)!r})
        c.namespace(None)
        print(c.Flow("PlantedFlow").latest_run.parameters)
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWBOOK_")}
    result = subprocess.run(
        [sys.executable, "-c", reader], capture_output=True, text=True, env=env, timeout=60
    )
    assert not marker.exists(), "the planted pickle ran as root"
    assert result.returncode != 0
    assert "UntrustedDatastoreError" in result.stderr
    assert "writable by every user" in result.stderr


def _planted_run_record(command: str) -> bytes:
    """A run.json whose parameter 'alpha' is an inline pickle that runs ``command``."""
    import binascii

    from flowbook import jsonio
    from flowbook.datastore.blobs import serialize
    from flowbook.datastore.hashing import blob_name

    class Evil:
        def __reduce__(self):
            return (os.system, (command,))

    data = b"".join(serialize(Evil()).chunks())
    entry = {
        "sha": blob_name([data])[0],
        "type": "int",
        "size": len(data),
        "inline": binascii.b2a_base64(data, newline=False).decode(),
    }
    record = {
        "flow": "PlantedFlow",
        "run_id": "1700000000000000",
        "user": "tester",
        "tags": [],
        "system_tags": ["user:tester"],
        "created_at": 1700000000.0,
        "parameters": {"alpha": entry},
        "graph": {},
        "origin_run_id": None,
    }
    return jsonio.dumps(record).encode()


# ------------------------------------------------------------------ another owner
@needs_root
def test_a_datastore_owned_by_another_user_warns_once(tmp_path):
    nobody = _nobody()
    store = tmp_path / "theirs"
    store.mkdir()
    os.chown(store, nobody.pw_uid, nobody.pw_gid)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = open_storage(str(store))
        open_storage(str(store))
        LocalStorage(str(store))
    assert first.root == str(store)
    trust = [w for w in caught if issubclass(w.category, DatastoreTrustWarning)]
    assert len(trust) == 1, [str(w.message) for w in caught]
    message = str(trust[0].message)
    assert str(store) in message and "nobody" in message
    assert "FLOWBOOK_TRUST_DATASTORE=1" in message
    assert trust[0].filename == __file__  # points at the caller, not into flowbook


@needs_root
def test_the_cli_warns_once_about_another_users_datastore(run_flow):
    nobody = _nobody()
    store = run_flow.workdir / "theirs"
    store.mkdir()
    os.chown(store, nobody.pw_uid, nobody.pw_gid)
    result = run_flow(HELLO, "--datastore", str(store), "run")
    assert result.returncode == 0, result
    assert result.output.count("owned by another user") == 1, result
    assert "nobody" in result.output
    # the tasks (which reopen the datastore) did not warn into their logs
    logs = [p.read_text() for p in store.rglob("*.stderr")]
    assert logs and not any("owned by another user" in log for log in logs)
    silenced = run_flow(
        None, "--datastore", str(store), "run", env={"FLOWBOOK_TRUST_DATASTORE": "1"}
    )
    assert silenced.returncode == 0, silenced
    assert "owned by another user" not in silenced.output


@needs_root
def test_a_datastore_owned_by_root_is_not_warned_about(tmp_path):
    """root can run code as anyone already: its owning a datastore adds no risk. (The
    test runs as root, so this only pins that uid 0 is never warned about.)"""
    store = tmp_path / "roots"
    store.mkdir()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        open_storage(str(store))
    assert not [w for w in caught if issubclass(w.category, DatastoreTrustWarning)]


# ------------------------------------------------------------------ created safely
def test_a_new_datastore_and_its_directories_are_never_world_writable(tmp_path):
    old = os.umask(0)  # the worst umask: everything created would be rwxrwxrwx
    try:
        store = LocalStorage(str(tmp_path / ".flowbook"))
        store.write_bytes("flows/SomeFlow/1/start/1/0.start.json", b"{}")
        store.write_bytes("blobs/ab/abcdef", b"data")
        from flowbook.datastore import Datastore

        Datastore(storage=store).new_run_id("NewFlow")  # flows/NewFlow/<run id>/
    finally:
        os.umask(old)
    made = [Path(store.root)] + [p for p in Path(store.root).rglob("*")]
    for path in made:
        assert not path.stat().st_mode & 0o002, (path, oct(path.stat().st_mode))
    # and it is accepted when opened again, by a process that never saw it
    storage._TRUSTED_ROOTS.clear()
    open_storage(store.root)


def test_the_default_datastore_is_created_private(tmp_path):
    """``./.flowbook`` does not exist yet: a run creates it, and a run under umask 0
    still gets a datastore it can open again."""
    script = textwrap.dedent(
        """
        import os
        os.umask(0)
        from flowbook.datastore import open_storage
        store = open_storage()
        print(oct(os.stat(store.root).st_mode & 0o777))
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWBOOK_")}
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, env=env
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "0o775"
    assert (tmp_path / ".flowbook").is_dir()


# ------------------------------------------------------------------ process-local
def test_a_memory_datastore_cannot_hold_a_run():
    store = open_storage("memory://flowbook-trust-test")  # in-process use stays allowed
    store.check_writable()
    with pytest.raises(DatastoreNotSharedError) as info:
        store.check_usable_by_tasks()
    message = str(info.value)
    assert "memory://flowbook-trust-test" in message
    assert "one process's memory" in message and "process of its own" in message
    assert "\n" not in message
    assert isinstance(info.value, DatastoreError)


@pytest.mark.parametrize("url", ["simplecache::memory://wrapped", "dir::memory://wrapped"])
def test_a_wrapped_memory_datastore_cannot_hold_a_run(url):
    store = storage.FsspecStorage(url)
    with pytest.raises(DatastoreNotSharedError):
        store.check_usable_by_tasks()


def test_a_local_datastore_can_hold_a_run(tmp_path):
    store = open_storage(str(tmp_path / "ds"))
    store.check_usable_by_tasks()
    assert store.process_local_reason() is None


def test_a_memory_datastore_is_refused_before_the_run_starts(run_flow):
    import flowbook.runtime.launch as launch

    source = Path(launch.__file__).read_text()
    if "check_usable_by_tasks" not in source:
        pytest.skip("runtime/launch.py does not call Storage.check_usable_by_tasks() yet")
    result = run_flow(HELLO, "--datastore", "memory://x", "run")
    assert_refused(result, "memory://x", "one process's memory")
    assert "Workflow starting" not in result.output
    assert TRACEBACK not in result.output
