"""Console output of a run: scheduler messages and task output, one prefixed line each.

Each line reads ``<time> [<run_id>/<step>/<task_id> (pid <pid>)] <text>``, the format
Metaflow users know. Task output is read from the attempt's log files as they grow
(:class:`LogTail`), so what the console shows is exactly what the datastore keeps.
"""

from __future__ import annotations

import os
import sys
import time

TYPE_CHECKING = False  # typing costs ~6 ms to import; annotations are strings here
if TYPE_CHECKING:
    from typing import TextIO


def timestamp() -> str:
    now = time.time()
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now)) + f".{int(now % 1 * 1000):03d}"


class Console:
    """Where a run's messages go; ``quiet`` drops flowbook's own progress messages
    (task output and errors are still shown)."""

    def __init__(
        self, out: TextIO | None = None, err: TextIO | None = None, quiet: bool = False
    ) -> None:
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.quiet = quiet

    def message(self, text: str) -> None:
        if not self.quiet:
            self.out.write(f"{timestamp()} {text}\n")
            self.out.flush()

    def error(self, text: str) -> None:
        self.err.write(f"{timestamp()} {text}\n")
        self.err.flush()

    def task_line(self, prefix: str, line: str, stderr: bool = False) -> None:
        stream = self.err if stderr else self.out
        stream.write(f"{timestamp()} [{prefix}] {line}\n")

    def flush(self) -> None:
        for stream in (self.out, self.err):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass


class LogTail:
    """Follows a log file that another process appends to; yields whole lines."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None
        self._partial = b""

    def read_lines(self, final: bool = False) -> list[str]:
        if self._fd is None:
            try:
                self._fd = os.open(self.path, os.O_RDONLY)
            except FileNotFoundError:
                return []
        chunks = []
        while True:
            chunk = os.read(self._fd, 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
        data = self._partial + b"".join(chunks)
        lines = data.split(b"\n")
        self._partial = lines.pop()
        if final:
            if self._partial:
                lines.append(self._partial)
            self._partial = b""
            self.close()
        return [line.decode("utf-8", errors="replace") for line in lines]

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
