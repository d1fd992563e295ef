"""A task's output reaches the console in bounded memory, progress bars included."""

from __future__ import annotations

import resource
import subprocess
import sys
import threading
import time

from flowbook.runtime.console import LogTail

PROGRESS = """
import os, sys, time
from flowbook import FlowSpec, step


class Progress(FlowSpec):
    @step
    def start(self):
        for percent in (10, 20, 30):
            sys.stdout.write(f"\\rtraining {percent}%")
            sys.stdout.flush()
        while not os.path.exists("go"):  # until the test has seen the bar
            time.sleep(0.02)
        sys.stdout.write("\\rtraining 100%\\n")
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    Progress()
"""

FLOOD = """
import sys
from flowbook import FlowSpec, step


class Flood(FlowSpec):
    @step
    def start(self):
        piece = "x" * (1 << 20)
        for _ in range(100):  # 100 MB and not one newline
            sys.stdout.write(piece)
        sys.stdout.write("\\n")
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    Flood()
"""


def test_a_progress_bar_shows_before_its_line_ends(run_flow):
    path = run_flow.write(PROGRESS)
    proc = subprocess.Popen(
        [sys.executable, str(path), "run"],
        cwd=run_flow.workdir,
        env=run_flow.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    seen = []
    unblock = threading.Timer(10, (run_flow.workdir / "go").write_text, [""])
    unblock.start()  # if the bar never shows, the step still ends and the test fails
    try:
        for raw in proc.stdout:
            seen.append(raw.decode())
            if "training 30%" in seen[-1]:
                break
        assert not (run_flow.workdir / "go").exists(), "the bar showed only when its line ended"
        assert "training 30%" in seen[-1], seen
        assert not any("\r" in line for line in seen), seen
    finally:
        unblock.cancel()
        (run_flow.workdir / "go").write_text("")
    rest = proc.stdout.read().decode()
    assert proc.wait(timeout=60) == 0, rest
    assert "training 100%" in rest


def test_output_without_newlines_is_shown_in_bounded_memory(run_flow):
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    result = run_flow(FLOOD, "run")
    assert result.returncode == 0, result.stderr
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    # the scheduler (and every other process of the run) stayed far below the 100 MB
    assert max(peak_kib, before) < 90 * 1024 or before >= 90 * 1024, peak_kib
    pieces = [line for line in result.stdout.splitlines() if "xxxx" in line]
    assert len(pieces) == 100 * (1 << 20) // LogTail.MAX_LINE
    stored = run_flow.datastore.glob("flows/Flood/*/start/1/0.stdout")
    assert next(stored).stat().st_size == 100 * (1 << 20) + 1


def test_log_tail_cuts_long_lines_and_keeps_the_newest_redraw(tmp_path):
    path = tmp_path / "log"
    path.write_bytes(b"")
    tail = LogTail(str(path))
    with open(path, "ab", buffering=0) as log:
        log.write(b"a" * (LogTail.MAX_LINE * 2 + 5) + b"\nstep 1\rstep 2\rstep 3")
        lines = list(tail.read_lines())
        assert lines == ["a" * LogTail.MAX_LINE] * 2 + ["aaaaa", "step 3"]
        log.write(b"\rstep 4")
        assert list(tail.read_lines()) == []  # at most one redraw a second
        time.sleep(LogTail.REDRAW_INTERVAL)
        assert list(tail.read_lines()) == ["step 4"]
        time.sleep(LogTail.REDRAW_INTERVAL)
        assert list(tail.read_lines()) == []  # not again while it is unchanged
        log.write(b"\rdone\r\n last")
        assert list(tail.read_lines(final=True)) == ["done", " last"]
