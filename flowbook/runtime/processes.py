"""Process groups, lifelines and the end of a forked task: shared by the task server
(``server.py``) and the one-task entry point (``one_task.py``).

A task leads its own process group, so signalling the group reaches what the step
started. A task also holds a *lifeline*: the read end of a pipe whose only write end
belongs to the process that started it; when that process is gone, even killed
with SIGKILL, the read end sees end of file and a thread in the task kills the
task's whole group. See "What happens when a run is killed" in docs/architecture.md.
"""

from __future__ import annotations

import os
import sys

from . import signals

TYPE_CHECKING = False  # typing costs ~6 ms to import; annotations are strings here
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import NoReturn


def kill_group(pid: int, sig: int = signals.SIGKILL) -> None:
    """Signal a task's process group (the task and what it started), else the task."""
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def hold_lifeline(fd: int) -> None:
    """In a task that leads its process group: start the thread that ends the group
    when the lifeline ``fd`` reaches end of file."""
    import _thread

    _thread.start_new_thread(_watch_lifeline, (fd,))


def _watch_lifeline(fd: int) -> None:
    try:
        while os.read(fd, 1):
            pass
    except OSError:
        pass
    os.killpg(0, signals.SIGKILL)


def exit_with(run: Callable[[], int]) -> NoReturn:
    """In a forked child: ``run()``, print what escapes it, flush, and end the
    process with its exit code without ever returning into the parent's code."""
    code = 1
    try:
        code = run()
    except BaseException:
        try:
            import traceback

            traceback.print_exc()
        finally:
            code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except Exception:
            pass
        os._exit(code)
