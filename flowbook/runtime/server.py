"""The warm task server: a small process that forks one child per task.

Forking a process that has already imported flowbook and the flow makes task start
cheap (about a millisecond), and forking a *dedicated* process keeps tasks apart
from the scheduler: a task starts from the server's clean state, never from the
scheduler's memory, and the scheduler (or a Jupyter kernel, which must never fork)
can run threads freely.

Protocol, over a pair of pipes (one each way; ``socket`` would cost ~4 ms to
import in every run), each message a 4-byte length and a pickle:

* scheduler -> server: ``("run", key, payload)``; the server forks, and the child
  calls ``handler(payload)`` and exits with the code it returns.
  ``("define", name, pickled)`` stores an object tasks refer to by name, and
  ``("warm", module)`` imports a module so that later tasks start with it.
* server -> scheduler: ``("started", key, pid)`` and ``("exited", key, pid, code)``,
  where ``code`` is the exit code, or minus the signal number that killed the child.

No task outlives its run (see "What happens when a run is killed" in
docs/architecture.md):

* When the scheduler goes away (end of file on the channel) the server kills the
  process group of every task and exits.
* When the server itself dies, even by SIGKILL (``kill -9 -PGID`` of the command
  line kills the scheduler and the server together), every task learns it from its
  *lifeline*: a pipe whose only write end the server holds. A thread in the task
  waits for end of file on it and then kills the task's process group, so the task
  and everything it started die within milliseconds.
* When a task ends, the server kills what is left of its process group (a
  ``subprocess.Popen`` the step did not wait for) before reaping it; the group's id
  cannot be reused while the task is a zombie.
"""

from __future__ import annotations

import errno
import os
import select
import struct
import sys
from collections.abc import Callable

from ..datastore.pickling import PROTOCOL, cpickle
from . import signals
from .executor import ExecutorLost, TaskExecutor, TaskExited, TaskStarted
from .processes import exit_with, hold_lifeline, kill_group

TYPE_CHECKING = False  # typing costs ~6 ms to import; annotations are strings here
if TYPE_CHECKING:
    from typing import Any

_LEN = struct.Struct("<I")


class Channel:
    """Length-prefixed pickled messages: read from one pipe, written to another."""

    def __init__(self, read_fd: int, write_fd: int) -> None:
        self.read_fd = read_fd
        self.write_fd = write_fd
        self._buffer = bytearray()

    @classmethod
    def pair(cls) -> tuple[Channel, Channel]:
        """Two connected ends: what one sends, the other receives."""
        a_read, b_write = os.pipe()
        b_read, a_write = os.pipe()
        return cls(a_read, a_write), cls(b_read, b_write)

    def fds(self) -> tuple[int, int]:
        return self.read_fd, self.write_fd

    def fileno(self) -> int:
        return self.read_fd

    def send(self, message: Any) -> None:
        data = cpickle.dumps(message, protocol=PROTOCOL)
        view = memoryview(_LEN.pack(len(data)) + data)
        while view:
            view = view[os.write(self.write_fd, view) :]

    def receive_available(self) -> list[Any] | None:
        """Read what is available; return complete messages, or None at end of file."""
        try:
            chunk = os.read(self.read_fd, 1 << 20)
        except OSError:
            chunk = b""
        if not chunk:
            return None
        self._buffer += chunk
        messages = []
        while len(self._buffer) >= 4:
            (length,) = _LEN.unpack_from(self._buffer)
            if len(self._buffer) < 4 + length:
                break
            messages.append(cpickle.loads(bytes(self._buffer[4 : 4 + length])))
            del self._buffer[: 4 + length]
        return messages

    def close(self) -> None:
        for fd in (self.read_fd, self.write_fd):
            try:
                os.close(fd)
            except OSError:
                pass


def serve(channel: Channel, handler: Callable[[Any], int], pending: list | None = None) -> None:
    """The server's loop; returns when the scheduler's end of the channel closes."""
    import gc

    gc.freeze()  # keep the collector from touching (and copying) the server's pages in tasks
    # Ctrl-C and SIGTERM sent to the command line's process group are the scheduler's to
    # handle: it stops the tasks and records why; the server ends when it goes away.
    signals.signal(signals.SIGINT, signals.SIG_IGN)
    signals.signal(signals.SIGTERM, signals.SIG_IGN)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    os.set_blocking(wake_r, False)
    signals.signal(signals.SIGCHLD, lambda *_: None)
    signals.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    server = _Server(channel, handler, (wake_r, wake_w), os.pipe())
    try:
        for message in pending or []:
            server.handle(message)
        server.fork_spare()
        while True:
            server.reap()
            watched: list[Channel | int] = [channel, wake_r]
            readable, _, _ = select.select(watched, [], [])
            if wake_r in readable:
                try:
                    while os.read(wake_r, 4096):
                        pass
                except BlockingIOError:
                    pass
            if channel in readable:
                messages = channel.receive_available()
                if messages is None:
                    break
                for message in messages:
                    server.handle(message)
    finally:
        server.stop()


#: Objects the scheduler sent with ("define", name, pickled bytes), e.g. a notebook's
#: flow as it is now; unpickled once here so that every task forked after it is warm.
DEFINITIONS: dict[str, Any] = {}


class _Server:
    """The server's state: its running tasks and one *spare*.

    The spare is a child forked ahead of time that waits for its payload on a pipe:
    a ``run`` request hands the payload to it and only then forks the next spare,
    so the fork (about a millisecond here) is never on a task's critical path. A
    ``define`` or ``warm`` message changes what tasks should start with, so the
    spare forked before it is sent away and replaced.
    """

    def __init__(
        self, channel: Channel, handler: Callable[[Any], int], wake: tuple, lifeline: tuple
    ) -> None:
        self.channel = channel
        self.handler = handler
        self.wake = wake
        #: (read end, write end): only this process keeps the write end open, so a
        #: task sees end of file on the read end exactly when the server is gone.
        self.lifeline = lifeline
        self.children: dict[int, Any] = {}
        self.spare: tuple[int, int] | None = None  # (pid, write end of its payload pipe)

    def handle(self, message: tuple) -> None:
        kind = message[0]
        if kind == "warm":  # a module tasks turned out to need: import it once, here
            import importlib

            importlib.import_module(message[1])
            self.replace_spare()
        elif kind == "define":
            _, name, data = message
            DEFINITIONS[name] = cpickle.loads(data)
            self.replace_spare()
        elif kind == "run":
            _, key, payload = message
            self.fork_spare()  # (when there is none yet)
            pid, payload_fd = self.spare  # type: ignore[misc]
            self.spare = None
            data = memoryview(cpickle.dumps(payload, protocol=PROTOCOL))
            try:
                while data:
                    data = data[os.write(payload_fd, data) :]
            finally:
                os.close(payload_fd)
            self.children[pid] = key
            self.channel.send(("started", key, pid))
            self.fork_spare()

    def fork_spare(self) -> None:
        if self.spare is not None:
            return
        payload_r, payload_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(payload_w)
            _run_spare(self.handler, payload_r, self.channel, self.wake, self.lifeline)
        os.close(payload_r)
        self.spare = (pid, payload_w)

    def replace_spare(self) -> None:
        if self.spare is not None:
            os.close(self.spare[1])  # end of file: the spare exits without running anything
            self.spare = None
        self.fork_spare()

    def reap(self) -> None:
        while True:
            try:
                # look without reaping: while the task is a zombie its pid, and so its
                # process group's id, cannot be reused by a new process
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return
            if info is None:
                return
            pid = info.si_pid
            if pid in self.children:
                kill_group(pid)  # what the step started and did not wait for
            _, status = os.waitpid(pid, 0)
            key = self.children.pop(pid, None)
            if key is not None:  # not a spare that was sent away
                self.channel.send(("exited", key, pid, os.waitstatus_to_exitcode(status)))

    def stop(self) -> None:
        if self.spare is not None:
            os.close(self.spare[1])
            self.spare = None
        for pid in self.children:
            kill_group(pid)
        for pid in self.children:  # dead only once reaped: then nothing of it writes
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass


def describe_exit(code: int) -> str:
    """An exit code as the scheduler gets it (minus the signal number when killed)."""
    if code >= 0:
        return f"exited with code {code}"
    import signal  # only to name the signal: it imports enum

    try:
        return f"was killed by signal {signal.Signals(-code).name}"
    except ValueError:
        return f"was killed by signal {-code}"


def _run_spare(
    handler: Callable[[Any], int], payload_fd: int, channel: Channel, wake, lifeline
) -> None:
    """In a spare: drop everything of the server's, wait for a payload, run it, exit.

    The spare leads a process group of its own from the start, so a Ctrl-C in the
    terminal or a signal to the kernel's group never reaches it (only the scheduler
    decides when a task stops), and a timeout or a stop kills what the task started.
    """

    def run() -> int:
        os.setpgid(0, 0)
        os.close(lifeline[1])
        signals.set_wakeup_fd(-1)
        signals.signal(signals.SIGCHLD, signals.SIG_DFL)
        channel.close()
        for fd in wake:
            os.close(fd)
        chunks = []
        while True:
            chunk = os.read(payload_fd, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
        os.close(payload_fd)
        if not chunks:  # no payload at all: the spare was sent away unused
            return 0
        hold_lifeline(lifeline[0])
        signals.signal(signals.SIGTERM, signals.SIG_DFL)
        signals.signal(signals.SIGINT, signals.default_int_handler)
        return handler(cpickle.loads(b"".join(chunks)))

    exit_with(run)  # never return into the server loop


class TaskServerClient(TaskExecutor):
    """The scheduler's handle on a task server process it started: the executor of
    a run on this machine (and, spawned, of a notebook's tasks)."""

    def __init__(self, channel: Channel, server_pid: int, popen: Any = None) -> None:
        self.channel = channel
        self.server_pid = server_pid
        self._popen = popen
        self.closed = False
        self._pids: dict[Any, int] = {}  # running tasks' process ids, by key

    @classmethod
    def start_forked(cls, handler: Callable[[Any], int]) -> TaskServerClient:
        """Fork the server from this process, which must not be running threads."""
        ours, theirs = Channel.pair()
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                ours.close()
                serve(theirs, handler)
            except BaseException:
                code = 1
            finally:
                os._exit(code)
        theirs.close()
        return cls(ours, pid)

    @classmethod
    def start_spawned(cls, init: tuple) -> TaskServerClient:
        """Start the server as a fresh interpreter (never forks this process).

        ``init`` tells it what to serve: ``("file", path, class_name, decospecs)`` for
        a flow file, or ``("pickled", bytes)`` for a cloudpickled handler. This is how
        a Jupyter kernel, which must not fork, gets a warm server of its own, and the
        fallback where forking the current process is unsafe.
        """
        import subprocess

        ours, theirs = Channel.pair()
        popen = subprocess.Popen(
            [sys.executable, "-m", "flowbook.runtime.server", *map(str, theirs.fds())],
            pass_fds=theirs.fds(),
            stdin=subprocess.DEVNULL,
        )
        theirs.close()
        client = cls(ours, popen.pid, popen)
        client.channel.send(init)
        return client

    def fileno(self) -> int:
        return self.channel.fileno()

    def submit(self, key: Any, payload: Any) -> None:
        """Run ``handler(payload)`` in a task process (the payload is a TaskSpec for
        a flow file's server, what the handler expects otherwise)."""
        self.channel.send(("run", key, payload))

    def wait_events(self, timeout: float) -> list[TaskStarted | TaskExited]:
        readable, _, _ = select.select([self.channel], [], [], timeout)
        if not readable:
            return []
        events: list[TaskStarted | TaskExited] = []
        for message in self.read_events():
            if message[0] == "unable":
                self._how_it_ended()  # reaps it
                raise ExecutorLost(
                    f"the task server (pid {self.server_pid}) could not load the flow: {message[1]}"
                )
            if message[0] == "started":
                self._pids[message[1]] = message[2]
                events.append(TaskStarted(message[1], message[2]))
            elif message[0] == "exited":
                self._pids.pop(message[1], None)
                events.append(TaskExited(message[1], message[3], message[2]))
        return events

    def kill(self, key: Any, signal_number: int) -> None:
        pid = self._pids.get(key)
        if pid is not None:
            kill_group(pid, signal_number)

    def warm(self, module: str) -> None:
        """Have the server import ``module`` before it forks more tasks."""
        self.channel.send(("warm", module))

    def define(self, name: str, data: bytes) -> None:
        """Send an object (pickled) that later payloads refer to by ``name``."""
        self.channel.send(("define", name, data))

    def alive(self) -> bool:
        if self.closed:
            return False
        if self._popen is not None:
            return self._popen.poll() is None
        try:
            return os.waitpid(self.server_pid, os.WNOHANG) == (0, 0)
        except ChildProcessError:
            return False

    def read_events(self) -> list[tuple]:
        messages = self.channel.receive_available()
        if messages is None:
            raise ExecutorLost(f"the task server (pid {self.server_pid}) {self._how_it_ended()}")
        return messages

    def _how_it_ended(self) -> str:
        """'was killed by signal SIGKILL', 'exited with code 1', ... (reaps it)."""
        self.closed = True
        self.channel.close()
        try:
            if self._popen is not None:
                code = self._popen.wait(timeout=5)
            else:
                code = os.waitstatus_to_exitcode(os.waitpid(self.server_pid, 0)[1])
        except Exception:
            return "exited unexpectedly"
        return f"{describe_exit(code)} unexpectedly"

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.channel.close()
        if self._popen is not None:
            self._popen.wait()
            return
        try:
            os.waitpid(self.server_pid, 0)
        except ChildProcessError:
            pass
        except OSError as exc:  # pragma: no cover - defensive
            if exc.errno != errno.ECHILD:
                raise


def _handler_from_init(init: tuple) -> Callable[[Any], int]:
    kind = init[0]
    if kind == "pickled":
        return cpickle.loads(init[1])
    if kind == "file":
        _, path, class_name, decospecs = init
        from ..decorators import parse_decospec
        from ..graph import FlowGraph
        from ..loader import load_flow_class
        from .task import execute_task

        flow_cls = load_flow_class(path, class_name)
        graph = FlowGraph.from_flow_class(flow_cls)
        graph.apply_decospecs([parse_decospec(d) for d in decospecs])
        return lambda spec: execute_task(spec, flow_cls, graph)
    raise ValueError(f"unknown task server init {kind!r}")


def _spawned_main(read_fd: int, write_fd: int) -> None:
    channel = Channel(read_fd, write_fd)
    messages: list = []
    while not messages:
        received = channel.receive_available()
        if received is None:
            return
        messages.extend(received)
    try:
        handler = _handler_from_init(messages[0])
    except BaseException as exc:  # the flow does not load here: say why, then end
        import traceback

        traceback.print_exc()  # whole, for the log of whoever started this server
        text = str(exc).strip().splitlines()
        channel.send(("unable", f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")))
        raise SystemExit(2) from None
    serve(channel, handler, pending=messages[1:])


if __name__ == "__main__":
    # Run through the importable module, not this __main__ copy of it, so that
    # DEFINITIONS is the one that task handlers import.
    from flowbook.runtime import server as _server

    _server._spawned_main(int(sys.argv[1]), int(sys.argv[2]))
