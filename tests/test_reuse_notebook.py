"""Reuse in notebooks: re-executed ``%%step`` cells, ``%flow status``, ``%flow run
--reuse``, ``%flow explain`` in a real kernel, and ``flowbook run NB --reuse``."""

from __future__ import annotations

import re
import subprocess
import sys

import nbformat
from test_notebooks import _env, _errors, _execute, _notebook, _text

CELLS = [
    "%load_ext flowbook",  # 0
    "%%setup\nSCALE = 2\nOTHER = 1",  # 1
    "%%parameters\nalpha = 0.5",  # 2
    "%%step start --next train\nself.data = [1, 2, 3]",  # 3
    "%%step train --next end\nprint('training')\nself.model = sum(self.data) * SCALE",  # 4
    "%%step end\nprint('model', self.model)",  # 5
    # 6: the same train cell again: reused at once, nothing after it goes stale
    "%%step train --next end\nprint('training')\nself.model = sum(self.data) * SCALE",
    "%flow status",  # 7
    "%%step start --next train\nself.data = [1, 2, 3, 4]",  # 8: an edit
    "%flow status",  # 9: train (its input) and end (after it) are stale
    "%flow run --reuse",  # 10
    "%flow run --reuse --alpha 0.7",  # 11: no step reads alpha
    "%flow explain",  # 12
    "%flow reuse off",  # 13
    "%%step start --next train\nself.data = [1, 2, 3, 4]",  # 14: runs again
    "%%step start --next train --no-reuse\nself.data = [1, 2, 3, 4]",  # 15
]


def test_step_cells_status_runs_and_explain_in_a_kernel(tmp_path, monkeypatch):
    nb = _notebook(CELLS)
    _execute(nb, tmp_path, tmp_path / ".flowbook", monkeypatch)
    out = [_text(cell) for cell in nb.cells]
    for index, cell in enumerate(nb.cells):
        assert not _errors(cell), (index, out[index])
    assert "train: runs" not in out[4]  # a cell's first run has nothing to explain
    rerun = out[6]
    assert re.search(r"train: reused from \d+/train/2 \(same code, inputs and parameters\)", rerun)
    assert "training" not in rerun
    assert "(1 task, reused)" in rerun
    assert "stale now" not in rerun  # the same artifacts: end is still valid
    assert "up to date" in out[7]
    assert "start: runs (its code changed: line 2)" in out[8]
    assert "train: input 'data' changed, from step 'start'" in out[9]
    assert "end: step 'train' before it is stale" in out[9]
    whole = out[10]
    assert re.search(r"start: reused from \d+/start/\d+ \(same code", whole)
    assert "train: runs (input 'data' changed, from step 'start')" in whole
    assert "model 20" in whole
    again = out[11]
    assert len(re.findall(r"^(start|train|end): reused from", again, re.M)) == 3, again
    assert "end                  done  reused from" in again  # the panel's text form
    explained = out[12].splitlines()
    assert re.fullmatch(r"Run NotebookFlow/\d+:", explained[0]), explained
    assert all("reused from" in line for line in explained[1:4]), explained
    assert "Reuse of unchanged step cells is off." in out[13]
    assert "start: runs" not in out[14] and "reused" not in out[14]  # reuse off: it just runs
    assert "(1 task)" in out[14]


def test_flowbook_run_of_a_notebook_file_with_reuse(tmp_path):
    cells = [
        "%%setup\nimport math",
        "%%step start --next end\nself.x = math.sqrt(16)",
        "%%step end\nprint('x is', self.x)",
    ]
    path = tmp_path / "reuse_me.ipynb"
    nbformat.write(_notebook(cells), str(path))

    def run(*args: str) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [sys.executable, "-m", "flowbook", "run", str(path), "--reuse", *args],
            cwd=tmp_path,
            env=_env(tmp_path / ".flowbook"),
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert result.returncode == 0, result.stderr
        return result

    first = run()
    assert "start: runs (no earlier task with this key)" in first.stdout
    second = run()
    assert re.search(r"start: reused from \d+/start/1 \(same code", second.stdout)
    assert "x is" not in second.stdout
    nb = nbformat.read(str(path), 4)
    nb.cells[0].source = "%%setup\nimport math\nimport os"  # not used by any step
    nb.cells[2].source = "%%step end\nprint('x is now', self.x)"
    nbformat.write(nb, str(path))
    third = run()
    assert re.search(r"start: reused from \d+/start/1", third.stdout)
    assert "end: runs (its code changed: line 2)" in third.stdout
    nb.cells[0].source = "%%setup\nimport math as math"
    nbformat.write(nb, str(path))
    fourth = run()
    assert "start: runs (the setup code it uses changed: setup cell 1, line 1)" in fourth.stdout


KERNEL_CASES = [
    "%load_ext flowbook",  # 0
    "%%setup\nSCALE = 2\nimport features",  # 1
    "%%step start --next end\nself.x = SCALE * 10 + features.f()\nself.y = 1",  # 2
    "%%step end\nprint('x is', self.x)",  # 3
    "SCALE = 5",  # 4: an exploration cell rebinds a setup name
    "%%step start --next end\nself.x = SCALE * 10 + features.f()\nself.y = 1",  # 5
    "%flow status",  # 6
    "%%setup\nSCALE = 2\nimport features",  # 7: the setup cell again
    "open('features.py', 'w').write('def f():\\n    return 2\\n')",  # 8: edit the module
    "%%step start --next end\nself.x = SCALE * 10 + features.f()\nself.y = 1",  # 9
    "%%step start --next end\nself.x = SCALE * 10\nself.y = 1",  # 10: no module
    "%%step start --next end\nself.x = SCALE * 10\nself.y = 3",  # 11
    "%%step start --next end\nself.x = SCALE * 10 + 1\nself.y = 3",  # 12
]


def test_what_the_kernel_runs_is_what_is_fingerprinted(tmp_path, monkeypatch):
    (tmp_path / "features.py").write_text("def f():\n    return 1\n")
    nb = _notebook(KERNEL_CASES)
    _execute(nb, tmp_path, tmp_path / ".flowbook", monkeypatch)
    out = [_text(cell) for cell in nb.cells]
    for index, cell in enumerate(nb.cells):
        assert not _errors(cell), (index, out[index])
    rebound = "'SCALE' was given a new value outside its %%setup cell"
    assert f"start: runs ({rebound}" in out[5]
    assert "stale now: end" in out[5]  # it ran with SCALE = 5: other results
    assert f"start: {rebound}" in out[6]
    assert "features.py changed on disk after it was imported here" in out[9]
    assert "restart the kernel" in out[9]
    # each reason compares with the cell's latest execution, not its first
    assert "start: runs (its code changed: line 3)" in out[11]
    assert "start: runs (its code changed: line 2)" in out[12]
