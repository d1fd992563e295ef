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
    from collections.abc import Iterator
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
    """Follows a log file that another process appends to; yields its lines.

    Memory stays bounded whatever the task writes: the file is read in pieces of
    :data:`READ_PIECE` bytes, a line longer than :data:`MAX_LINE` is cut into pieces
    of that length, and output that redraws one line with carriage returns (a
    progress bar: ``\r 40%``, ``\r 41%``, ...) shows its newest state at most every
    :data:`REDRAW_INTERVAL` seconds instead of waiting for a newline. The log file
    itself keeps every byte.
    """

    #: Bytes read from the file at a time (and at most per call, until the last one).
    READ_PIECE = 1 << 20
    #: The longest line shown whole; longer ones are shown in pieces.
    MAX_LINE = 64 << 10
    #: How often the newest state of a line redrawn with ``\r`` is shown.
    REDRAW_INTERVAL = 1.0

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None
        self._partial = b""
        self._redrawn_at = 0.0
        self._shown = b""  # the state of a redrawn line shown last

    def read_lines(self, final: bool = False) -> Iterator[str]:
        """Lines written since the last call; with ``final``, everything up to the end
        of the file, the last line even without a newline, and the file is closed."""
        if self._fd is None:
            try:
                self._fd = os.open(self.path, os.O_RDONLY)
            except FileNotFoundError:
                return
        while True:
            piece = os.read(self._fd, self.READ_PIECE)
            if piece:
                yield from self._split(self._partial + piece)
            if not final or not piece:
                break
        if final:
            if self._partial:
                yield from self._split(self._partial + b"\n")
            self._partial = b""
            self.close()
        elif b"\r" in self._partial:
            yield from self._redraw()

    def _split(self, data: bytes) -> Iterator[str]:
        lines = data.split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            if b"\r" in line:  # only what the terminal would show in the end
                line = line.rstrip(b"\r").rpartition(b"\r")[2]
            yield from _pieces(line, self.MAX_LINE)
        while len(self._partial) > self.MAX_LINE:
            cut = self._partial[: self.MAX_LINE]
            self._partial = self._partial[self.MAX_LINE :]
            yield cut.decode("utf-8", errors="replace")

    def _redraw(self) -> Iterator[str]:
        """What a terminal shows of a line being redrawn with carriage returns: the
        text after the last one (or, right after one, the text before it)."""
        done, _, rest = self._partial.rpartition(b"\r")
        newest = rest or done.rstrip(b"\r").rpartition(b"\r")[2]
        self._partial = b"\r" + rest if rest else b""
        now = time.monotonic()
        if newest and newest != self._shown and now - self._redrawn_at >= self.REDRAW_INTERVAL:
            self._redrawn_at = now
            self._shown = newest
            yield newest.decode("utf-8", errors="replace")

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _pieces(line: bytes, size: int) -> Iterator[str]:
    for start in range(0, max(len(line), 1), size):
        yield line[start : start + size].decode("utf-8", errors="replace")
