"""The kernel's side of the JupyterLab extension (extension/): one comm, target ``flowbook``.

The kernel opens the comm when ``%load_ext flowbook`` runs and sends on it, without
waiting for an answer, what the extension draws: the notebook flow's graph (steps,
roles, transitions, the cell that defines each step) and the steps' states (not
run, running, done, failed, stale; a foreach's progress), each time they change.
A JupyterLab with the extension attaches to the comm (at once, or after a page
reload by asking the kernel which comms it has) and answers ``ready``; the kernel
then knows an extension is present and sends the whole picture again. Without the
extension the front end closes the comm and the kernel stops sending; nothing else
changes. The protocol is in docs/architecture.md ("The JupyterLab extension's comm").

Messages are sent from the scheduler's events in the kernel's main thread while a
cell runs; progress within a step goes out at most every ``PROGRESS_INTERVAL``
seconds, a change of state at once.
"""

from __future__ import annotations

import time
from typing import Any

TARGET = "flowbook"
PROTOCOL = 1
PROGRESS_INTERVAL = 0.1
NOT_RUN, RUNNING, DONE, FAILED, STALE = "not-run", "running", "done", "failed", "stale"


def roles(name: str, next_steps: list[str], foreach: str | None, join: bool) -> list[str]:
    """What a step is in its flow: start, end, split, foreach, join (none for a plain step)."""
    found = []
    if name == "start":
        found.append("start")
    if join:
        found.append("join")
    if foreach:
        found.append("foreach")
    elif len(next_steps) > 1:
        found.append("split")
    if name == "end":
        found.append("end")
    return found


class _Step:
    """The tasks of one step in the run the notebook shows, by task id."""

    def __init__(self) -> None:
        self.tasks: dict[str, str] = {}
        self.expected = 0  # tasks the step will have (a foreach's splits), when known

    def state(self, stale: bool) -> str:
        states = set(self.tasks.values())
        if not states:  # queued (its run was seeded) or never run
            return RUNNING if self.expected else STALE if stale else NOT_RUN
        if RUNNING in states or len(self.tasks) < self.expected:
            return RUNNING if FAILED not in states else FAILED
        if FAILED in states:
            return FAILED
        return STALE if stale else DONE

    def summary(self, stale: bool) -> dict[str, Any]:
        values = list(self.tasks.values())
        return {
            "state": self.state(stale),
            "done": values.count(DONE),
            "failed": values.count(FAILED),
            "running": values.count(RUNNING),
            "total": max(self.expected, len(values)),
        }


class LabComm:
    """The comm of one notebook session; follows its events (``session.listeners``)."""

    def __init__(self, session: Any) -> None:
        from comm import create_comm

        self.session = session
        #: True once a front end answered: the JupyterLab extension is there.
        self.present = False
        self.closed = False
        #: step -> id of the cell that defined it when it last ran (JupyterLab's cellId)
        self.cell_ids: dict[str, str] = {}
        #: What is shown of each kind of run, by mode: "cells" (the step cells'
        #: interactive run, what the badges show) and "run" (the latest %flow run).
        self.runs: dict[str, str | None] = {"cells": None, "run": None}
        self.tasks: dict[str, dict[str, _Step]] = {"cells": {}, "run": {}}
        #: the mode of the latest events (what the side panel shows)
        self.mode = "cells"
        self._last_sent: dict[str, Any] | None = None
        self._last_progress = 0.0
        self.comm = create_comm(
            target_name=TARGET, data={"kind": "hello", "protocol": PROTOCOL, **self._graph()}
        )
        self.comm.on_msg(self._on_msg)
        self.comm.on_close(self._on_close)
        session.listeners.append(self.on_event)

    # ------------------------------------------------------------ front end
    def _on_msg(self, msg: dict) -> None:
        data = (msg.get("content") or {}).get("data") or {}
        if data.get("kind") == "ready":
            self.present = True
            self.send_graph()
            latest = self.mode
            for mode in ("run", "cells") if latest == "cells" else ("cells", "run"):
                if mode == "cells" or self.runs["run"]:
                    self.mode = mode
                    self.send_states(force=True)  # the latest one last

    def _on_close(self, msg: Any = None) -> None:
        self.closed = True
        self.present = False
        self.detach()

    def detach(self) -> None:
        if self.on_event in self.session.listeners:
            self.session.listeners.remove(self.on_event)

    def close(self) -> None:
        self.detach()
        if not self.closed:
            self.closed = True
            try:
                self.comm.close()
            except Exception:
                pass

    def _send(self, data: dict) -> None:
        if not self.closed:
            self.comm.send(data)

    # ------------------------------------------------------------ what is sent
    def _graph(self) -> dict[str, Any]:
        from ..exceptions import FlowbookError
        from ..graph import FlowGraph
        from .builder import step_node

        session = self.session
        nodes = []
        for cell in list(session.steps.values()):
            try:
                nodes.append(step_node(cell, session.flow_name)[0])
            except FlowbookError:
                continue
        try:
            graph = FlowGraph(session.flow_name, nodes, partial=True)
        except FlowbookError:
            return {"flow": session.flow_name, "steps": []}
        steps = []
        for node in graph:
            nexts = list(node.out_funcs)
            steps.append(
                {
                    "name": node.name,
                    "roles": roles(node.name, nexts, node.foreach, node.is_join),
                    "next": nexts,
                    "foreach": node.foreach,
                    "join": node.is_join,
                    "cell_id": self.cell_ids.get(node.name),
                    "doc": node.doc,
                }
            )
        return {"flow": session.flow_name, "steps": steps}

    def send_graph(self) -> None:
        self._send({"kind": "graph", **self._graph()})

    def states(self) -> dict[str, dict[str, Any]]:
        """The steps' states in the run of the current mode."""
        steps = self.tasks[self.mode]
        # the step running now is fresh, though the session drops it from `stale` at its end
        stale = self.session.stale - {self.session.running_step} if self.mode == "cells" else set()
        names = list(self.session.steps) + [n for n in steps if n not in self.session.steps]
        return {name: steps.get(name, _Step()).summary(name in stale) for name in names}

    def send_states(self, force: bool = False) -> None:
        run = self.runs[self.mode]
        message = {"kind": "states", "mode": self.mode, "run": run, "steps": self.states()}
        if not force and message == self._last_sent:
            return
        if not force and self._last_sent is not None and _same_states(message, self._last_sent):
            now = time.monotonic()
            if now - self._last_progress < PROGRESS_INTERVAL:
                return  # only counts changed: at most every PROGRESS_INTERVAL
            self._last_progress = now
        self._last_sent = message
        self._send(message)

    # ------------------------------------------------------------ session events
    def _from_session(self) -> None:
        """The interactive run's states as the session holds them (its latest tasks)."""
        steps = self.tasks["cells"] = {}
        for name, records in self.session.latest.items():
            step = steps[name] = _Step()
            for record in records:
                ok = record.get("status", "successful") == "successful"
                step.tasks[str(record.get("task_id"))] = DONE if ok else FAILED
        self.mode = "cells"
        run_id = self.session.run_id
        self.runs["cells"] = f"{self.session.flow_name}/{run_id}" if run_id else None

    def on_event(self, kind: str, info: dict) -> None:
        """A scheduler event of a step cell or a %flow run, or the session's step_done."""
        if self.closed:
            return
        running = self.session.running_step
        if kind == "run_seeded":
            if running is not None:  # a step cell: its tasks start again
                self.mode = "cells"
                self.runs["cells"] = info.get("pathspec") or self.runs["cells"]
                cell_id = _cell_id(self.session.shell)
                if cell_id:
                    self.cell_ids[running] = cell_id
                step = self.tasks["cells"][running] = _Step()
                step.expected = int(info.get("queued") or 0)
                self.send_graph()
            else:  # a whole run starts: every step not run yet
                self.mode, self.runs["run"], self.tasks["run"] = "run", info.get("pathspec"), {}
                self.send_graph()
            self.send_states(force=True)
            return
        if kind == "step_done":
            self._from_session()
            self.send_states(force=True)
            return
        step_name, task_id = info.get("step"), info.get("task_id")
        if step_name is None or task_id is None:
            return
        self.mode = "run" if running is None else "cells"
        step = self.tasks[self.mode].setdefault(step_name, _Step())
        if kind == "task_started":
            step.tasks[str(task_id)] = RUNNING
        elif kind in ("task_finished", "task_cloned", "task_reused"):  # reused: done at once
            step.tasks[str(task_id)] = DONE
        elif kind == "task_failed":
            step.tasks[str(task_id)] = FAILED
        else:
            return
        self.send_states()


def _same_states(a: dict, b: dict) -> bool:
    """Whether two states messages differ only in counts (no step changed its state)."""
    if a["mode"] != b["mode"] or a["run"] != b["run"] or a["steps"].keys() != b["steps"].keys():
        return False
    return all(a["steps"][n]["state"] == b["steps"][n]["state"] for n in a["steps"])


def _cell_id(shell: Any) -> str | None:
    """The JupyterLab cell id of the cell being executed, when the request carried one."""
    from .cellmeta import execute_request

    parent = execute_request(shell)
    cell_id = ((parent or {}).get("metadata") or {}).get("cellId")
    return cell_id if isinstance(cell_id, str) else None


def install(session: Any) -> LabComm | None:
    """Open the comm for ``session`` (replacing one a previous ``%load_ext`` opened).

    Outside a kernel (IPython in a terminal) there is no front end: nothing is opened."""
    shell = session.shell
    uninstall(shell)
    if getattr(shell, "kernel", None) is None:
        return None
    lab = LabComm(session)
    shell._flowbook_labcomm = lab
    return lab


def uninstall(shell: Any) -> None:
    lab = getattr(shell, "_flowbook_labcomm", None)
    if lab is not None:
        lab.close()
        del shell._flowbook_labcomm


def front_end_present(shell: Any) -> bool:
    """Whether a JupyterLab with flowbook's extension answered on the comm."""
    lab = getattr(shell, "_flowbook_labcomm", None)
    return bool(lab is not None and lab.present and not lab.closed)
