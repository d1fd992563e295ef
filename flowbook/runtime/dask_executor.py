"""Run a flow's tasks on a Dask distributed cluster (``run --executor dask``).

What runs where (see docs/cluster.md):

* **Here** (the process of ``python flow.py run``): the flowbook scheduler, as for a
  local run, with a :class:`DaskExecutor` in place of the local task server. It
  submits one Dask task per flowbook task attempt (``pure=False``, no Dask
  ``retries``: retries, ``@catch`` and ``@timeout`` stay the scheduler's).
* **On a worker**: :func:`run_on_worker` starts ``python -m
  flowbook.runtime.dask_executor`` (a subprocess in its own session) and gives it the
  task's spec on stdin. That process loads the flow file (or notebook) from the same
  path as here, and runs the attempt exactly as ``python flow.py step`` does
  (:func:`flowbook.runtime.one_task._attempt`: a forked child leading its own
  process group, a lifeline, its output copied to our stdout and stderr). User code
  therefore cannot crash the worker, and a kill reaches the task's process group.
* **Back here**: the worker function reports through Dask's event topics (``log_event``):
  ``start`` (worker, pid), chunks of the task's output while it runs (for a
  datastore that is not this machine's directory: appended to the spool files the
  scheduler tails, so logs stream while tasks run), and ``exit`` (the code). A
  worker that leaves the cluster while running a task fails that attempt, naming the
  worker (the scheduler's ``remove-worker`` event); losing the Dask scheduler raises
  :class:`ExecutorLost`.

Why not ``python flow.py step``: ``step`` derives what a run's scheduler already
knows (parents, split stack) and takes decisions that are the scheduler's in
``run`` (``@catch``'s attempt, marking the run failed, finishing it at ``end``), and
the start task of ``run`` has no parameters task. The worker runs the same attempt
code as ``step`` (``one_task._attempt``) with the scheduler's spec instead.

Dask is imported only when this executor is used: ``run`` on the local executor
does not import it (the import budget, docs/architecture.md).
"""

from __future__ import annotations

import os
import sys
import time

from ..exceptions import FlowbookError
from .executor import ExecutorLost, TaskExecutor, TaskExited, TaskStarted

TYPE_CHECKING = False  # typing costs ~6 ms to import; annotations are strings here
if TYPE_CHECKING:
    from typing import Any

    from ..graph import FlowGraph
    from .spec import TaskSpec

#: Dask worker resources that ``@resources`` maps to, when the workers declare them.
RESOURCE_NAMES = {"cpu": "CPU", "gpu": "GPU", "memory": "MEMORY"}
#: How long (seconds) the client may be disconnected from the Dask scheduler before the
#: run fails (the client reconnects by itself within it).
LOST_SCHEDULER_GRACE = 3.0
#: How long (seconds) an exit known from the Dask future may wait for the worker's
#: last output events before it is reported anyway.
EXIT_EVENT_GRACE = 2.0


#: The exit code of an attempt Dask started again (it had started before): not run.
EXIT_RERUN = 79


class DaskSetupError(FlowbookError):
    """The Dask cluster cannot run this flow's tasks (one line says why)."""


# ---------------------------------------------------------------------- worker side
#: In a worker process: the task subprocesses running there, by submission token.
_RUNNING: dict[str, Any] = {}
#: In a worker process: the signal sent to a token's process, to report it as such.
_SIGNALLED: dict[str, int] = {}


def run_on_worker(
    token: str, key: str, payload: bytes, topic: str, forward_logs: bool, env: dict
) -> int:
    """The Dask task: run one attempt in a subprocess of this worker and return its
    exit code (minus the signal number when a signal ended it)."""
    import subprocess
    import threading

    from distributed import get_worker

    worker = get_worker()
    out = subprocess.PIPE if forward_logs else subprocess.DEVNULL
    proc = subprocess.Popen(
        [sys.executable, "-m", "flowbook.runtime.dask_executor"],
        stdin=subprocess.PIPE,
        stdout=out,
        stderr=out,
        start_new_session=True,  # a kill reaches it, not the worker
        env=dict(os.environ, **env),
    )
    _RUNNING[token] = proc
    worker.log_event(
        topic, {"t": token, "k": key, "e": "start", "pid": proc.pid, "w": worker.address}
    )
    pumps = []
    if forward_logs:
        for kind, stream in (("out", proc.stdout), ("err", proc.stderr)):
            pump = threading.Thread(
                target=_pump, args=(worker, topic, token, kind, stream), daemon=True
            )
            pump.start()
            pumps.append(pump)
    try:
        proc.stdin.write(payload + b"\n")
        proc.stdin.flush()  # stdin stays open: the task's lifeline to this worker
    except OSError:
        pass
    try:
        code = proc.wait()
    finally:
        _RUNNING.pop(token, None)
        try:
            proc.stdin.close()
        except OSError:
            pass
    for pump in pumps:
        pump.join(5)
    sent = _SIGNALLED.pop(token, None)
    if sent is not None and code == 128 + sent:
        code = -sent  # forwarded to the task, which it ended
    worker.log_event(topic, {"t": token, "k": key, "e": "exit", "code": code})
    return code


def _pump(worker: Any, topic: str, token: str, kind: str, stream: Any) -> None:
    """Send what the task prints to the client, as it comes (the task's process
    copies its log files to us every 0.1 s, so chunks come at most that often)."""
    fd = stream.fileno()
    while True:
        try:
            data = os.read(fd, 1 << 16)
        except OSError:
            return
        if not data:
            return
        worker.log_event(topic, {"t": token, "e": kind, "d": data})


async def signal_on_worker(token: str, number: int) -> bool:
    """Run by the client on the worker that runs ``token``: signal its process (which
    forwards SIGTERM/SIGINT to the task's group; on SIGKILL, its lifeline kills it)."""
    proc = _RUNNING.get(token)
    if proc is None or proc.poll() is not None:
        return False
    _SIGNALLED[token] = number
    try:
        os.killpg(proc.pid, number)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def worker_facts(paths: list[str]) -> dict:
    """Run on every worker at the start: its host name and which paths it sees."""
    import socket

    return {"host": socket.gethostname(), "missing": [p for p in paths if not os.path.exists(p)]}


def _task_main() -> None:
    """``python -m flowbook.runtime.dask_executor``: one attempt, its spec on stdin."""
    from .. import jsonio
    from ..datastore import Datastore
    from ..datastore.storage import open_storage
    from . import signals
    from .one_task import _attempt, _set_log_paths, _Task
    from .spec import TaskSpec

    message = jsonio.loads(sys.stdin.buffer.readline().decode("utf-8"))
    import _thread

    _thread.start_new_thread(_watch_stdin, ())
    flow_cls, graph = load_flow(message["loader"])
    spec = TaskSpec(**message["spec"])
    datastore = Datastore(storage=open_storage(spec.datastore_url, trusted=True))
    start = datastore.attempt_file(
        spec.flow_name, spec.run_id, spec.step, spec.task_id, spec.attempt, "start.json"
    )
    if datastore.storage.exists(start):
        # Dask ran this attempt again after its worker was lost (Dask reschedules the
        # tasks of a lost worker); the scheduler has failed it already: do nothing
        os._exit(EXIT_RERUN)
    _set_log_paths(datastore, spec)
    task = _Task(datastore, graph, {}, spec)
    code, _record, _reason = _attempt(task, flow_cls, None)
    sys.stdout.flush()
    sys.stderr.flush()
    if code < 0:  # the task was killed by a signal: end the same way
        signals.signal(-code, signals.SIG_DFL)
        os.kill(os.getpid(), -code)
    os._exit(code if code >= 0 else 1)


def _watch_stdin() -> None:
    """The worker keeps our stdin open; at its end (the worker died) end the task too."""
    try:
        while os.read(0, 1024):
            pass
    except OSError:
        pass
    from . import signals

    os.kill(os.getpid(), signals.SIGKILL)  # the task's lifeline then kills its group


def flow_loader(flow_cls: type, graph: FlowGraph) -> list:
    """How a worker loads this flow: ``["file", path, class, decospecs]`` or
    ``["notebook", path, decospecs]``; FlowbookError when it has no file."""
    module = sys.modules.get(flow_cls.__module__)
    path = getattr(module, "__file__", None) or ""
    decospecs = [
        f"{d.name}:" + ",".join(f"{k}={v!r}" for k, v in d.attributes.items())
        for d in graph.cli_decorators
    ]
    if path.endswith(".ipynb") and os.path.isfile(path):
        return ["notebook", os.path.abspath(path), decospecs]
    if path.endswith(".py") and os.path.isfile(path):
        return ["file", os.path.abspath(path), flow_cls.__name__, decospecs]
    raise FlowbookError(
        f"Flow {flow_cls.__name__} has no file the Dask workers can load it from "
        f"({path or 'defined in this process'}); run a flow file or a saved notebook "
        "with --executor dask."
    )


def load_flow(loader: list) -> tuple[type, FlowGraph]:
    """The flow class and graph a :func:`flow_loader` description names."""
    from ..decorators import parse_decospec
    from ..graph import FlowGraph

    if loader[0] == "notebook":
        from ..notebook.builder import build_flow
        from ..notebook.cells import read_notebook

        flow_cls, graph = build_flow(read_notebook(loader[1]))
        decospecs = loader[2]
    else:
        from ..loader import load_flow_class

        flow_cls = load_flow_class(loader[1], loader[2])
        graph = FlowGraph.from_flow_class(flow_cls)
        decospecs = loader[3]
    graph.apply_decospecs([parse_decospec(d) for d in decospecs])
    return flow_cls, graph


# ---------------------------------------------------------------------- client side
def scheduler_from_env(value: str | None) -> tuple[str | None, str | None]:
    """``FLOWBOOK_DASK_SCHEDULER`` / ``--dask-scheduler``: an address, or a scheduler
    file (an existing file, or a name ending in .json): (address, scheduler file)."""
    if not value:
        return None, None
    if os.path.isfile(value) or value.endswith(".json"):
        return None, value
    return value, None


class _Submission:
    """One submitted attempt, as the client knows it."""

    def __init__(self, key: str, token: str, spec: TaskSpec) -> None:
        self.key = key
        self.token = token
        self.spec = spec
        self.future: Any = None
        self.worker: str | None = None
        self.started = False
        self.exited = False
        self.result_seen_at: float | None = None
        self.logs: dict[str, Any] = {}


class DaskExecutor(TaskExecutor):
    """A :class:`TaskExecutor` over a Dask distributed cluster.

    ``address`` or ``scheduler_file`` name the Dask scheduler; with neither, a
    ``LocalCluster`` (processes, on 127.0.0.1) is started for this executor and
    closed with it. ``say`` receives one-line messages for the console.
    """

    def __init__(
        self,
        flow_cls: type,
        graph: FlowGraph,
        datastore: Any,
        address: str | None = None,
        scheduler_file: str | None = None,
        allow_local_datastore: bool = False,
        say: Any = None,
        local_workers: int = 2,
    ) -> None:
        import queue
        import uuid

        try:
            import distributed
        except ImportError:
            raise DaskSetupError(
                "--executor dask needs Dask: pip install 'flowbook[dask]' "
                "(dask[distributed], s3fs)."
            ) from None
        say = say or (lambda text: None)
        self.graph = graph
        self.loader = flow_loader(flow_cls, graph)
        self.datastore_url = datastore.url
        self.forward_logs = not datastore.storage.is_local
        self.cluster = None
        self.address = address or scheduler_file or ""
        try:
            if address or scheduler_file:
                self.client = distributed.Client(
                    address, scheduler_file=scheduler_file, timeout=15, set_as_default=False
                )
            else:
                self.cluster = distributed.LocalCluster(
                    n_workers=local_workers,
                    threads_per_worker=1,
                    host="127.0.0.1",
                    dashboard_address="127.0.0.1:0",
                    processes=True,
                )
                self.client = distributed.Client(self.cluster, set_as_default=False)
                self.address = self.cluster.scheduler_address
        except (OSError, TimeoutError, ValueError) as exc:
            where = address or f"scheduler file {scheduler_file}"
            raise DaskSetupError(
                f"Cannot connect to the Dask scheduler {where}: {str(exc).splitlines()[0]}"
            ) from None
        self.events: queue.Queue = queue.Queue()
        self.topic = f"flowbook-{uuid.uuid4().hex}"
        self.submissions: dict[str, _Submission] = {}
        self.by_token: dict[str, _Submission] = {}
        self.dead_tokens: set[str] = set()
        self.lost_workers: set[str] = set()
        self.disconnected_at: float | None = None
        self.closed = False
        try:
            self._check_workers(datastore, allow_local_datastore)
            self.client.subscribe_topic(self.topic, self.events.put)
            self.client.subscribe_topic("all", self._on_cluster_event)
        except BaseException:
            self.close()
            raise
        info = self.client.scheduler_info()
        self.worker_resources = set()
        for worker in info.get("workers", {}).values():
            self.worker_resources.update((worker.get("resources") or {}).keys())
        dashboard = self.client.dashboard_link
        self.dashboard_link = dashboard
        count = len(info.get("workers", {}))
        if self.cluster is not None:
            say(
                f"No Dask scheduler given: started a local Dask cluster for this run "
                f"({self.address}, {count} workers; dashboard {dashboard})."
            )
        else:
            say(
                f"Running tasks on Dask scheduler {self.address} ({count} workers; dashboard {dashboard})."
            )

    # ------------------------------------------------------------ setup
    def _check_workers(self, datastore: Any, allow_local_datastore: bool) -> None:
        import socket

        workers = self.client.scheduler_info().get("workers", {})
        if not workers:
            try:
                self.client.wait_for_workers(1, timeout=15)
            except (TimeoutError, OSError):
                raise DaskSetupError(
                    f"The Dask cluster at {self.address} has no workers."
                ) from None
        facts = self.client.run(worker_facts, [self.loader[1]])
        missing = [w for w, f in facts.items() if f["missing"]]
        if missing:
            raise DaskSetupError(
                f"Dask worker {missing[0]} cannot see the flow file {self.loader[1]}; "
                "workers load it from the same path (a shared or copied directory)."
            )
        if datastore.storage.is_local and not allow_local_datastore:
            here = socket.gethostname()
            elsewhere = [w for w, f in facts.items() if f["host"] != here]
            if elsewhere:
                raise DaskSetupError(
                    f"Datastore {datastore.url} is a local directory but Dask worker "
                    f"{elsewhere[0]} runs on host {facts[elsewhere[0]]['host']}, not "
                    f"{here}; use a shared datastore (e.g. s3://...) or "
                    "--allow-local-datastore if the directory is shared."
                )

    def _on_cluster_event(self, event: Any) -> None:
        _, message = event
        if isinstance(message, dict) and message.get("action") == "remove-worker":
            self.events.put((None, {"e": "worker-lost", "w": message.get("worker")}))

    def _resources(self, step: str) -> dict | None:
        if not self.worker_resources:
            return None
        wanted: dict[str, float] = {}
        for deco in self.graph[step].decorators:
            if deco.name != "resources":
                continue
            for name, dask_name in RESOURCE_NAMES.items():
                value = deco.attributes.get(name)
                if value and dask_name in self.worker_resources:
                    wanted[dask_name] = float(value) * (2**20 if name == "memory" else 1)
        return wanted or None

    # ------------------------------------------------------------ TaskExecutor
    def submit(self, key: str, spec: TaskSpec) -> None:
        import uuid

        from .. import jsonio

        token = f"{spec.run_id}-{spec.step}-{key}-{spec.attempt}-{uuid.uuid4().hex[:8]}"
        submission = _Submission(key, token, spec)
        fields = dict(vars(spec))
        payload = jsonio.dumps({"spec": fields, "loader": self.loader}).encode("utf-8")
        self.submissions[key] = submission
        self.by_token[token] = submission
        env = {k: v for k, v in os.environ.items() if k.startswith("FLOWBOOK_TRUST")}
        submission.future = self.client.submit(
            run_on_worker,
            token,
            key,
            payload,
            self.topic,
            self.forward_logs,
            env,
            key=f"flowbook-{token}",
            pure=False,
            resources=self._resources(spec.step),
        )
        submission.future.add_done_callback(
            lambda future, token=token: self.events.put((None, {"e": "done", "t": token}))
        )

    def wait_events(self, timeout: float) -> list[TaskStarted | TaskExited]:
        import queue

        self._check_connected()
        results: list[TaskStarted | TaskExited] = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                wait = max(0.0, deadline - time.monotonic()) if not results else 0
                item = self.events.get(timeout=wait) if wait > 0 else self.events.get_nowait()
            except queue.Empty:
                break
            self._handle(item[1], results)
        self._overdue_exits(results)
        return results

    def kill(self, key: str, signal_number: int) -> None:
        submission = self.submissions.get(key)
        if submission is None or submission.exited or not submission.started:
            return
        try:
            self.client.run(
                signal_on_worker,
                submission.token,
                signal_number,
                workers=[submission.worker],
                wait=False,
            )
        except Exception:  # the worker is gone: its lost event ends the task
            pass

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        from . import signals

        for submission in list(self.submissions.values()):
            if submission.exited:
                continue
            if submission.started and submission.worker:
                try:
                    self.client.run(
                        signal_on_worker,
                        submission.token,
                        signals.SIGKILL,
                        workers=[submission.worker],
                        wait=False,
                    )
                except Exception:
                    pass
            if submission.future is not None:
                try:
                    submission.future.cancel()
                except Exception:
                    pass
            self._close_logs(submission)
        for topic in (self.topic, "all"):
            try:
                self.client.unsubscribe_topic(topic)
            except Exception:
                pass
        try:
            self.client.close(timeout=5)
        except Exception:
            pass
        if self.cluster is not None:
            try:
                self.cluster.close(timeout=10)
            except Exception:
                pass

    # ------------------------------------------------------------ events
    def _check_connected(self) -> None:
        status = self.client.status
        if status == "running":
            self.disconnected_at = None
            return
        now = time.monotonic()
        if self.disconnected_at is None:
            self.disconnected_at = now
        if status in ("closed", "closing") or now - self.disconnected_at > LOST_SCHEDULER_GRACE:
            raise ExecutorLost(
                f"the Dask scheduler {self.address} went away (client {status}); "
                "the tasks it was running are lost"
            )

    def _handle(self, message: dict, results: list) -> None:
        kind = message.get("e")
        if kind == "worker-lost":
            self._worker_lost(message.get("w") or "?", results)
            return
        submission = self.by_token.get(message.get("t", ""))
        if submission is None:
            return
        if submission.token in self.dead_tokens:
            if kind == "start":  # Dask ran it again after we gave up on it: stop it
                self._stop_stray(submission, message)
            return
        if kind == "start":
            submission.worker = self._worker_of(submission, message)
            submission.started = True
            results.append(TaskStarted(submission.key, message.get("pid")))
        elif kind in ("out", "err"):
            self._append_log(submission, kind, message.get("d") or b"")
        elif kind == "exit":
            self._exited(submission, int(message["code"]), results)
        elif kind == "done":
            self._future_done(submission, results)

    def _worker_of(self, submission: _Submission, message: dict) -> str | None:
        if message.get("w"):
            return message["w"]
        try:
            who = self.client.who_has(submission.future)
            workers = who.get(submission.future.key) or ()
            if workers:
                return workers[0]
        except Exception:
            pass
        try:  # still running: ask the scheduler where it is processing
            processing = self.client.processing()
            for worker, keys in processing.items():
                if submission.future.key in keys:
                    return worker
        except Exception:
            pass
        return None

    def _exited(self, submission: _Submission, code: int, results: list) -> None:
        if submission.exited:
            return
        submission.exited = True
        self.dead_tokens.add(submission.token)
        self._close_logs(submission)
        if self.submissions.get(submission.key) is submission:
            del self.submissions[submission.key]
        results.append(TaskExited(submission.key, code))

    def _future_done(self, submission: _Submission, results: list) -> None:
        future = submission.future
        if submission.exited or future is None:
            return
        if future.status == "finished":
            submission.result_seen_at = time.monotonic()  # its exit event is on its way
            return
        if future.status == "cancelled":
            return
        try:
            exc = future.exception(timeout=1)
        except Exception as error:  # noqa: BLE001
            exc = error
        self._note(submission, f"Dask could not run this task: {type(exc).__name__}: {exc}")
        if not submission.started:
            results.append(TaskStarted(submission.key, None))
        self._exited(submission, 1, results)

    def _overdue_exits(self, results: list) -> None:
        now = time.monotonic()
        for submission in list(self.submissions.values()):
            seen = submission.result_seen_at
            if seen is not None and not submission.exited and now - seen > EXIT_EVENT_GRACE:
                try:
                    code = int(submission.future.result(timeout=1))
                except Exception:
                    code = 1
                if not submission.started:
                    results.append(TaskStarted(submission.key, None))
                self._exited(submission, code, results)

    def _worker_lost(self, worker: str, results: list) -> None:
        self.lost_workers.add(worker)
        for submission in list(self.submissions.values()):
            if submission.exited or not submission.started:
                continue
            if submission.worker is None:
                submission.worker = self._worker_of(submission, {})
            if submission.worker != worker:
                continue
            self._note(
                submission,
                f"the Dask worker {worker} running task {submission.spec.short_pathspec} "
                f"(attempt {submission.spec.attempt}) was lost",
            )
            try:
                submission.future.cancel()
            except Exception:
                pass
            self._exited(submission, -9, results)

    def _stop_stray(self, submission: _Submission, message: dict) -> None:
        from . import signals

        worker = self._worker_of(submission, message)
        if worker:
            try:
                self.client.run(
                    signal_on_worker,
                    submission.token,
                    signals.SIGKILL,
                    workers=[worker],
                    wait=False,
                )
            except Exception:
                pass

    # ------------------------------------------------------------ logs
    def _log_path(self, submission: _Submission, kind: str) -> str:
        spec = submission.spec
        return spec.stdout_path if kind == "out" else spec.stderr_path

    def _append_log(self, submission: _Submission, kind: str, data: bytes) -> None:
        handle = submission.logs.get(kind)
        if handle is None:
            path = self._log_path(submission, kind)
            if os.path.dirname(path):
                os.makedirs(os.path.dirname(path), exist_ok=True)
            handle = submission.logs[kind] = open(path, "ab")  # noqa: SIM115
        handle.write(data)
        handle.flush()

    def _note(self, submission: _Submission, text: str) -> None:
        """A line of flowbook's own in the task's stderr (shown with the task's prefix)."""
        self._append_log(submission, "err", f"flowbook: {text}\n".encode())

    def _close_logs(self, submission: _Submission) -> None:
        for handle in submission.logs.values():
            try:
                handle.close()
            except OSError:
                pass
        submission.logs.clear()


if __name__ == "__main__":
    # Run through the importable module, as server.py does.
    from flowbook.runtime import dask_executor as _module

    _module._task_main()
