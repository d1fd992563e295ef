"""On the command line flowbook's warnings are one line, ``Warning: <message>``.

Python's own format names the flowbook file and line that called ``warnings.warn``
and shows that line's source; the command-line entry points (``python flow.py``,
fast path and click, and the ``flowbook`` program) print FlowbookWarning (and the
DatastoreTrustWarning, one of them) as one line instead, and leave every other
warning to Python. Real subprocesses, real corrupt records.
"""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TRACEBACK

import flowbook
from flowbook.datastore.storage import DatastoreTrustWarning
from flowbook.exceptions import FlowbookWarning

PACKAGE_DIR = str(Path(flowbook.__file__).parent)
FLOWBOOK_PROGRAM = str(Path(sys.executable).parent / "flowbook")


def _warning_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if "Warning" in line]


def _assert_one_warning(output: str, *needles: str) -> None:
    """Exactly one warning line, ``Warning: ...`` with every needle, and nothing of
    Python's format: no flowbook file, no source line, no category name."""
    lines = _warning_lines(output)
    assert len(lines) == 1, output
    assert lines[0].startswith("Warning: "), output
    for needle in needles:
        assert needle in lines[0], (needle, output)
    assert PACKAGE_DIR not in output, output
    assert "warnings.warn" not in output and "CorruptRecordWarning" not in output, output
    assert TRACEBACK not in output, output


@pytest.fixture
def two_runs(run_flow):
    """Two runs of SimpleFlow; returns (run directory, id) of each, oldest first."""
    ids = []
    for label in ("one", "two"):
        result = run_flow("simple", "run", "--label", label)
        assert result.returncode == 0, result
        ids.append(result.run_id)
    base = run_flow.datastore / "flows" / "SimpleFlow"
    return [(base / run_id, run_id) for run_id in ids]


def test_resume_past_a_corrupt_run_json_warns_in_one_line(two_runs, run_flow):
    (_, good), (bad_dir, bad) = two_runs
    (bad_dir / "run.json").write_bytes(b"[]")
    resumed = run_flow(None, "resume")  # the fast path: no click
    assert resumed.returncode == 0, resumed
    assert f"Resuming run {good}" in resumed.output, resumed
    _assert_one_warning(resumed.output, bad, str(bad_dir / "run.json"))


@pytest.mark.parametrize("program", ["python flow.py", "flowbook"])
def test_logs_with_a_corrupt_step_index_warns_in_one_line(two_runs, run_flow, program):
    (bad_dir, bad), _ = two_runs
    (bad_dir / "start.tasks.json").write_bytes(b"[]")
    if program == "flowbook":  # the flowbook program, through its own main
        proc = subprocess.run(
            [FLOWBOOK_PROGRAM, "logs", "flow.py", f"{bad}/start"],
            cwd=run_flow.workdir,
            env=run_flow.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        code, output = proc.returncode, proc.stdout + proc.stderr
    else:  # click
        result = run_flow(None, "logs", f"{bad}/start")
        code, output = result.returncode, result.output
    assert code == 0, output
    assert "start says hi" in output
    _assert_one_warning(output, str(bad_dir / "start.tasks.json"))


def test_other_warnings_keep_pythons_format(tmp_path):
    script = (
        "import warnings\n"
        "from flowbook.cli.entry import show_flowbook_warnings\n"
        "from flowbook.exceptions import FlowbookWarning\n"
        "show_flowbook_warnings()\n"
        "show_flowbook_warnings()  # twice: still one line per warning\n"
        "warnings.warn('ours', FlowbookWarning)\n"
        "warnings.warn('theirs', DeprecationWarning)\n"
        "warnings.warn('a user one')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-W", "always", "-c", script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert lines[0] == "Warning: ours", proc.stderr
    assert lines.count("Warning: ours") == 1, proc.stderr
    assert "DeprecationWarning: theirs" in proc.stderr
    assert "UserWarning: a user one" in proc.stderr


def test_the_trust_warning_is_a_flowbook_warning():
    assert issubclass(DatastoreTrustWarning, FlowbookWarning)


HELLO = """
from flowbook import FlowSpec, step


class HelloFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.end)

    @step
    def end(self):
        print("done")


if __name__ == "__main__":
    HelloFlow()
"""


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root: changes a file owner"
)
def test_a_datastore_of_another_user_is_one_warning_line(run_flow):
    nobody = pwd.getpwnam("nobody")
    store = run_flow.workdir / "theirs"
    store.mkdir()
    os.chown(store, nobody.pw_uid, nobody.pw_gid)
    result = run_flow(HELLO, "--datastore", str(store), "run")
    assert result.returncode == 0, result
    lines = _warning_lines(result.output)
    assert lines == [line for line in lines if line.startswith("Warning: Datastore ")], result
    _assert_one_warning(result.output, str(store), "owned by another user", "nobody")
    assert "flow.py:" not in result.output, result
