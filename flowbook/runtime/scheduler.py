"""The run loop: turns a validated graph into tasks, at most ``max_workers`` at a time.

The scheduler never runs user code. It hands :class:`TaskSpec` objects to an
executor, learns when task processes exit, reads each finished task's record from
the datastore, and creates the tasks that follow: one per branch of a split, one per
item of a foreach, and a join task once every branch of its split has arrived.

On a failure no new task starts; tasks already running finish (their results stay
usable by ``resume``), then the run is marked failed.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable

from ..datastore import Datastore
from ..decorators import step_settings
from ..exceptions import CorruptRecordError, DatastoreError
from ..graph import FlowGraph
from ..options import DEFAULT_MAX_NUM_SPLITS, DEFAULT_MAX_WORKERS
from ..plain import Plain
from . import signals
from .console import Console, LogTail
from .executor import ExecutorLost, TaskExecutor, TaskExited, TaskStarted
from .frames import foreach_frame, join_key, join_order, join_slot, parent_info, split_frame
from .resume import ResumePlan
from .spec import TaskSpec
from .task import EXIT_CANNOT_RECORD, upload_logs

TYPE_CHECKING = False  # typing costs ~6 ms to import; annotations are strings here
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any, cast

    from ..datastore.schema import ArtifactEntry, ExceptionInfo, Frame, ParentInfo, TaskRecord
    from ..graph import StepNode
    from .reuse import Decision, ReusePlan

#: How often (seconds) the scheduler tells its listeners that time has passed.
TICK_INTERVAL = 0.5


class PendingTask(Plain):
    """A task waiting to start: its step, parents and place in splits."""

    def __init__(
        self,
        step: str,
        task_id: str,
        parents: list[ParentInfo],
        split_stack: list[Frame],
        attempt: int = 0,
        caught: ExceptionInfo | None = None,
        run_reason: str | None = None,
    ) -> None:
        self.step = step
        self.task_id = task_id
        self.parents = parents
        self.split_stack = split_stack
        self.attempt = attempt
        #: Set for the extra attempt that stores a caught exception (``@catch``).
        self.caught = caught
        #: Why the task runs rather than being reused (with reuse on).
        self.run_reason = run_reason


class PendingSplits(Plain):
    """The tasks of one foreach's splits that have not started yet.

    They are made one at a time, when a worker is free to start one, so a foreach
    of a million items costs a few hundred bytes until its tasks run, not a task
    object (with its frames) per item. Their task ids are reserved up front, so the
    splits of one foreach still have consecutive ids in index order.
    """

    def __init__(
        self, node: StepNode, record: TaskRecord, parent: ParentInfo, first_task_id: int
    ) -> None:
        self.node = node  # the foreach step
        self.record = record  # its finished task
        self.parent = parent
        self.first_task_id = first_task_id
        self.count = record["next"]["num_splits"]
        self.next_index = 0

    @property
    def remaining(self) -> int:
        return self.count - self.next_index

    def take(self) -> PendingTask:
        index = self.next_index
        self.next_index += 1
        stack = list(self.record.get("split_stack", []))
        stack.append(foreach_frame(self.node, self.record, index))
        return PendingTask(
            self.node.out_funcs[0], str(self.first_task_id + index), [self.parent], stack
        )


class RunningTask(Plain):
    """A task the executor has started."""

    def __init__(
        self,
        pending: PendingTask,
        spec: TaskSpec,
        tails: tuple[LogTail, LogTail] | None = None,
    ) -> None:
        self.pending = pending
        self.spec = spec
        self.pid: int | None = None
        self.has_started = False  # the executor said so
        self.exit_reason: str | None = None  # what the executor knows of the end
        self.started = time.time()
        self.tails = tails
        self.deadline: float | None = None
        self.timed_out = False

    @property
    def prefix(self) -> str:
        pid = f" (pid {self.pid})" if self.pid else ""
        return f"{self.spec.short_pathspec}{pid}"


class Scheduler:
    def __init__(
        self,
        graph: FlowGraph,
        datastore: Datastore,
        run_id: str,
        executor: TaskExecutor,
        console: Console,
        parameters: dict[str, ArtifactEntry],
        max_workers: int = DEFAULT_MAX_WORKERS,
        max_num_splits: int = DEFAULT_MAX_NUM_SPLITS,
        tags: list[str] | None = None,
        user: str = "",
        on_event: Callable[[str, dict], None] | None = None,
        resume_plan: ResumePlan | None = None,
        only_steps: set[str] | None = None,
        code: dict[str, dict] | None = None,
        reuse_plan: ReusePlan | None = None,
        say_first_runs: bool = True,
    ) -> None:
        self.graph = graph
        self.flow = graph.name
        self.datastore = datastore
        self.run_id = run_id
        self.executor = executor
        self.console = console
        self.parameters = parameters
        self.max_workers = max(1, max_workers)
        self.max_num_splits = max_num_splits
        self.tags = tags or []
        self.user = user
        self.on_event = on_event or (lambda kind, info: None)
        self.resume_plan = resume_plan
        self.origin_run_id = resume_plan.origin_run_id if resume_plan else None
        #: Each step's code fingerprint (runtime/fingerprint.py), kept in its records.
        self.code = code or {}
        self.reuse_plan = reuse_plan
        #: Whether "runs (no earlier task with this key)" is said (not in a notebook cell).
        self.say_first_runs = say_first_runs
        #: step -> [tasks reused, tasks run] and the decisions already said, for reuse.
        self.reuse_counts: dict[str, list[int]] = {}
        self._said: set[tuple[str, str]] = set()
        self.settings = {node.name: step_settings(node.decorators, node.name) for node in graph}
        self.queue: deque[PendingTask | PendingSplits] = deque()
        self.delayed: list[tuple[float, PendingTask]] = []
        self.running: dict[str, RunningTask] = {}
        self.joins: dict[tuple, dict[int | str, ParentInfo]] = {}
        self.only_steps = only_steps
        self.finished_records: list[TaskRecord] = []
        self.failures: list[str] = []
        self.end_succeeded = False
        self._last_task_id = 0
        self._warmed: set[str] = set()  # modules the task server was asked to import
        self._last_tick = time.monotonic()

    # ------------------------------------------------------------ public
    def run(self, parent_records: list[TaskRecord] | None = None) -> bool:
        """Run the flow from ``start``; True when the end step succeeded.

        With ``parent_records`` (finished tasks of this run) and ``only_steps``, run
        just the tasks of those steps that follow the given parents: how a notebook
        runs one step cell against the latest results of its parents.
        """
        if parent_records:
            for record in parent_records:
                self._schedule_successors(record)
        else:
            self._to_child("start", None, [])
        queued = sum(p.remaining if isinstance(p, PendingSplits) else 1 for p in self.queue)
        seeded = {"queued": queued, "pathspec": f"{self.flow}/{self.run_id}"}
        dashboard = getattr(self.executor, "dashboard_link", None)  # a cluster's, if any
        if dashboard:
            seeded["dashboard"] = dashboard
        self.on_event("run_seeded", seeded)
        try:
            self._loop()
        except KeyboardInterrupt as exc:
            reason = str(exc) or "the run was interrupted (Ctrl-C)"
            self.failures.append(reason)
            self.console.error(f"{reason[0].upper()}{reason[1:]}: stopping running tasks...")
            self._terminate_running()
            raise
        except ExecutorLost as exc:
            self._executor_lost(exc)
        finally:
            self._remove_spool()
        self._say_reuse_totals()
        if self.only_steps is not None:
            return not self.failures
        return self.end_succeeded and not self.failures

    def set_first_task_id(self, last_used: int) -> None:
        self._last_task_id = last_used

    # ------------------------------------------------------------ loop
    def _loop(self) -> None:
        while True:
            self._release_delayed()
            while self.queue and not self.failures and len(self.running) < self.max_workers:
                pending = self._next_pending()
                if not self._clone(pending):
                    self._launch(pending)
            can_start_more = not self.failures and (self.queue or self.delayed)
            if not self.running and not can_start_more:
                break
            for event in self.executor.wait_events(self._wait_time()):
                self._handle_event(event)
            self._enforce_timeouts()
            self._tail_logs()
            now = time.monotonic()
            if now - self._last_tick >= TICK_INTERVAL:  # lets views follow long tasks
                self._last_tick = now
                self.on_event("tick", {})

    def _next_pending(self) -> PendingTask:
        head = self.queue[0]
        if isinstance(head, PendingSplits):
            if head.remaining == 1:
                self.queue.popleft()
            return head.take()
        self.queue.popleft()
        return head

    def _wait_time(self) -> float:
        wait = 0.05
        if self.delayed:
            wait = min(wait, max(0.0, min(t for t, _ in self.delayed) - time.time()))
        return wait

    def _release_delayed(self) -> None:
        if not self.delayed or self.failures:
            return
        now = time.time()
        due = [item for item in self.delayed if item[0] <= now]
        self.delayed = [item for item in self.delayed if item[0] > now]
        for _, pending in due:
            self.queue.append(pending)

    def _enforce_timeouts(self) -> None:
        now = time.time()
        for task in self.running.values():
            if task.deadline and not task.timed_out and now > task.deadline and task.has_started:
                task.timed_out = True
                self.executor.kill(task.pending.task_id, signals.SIGKILL)

    def _handle_event(self, event: TaskStarted | TaskExited) -> None:
        task = self.running.get(event.key)
        if task is None:
            return
        if isinstance(event, TaskStarted):
            task.pid = event.pid
            task.has_started = True
            self.console.message(f"[{task.prefix}] Task is starting.")
            self.on_event("task_started", {"step": task.spec.step, "task_id": event.key})
        else:
            task.pid = task.pid or event.pid
            task.has_started = True
            task.exit_reason = event.reason
            self._finish(task, event.code)

    def _tail_logs(self, only: RunningTask | None = None, final: bool = False) -> None:
        printed = False
        for task in [only] if only else list(self.running.values()):
            if task.tails is None or not task.has_started:
                continue  # not until its "started" event: every line names the pid
            out, err = task.tails
            for line in out.read_lines(final):
                self.console.task_line(task.prefix, line)
                printed = True
            for line in err.read_lines(final):
                self.console.task_line(task.prefix, line, stderr=True)
                printed = True
        if printed:
            self.console.flush()

    # ------------------------------------------------------------ launching
    def _new_task_id(self) -> str:
        self._last_task_id += 1
        return str(self._last_task_id)

    def _log_paths(self, step: str, task_id: str, attempt: int) -> tuple[str, str]:
        storage = self.datastore.storage
        paths = []
        for kind in ("stdout", "stderr"):
            rel = self.datastore.attempt_file(self.flow, self.run_id, step, task_id, attempt, kind)
            local = storage.local_path(rel)
            if local is None:
                local = os.path.join(self._spool_dir(), rel.replace("/", "_"))
            paths.append(local)
        return paths[0], paths[1]

    def _spool_dir(self) -> str:
        if not hasattr(self, "_spool"):
            import tempfile

            self._spool = tempfile.mkdtemp(prefix="flowbook-logs-")
        return self._spool

    def _put_away_spooled_logs(self, task: RunningTask, uploaded: bool) -> None:
        """Remove an ended task's spooled log files (a remote datastore's). A task
        uploads them itself before its record; one that ended without a record (killed,
        timed out, stopped) has them uploaded here, so that ``logs`` still shows them."""
        spec = task.spec
        spool = getattr(self, "_spool", None)
        if spool is None or not spec.stdout_path.startswith(spool + os.sep):
            return
        if not uploaded:
            try:
                upload_logs(self.datastore, spec)
            except (DatastoreError, OSError) as exc:  # the run goes on without it
                self.console.error(f"[{task.prefix}] Could not store its log: {exc}")
        for path in (spec.stdout_path, spec.stderr_path):
            try:
                os.unlink(path)
            except OSError:
                pass

    def _remove_spool(self) -> None:
        spool = getattr(self, "_spool", None)
        if spool is not None:
            import shutil

            shutil.rmtree(spool, ignore_errors=True)
            del self._spool

    def _launch(self, pending: PendingTask) -> None:
        stdout_path, stderr_path = self._log_paths(pending.step, pending.task_id, pending.attempt)
        spec = TaskSpec(
            flow_name=self.flow,
            run_id=self.run_id,
            step=pending.step,
            task_id=pending.task_id,
            attempt=pending.attempt,
            datastore_url=self.datastore.url,
            parents=pending.parents,
            split_stack=pending.split_stack,
            parameters=self.parameters,
            stdout_path=stdout_path,
            stderr_path=stderr_path,
            tags=self.tags,
            user=self.user,
            origin_run_id=self.origin_run_id,
            max_attempts=self.settings[pending.step]["max_attempts"],
            caught=pending.caught,
            code=self.code.get(pending.step),
            run_reason=pending.run_reason,
            # on a remote datastore the task also leaves its record beside its log
            # spool: one request fewer per task when the scheduler is on its machine
            record_copy=None
            if self.datastore.storage.is_local
            else stdout_path.rpartition(".")[0] + ".done.json",
        )
        task = RunningTask(pending, spec, tails=(LogTail(stdout_path), LogTail(stderr_path)))
        timeout = self.settings[pending.step]["timeout"]
        if timeout and not pending.caught:
            task.deadline = task.started + timeout
        self.running[pending.task_id] = task
        self.executor.submit(pending.task_id, spec)

    def _clone(self, pending: PendingTask) -> bool:
        """Clone the task from the resumed run, or reuse an earlier identical one, when
        it can be; True if it was. Otherwise, with reuse on, note why it runs."""
        if pending.attempt or pending.caught:
            return False
        return self._clone_from_origin(pending) or self._reuse(pending)

    def _clone_from_origin(self, pending: PendingTask) -> bool:
        """Resume: clone the origin run's task at this place, if it has one. With
        reuse on too, not one whose code or reads differ now (it records them)."""
        plan = self.resume_plan
        origin = None
        if plan is not None:
            origin = plan.clone_source(pending.step, pending.split_stack, pending.parents)
        if origin is None:
            return False
        if (
            self.reuse_plan is not None
            and (origin.get("code") or {}).get("key")
            and not self.reuse_plan.stands_in(
                origin, pending.step, pending.split_stack, pending.parents
            )
        ):
            return False
        if TYPE_CHECKING:  # only a plan gives an origin
            assert plan is not None
        record = plan.clone(
            origin, self.run_id, pending.task_id, pending.split_stack, pending.parents
        )
        self.console.message(
            f"[{self.run_id}/{pending.step}/{pending.task_id}] Cloned from "
            f"{record['origin_pathspec']}."
        )
        self.on_event("task_cloned", {"step": pending.step, "task_id": pending.task_id})
        self._done_without_running(record)
        return True

    def _reuse(self, pending: PendingTask) -> bool:
        """With reuse on: clone an earlier identical task (True), or note why this one
        runs (False)."""
        if self.reuse_plan is None:
            return False
        from .reuse import Decision  # only with reuse on: not on a plain run's path

        plan = self.resume_plan
        if plan is not None and pending.step in plan.forced:
            decision = Decision(f"resume was asked to run step '{plan.step}' again")
        else:
            try:
                decision = self.reuse_plan.decide(
                    pending.step,
                    pending.split_stack,
                    pending.parents,
                    self.settings[pending.step]["reuse"],
                )
            except Exception as exc:  # reuse only saves time: never let it stop a task
                decision = Decision(f"reuse could not decide: {type(exc).__name__}: {exc}")
        counts = self.reuse_counts.setdefault(pending.step, [0, 0])
        counts[decision.origin is None] += 1
        self._say_decision(pending.step, decision)
        info = {"step": pending.step, "task_id": pending.task_id, "reason": decision.text}
        if decision.origin is None:
            pending.run_reason = decision.text
            self.on_event("task_reason", info)
            return False
        record = self.reuse_plan.clone(
            decision, self.run_id, pending.task_id, pending.split_stack, pending.parents
        )
        self.on_event("task_reused", dict(info, reused_from=record["reused_from"]))
        self._done_without_running(record)
        return True

    def _done_without_running(self, record: TaskRecord) -> None:
        self.finished_records.append(record)
        self._schedule_successors(record)

    def _say_decision(self, step: str, decision: Decision) -> None:
        """One line per step and kind of decision: ``train: reused from RUN/train/7
        (same code, inputs and parameters)`` or ``train: runs (why)``; a foreach's
        other splits add a line only when their reason differs."""
        said = (step, "reused" if decision.origin is not None else decision.reason)
        if said in self._said:
            return
        from .reuse import NO_EARLIER

        if not self.say_first_runs and decision.reason == NO_EARLIER:
            return  # a notebook cell's first run: nothing to explain
        self._said.add(said)
        self.console.message(f"{step}: {decision.text}")

    def _say_reuse_totals(self) -> None:
        """For a step of several tasks some of which were reused, how many were
        reused and how many ran."""
        for step, (reused, ran) in self.reuse_counts.items():
            if reused and reused + ran > 1:
                self.console.message(f"{step}: {reused} of {reused + ran} tasks reused, {ran} ran.")

    # ------------------------------------------------------------ finishing
    def _finish(self, task: RunningTask, code: int) -> None:
        self._tail_logs(task, final=True)
        del self.running[task.pending.task_id]
        spec = task.spec
        # the attempt's record; when it is corrupt, a stand-in (status, exception)
        record: Mapping[str, Any] | None
        try:
            record = self.datastore.read_attempt_done(
                self.flow, self.run_id, spec.step, spec.task_id, spec.attempt, spec.record_copy
            )
        except CorruptRecordError as exc:  # the task's own record: name the file
            record = {
                "status": "failed",
                "exception": {"type": "CorruptRecordError", "message": str(exc)},
            }
        self._put_away_spooled_logs(task, uploaded=record is not None)
        for module in (record or {}).get("warm", []):
            if module not in self._warmed:
                self._warmed.add(module)
                self.executor.warm(module)
        if code == 0 and record and record.get("status") == "successful":
            if TYPE_CHECKING:  # a successful attempt's own record
                record = cast("TaskRecord", record)
            self.finished_records.append(record)
            self.console.message(f"[{task.prefix}] Task finished successfully.")
            self.on_event("task_finished", {"step": spec.step, "task_id": spec.task_id})
            self._schedule_successors(record)
            return
        self._fail(task, code, record)

    def _fail(self, task: RunningTask, code: int, record: Mapping[str, Any] | None) -> None:
        spec = task.spec
        pending = task.pending
        settings = self.settings[spec.step]
        if task.timed_out:
            reason = f"timed out after {settings['timeout']:g} s (@timeout)"
        elif task.exit_reason:
            reason = task.exit_reason
        elif code < 0:
            import signal  # only to name the signal

            try:
                reason = f"killed by signal {signal.Signals(-code).name}"
            except ValueError:
                reason = f"killed by signal {-code}"
        elif record and record.get("exception"):
            exc = record["exception"]
            reason = f"{exc['type']}: {exc['message']}"
        elif code == EXIT_CANNOT_RECORD:  # the task printed why on the console
            reason = "could not record its result in the datastore"
            problem = self.datastore.storage.space_problem()
            reason += f": {problem}" if problem else " (see the line above)"
        else:
            reason = f"exited with code {code} without recording a result"
            problem = self.datastore.storage.space_problem()
            if problem:
                reason += f" ({problem})"
        self.console.error(f"[{task.prefix}] Task failed: {reason}")
        self.on_event("task_failed", {"step": spec.step, "task_id": spec.task_id})
        if pending.caught is None and pending.attempt + 1 < settings["max_attempts"]:
            delay = settings["retry_delay"]
            self.console.message(
                f"[{task.prefix}] Retrying: attempt {pending.attempt + 2} of "
                f"{settings['max_attempts']} in {delay:g} s (@retry)."
            )
            retry = PendingTask(
                pending.step,
                pending.task_id,
                pending.parents,
                pending.split_stack,
                attempt=pending.attempt + 1,
                run_reason=pending.run_reason,
            )
            self.delayed.append((time.time() + delay, retry))
            return
        if pending.caught is None and settings["catch"] is not None:
            # a copy of the attempt's ExceptionInfo ({} when it has none: then TaskKilled's)
            exception: Any = dict((record or {}).get("exception") or {})
            if not exception:
                exception = {"type": "TaskKilled", "message": reason, "traceback": ""}
            if settings["catch"]["print_exception"]:
                self.console.error(
                    f"[{task.prefix}] @catch: the flow continues; the exception is stored"
                    + (f" in '{settings['catch']['var']}'." if settings["catch"]["var"] else ".")
                )
            self.queue.append(
                PendingTask(
                    pending.step,
                    pending.task_id,
                    pending.parents,
                    pending.split_stack,
                    attempt=pending.attempt + 1,
                    caught=exception,
                )
            )
            return
        self.failures.append(f"step '{spec.step}' (task {spec.short_pathspec}): {reason}")

    def _schedule_successors(self, record: TaskRecord) -> None:
        node = self.graph[record["step"]]
        if node.type == "end":
            self.end_succeeded = True
            return
        parent = parent_info(self.flow, record)
        stack = record.get("split_stack", [])
        transition: Mapping[str, Any] = record.get("next") or {}
        if node.foreach is not None:
            count = transition["num_splits"]
            if count > self.max_num_splits:
                self.failures.append(
                    f"foreach step '{node.name}' made {count} splits, more than "
                    f"--max-num-splits {self.max_num_splits}; raise the limit with "
                    "--max-num-splits (or FLOWBOOK_RUN_MAX_NUM_SPLITS)"
                )
                self.console.error(f"Flow {self.flow}: {self.failures[-1]}.")
                return
            if count == 0:
                self.failures.append(
                    f"foreach step '{node.name}' has nothing to split: "
                    f"'{transition['foreach']}' is empty"
                )
                self.console.error(f"Flow {self.flow}: {self.failures[-1]}.")
                return
            body = node.out_funcs[0]
            if self.only_steps is not None and body not in self.only_steps:
                return  # a notebook running one step cell
            if self.graph[body].is_join:  # an empty body: the join takes the splits at once
                for index in range(count):
                    self._to_child(body, parent, stack + [foreach_frame(node, record, index)])
            else:
                self.queue.append(PendingSplits(node, record, parent, self._last_task_id + 1))
                self._last_task_id += count
        elif len(node.out_funcs) > 1:
            for branch in node.out_funcs:
                self._to_child(branch, parent, stack + [split_frame(node, record, branch)])
        else:
            self._to_child(node.out_funcs[0], parent, stack)

    def _to_child(self, step: str, parent: ParentInfo | None, stack: list[Frame]) -> None:
        if self.only_steps is not None and step not in self.only_steps:
            return
        if not self.graph[step].is_join:
            parents = [parent] if parent is not None else []
            self.queue.append(PendingTask(step, self._new_task_id(), parents, stack))
            return
        if TYPE_CHECKING:  # only the start task, never a join, has no parent
            assert parent is not None
        top = stack[-1]
        key = join_key(step, stack)
        arrivals = self.joins.setdefault(key, {})
        arrivals[join_slot(stack)] = parent
        if len(arrivals) < top["num_splits"]:
            return
        del self.joins[key]
        parents = [arrivals[slot] for slot in join_order(self.graph, top, list(arrivals))]
        self.queue.append(PendingTask(step, self._new_task_id(), parents, stack[:-1]))

    # ------------------------------------------------------------ stopping
    def _terminate_running(self, grace: float = 3.0) -> None:
        """SIGTERM every running task (and what it started), SIGKILL what is left
        after ``grace`` seconds, and wait until each has exited: nothing of this run
        writes a record after the scheduler marks it failed."""
        for key in list(self.running):
            self.executor.kill(key, signals.SIGTERM)
        if self._await_exits(time.time() + grace):
            return
        for key in list(self.running):
            self.executor.kill(key, signals.SIGKILL)
        self._await_exits(time.time() + 5.0)

    def _await_exits(self, deadline: float) -> bool:
        """Read exit events until no task runs (True) or ``deadline`` passes."""
        while self.running and time.time() < deadline:
            try:
                events = self.executor.wait_events(0.05)
            except ExecutorLost:
                return False  # an executor stops its tasks as it goes
            for event in events:
                if event.key not in self.running:
                    continue
                if isinstance(event, TaskStarted):
                    # submitted before the stop, started after it: stop it too
                    self.executor.kill(event.key, signals.SIGKILL)
                else:
                    task = self.running.pop(event.key)
                    self._tail_logs(task, final=True)
                    self._put_away_spooled_logs(task, uploaded=False)
        return not self.running

    def _executor_lost(self, exc: ExecutorLost) -> None:
        """The executor is gone, and its tasks with it (a local task server's tasks
        die by their lifelines, see server.py): fail the run naming why."""
        reason = f"{exc}; the run's running tasks were stopped"
        self.console.error(f"Flow {self.flow}: {reason}.")
        for task in self.running.values():
            self.on_event("task_failed", {"step": task.spec.step, "task_id": task.spec.task_id})
            self._tail_logs(task, final=True)
            self._put_away_spooled_logs(task, uploaded=False)
        self.running.clear()
        self.failures.append(reason)
