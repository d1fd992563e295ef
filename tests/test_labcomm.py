"""The comm the JupyterLab extension listens to, in a real kernel, without a browser.

The test plays the extension's part with jupyter_client: it waits for the kernel's
``comm_open`` (target ``flowbook``) that ``%load_ext flowbook`` sends, answers
``ready``, and runs step cells (tags or magics) with the metadata JupyterLab sends
(``tags`` and ``cellId``), reading the graph and states messages on iopub.
"""

from __future__ import annotations

import uuid

import pytest
from conftest import kernel_in
from jupyter_client.manager import KernelManager

T = "flowbook:"


class LabKernel:
    """A kernel and a client that speaks to it as JupyterLab does."""

    def __init__(self, km: KernelManager) -> None:
        self.km = km
        self.kc = km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)
        self.comm_id: str | None = None
        #: every flowbook comm message seen, in order: (parent msg_id, data)
        self.seen: list[tuple[str, dict]] = []

    def execute(self, code: str, tags: list[str] | None = None, cell_id: str | None = None):
        """Run a cell as JupyterLab runs it; returns (its iopub messages, its comm data)."""
        content = {"code": code, "silent": False, "store_history": True}
        content.update(user_expressions={}, allow_stdin=False, stop_on_error=False)
        metadata = {"tags": tags or [], "cellId": cell_id or str(uuid.uuid4())}
        msg = self.kc.session.msg("execute_request", content, metadata=metadata)
        self.kc.shell_channel.send(msg)
        return self._until_idle(msg["header"]["msg_id"])

    def send_comm(self, msg_type: str, data: dict) -> list[dict]:
        msg = self.kc.session.msg(msg_type, {"comm_id": self.comm_id, "data": data})
        self.kc.shell_channel.send(msg)
        return self._until_idle(msg["header"]["msg_id"])[1]

    def _until_idle(self, msg_id: str) -> tuple[list[dict], list[dict]]:
        messages, comm_data = [], []
        while True:
            reply = self.kc.get_iopub_msg(timeout=120)
            kind, body = reply["msg_type"], reply["content"]
            if kind == "comm_open" and body.get("target_name") == "flowbook":
                self.comm_id = body["comm_id"]
                comm_data.append(body["data"])
            elif kind == "comm_msg" and body.get("comm_id") == self.comm_id:
                comm_data.append(body["data"])
            if kind in ("comm_open", "comm_msg"):
                self.seen.append((reply["parent_header"].get("msg_id"), body.get("data")))
            if reply["parent_header"].get("msg_id") != msg_id:
                continue
            messages.append(reply)
            if kind == "status" and body["execution_state"] == "idle":
                return messages, comm_data


def errors(messages: list[dict]) -> list[str]:
    return [m["content"]["evalue"] for m in messages if m["msg_type"] == "error"]


def states_of(comm_data: list[dict], step: str) -> list[str]:
    """The successive states of ``step`` in the states messages (repeats dropped)."""
    found: list[str] = []
    for data in comm_data:
        if data.get("kind") == "states" and step in data["steps"]:
            state = data["steps"][step]["state"]
            if not found or found[-1] != state:
                found.append(state)
    return found


def last(comm_data: list[dict], kind: str) -> dict:
    return [d for d in comm_data if d.get("kind") == kind][-1]


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    with kernel_in(tmp_path_factory.mktemp("labcomm"), LabKernel) as kernel:
        yield kernel


CELLS = {
    "load": ("%load_ext flowbook\n%flow name CommFlow", []),
    "setup": ("import time", [f"{T}setup"]),
    "start": (
        "self.items = [1, 2, 3]",
        [f"{T}step=start", f"{T}next=body", f"{T}foreach=items"],
    ),
    "body": ("%%step body --next join\ntime.sleep(0.3)\nself.double = 2 * self.input", []),
    "join": (
        "self.total = sum(i.double for i in inputs)",
        [f"{T}step=join", f"{T}join", f"{T}next=end"],
    ),
    "end": ("%%step end\nprint(self.total)", []),
}


@pytest.fixture(scope="module")
def notebook(kernel):
    """The cells run in order, each with its own cellId; the comm data each produced."""
    out = {}
    for key, (code, tags) in CELLS.items():
        messages, comm_data = kernel.execute(code, tags, cell_id=f"cell-{key}")
        assert not errors(messages), (key, errors(messages))
        out[key] = comm_data
        if key == "load":  # the extension answers the kernel's comm_open
            out["ready"] = kernel.send_comm("comm_msg", {"kind": "ready", "protocol": 1})
    return out


def test_load_ext_opens_the_comm_and_ready_gets_the_whole_picture(kernel, notebook):
    hello = notebook["load"][0]
    assert hello["kind"] == "hello" and hello["protocol"] == 1
    assert hello["steps"] == []  # no step cell has run yet
    assert kernel.comm_id
    kinds = [d["kind"] for d in notebook["ready"]]
    assert kinds == ["graph", "states"], notebook["ready"]
    assert notebook["ready"][0]["flow"] == "CommFlow"
    present = kernel.execute(
        "from flowbook.notebook.labcomm import front_end_present\n"
        "print(front_end_present(get_ipython()))"
    )[0]
    assert any(m["content"].get("text") == "True\n" for m in present if m["msg_type"] == "stream")


def test_a_tagged_step_sends_its_graph_with_its_cell_and_roles(notebook):
    graph = last(notebook["start"], "graph")
    (start,) = graph["steps"]
    assert start == {
        "name": "start",
        "roles": ["start", "foreach"],
        "next": ["body"],
        "foreach": "items",
        "join": False,
        "cell_id": "cell-start",
        "doc": "",
    }
    assert states_of(notebook["start"], "start") == ["running", "done"]


def test_a_foreach_step_reports_progress_then_done(notebook):
    body = [d["steps"]["body"] for d in notebook["body"] if d.get("kind") == "states"]
    assert body[0] == {"state": "running", "done": 0, "failed": 0, "running": 0, "total": 3}
    assert body[-1] == {"state": "done", "done": 3, "failed": 0, "running": 0, "total": 3}
    counts = [s["done"] for s in body]
    assert counts == sorted(counts) and 0 < len(set(counts)) >= 3, body  # 0 .. 3, live
    graph = last(notebook["body"], "graph")
    assert [s["name"] for s in graph["steps"]] == ["start", "body"]
    assert graph["steps"][1]["cell_id"] == "cell-body"


def test_join_and_end_roles_and_the_finished_notebook(notebook):
    graph = last(notebook["end"], "graph")
    roles = {s["name"]: s["roles"] for s in graph["steps"]}
    assert roles == {"start": ["start", "foreach"], "body": [], "join": ["join"], "end": ["end"]}
    cells = {s["name"]: s["cell_id"] for s in graph["steps"]}
    assert cells == {n: f"cell-{n}" for n in ("start", "body", "join", "end")}
    states = last(notebook["end"], "states")
    assert states["mode"] == "cells" and states["run"].startswith("CommFlow/")
    assert {n: s["state"] for n, s in states["steps"].items()} == dict.fromkeys(
        ("start", "body", "join", "end"), "done"
    )


def test_rerunning_a_step_marks_the_steps_after_it_stale(kernel, notebook):
    _, tags = CELLS["start"]  # changed code: not reused, so what follows it is stale
    _, data = kernel.execute("self.items = [1, 2, 3, 4]", tags, cell_id="cell-start")
    states = last(data, "states")["steps"]
    assert states["start"]["state"] == "done"
    assert {states[n]["state"] for n in ("body", "join", "end")} == {"stale"}
    code, _ = CELLS["body"]
    _, data = kernel.execute(code, cell_id="cell-body")
    assert states_of(data, "body")[-2:] == ["running", "done"]
    assert last(data, "states")["steps"]["join"]["state"] == "stale"


def test_a_failing_step_is_failed(kernel, notebook):
    messages, data = kernel.execute(
        "%%step end\nraise ValueError('broken end')", cell_id="cell-end-broken"
    )
    assert errors(messages)
    assert states_of(data, "end")[-1] == "failed"
    assert last(data, "graph")["steps"][-1]["cell_id"] == "cell-end-broken"
    code, _ = CELLS["end"]
    kernel.execute(code, cell_id="cell-end")


def test_flow_run_is_followed_as_a_run(kernel, notebook):
    # start makes 4 items, whichever of this module's tests ran before on this worker
    _, tags = CELLS["start"]
    kernel.execute("self.items = [1, 2, 3, 4]", tags, cell_id="cell-start")
    messages, data = kernel.execute("%flow run --quiet", cell_id="cell-run")
    assert not errors(messages)
    states = [d for d in data if d.get("kind") == "states"]
    assert states[0]["mode"] == "run" and states[0]["run"] != last(notebook["end"], "states")["run"]
    assert {s["state"] for s in states[0]["steps"].values()} == {"not-run"}
    assert states_of(data, "body") == ["not-run", "running", "done"] or states_of(data, "body") == [
        "not-run",
        "running",
        "done",
        "running",
        "done",
    ]
    final = states[-1]["steps"]
    assert {n: s["state"] for n, s in final.items()} == dict.fromkeys(
        ("start", "body", "join", "end"), "done"
    )
    assert final["body"]["total"] == 4
    # a front end that comes now gets the cells' own run, then the latest %flow run
    data = kernel.send_comm("comm_msg", {"kind": "ready", "protocol": 1})
    assert [(d["kind"], d.get("mode")) for d in data] == [
        ("graph", None),
        ("states", "cells"),
        ("states", "run"),
    ]
    assert data[1]["run"] == last(notebook["end"], "states")["run"]
    assert data[2]["run"] == states[0]["run"]
    # the same run again, every task reused (no task runs): all done all the same
    messages, data = kernel.execute("%flow run --reuse --quiet", cell_id="cell-run-reuse")
    assert not errors(messages)
    final = last(data, "states")
    assert final["mode"] == "run" and final["run"] != states[0]["run"]
    assert {n: s["state"] for n, s in final["steps"].items()} == dict.fromkeys(
        ("start", "body", "join", "end"), "done"
    )
    assert final["steps"]["body"]["done"] == 4
    # a step cell afterwards: the notebook's own run again
    code, _ = CELLS["end"]
    _, data = kernel.execute(code, cell_id="cell-end")
    assert last(data, "states")["mode"] == "cells"


def test_after_the_front_end_closes_the_comm_nothing_more_is_sent(kernel, notebook):
    kernel.send_comm("comm_close", {})
    code, _ = CELLS["end"]
    messages, data = kernel.execute(code, cell_id="cell-end")
    assert not errors(messages) and data == []
    # a new %load_ext opens a new comm
    messages, data = kernel.execute("%reload_ext flowbook", cell_id="cell-load")
    assert [d["kind"] for d in data] == ["hello"]
