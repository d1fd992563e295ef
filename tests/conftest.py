"""Shared fixtures: run real flows as real subprocesses against a datastore in tmp_path.

``run_flow(source, *args)`` writes a flow's source (a string, or the name of a file
in ``tests/flows/``) into a temporary directory and runs ``python flow.py *args``
there, with ``FLOWBOOK_DATASTORE`` pointing into that directory and ``USER`` set, so
that nothing a test does leaks into another test or into the developer's home.
``client`` points :mod:`flowbook.client` at the same datastore.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

FLOWS_DIR = Path(__file__).parent / "flows"
EXAMPLES_DIR = Path(__file__).parent.parent / "flowbook" / "examples"
TEST_USER = "tester"
TRACEBACK = "Traceback (most recent call last)"
#: A console line of a task: time, [run_id/step/task_id (pid N)], text.
TASK_LINE = re.compile(
    r"^(?P<time>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}) "
    r"\[(?P<run_id>\d+)/(?P<step>\w+)/(?P<task_id>\d+) \(pid (?P<pid>\d+)\)\] (?P<text>.*)$"
)


def flow_source(name: str) -> str:
    """The source of a reusable flow file in tests/flows/ (name without .py)."""
    return (FLOWS_DIR / f"{name}.py").read_text()


def example_source(name: str) -> str:
    """The source of a seed flow in flowbook/examples/ (name without .py)."""
    return (EXAMPLES_DIR / f"{name}.py").read_text()


@dataclass
class FlowResult:
    """What one ``python flow.py ...`` printed, and how it exited."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str
    pid: int

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def __repr__(self) -> str:  # shown by pytest when an assertion fails
        return (
            f"FlowResult({self.args!r}, returncode={self.returncode})\n"
            f"--- stdout ---\n{self.stdout}\n--- stderr ---\n{self.stderr}"
        )

    @property
    def run_id(self) -> str | None:
        """The run id the console announced, if a run started."""
        match = re.search(r"run-id (\d+)", self.stdout)
        return match.group(1) if match else None

    def task_lines(self) -> list[re.Match]:
        return [m for m in map(TASK_LINE.match, self.output.splitlines()) if m]


class FlowRunner:
    """Writes flow files into one directory and runs them there."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.datastore = workdir / ".flowbook"
        self.env = dict(os.environ)
        for key in list(self.env):
            if key.startswith(("FLOWBOOK_", "METAFLOW_")):
                del self.env[key]
        self.env.update(
            {
                "FLOWBOOK_DATASTORE": str(self.datastore),
                "USER": TEST_USER,
                "PYTHONUNBUFFERED": "1",
            }
        )
        self.env.pop("USERNAME", None)

    def write(self, source: str, filename: str = "flow.py") -> Path:
        if "\n" not in source and (FLOWS_DIR / f"{source}.py").exists():
            source = flow_source(source)
        path = self.workdir / filename
        path.write_text(textwrap.dedent(source))
        return path

    def __call__(
        self,
        source: str | None,
        *args: str,
        filename: str = "flow.py",
        env: dict[str, str] | None = None,
        timeout: float = 120,
    ) -> FlowResult:
        """Run ``python <filename> *args``; ``source`` None reuses the file written before."""
        path = self.workdir / filename if source is None else self.write(source, filename)
        full_env = dict(self.env)
        full_env.update(env or {})
        command = [sys.executable, str(path), *args]
        proc = subprocess.Popen(
            command,
            cwd=self.workdir,
            env=full_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
            raise AssertionError(f"{command} timed out\n{stdout}\n{stderr}") from None
        return FlowResult(list(args), proc.returncode, stdout, stderr, proc.pid)


@contextlib.contextmanager
def kernel_in(workdir: Path, wrap):
    """A real IPython kernel running in ``workdir`` with its datastore there (no other
    FLOWBOOK_/METAFLOW_ variables), given to ``wrap(kernel_manager)``; shut down after."""
    from jupyter_client.manager import KernelManager

    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLOWBOOK_", "METAFLOW_"))}
    env.update(FLOWBOOK_DATASTORE=str(workdir / ".flowbook"), USER=TEST_USER)
    km = KernelManager(kernel_name="python3")
    km.start_kernel(env=env, cwd=str(workdir))
    kernel = wrap(km)
    try:
        yield kernel
    finally:
        kernel.kc.stop_channels()
        km.shutdown_kernel(now=True)


@pytest.fixture
def run_flow(tmp_path: Path) -> FlowRunner:
    """``run_flow(source, 'run', '--x', '1')`` -> FlowResult; datastore in tmp_path."""
    return FlowRunner(tmp_path)


@contextlib.contextmanager
def client_for(runner: FlowRunner, monkeypatch: pytest.MonkeyPatch):
    """flowbook.client pointed at ``runner``'s datastore, namespace(None); reset after."""
    import flowbook.client as fb_client

    monkeypatch.setenv("USER", TEST_USER)
    for var in ("FLOWBOOK_USER", "METAFLOW_USER", "FLOWBOOK_DATASTORE"):
        monkeypatch.delenv(var, raising=False)
    fb_client.datastore(str(runner.datastore))
    fb_client.namespace(None)
    try:
        yield fb_client
    finally:
        fb_client.datastore(None)
        fb_client.default_namespace()


@pytest.fixture
def client(run_flow: FlowRunner, monkeypatch: pytest.MonkeyPatch):
    """flowbook.client pointed at run_flow's datastore, namespace(None); reset after."""
    with client_for(run_flow, monkeypatch) as fb_client:
        yield fb_client


# ---------------------------------------------------------------------- S3 (moto)
#: The bucket the ``moto_s3`` server has; give each test a prefix of its own in it.
MOTO_BUCKET = "flowbook-moto"


@pytest.fixture(scope="session")
def moto_s3():
    """A real S3 API: moto's server on 127.0.0.1 (a free port), started once per test
    session and stopped after it, with the bucket ``MOTO_BUCKET``. Yields the
    environment (credentials, ``AWS_ENDPOINT_URL``) a process needs to reach it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
    }
    try:
        deadline = time.time() + 30
        while True:
            if server.poll() is not None:
                pytest.fail("moto's S3 server exited at start")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.time() > deadline:
                    pytest.fail("moto's S3 server did not start")
                time.sleep(0.1)
        subprocess.run(
            [
                sys.executable,
                "-c",
                f"import boto3; boto3.client('s3').create_bucket(Bucket={MOTO_BUCKET!r})",
            ],
            env=dict(os.environ, **env),
            check=True,
        )
        yield env
    finally:
        server.terminate()
        server.wait(timeout=10)


# ---------------------------------------------------------------------- assertions
def assert_refused(result: FlowResult, *needles: str, code: int | None = None) -> None:
    """A user error: non-zero exit, every needle in the output, no traceback at all."""
    assert result.returncode != 0, result
    if code is not None:
        assert result.returncode == code, result
    for needle in needles:
        assert needle in result.output, (needle, result)
    assert TRACEBACK not in result.output, result


def assert_no_internal_frames(result: FlowResult) -> None:
    """A traceback may show the user's own frames, never flowbook's."""
    internal = [
        line
        for line in result.output.splitlines()
        if re.search(r'File ".*[/\\]flowbook[/\\](?!examples)[^"]*\.py"', line)
    ]
    assert not internal, (internal, result)


def assert_task_failed(result: FlowResult, step: str, *needles: str) -> None:
    """A run failed in ``step``: non-zero exit, the step and needles named, no flowbook frames."""
    assert result.returncode != 0, result
    assert f"step '{step}'" in result.output, result
    for needle in needles:
        assert needle in result.output, (needle, result)
    assert_no_internal_frames(result)


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    """The largest number of intervals that contain one point in time."""
    events = sorted(
        [(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals],
        key=lambda e: (e[0], e[1]),  # an end before a start at the same instant
    )
    best = current = 0
    for _, delta in events:
        current += delta
        best = max(best, current)
    return best
