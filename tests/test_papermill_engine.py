"""``papermill --engine flowbook`` runs a tag-marked notebook; plain papermill refuses it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from conftest import TEST_USER

REPO = Path(__file__).resolve().parent.parent
TAGGED = REPO / "notebooks" / "tags.ipynb"
PAPERMILL = [sys.executable, "-m", "papermill"]


def _papermill(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLOWBOOK_", "METAFLOW_"))}
    env.update(FLOWBOOK_DATASTORE=str(cwd / ".flowbook"), USER=TEST_USER)
    return subprocess.run(
        [*PAPERMILL, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=240
    )


def _outputs(cell) -> str:
    parts = []
    for out in cell.get("outputs", []):
        if out.output_type == "stream":
            parts.append(out.text)
        elif out.output_type == "error":
            parts.append(f"ERROR {out.ename}: {out.evalue}")
        else:
            parts.append(str(out.get("data", {}).get("text/plain", "")))
    return "".join(parts)


def _cell(nb, source_start: str):
    return next(c for c in nb.cells if c.source.startswith(source_start))


@pytest.fixture
def client_at():
    import flowbook.client as fb_client

    def point(datastore: Path):
        fb_client.datastore(str(datastore))
        fb_client.namespace(None)
        return fb_client

    yield point
    fb_client.datastore(None)
    fb_client.default_namespace()


def test_engine_runs_a_tag_marked_notebook_with_injected_parameters(tmp_path, client_at):
    out = tmp_path / "out.ipynb"
    result = _papermill(
        "--engine", "flowbook", str(TAGGED), str(out), "-p", "alpha", "0.5", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    nb = nbformat.read(out, as_version=4)
    # the interactive steps saw the injected value: 1..3 * 0.5 + 1
    assert _outputs(_cell(nb, "flow.scale.scaled")).strip() == "[1.5, 2.0, 2.5]"
    assert "mean 2.0" in _outputs(_cell(nb, 'print("mean"'))
    assert _outputs(_cell(nb, "round(flow.last_run")).strip() == "2.0"
    run = client_at(tmp_path / ".flowbook").Flow("TagsFlow").latest_run
    assert run.successful and run.parameters["alpha"] == 0.5 and run.data.mean == 2.0


def test_plain_papermill_stops_at_the_first_step_cell_with_one_line(tmp_path):
    out = tmp_path / "out.ipynb"
    result = _papermill(str(TAGGED), str(out), cwd=tmp_path)
    assert result.returncode != 0
    nb = nbformat.read(out, as_version=4)
    first_step = _cell(nb, '"""Fan out over the sizes."""')
    errors = [o for o in first_step.outputs if o.output_type == "error"]
    assert errors and errors[0].ename == "FlowbookError", _outputs(first_step)
    message = errors[0].evalue
    assert "\n" not in message
    assert "papermill --engine flowbook" in message and "flowbook run" in message
    # the cells before it ran as plain code; nothing after it ran
    assert not [o for o in _cell(nb, "import statistics").outputs if o.output_type == "error"]
    assert _cell(nb, "flow.scale.scaled").get("outputs") == []
