"""Run output inside a notebook cell: task output lines and a progress bar for foreaches."""

from __future__ import annotations

import re
import sys
import time

from ..runtime.console import Console

_PREFIX = re.compile(r"^\d+/([^/]+)/(\d+)(?: \(pid \d+\))?$")


class NotebookConsole(Console):
    """Prints into the running cell. ``plain`` drops prefixes (a single-task step)."""

    def __init__(self, quiet: bool = False, plain: bool = False, label: str = "") -> None:
        super().__init__(out=sys.stdout, err=sys.stderr, quiet=quiet)
        self.plain = plain
        self.label = label
        self.total = 0
        self.done = 0
        self.failed = 0
        self._handle = None
        self._last_update = 0.0

    # Console overrides: short lines, no timestamps
    def message(self, text: str) -> None:
        # Per-task progress lines are noise in a cell; the DAG view shows states.
        if self.quiet or text.endswith(("Task is starting.", "Task finished successfully.")):
            return
        self.out.write(text + "\n")

    def error(self, text: str) -> None:
        self.err.write(text + "\n")

    def task_line(self, prefix: str, line: str, stderr: bool = False) -> None:
        stream = self.err if stderr else self.out
        if self.plain:
            stream.write(line + "\n")
            return
        match = _PREFIX.match(prefix)
        short = f"{match.group(1)}/{match.group(2)}" if match else prefix
        stream.write(f"[{short}] {line}\n")

    def flush(self) -> None:
        """Nothing: the kernel's output streams flush on their own, and a flush waits
        for the kernel's I/O thread, which would slow every scheduler cycle."""

    # Progress of a step with many tasks (a foreach)
    def event(self, kind: str, info: dict) -> None:
        if kind == "run_seeded":
            self.total = info.get("queued", 0)
            if self.total > 1:
                self._show(force=True)
        elif kind in ("task_finished", "task_failed") and self.total > 1:
            if kind == "task_finished":
                self.done += 1
            self._show(force=self.done == self.total)

    def _show(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_update < 0.5:
            return
        self._last_update = now
        from IPython.display import display

        width = 30
        filled = int(width * self.done / max(self.total, 1))
        text = (
            f"{self.label}: {'█' * filled}{'░' * (width - filled)} {self.done}/{self.total} tasks"
        )
        html = (
            f"<div class='flowbook-progress'>{self.label}: <progress value='{self.done}' "
            f"max='{self.total}'></progress> {self.done}/{self.total} tasks</div>"
        )
        bundle = {"text/plain": text, "text/html": html}
        if self._handle is None:
            self._handle = display(bundle, raw=True, display_id=True)
        else:
            self._handle.update(bundle, raw=True)
