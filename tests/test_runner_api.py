"""The Runner API: the seed's examples, with only the import changed, plus NBRunner."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path

import nbformat
import pytest
from conftest import TEST_USER
from nbclient import NotebookClient

SLOWFLOW = """
import time
from flowbook import FlowSpec, Parameter, step

class SlowFlow(FlowSpec):
    secs = Parameter('seconds', default=3)

    @step
    def start(self):
        for i in range(self.secs):
            print(f"{i} seconds passed")
            time.sleep(0.3)
        self.next(self.end)

    @step
    def end(self):
        pass

if __name__ == '__main__':
    SlowFlow()
"""

FAILING = """
import os
from flowbook import FlowSpec, step

class Fragile(FlowSpec):
    @step
    def start(self):
        self.x = 1
        self.next(self.end)

    @step
    def end(self):
        if os.path.exists("broken"):
            raise RuntimeError("broken")
        self.y = self.x + 1

if __name__ == '__main__':
    Fragile()
"""


@pytest.fixture
def flows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Flow files in tmp_path, which is also the cwd (so ./.flowbook lands there)."""
    (tmp_path / "slowflow.py").write_text(SLOWFLOW)
    (tmp_path / "fragile.py").write_text(FAILING)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("USER", TEST_USER)
    for var in [v for v in os.environ if v.startswith(("FLOWBOOK_", "METAFLOW_"))]:
        monkeypatch.delenv(var)
    import flowbook.client as fb_client

    fb_client.datastore(None)
    fb_client.namespace(None)
    yield tmp_path
    fb_client.default_namespace()


def test_blocking_run_status_output_and_client_run(flows):
    from flowbook import Runner

    with Runner("slowflow.py", show_output=False).run(seconds=2) as running:
        assert running.status == "successful"
        assert running.returncode == 0
        assert "1 seconds passed" in running.stdout
        assert running.stderr == ""
        assert running.run.successful
        assert running.run.data.secs == 2


def test_options_map_to_the_command_line(flows):
    from flowbook import Runner

    runner = Runner("slowflow.py", show_output=False, pylint=False, decospecs=["retry"])
    with runner.run(seconds=1, max_workers=1, tags=["myrun", "another_tag"]) as running:
        assert running.status == "successful", running.stderr
        assert running.run.user_tags == {"myrun", "another_tag"}
        graph = running.run._record["graph"]
        assert all("retry" in [d["name"] for d in s["decorators"]] for s in graph["steps"])


def test_a_failed_run_reports_failed(flows):
    from flowbook import Runner

    (flows / "broken").write_text("x")
    with Runner("fragile.py", show_output=False).run() as running:
        assert running.status == "failed"
        assert running.returncode == 1
        assert "RuntimeError: broken" in running.stderr
        assert not running.run.successful


def test_wrong_parameter_type_is_refused_before_any_run(flows):
    from flowbook import Runner
    from flowbook.exceptions import ParameterError

    with pytest.raises(ParameterError, match="'seconds'"):
        Runner("slowflow.py", show_output=False).run(seconds="three")
    with pytest.raises(ParameterError, match="no parameter 'secondz'"):
        Runner("slowflow.py", show_output=False).run(secondz=1)
    assert not (flows / ".flowbook" / "flows").exists()


def test_async_polling_wait_and_stream_log_from_a_position(flows):
    from flowbook import Runner

    async def main():
        with await Runner("slowflow.py", quiet=True, show_output=False).async_run(
            seconds=4
        ) as running:
            assert running.run is not None  # the id is known as soon as it starts
            statuses = set()
            stdout = aiter(running.stream_log("stdout"))
            out_pos, first = await anext(stdout)
            statuses.add(running.status)
            rest = [line async for _, line in running.stream_log("stdout", position=out_pos)]
            await running.wait()
            return first, rest, statuses, running.status, running.run.data.secs

    first, rest, statuses, status, secs = asyncio.run(main())
    lines = [first, *rest]
    passed = [line.split("] ")[-1] for line in lines if "seconds passed" in line]
    assert passed == [f"{i} seconds passed" for i in range(4)]
    assert "running" in statuses
    assert status == "successful" and secs == 4


def test_five_concurrent_runs_and_twenty_small_ones(flows):
    from flowbook import Flow, Runner

    async def main(count: int, tag: str, seconds) -> list:
        runs = [
            await Runner("slowflow.py", show_output=False).async_run(seconds=seconds(i), tags=[tag])
            for i in range(count)
        ]
        for running in runs:
            await running.wait()
        return [(r.status, r.run.id, r.run.data.secs) for r in runs]

    five = asyncio.run(main(5, "manyruns", lambda i: i))
    assert [s for s, _, _ in five] == ["successful"] * 5
    assert [secs for _, _, secs in five] == [0, 1, 2, 3, 4]
    twenty = asyncio.run(main(20, "twenty", lambda i: 0))
    assert all(s == "successful" for s, _, _ in twenty)
    assert len({run_id for _, run_id, _ in five + twenty}) == 25
    assert len(list(Flow("SlowFlow").runs("twenty"))) == 20


def test_programmatic_resume_blocking_and_async(flows):
    from flowbook import Flow, Runner

    (flows / "broken").write_text("x")
    with Runner("fragile.py", show_output=False).run() as running:
        assert running.status == "failed"
    (flows / "broken").unlink()
    old_id = list(Flow("Fragile"))[-1].id
    with Runner("fragile.py", show_output=False).resume(origin_run_id=old_id) as running:
        assert running.status == "successful"
        assert running.run.origin_run_id == old_id
        assert running.run["start"].task.origin_pathspec == f"Fragile/{old_id}/start/1"

    async def main():
        with await Runner("fragile.py", show_output=False).async_resume(
            origin_run_id=old_id, step="start"
        ) as running:
            await running.wait()
            return running.status, running.run

    status, run = asyncio.run(main())
    assert status == "successful"
    assert run["start"].task.origin_pathspec is None  # resumed from start: ran again
    assert run.data.y == 2


def test_runner_from_a_thread_and_inside_a_running_loop(flows):
    from flowbook import Runner

    results = {}

    def in_thread():
        with Runner("slowflow.py", show_output=False).run(seconds=0) as running:
            results["thread"] = running.status

    thread = threading.Thread(target=in_thread)
    thread.start()
    thread.join(60)

    async def inside_loop():
        # A blocking run inside a running event loop, as in a Jupyter cell.
        with Runner("slowflow.py", show_output=False).run(seconds=0) as running:
            return running.status

    results["loop"] = asyncio.run(inside_loop())
    assert results == {"thread": "successful", "loop": "successful"}


def test_a_runs_files_go_when_it_ends_and_its_output_stays_readable(flows):
    from flowbook import Runner

    runner = Runner("slowflow.py", show_output=False)
    running = runner.run(seconds=1)  # blocking, no with: nothing may be left behind
    assert not Path(running._workdir).exists()
    assert "0 seconds passed" in running.stdout and running.run.successful

    async def main():
        with await runner.async_run(seconds=1) as running:
            workdir = Path(running._workdir)
            assert workdir.exists()  # while the run goes, its output is in files
        assert running.status == "failed"  # leaving the block stopped it
        return workdir, running

    workdir, running = asyncio.run(main())
    assert not workdir.exists()
    assert "Workflow starting" in running.stdout


def test_leaving_one_runs_block_keeps_the_other_runs_files(flows, capsys, monkeypatch):
    """Each run owns its files: ending one run of a Runner leaves the others alone."""
    from flowbook import Runner

    thread_errors = []
    monkeypatch.setattr(threading, "excepthook", thread_errors.append)
    runner = Runner("slowflow.py", show_output=True)

    async def main():
        slow = await runner.async_run(seconds=4)
        with runner.run(seconds=0) as quick:
            assert quick.status == "successful"
        assert slow.status == "running"
        await slow.wait()
        return slow

    slow = asyncio.run(main())
    assert slow.status == "successful"
    assert "3 seconds passed" in slow.stdout
    assert thread_errors == []
    echoed = capsys.readouterr().out
    assert [echoed.count(f"{i} seconds passed") for i in range(4)] == [1, 1, 1, 1]
    assert echoed.count("Done!") == 2


RUNNER_SCRIPT = """
import asyncio, os, sys
from flowbook import NBRunner, Runner
from flowbook.exceptions import FlowbookError

runner = Runner("slowflow.py", show_output=False)
for _ in range(20):
    assert runner.run(seconds=0).status == "successful"
    Runner("slowflow.py", show_output=False).run(seconds=0)
print("left during:", len([n for n in os.listdir(sys.argv[1]) if n.startswith("flowbook-")]))
try:
    Runner("slowflow.py", show_output=False, cwd="no/such/dir").run(seconds=0)
except FlowbookError as exc:
    print("refused:", exc)
running = asyncio.run(runner.async_run(seconds=30))  # still going at exit
print("pid:", running._process.pid, flush=True)
"""


def test_no_working_directory_outlives_the_process(flows):
    """200 blocking runs left 200 directories; a failed start left its own."""
    import subprocess
    import sys

    tmp = flows / "tmp"
    tmp.mkdir()
    (flows / "script.py").write_text(RUNNER_SCRIPT)
    env = dict(os.environ, TMPDIR=str(tmp))
    proc = subprocess.run(
        [sys.executable, "script.py", str(tmp)],
        cwd=flows,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "left during: 0" in proc.stdout
    assert "refused: Runner: cannot start slowflow.py: No such file or directory" in proc.stdout
    assert "no/such/dir" in proc.stdout
    assert os.listdir(tmp) == []
    pid = int(proc.stdout.split("pid:")[1])
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not Path(f"/proc/{pid}").exists()  # the run still going at exit was stopped


VALUES_FLOW = """
from flowbook import FlowSpec, Parameter, step

class ValuesFlow(FlowSpec):
    text = Parameter('text', default='')
    count = Parameter('count', default=1)

    @step
    def start(self):
        self.size = len(self.text)
        self.next(self.end)

    @step
    def end(self):
        pass

if __name__ == '__main__':
    ValuesFlow()
"""


def test_values_that_cannot_be_arguments_reach_the_run(flows):
    """A NUL or a 200 KB value cannot be an argument: they go through a parameters file."""
    from flowbook import Runner

    (flows / "values.py").write_text(VALUES_FLOW)
    runner = Runner("values.py", show_output=False)
    for text in ("a\0b", "x" * 200_000, "é" * 100_000 + "\0"):
        with runner.run(text=text, count=3) as running:
            assert running.status == "successful", running.stderr
            assert running.run.data.text == text
            assert running.run.data.size == len(text) and running.run.data.count == 3


def test_runner_refuses_what_no_command_line_can_carry(flows):
    from flowbook import Runner
    from flowbook.exceptions import FlowbookError

    runner = Runner("slowflow.py", show_output=False)
    with pytest.raises(FlowbookError, match=r"^Runner: --tag: the value 'a\\x00b' contains a NUL"):
        runner.run(seconds=0, tags=["a\0b"])
    with pytest.raises(FlowbookError, match=r"^Runner: --max-workers: expected an integer"):
        runner.run(seconds=0, max_workers="4")
    with pytest.raises(FlowbookError, match=r"^Runner: unknown option 'colour'"):
        Runner("slowflow.py", colour="red")
    with pytest.raises(FlowbookError, match=r"environment variable 'X' contains a NUL"):
        Runner("slowflow.py", env={"X": "a\0"})
    with pytest.raises(FlowbookError, match=r"^Invalid run id '\.\./\.\./x'"):
        runner.resume(origin_run_id="../../x")
    with pytest.raises(FlowbookError, match=r"^Invalid step name 'a/b'"):
        runner.resume(step="a/b")
    with pytest.raises(FlowbookError, match=r"too long"):  # E2BIG from the kernel
        Runner("slowflow.py", env={"BIG": "y" * 3_000_000}, show_output=False).run(seconds=0)
    assert not (flows / ".flowbook" / "flows").exists()


NB_CELLS = [
    "import math\nfrom flowbook import FlowSpec, Parameter, step, NBRunner",
    "def helper(x):\n    return math.factorial(x)",
    "class Box:\n    def __init__(self, value):\n        self.value = value",
    "class NotebookFlow(FlowSpec):\n"
    "    n = Parameter('n', default=3)\n\n"
    "    @step\n"
    "    def start(self):\n"
    "        self.box = Box(helper(self.n))\n"
    "        self.next(self.end)\n\n"
    "    @step\n"
    "    def end(self):\n"
    "        self.result = self.box.value + 1",
    "run = NBRunner(NotebookFlow, show_output=False).nbrun(n=4)\n"
    "print(run.successful, run.data.result)",
    "resumed = NBRunner(NotebookFlow, show_output=False).nbresume(origin_run_id=run.id)\n"
    "print(resumed.successful, resumed.data.result, resumed['start'].task.origin_pathspec"
    " is not None)",
    "import asyncio\n"
    "running = await NBRunner(NotebookFlow, show_output=False).async_nbrun(n=5)\n"
    "await running.wait()\n"
    "print(running.status, running.run.data.result)",
]


def test_nbrunner_in_a_real_kernel_with_helpers_from_other_cells(flows):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source) for source in NB_CELLS]
    NotebookClient(nb, kernel_name="python3", timeout=120).execute(cwd=str(flows))
    outputs = ["".join(o.get("text", "") for o in cell.outputs) for cell in nb.cells]
    assert outputs[4].strip() == "True 25"
    assert outputs[5].strip() == "True 25 True"
    assert outputs[6].strip() == "successful 121"
