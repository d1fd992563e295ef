"""Tag-marked cells run as steps in a real kernel, from the execute request's metadata.

The requests are sent as JupyterLab 4 sends them: the cell's metadata (its tags)
and its ``cellId`` in the message's metadata. Requests without metadata are what
papermill and nbclient send.
"""

from __future__ import annotations

import uuid

import pytest
from conftest import kernel_in
from jupyter_client.manager import KernelManager

TAGS = "flowbook:"


class Kernel:
    def __init__(self, km: KernelManager) -> None:
        self.km = km
        self.kc = km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)

    def run(self, code: str, tags: list[str] | None = None, metadata: bool = True) -> dict:
        """Execute ``code`` like a JupyterLab cell (tags and cellId) or like nbclient (none)."""
        content = {
            "code": code,
            "silent": False,
            "store_history": True,
            "user_expressions": {},
            "allow_stdin": False,
            "stop_on_error": False,
        }
        meta = {"tags": tags or [], "cellId": str(uuid.uuid4())} if metadata else {}
        msg = self.kc.session.msg("execute_request", content, metadata=meta)
        self.kc.shell_channel.send(msg)
        msg_id = msg["header"]["msg_id"]
        out: dict = {"text": "", "result": None, "error": None}
        while True:
            reply = self.kc.get_iopub_msg(timeout=120)
            if reply["parent_header"].get("msg_id") != msg_id:
                continue
            kind, body = reply["msg_type"], reply["content"]
            if kind == "stream":
                out["text"] += body["text"]
            elif kind == "execute_result":
                out["result"] = body["data"].get("text/plain")
            elif kind == "error":
                out["error"] = (body["ename"], body["evalue"], "\n".join(body["traceback"]))
            elif kind == "status" and body["execution_state"] == "idle":
                return out


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    with kernel_in(tmp_path_factory.mktemp("tags_kernel"), Kernel) as kernel:
        yield kernel


@pytest.fixture(scope="module")
def tagged_flow(kernel):
    """A notebook marked only with tags, run cell by cell as JupyterLab runs it."""
    cells = [
        ("%load_ext flowbook\n%flow name TagFlow", []),
        ("import math\ndef double(x):\n    return 2 * x", [f"{TAGS}setup"]),
        ("alpha = 2\nitems = [3, 1, 2]", ["parameters"]),
        (
            "self.base = double(self.alpha)\nprint('start says hi')",
            [f"{TAGS}step=start", f"{TAGS}next=body", f"{TAGS}foreach=items"],
        ),
        ("self.value = self.input * self.base", [f"{TAGS}step=body", f"{TAGS}next=join"]),
        (
            "self.total = sum(i.value for i in inputs)",
            [f"{TAGS}step=join", f"{TAGS}join", f"{TAGS}next=end"],
        ),
        ("self.final = self.total + math.floor(0.5)", [f"{TAGS}step=end"]),
    ]
    return [kernel.run(code, tags) for code, tags in cells]


def test_tagged_cells_run_as_steps(kernel, tagged_flow):
    for out in tagged_flow:
        assert out["error"] is None, out
    assert "start says hi" in tagged_flow[3]["text"]
    assert "✓ step 'start' done" in tagged_flow[3]["text"]
    assert "✓ step 'end' done" in tagged_flow[6]["text"]
    result = kernel.run("flow.body.value, flow.join.total, flow.end.final, flow.start.alpha")
    assert result["result"] == "([12, 4, 8], 24, 24, 2)", result
    # the setup cell ran in the kernel too, as %%setup does
    assert kernel.run("double(4)")["result"] == "8"


def test_flow_run_after_tagged_cells_uses_their_parameters(kernel, tagged_flow):
    out = kernel.run("%flow run --alpha 3 --quiet")
    assert out["error"] is None, out
    result = kernel.run("flow.last_run.data.final, flow.last_run.successful")
    assert result["result"] == "(36, True)", result


def test_a_tagged_step_reports_the_cells_own_line_numbers(kernel, tagged_flow):
    out = kernel.run("x = 1\nself.final = 'a' + self.total", [f"{TAGS}step=end"])
    assert out["error"] is not None and out["error"][0] == "StepFailed", out
    assert 'File "<step end>", line 2, in end' in out["text"] + out["error"][2]


def test_a_magic_cell_with_step_tags_runs_once_as_its_magic(kernel, tagged_flow):
    out = kernel.run("%%step end\nself.final = -1", [f"{TAGS}step=end"])
    assert out["error"] is None, out
    assert kernel.run("flow.end.final")["result"] == "-1"


def test_a_step_cell_without_metadata_fails_with_one_line(kernel, tagged_flow):
    out = kernel.run("self.x = 1\nself.next(self.end)", metadata=False)
    assert out["error"] is not None, out
    ename, evalue, _ = out["error"]
    assert ename == "FlowbookError"
    assert "\n" not in evalue
    assert "papermill --engine flowbook" in evalue and "flowbook run" in evalue
    assert evalue.startswith("In[")
    # exploration cells without metadata still run as plain code
    assert kernel.run("1 + 1", metadata=False)["result"] == "2"


def test_tag_errors_name_the_cell(kernel, tagged_flow):
    out = kernel.run("self.y = 1", [f"{TAGS}step"])
    assert out["error"] is not None, out
    assert "the tag flowbook:step needs =NAME" in out["error"][1]
    assert out["error"][1].startswith("In[")
