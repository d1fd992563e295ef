"""Run a flow's tasks on a Dask distributed cluster (``run --executor dask``).

What runs where (see docs/cluster.md):

* **Here** (the process of ``python flow.py run``): the flowbook scheduler, as for a
  local run, with a :class:`DaskExecutor` in place of the local task server. It
  submits one Dask task per flowbook task attempt (``pure=False``, no Dask
  ``retries``: retries, ``@catch`` and ``@timeout`` stay the scheduler's).
* **On a worker**: :func:`run_on_worker` hands the spec to the worker process's warm
  task server for this flow (``runtime/server.py``'s spawned server: a subprocess of
  the worker that imported the flow file or notebook, from the same path as here,
  and the datastore's file system once), which forks the task: the same
  ``execute_task`` as ``python flow.py step`` and a local run. The task leads its
  own process group with a lifeline to the server, and the server has one to the
  worker, so user code cannot crash the worker, a kill reaches the task's group,
  and a worker killed takes its tasks with it.
* **Back here**: the worker function reports through Dask's event topics (``log_event``):
  ``start`` (worker, pid), chunks of the task's output while it runs (for a
  datastore that is not this machine's directory: appended to the spool files the
  scheduler tails, so logs stream while tasks run), and ``exit`` (the code). A
  worker that leaves the cluster while running a task fails that attempt, naming the
  worker (the scheduler's ``remove-worker`` event); losing the Dask scheduler raises
  :class:`ExecutorLost`.

Why not ``python flow.py step`` per task: ``step`` derives what a run's scheduler
already knows (parents, split stack) and takes decisions that are the scheduler's in
``run`` (``@catch``'s attempt, marking the run failed, finishing it at ``end``); the
start task of ``run`` has no parameters task; and a fresh interpreter per task costs
its imports every time (0.7 s with s3fs on a loaded 2-core machine), where a fork of
a warm server costs milliseconds. The attempt code is the same (``execute_task``).

Dask is imported only when this executor is used: ``run`` on the local executor
does not import it (the import budget, docs/architecture.md).
"""

from __future__ import annotations

import os
import sys
import threading
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
#: In a worker process: its warm task servers, by flow (see :class:`_WarmServer`).
_SERVERS: dict[tuple, Any] = {}
_SERVERS_LOCK = threading.Lock()
#: In a worker process: the warm server running each submission token.
_RUNNING: dict[str, Any] = {}
#: In a worker process: datastores by URL (an S3 client is slow to make).
_DATASTORES: dict[str, Any] = {}


class _LoadHandler:
    """Pickled to a spawned task server: unpickling it there loads the flow once (from
    its file or notebook) and gives the handler every forked task runs."""

    def __init__(self, loader: list) -> None:
        self.loader = loader

    def __reduce__(self) -> tuple:
        return (_make_handler, (self.loader,))


def _make_handler(loader: list) -> Any:
    from .task import execute_task

    flow_cls, graph = load_flow(loader)
    return lambda spec: execute_task(spec, flow_cls, graph)


class _PrepareDatastore:
    """Sent to a worker's task server (a ``define``): unpickling it there prepares the
    datastore for the tasks the server forks from then on."""

    def __init__(self, url: str) -> None:
        self.url = url

    def __reduce__(self) -> tuple:
        return (_prepare_datastore, (self.url,))


def _prepare_datastore(url: str) -> None:
    """In a worker's task server, before it forks tasks: open the datastore once and
    let it do what every task would otherwise do (on S3: read botocore's S3 model and
    endpoint rules, build the SSL context, make a spare client: a spawned server that
    never touched S3 left each task ~250 ms of parsing them)."""
    try:
        from ..datastore.storage import open_storage

        open_storage(url, trusted=True).prepare_for_tasks()
    except Exception:  # a head start only: each task opens the datastore itself
        pass


class _WarmServer:
    """One spawned task server (runtime/server.py) per worker process and flow: it
    imports the flow (and the datastore's file system) once and forks a task per
    attempt, which leads its own process group and dies with the server (its
    lifeline); the server dies with the worker (end of file on its channel). Several
    worker threads share it: one at a time reads its events and files them by key."""

    def __init__(self, loader: list, warm: list[str]) -> None:
        import threading

        from .server import TaskServerClient

        self.client = TaskServerClient.start_spawned(("pickled", _pickle(_LoadHandler(loader))))
        self.warmed: set[str] = set()
        self.prepared: set[str] = set()
        self.warm(warm)
        self.lock = threading.Lock()
        self.started: dict[str, int | None] = {}
        self.exits: dict[str, int] = {}
        self.lost: str | None = None

    def warm(self, modules: list[str]) -> None:
        for module in modules:
            if module not in self.warmed:
                self.warmed.add(module)
                self.client.warm(module)

    def prepare(self, datastore_url: str) -> None:
        """Have the server prepare this datastore for its tasks (once per URL)."""
        if datastore_url not in self.prepared:
            self.prepared.add(datastore_url)
            self.client.define(
                f"flowbook-datastore {datastore_url}", _pickle(_PrepareDatastore(datastore_url))
            )

    def poll(self, token: str, timeout: float) -> None:
        with self.lock:
            if token in self.exits or self.lost:
                return
            try:
                events = self.client.wait_events(timeout)
            except ExecutorLost as exc:
                self.lost = str(exc)
                return
            for event in events:
                if isinstance(event, TaskStarted):
                    self.started[event.key] = event.pid
                else:
                    self.exits[event.key] = event.code


def _pickle(value: Any) -> bytes:
    from ..datastore.pickling import PROTOCOL, cpickle

    return cpickle.dumps(value, protocol=PROTOCOL)


def _server_for(loader: list, warm: list[str], datastore_url: str | None = None) -> _WarmServer:
    with _SERVERS_LOCK:  # worker threads share the servers
        return _server_for_locked(loader, warm, datastore_url)


def _server_for_locked(loader: list, warm: list[str], datastore_url: str | None) -> _WarmServer:
    if loader[0] == "pickled":
        key: tuple = ("pickled", loader[1])
    else:
        try:
            stamp = os.stat(loader[1]).st_mtime_ns
        except OSError:
            stamp = 0
        key = (repr(loader), stamp)
    server = _SERVERS.get(key)
    if server is None or server.lost or not server.client.alive():
        for old_key, old in list(_SERVERS.items()):  # the flow file changed: retire
            busy = any(running is old for running in _RUNNING.values())
            if old_key[0] == key[0] and not busy:
                del _SERVERS[old_key]
                try:
                    old.client.close()
                except OSError:
                    pass
        server = _SERVERS[key] = _WarmServer(loader, warm)
    server.warm(warm)
    if datastore_url:
        server.prepare(datastore_url)
    return server


def run_on_worker(token: str, key: str, payload: bytes, topic: str, forward_logs: bool) -> int:
    """The Dask task: run one attempt in a process forked by this worker's warm task
    server; report its start, output and exit on ``topic``; return its exit code
    (minus the signal number when a signal ended it)."""
    from distributed import get_worker

    from .. import jsonio
    from ..datastore import Datastore
    from ..datastore.records import take_record_copy
    from ..datastore.storage import open_storage
    from .one_task import _set_log_paths
    from .spec import TaskSpec

    worker = get_worker()
    message = jsonio.loads(payload.decode("utf-8"))
    spec = TaskSpec(**message["spec"])
    datastore = _DATASTORES.get(spec.datastore_url)
    if datastore is None:
        storage = open_storage(spec.datastore_url, trusted=True)
        datastore = _DATASTORES[spec.datastore_url] = Datastore(storage=storage)
    start = datastore.attempt_file(
        spec.flow_name, spec.run_id, spec.step, spec.task_id, spec.attempt, "start.json"
    )
    if datastore.storage.exists(start):
        # Dask ran this attempt again after its worker was lost (Dask reschedules a
        # lost worker's tasks); the scheduler has failed it already: do nothing
        return EXIT_RERUN
    _set_log_paths(datastore, spec)  # this machine's paths (a spool for a remote datastore)
    if spec.record_copy:
        # the task leaves its record in its spool here, and it goes back to the
        # scheduler with the exit event: the scheduler need not fetch it from S3
        spec.record_copy = os.path.join(os.path.dirname(spec.stdout_path), "done.json")
    record = None
    lost: str | None = None
    server = _server_for(message["loader"], message.get("warm", []), spec.datastore_url)
    tails = [_Tail(spec.stdout_path, "out"), _Tail(spec.stderr_path, "err")]
    _RUNNING[token] = server
    try:
        server.client.submit(token, spec)
        announced = False
        abandoned = False
        while token not in server.exits and not server.lost:
            server.poll(token, 0.1)
            if not abandoned and _abandoned(worker, token):
                # the client that submitted it is gone (its run was killed): Dask
                # cancelled the task but cannot stop this thread; stop the task here
                abandoned = True
                from . import signals

                server.client.kill(token, signals.SIGKILL)
            if not announced and token in server.started:
                announced = True
                event = {"t": token, "k": key, "e": "start", "pid": server.started[token]}
                worker.log_event(topic, dict(event, w=worker.address))
            if forward_logs and announced:
                for tail in tails:
                    tail.send(worker, topic, token)
        code = server.exits.pop(token, -9)
        if not announced:
            pid = server.started.get(token)
            worker.log_event(
                topic, {"t": token, "k": key, "e": "start", "pid": pid, "w": worker.address}
            )
        if forward_logs:
            for tail in tails:
                tail.send(worker, topic, token)
        if server.lost:
            lost = server.lost
            data = f"flowbook: on Dask worker {worker.address}, {lost}\n".encode()
            worker.log_event(topic, {"t": token, "e": "err", "d": data})
    finally:
        _RUNNING.pop(token, None)
        server.started.pop(token, None)
        for tail in tails:
            tail.close()
        if spec.record_copy:
            record = take_record_copy(spec.record_copy)
        if forward_logs:  # the task uploaded its spool files at its end
            for path in (spec.stdout_path, spec.stderr_path):
                try:
                    os.remove(path)
                except OSError:
                    pass
            try:
                os.rmdir(os.path.dirname(spec.stdout_path))
            except OSError:
                pass
    exited = {"t": token, "k": key, "e": "exit", "code": code}
    if lost:  # what ended it, in words: better than the -9 it is given
        exited["why"] = f"on Dask worker {worker.address}, {lost}"
    if record is not None:
        exited["r"] = record
    worker.log_event(topic, exited)
    return code


def _abandoned(worker: Any, token: str) -> bool:
    """Whether Dask no longer wants this task's result: the scheduler released it
    (its client disconnected, or cancelled it), so the worker marked it cancelled."""
    state = worker.state.tasks.get(f"flowbook-{token}")
    return state is None or state.state == "cancelled"


class _Tail:
    """What was appended to a task's log file since the last look, sent as an event."""

    def __init__(self, path: str, kind: str) -> None:
        self.path = path
        self.kind = kind
        self.handle: Any = None

    def send(self, worker: Any, topic: str, token: str) -> None:
        if self.handle is None:
            try:
                self.handle = open(self.path, "rb")  # noqa: SIM115
            except OSError:
                return
        data = self.handle.read()
        if data:
            worker.log_event(topic, {"t": token, "e": self.kind, "d": data})

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()


async def signal_on_worker(token: str, number: int) -> bool:
    """Run by the client on the worker that runs ``token``: signal the task's process
    group (through the warm server that forked it)."""
    server = _RUNNING.get(token)
    if server is None:
        return False
    server.client.kill(token, number)
    return True


def worker_facts(paths: list[str]) -> dict:
    """Run on every worker at the start: its host name and which paths it sees."""
    import socket

    return {"host": socket.gethostname(), "missing": [p for p in paths if not os.path.exists(p)]}


def _address_in(scheduler_file: str) -> str:
    """The scheduler's address a Dask scheduler file holds; DaskSetupError naming the
    file when it has none."""
    from .. import jsonio

    where = f"Cannot use the Dask scheduler file {scheduler_file}"
    try:
        with open(scheduler_file, encoding="utf-8") as handle:
            info = jsonio.loads(handle.read())
    except OSError as exc:
        raise DaskSetupError(f"{where}: {exc.strerror or exc}.") from None
    except ValueError:
        raise DaskSetupError(f"{where}: it is not JSON text.") from None
    address = info.get("address") if isinstance(info, dict) else None
    if not isinstance(address, str) or not address:
        raise DaskSetupError(f"{where}: it names no scheduler address.")
    return address


def _check_address(address: str) -> None:
    """Refuse an address whose scheme Dask does not know, before Dask tries it."""
    from distributed.comm.registry import backends

    scheme = address.split("://", 1)[0] if "://" in address else "tcp"
    if scheme not in backends:
        raise DaskSetupError(
            f"Cannot connect to the Dask scheduler {address}: unknown address scheme "
            f"'{scheme}' (Dask knows {', '.join(sorted(backends))})."
        )


def flow_loader(flow_cls: type, graph: FlowGraph) -> list:
    """How a worker loads this flow: ``["file", path, class, decospecs]`` for a flow
    file (the same path on the workers), ``["pickled", digest, base64]`` for a
    notebook's flow (its module is pickled by value: notebook/builder.py registers
    it with cloudpickle); FlowbookError when it has neither."""
    module = sys.modules.get(flow_cls.__module__)
    path = getattr(module, "__file__", None) or ""
    decospecs = [
        f"{d.name}:" + ",".join(f"{k}={v!r}" for k, v in d.attributes.items())
        for d in graph.cli_decorators
    ]
    # a notebook's flow (notebook/builder.py marks it), headless or from a kernel, or
    # a class its file does not define (NBRunner's script unpickles one it was sent)
    defined_there = module is not None and vars(module).get(flow_cls.__name__) is flow_cls
    if path.endswith(".ipynb") or "_flowbook_graph" in vars(flow_cls) or not defined_there:
        import base64
        import hashlib

        import cloudpickle

        data = cloudpickle.dumps((flow_cls, graph))
        return ["pickled", hashlib.sha256(data).hexdigest(), base64.b64encode(data).decode()]
    if path and os.path.isfile(path):  # (any suffix: `flowbook run myflow` too)
        return ["file", os.path.abspath(path), flow_cls.__name__, decospecs]
    raise FlowbookError(
        f"Flow {flow_cls.__name__} has no file the Dask workers can load it from "
        f"({path or 'defined in this process'}); run a flow file or a saved notebook "
        "with --executor dask."
    )


def load_flow(loader: list) -> tuple[type, FlowGraph]:
    """The flow class and graph a :func:`flow_loader` description names."""
    if loader[0] == "pickled":
        import base64

        from ..datastore.pickling import cpickle

        return cpickle.loads(base64.b64decode(loader[2]))
    from ..decorators import parse_decospec
    from ..graph import FlowGraph
    from ..loader import load_flow_class

    flow_cls = load_flow_class(loader[1], loader[2])
    graph = FlowGraph.from_flow_class(flow_cls)
    graph.apply_decospecs([parse_decospec(d) for d in loader[3]])
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
        #: what the workers' task servers import before forking tasks
        self.warm_modules: list[str] = []
        if not datastore.storage.is_local:
            self.warm_modules = datastore.storage.task_modules()
        self.cluster = None
        self.address = address or scheduler_file or ""
        source = ""
        if scheduler_file:
            address = _address_in(scheduler_file)  # Dask's own reading fails obscurely
            self.address, source = address, f" (from {scheduler_file})"
            scheduler_file = None
        if address:
            _check_address(address)
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
            raise DaskSetupError(
                f"Cannot connect to the Dask scheduler {self.address}{source}: "
                f"{str(exc).splitlines()[0]}"
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
        self.worker_resources: set[str] = set()
        for worker in info.get("workers", {}).values():
            self.worker_resources.update((worker.get("resources") or {}).keys())
        try:
            self._check_resources(info)
        except BaseException:
            self.close()
            raise
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
        paths = [self.loader[1]] if self.loader[0] == "file" else []
        facts = self.client.run(worker_facts, paths)
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

    def _check_resources(self, info: dict) -> None:
        """Refuse a step whose ``@resources`` no single worker has: Dask would hold
        its task forever, waiting for a worker that will never come."""
        workers = {a: w.get("resources") or {} for a, w in info.get("workers", {}).items()}
        for step in self.graph.nodes:
            wanted = self._resources(step)
            if not wanted or not workers:
                continue
            if any(
                all(have.get(k, 0) >= v for k, v in wanted.items()) for have in workers.values()
            ):
                continue
            asked = " ".join(f"{k}={v:g}" for k, v in sorted(wanted.items()))
            largest = " ".join(
                f"{k}={max(have.get(k, 0) for have in workers.values()):g}" for k in sorted(wanted)
            )
            raise DaskSetupError(
                f"Flow {self.graph.name}, step '{step}': @resources asks for {asked} "
                f"(MEMORY in bytes: @resources' memory is in MiB), but no Dask worker has "
                f"that much (the most any worker declares: {largest}); lower @resources "
                "or start workers with more."
            )

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
        payload = jsonio.dumps(
            {"spec": fields, "loader": self.loader, "warm": self.warm_modules}
        ).encode("utf-8")
        self.submissions[key] = submission
        self.by_token[token] = submission
        submission.future = self.client.submit(
            run_on_worker,
            token,
            key,
            payload,
            self.topic,
            self.forward_logs,
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

    def warm(self, module: str) -> None:
        if module not in self.warm_modules:
            self.warm_modules.append(module)

    def kill(self, key: str, signal_number: int) -> None:
        submission = self.submissions.get(key)
        if submission is None or submission.exited or not submission.started:
            return
        try:
            self.client.run(
                signal_on_worker,
                submission.token,
                signal_number,
                # every worker when it is not known which runs it: the others have no
                # such token and do nothing
                workers=[submission.worker] if submission.worker else None,
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
            if message.get("r") and submission.spec.record_copy:
                # where a task on this machine would have left it (Scheduler._finish)
                from ..datastore.storage import replace_file

                replace_file(submission.spec.record_copy, message["r"])
            self._exited(submission, int(message["code"]), results, message.get("why"))
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

    def _exited(
        self, submission: _Submission, code: int, results: list, reason: str | None = None
    ) -> None:
        if submission.exited:
            return
        submission.exited = True
        self.dead_tokens.add(submission.token)
        self._close_logs(submission)
        if self.submissions.get(submission.key) is submission:
            del self.submissions[submission.key]
        results.append(TaskExited(submission.key, code, reason=reason))

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
            lost = (
                f"the Dask worker {worker} running task {submission.spec.short_pathspec} "
                f"(attempt {submission.spec.attempt}) was lost"
            )
            self._note(submission, lost)
            try:
                submission.future.cancel()
            except Exception:
                pass
            self._exited(submission, -9, results, reason=f"its Dask worker {worker} was lost")

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
