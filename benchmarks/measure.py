"""Measurement helpers: wall time of a command, peak RSS of its process tree, disk speed.

Only the standard library is used, so the harness runs under any Python 3.10+. The
process-tree sampler polls ``/proc`` (Linux only). This file is also a small script,
run with the benchmark virtualenv's Python to measure the disk::

    python benchmarks/measure.py disk DIRECTORY MEGABYTES   # prints one JSON object
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

MB = 1_000_000  # sizes are decimal megabytes throughout (100 MB = 12.5 million float64)
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def _read_stat(pid: int) -> tuple[int, int, int] | None:
    """(parent pid, session id, resident pages) of a process, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # "pid (comm) state ppid pgrp session ... rss ..."; comm may hold spaces and parens.
    fields = data[data.rfind(b")") + 2 :].split()
    try:
        return int(fields[1]), int(fields[3]), int(fields[21])
    except (IndexError, ValueError):
        return None


class ProcessTreeSampler:
    """Polls ``/proc`` every ``interval`` seconds and keeps the peak of the summed RSS
    of a process and all its descendants.

    A process belongs to the tree if it is in the root's session (start the root with
    ``start_new_session=True``) or if its parent belongs to the tree; membership is
    sticky, so a task that calls ``setsid`` or outlives its parent is still counted
    while it runs. Shared pages (e.g. of forked children) are counted once per process,
    as ``ps`` and ``top`` do.
    """

    def __init__(self, root_pid: int, interval: float = 0.01) -> None:
        self.root_pid = root_pid
        self.interval = interval
        self.peak_rss_bytes = 0
        self.peak_processes = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)

    def __enter__(self) -> ProcessTreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        members = {self.root_pid}
        foreign: set[int] = set()
        while True:
            pids = {int(name) for name in os.listdir("/proc") if name.isdigit()}
            members &= pids
            foreign &= pids
            total_pages = 0
            counted = 0
            # Ascending pid order meets a parent before the children it just forked.
            for pid in sorted(pids - foreign):
                stat = _read_stat(pid)
                if stat is None:
                    continue
                ppid, session, rss_pages = stat
                if pid not in members:
                    if session == self.root_pid or ppid in members:
                        members.add(pid)
                    else:
                        foreign.add(pid)
                        continue
                total_pages += rss_pages
                counted += 1
            self.samples += 1
            self.peak_rss_bytes = max(self.peak_rss_bytes, total_pages * PAGE_SIZE)
            self.peak_processes = max(self.peak_processes, counted)
            if self._stop.wait(self.interval):
                return


@dataclass
class CommandResult:
    """One command's outcome: wall time from start to exit, exit code, and peak RSS."""

    argv: list[str]
    cwd: str
    returncode: int
    seconds: float
    peak_rss_bytes: int | None
    stdout_path: Path
    stderr_path: Path
    timed_out: bool = False

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def tail(self, lines: int = 25) -> str:
        """The last lines of stderr (or of stdout if stderr is empty)."""
        text = self.stderr_path.read_text(errors="replace").strip()
        if not text:
            text = self.stdout().strip()
        return "\n".join(text.splitlines()[-lines:])


def run_command(
    argv: Sequence[str],
    cwd: Path,
    env: Mapping[str, str],
    log_name: str,
    sample_memory: bool = False,
    interval: float = 0.01,
    timeout: float = 3600.0,
) -> CommandResult:
    """Run ``argv`` in ``cwd`` with stdout and stderr going to files in ``cwd``.

    The command gets its own session so that the sampler (and a kill on timeout)
    covers every process it starts, and nothing else.
    """
    stdout_path = cwd / f"{log_name}.stdout"
    stderr_path = cwd / f"{log_name}.stderr"
    timed_out = False
    peak: int | None = None
    with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
        sampler = ProcessTreeSampler(proc.pid, interval) if sample_memory else None
        if sampler:
            sampler.__enter__()
        # A blocking wait, not Popen.wait(timeout=...): with a timeout, Popen polls
        # with sleeps growing to 50 ms, which rounded every short command up to the
        # next poll (0.0635 s, 0.1135 s, 0.1635 s, ...). The timeout is a timer.
        expired = threading.Event()

        def kill_on_timeout() -> None:
            expired.set()
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

        timer = threading.Timer(timeout, kill_on_timeout)
        timer.start()
        try:
            proc.wait()
        finally:
            seconds = time.perf_counter() - start
            timer.cancel()
            timed_out = expired.is_set()
            if sampler:
                sampler.__exit__(None, None, None)
                peak = sampler.peak_rss_bytes
    return CommandResult(
        argv=list(argv),
        cwd=str(cwd),
        returncode=proc.returncode,
        seconds=seconds,
        peak_rss_bytes=peak,
        stdout_path=stdout_path,
        stderr_path=stderr_path,
        timed_out=timed_out,
    )


def time_python_startup(python: str, code: str, cwd: Path, env: Mapping[str, str]) -> float:
    """Wall time of one fresh ``python -c CODE``; raises if it fails."""
    start = time.perf_counter()
    subprocess.run([python, "-c", code], cwd=cwd, env=dict(env), check=True)
    return time.perf_counter() - start


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def disk_speed(directory: Path, megabytes: int) -> dict[str, float]:
    """Seconds to write ``megabytes`` MB with plain file I/O (until the last write
    returns, and until fsync returns), then to read it back from the page cache and
    once more after evicting it from the cache with ``posix_fadvise(DONTNEED)``;
    then flowbook's datastore storing and loading the same array.

    The bytes are the same as the artifact workload's array when NumPy is available
    (``default_rng(0).random``), random bytes otherwise. Plain I/O and flowbook take
    turns twice and the faster of each pair is kept: on a VM the first touch of
    fresh memory (here, page cache for 500 MB) can cost more than the disk, and
    whichever went first would pay it.
    """
    nbytes = megabytes * MB
    try:
        import numpy as np

        data = memoryview(np.random.default_rng(0).random(nbytes // 8)).cast("B")
    except ImportError:
        data = memoryview(os.urandom(nbytes))
    result: dict[str, float] = {}
    for _ in range(2):
        for key, seconds in {
            **_plain_io_speed(directory, data),
            **_flowbook_store_speed(directory, data),
        }.items():
            result[key] = min(seconds, result.get(key, seconds))
    return result


def _plain_io_speed(directory: Path, data: memoryview) -> dict[str, float]:
    path = directory / "disk-speed.bin"
    result: dict[str, float] = {}
    try:
        start = time.perf_counter()
        with open(path, "wb", buffering=0) as f:
            view = data
            while view:
                view = view[f.write(view) :]
            result["write_seconds"] = time.perf_counter() - start
            os.fsync(f.fileno())
        result["write_fsync_seconds"] = time.perf_counter() - start
        buffer = bytearray(data.nbytes)
        result["read_cached_seconds"] = _read_into(path, buffer)
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
        result["read_uncached_seconds"] = _read_into(path, buffer)
    finally:
        path.unlink(missing_ok=True)
    return result


def _flowbook_store_speed(directory: Path, data: memoryview) -> dict[str, float]:
    """Seconds for flowbook's datastore to store the same array (pickle, hash on two
    threads while writing, rename) and to load it (map the file, touch every page),
    when flowbook is installed; the blob is deleted afterwards."""
    try:
        import numpy as np

        from flowbook.datastore.records import Datastore
    except ImportError:
        return {}
    store = Datastore(str(directory / "flowbook-store")).blobs
    array = np.frombuffer(data, dtype=np.float64)
    try:
        start = time.perf_counter()
        stored = store.put(array, "array")
        put_seconds = time.perf_counter() - start
        start = time.perf_counter()
        loaded, _ = store.load(stored.sha, file_id=stored.file_id)
        touched = float(loaded[:: 4096 // 8].sum())  # one value per page: every page read
        load_seconds = time.perf_counter() - start
        if touched != float(array[:: 4096 // 8].sum()):
            raise SystemExit("flowbook loaded other bytes than it stored")
        start = time.perf_counter()
        store.load(stored.sha)  # no file identity: every byte hashed again
        verify_seconds = time.perf_counter() - start
    finally:
        import shutil

        shutil.rmtree(directory / "flowbook-store", ignore_errors=True)
    return {
        "flowbook_put_seconds": put_seconds,
        "flowbook_load_seconds": load_seconds,
        "flowbook_load_verified_seconds": verify_seconds,
    }


def _read_into(path: Path, buffer: bytearray) -> float:
    view = memoryview(buffer)
    start = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while view:
            n = f.readinto(view)
            if not n:
                break
            view = view[n:]
    return time.perf_counter() - start


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] != "disk":
        sys.exit("usage: measure.py disk DIRECTORY MEGABYTES")
    print(json.dumps(disk_speed(Path(sys.argv[2]), int(sys.argv[3]))))
