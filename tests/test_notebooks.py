"""Notebook flows: magics in a real kernel, headless runs, papermill, tags, exports."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from conftest import TEST_USER, TRACEBACK
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = REPO / "notebooks"


def _env(datastore: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLOWBOOK_", "METAFLOW_"))}
    env.update(FLOWBOOK_DATASTORE=str(datastore), USER=TEST_USER, USERNAME=TEST_USER)
    return env


def _notebook(cells: list, name: str = "", tags: dict[int, list[str]] | None = None):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    if name:
        nb.metadata["flowbook"] = {"flow_name": name}
    nb.cells = [nbformat.v4.new_code_cell(source) for source in cells]
    for index, cell_tags in (tags or {}).items():
        nb.cells[index].metadata["tags"] = cell_tags
    return nb


def _execute(nb, cwd: Path, datastore: Path, monkeypatch) -> None:
    for key, value in _env(datastore).items():
        monkeypatch.setenv(key, value)
    for key in [k for k in os.environ if k.startswith(("FLOWBOOK_", "METAFLOW_"))]:
        if key != "FLOWBOOK_DATASTORE":
            monkeypatch.delenv(key)
    NotebookClient(nb, kernel_name="python3", timeout=180, allow_errors=True).execute(cwd=str(cwd))


def _text(cell) -> str:
    parts = []
    for out in cell.get("outputs", []):
        if out.output_type == "stream":
            parts.append(out.text)
        elif out.output_type == "error":
            parts.append(f"ERROR {out.ename}: {out.evalue}\n" + "\n".join(out.traceback))
        else:
            parts.append(str(out.get("data", {}).get("text/plain", "")))
    return "".join(parts)


def _errors(cell) -> list:
    return [o for o in cell.get("outputs", []) if o.output_type == "error"]


@pytest.fixture
def client_at(monkeypatch):
    import flowbook.client as fb_client

    def point(datastore: Path):
        fb_client.datastore(str(datastore))
        fb_client.namespace(None)
        return fb_client

    yield point
    fb_client.datastore(None)
    fb_client.default_namespace()


# ---------------------------------------------------------------------- in a kernel
KERNEL_CELLS = [
    "%load_ext flowbook\n%flow name KernelFlow\nimport os\nkernel_pid = os.getpid()",  # 0
    "%%setup\nimport math\ndef double(x):\n    return 2 * x\nclass Box:\n"
    "    def __init__(self, v):\n        self.v = v",  # 1
    "%%parameters\nalpha = 2\nitems = [3, 1, 2]",  # 2
    "%%step start --next body --foreach items\nimport os\nself.pid = os.getpid()\n"
    "self.base = double(self.alpha)\nprint('start says hi')",  # 3
    "%%step body --next join\nself.value = Box(self.input * self.base).v",  # 4
    "flow.body.value, flow.start.pid != kernel_pid, flow.start.base",  # 5
    "%%step join --join --next end\nself.total = sum(i.value for i in inputs)",  # 6
    "%%step end\nself.final = self.total + math.floor(0.5)",  # 7
    "%%step start --next body --foreach items\nself.base = double(self.alpha) + 1",  # 8
    "flow.body.stale, flow.start.stale, sorted(get_ipython()._flowbook_session.stale)",  # 9
    "%flow status",  # 10
    "%flow run --alpha 3",  # 11
    "flow.last_run.data.final, flow.last_run.successful",  # 12
    "%flow show",  # 13
    "only_here = 41",  # 14
    "%%step end\nx = 1\ny = 2\nprint(only_here)",  # 15: warning, then NameError on line 4
    "%%step orphan --next end\nself.z = 1",  # 16: no parent
    "%%step end\nself.final = 'a' + self.total",  # 17: TypeError on line 2
    "%flow nosuchcommand",  # 18
    "%%step broken --next end\nself.x = (",  # 19: invalid Python
    "%flow export --to flow exported.py\nprint(open('exported.py').read())",  # 20
    "sid = get_ipython()._flowbook_session.run_id\n%flow logs {sid}/start/1",  # 21
    "class CellFlow(FlowSpec):\n    @step\n    def start(self):\n        self.v = double(5)\n"
    "        self.next(self.end)\n    @step\n    def end(self):\n        pass",  # 22
    "%flow run CellFlow",  # 23
    "%unload_ext flowbook\n'flow' in globals(), 'step' in get_ipython().magics_manager.magics['cell']",
]
RESUME_CELLS = [
    "%load_ext flowbook\n%flow name ResumeMagicFlow\nimport os",
    "%%step start --next end\nself.a = 1",
    "%%step end\nimport os\nif os.path.exists('broken'):\n    raise ValueError('broken end')\n"
    "self.b = self.a + 1",
    "open('broken', 'w').close()",
    "%flow run --quiet",
    "os.remove('broken')\n%flow resume --quiet",
    "flow.last_run.data.b, flow.last_run.origin_run_id is not None, "
    "flow.last_run['start'].task.origin_pathspec is not None",
]


@pytest.fixture(scope="module")
def kernel_notebook(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("kernel")
    datastore = workdir / ".flowbook"
    cells = list(KERNEL_CELLS)
    cells[22] = "from flowbook import FlowSpec, step\n" + cells[22]
    nb = _notebook(cells)
    mp = pytest.MonkeyPatch()
    try:
        _execute(nb, workdir, datastore, mp)
    finally:
        mp.undo()
    return nb.cells, workdir, datastore


def test_step_cells_run_as_tasks_and_results_come_back(kernel_notebook):
    cells, _, _ = kernel_notebook
    for index in (1, 2, 3, 4, 6, 7, 8):
        assert not _errors(cells[index]), _text(cells[index])
    assert "start says hi" in _text(cells[3])
    assert "✓ step 'start' done" in _text(cells[3])
    # foreach values in split order; tasks ran in another process than the kernel
    assert _text(cells[5]).strip() == "([12, 4, 8], True, 4)"


def test_rerunning_a_step_marks_the_steps_after_it_stale(kernel_notebook):
    cells, _, _ = kernel_notebook
    assert "stale now: body, end, join" in _text(cells[8])
    assert _text(cells[9]).strip() == "(True, False, ['body', 'end', 'join'])"
    status = _text(cells[10])
    assert "start: done" in status and "body: stale" in status


def test_flow_run_runs_the_whole_notebook_flow_with_parameters(kernel_notebook, client_at):
    cells, _, datastore = kernel_notebook
    assert not _errors(cells[11]), _text(cells[11])
    # alpha=3: base = 2*3+1 = 7 (the latest start cell), total = 7*(3+1+2)
    assert _text(cells[12]).strip() == "(42, True)"
    client = client_at(datastore)
    run = client.Flow("KernelFlow").latest_run
    assert run.data.final == 42 and run.parameters["alpha"] == 3
    assert "Step body [stale]" in _text(cells[13])


def test_a_name_only_an_exploration_cell_defines_gets_a_warning(kernel_notebook):
    cells, _, _ = kernel_notebook
    text = _text(cells[15])
    assert "uses 'only_here', which only an exploration cell defines (In[15])" in text
    assert 'File "<step end>", line 4, in end' in text
    assert "NameError" in text


def test_failures_show_the_cells_own_line_numbers_and_fail_the_cell(kernel_notebook):
    cells, _, _ = kernel_notebook
    text = _text(cells[17])
    assert 'File "<step end>", line 2, in end' in text
    assert "TypeError" in text
    errors = _errors(cells[17])
    assert errors and errors[0].ename == "StepFailed"
    assert "/site-packages/" not in "".join(errors[0].traceback)
    assert "flowbook/" not in "".join(errors[0].traceback)


@pytest.mark.parametrize(
    "index, needle",
    [
        (16, "no step goes to 'orphan'"),
        (18, "%flow nosuchcommand: unknown command"),
        (19, "invalid Python on line 2 of the cell"),
    ],
)
def test_bad_input_fails_the_cell_with_one_message(kernel_notebook, index, needle):
    cells, _, _ = kernel_notebook
    errors = _errors(cells[index])
    assert errors, _text(cells[index])
    assert needle in errors[0].evalue
    assert len(errors[0].traceback) == 1  # the message, not flowbook's frames


def test_a_parent_that_has_not_run_is_named(tmp_path, monkeypatch):
    nb = _notebook(
        [
            "%load_ext flowbook",
            "%%step start --next middle\nraise ValueError('start is broken')",
            "%%step middle --next end\nself.b = 2",
        ]
    )
    _execute(nb, tmp_path, tmp_path / ".flowbook", monkeypatch)
    assert "ValueError: start is broken" in _text(nb.cells[1])
    errors = _errors(nb.cells[2])
    assert errors and "needs the results of step 'start'" in errors[0].evalue


def test_end_after_an_unjoined_foreach_is_refused(tmp_path, monkeypatch):
    nb = _notebook(
        [
            "%load_ext flowbook",
            "%%step start --next body --foreach items\nself.items = [1, 2]",
            "%%step body --next end\nself.v = self.input",
            "%%step end\npass",
        ]
    )
    _execute(nb, tmp_path, tmp_path / ".flowbook", monkeypatch)
    errors = _errors(nb.cells[3])
    assert errors and "has not been joined" in errors[0].evalue and "'start'" in errors[0].evalue


def test_export_from_the_kernel_and_logs(kernel_notebook):
    cells, workdir, _ = kernel_notebook
    source = _text(cells[20])
    assert "class KernelFlow(FlowSpec):" in source
    assert "only_here" not in source.split("class KernelFlow")[0]
    assert "def double(x):" in source
    assert _text(cells[21]) == "start says hi\n"  # the first start task's stored output


def test_flow_run_of_a_flowspec_class_defined_in_a_cell(kernel_notebook):
    cells, _, _ = kernel_notebook
    assert not _errors(cells[23]), _text(cells[23])
    assert "✓ run CellFlow/" in _text(cells[23])


def test_unload_removes_the_magics_and_the_flow_object(kernel_notebook):
    cells, _, _ = kernel_notebook
    assert _text(cells[24]).strip() == "(False, False)"


def test_flow_resume_magic_finishes_a_failed_run(tmp_path, monkeypatch):
    nb = _notebook(RESUME_CELLS)
    _execute(nb, tmp_path, tmp_path / ".flowbook", monkeypatch)
    failed = _errors(nb.cells[4])
    assert failed and "%flow resume --origin-run-id" in failed[0].evalue
    assert not _errors(nb.cells[5]), _text(nb.cells[5])
    assert _text(nb.cells[6]).strip() == "(2, True, True)"


def test_step_options_become_decorators_headless_and_in_exports(tmp_path, client_at):
    cells = [
        "%%step start --next end --retry 1 --catch oops --timeout 30 "
        "--resources cpu=2,memory=4000\nraise KeyError('always')",
        "%%step end\nself.caught = self.oops.type",
    ]
    path = _write(_notebook(cells, name="OptionsFlow"), tmp_path / "options.ipynb")
    datastore = tmp_path / ".flowbook"
    run = _flowbook("run", str(path), cwd=tmp_path, datastore=datastore)
    assert run.returncode == 0, run.stderr
    assert "Retrying: attempt 2 of 2" in run.stdout
    result = client_at(datastore).Flow("OptionsFlow").latest_run
    assert result.data.caught == "KeyError"
    export = _flowbook("export", str(path), "-o", "opts.py", cwd=tmp_path, datastore=datastore)
    assert export.returncode == 0, export.stderr
    text = (tmp_path / "opts.py").read_text()
    assert "@retry(times=1, minutes_between_retries=0)" in text
    assert "@catch(var='oops', print_exception=True)" in text
    assert "@timeout(seconds=30.0)" in text
    assert "@resources(cpu=2, memory=4000)" in text


# ---------------------------------------------------------------------- headless
def _write(nb, path: Path) -> Path:
    nbformat.write(nb, str(path))
    return path


def _flowbook(*args: str, cwd: Path, datastore: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flowbook", *args],
        cwd=cwd,
        env=_env(datastore),
        capture_output=True,
        text=True,
        timeout=180,
    )


TAGGED = [
    "import flowbook",  # exploration
    "import json\ndef triple(x):\n    return 3 * x",  # setup (tag)
    "alpha = 5\nnames = ['a', 'bb']",  # parameters (tag)
    "self.scaled = triple(self.alpha)",  # start (tags)
    "self.length = len(self.input) * self.scaled",  # body
    "open('EXPLORATION_RAN', 'w').write('x')\nraise SystemExit('never')",  # exploration
    "self.total = sum(i.length for i in inputs)",  # join
    "print('total', self.total)\nself.summary = json.dumps({'t': self.total})",  # end
]
TAGS = {
    1: ["flowbook:setup"],
    2: ["parameters", "other-tag"],
    3: ["flowbook:step=start", "flowbook:next=body", "flowbook:foreach=names"],
    4: ["flowbook:step=body", "flowbook:next=join"],
    6: ["flowbook:step=join", "flowbook:join", "flowbook:next=end"],
    7: ["flowbook:step=end"],
}


def test_tagged_notebook_runs_headless_without_exploration_cells(tmp_path, client_at):
    path = _write(_notebook(TAGGED, tags=TAGS), tmp_path / "my_note-book.ipynb")
    datastore = tmp_path / ".flowbook"
    check = _flowbook("check", str(path), cwd=tmp_path, datastore=datastore)
    assert check.returncode == 0, check.stderr
    show = _flowbook("show", str(path), cwd=tmp_path, datastore=datastore)
    assert "=> body (foreach over 'names')" in show.stdout
    run = _flowbook("run", str(path), "--alpha", "2", cwd=tmp_path, datastore=datastore)
    assert run.returncode == 0, run.stderr
    assert not (tmp_path / "EXPLORATION_RAN").exists()
    client = client_at(datastore)
    result = client.Flow("MyNoteBookFlow").latest_run  # named after the file
    assert result.data.total == (1 + 2) * 6
    assert json.loads(result.data.summary) == {"t": 18}


def test_tag_tool_converts_both_ways_and_keeps_other_tags(tmp_path):
    path = _write(_notebook(TAGGED, tags=TAGS), tmp_path / "nb.ipynb")
    datastore = tmp_path / ".flowbook"
    to_magics = _flowbook("tag", str(path), "--to", "magics", cwd=tmp_path, datastore=datastore)
    assert to_magics.returncode == 0, to_magics.stderr
    nb = nbformat.read(str(path), 4)
    assert nb.cells[3].source.startswith("%%step start --next body --foreach names\n")
    assert nb.cells[1].source.startswith("%%setup\n")
    assert nb.cells[2].metadata["tags"] == ["parameters", "other-tag"]
    assert not any(t.startswith("flowbook:") for c in nb.cells for t in c.metadata.get("tags", []))
    back = _flowbook("tag", str(path), "--to", "tags", cwd=tmp_path, datastore=datastore)
    assert back.returncode == 0, back.stderr
    nb = nbformat.read(str(path), 4)
    assert nb.cells[3].metadata["tags"] == TAGS[3]
    assert nb.cells[3].source == TAGGED[3]
    run = _flowbook("run", str(path), cwd=tmp_path, datastore=datastore)
    assert run.returncode == 0, run.stderr


def test_cells_without_metadata_or_tags_are_read_defensively(tmp_path):
    nb = _notebook(["%%step start --next end\nself.a = 1", "%%step end\npass"], name="Plain")
    for cell in nb.cells:
        cell.metadata = {}
    nb.cells.insert(0, nbformat.v4.new_markdown_cell("# title"))
    path = _write(nb, tmp_path / "plain.ipynb")
    run = _flowbook("run", str(path), cwd=tmp_path, datastore=tmp_path / ".flowbook")
    assert run.returncode == 0, run.stderr
    assert "run-id" in run.stdout


@pytest.mark.parametrize(
    "cells, needle",
    [
        (["%%step start --next end\nself.a = ("], "invalid Python"),
        (["%%step start --next end\npass", "%%step start --next end\npass"], "two cells"),
        (["%%parameters\nalpha = compute()", "%%step start --next end\npass"], "literal"),
        (["%%step start --next end\nself.next(self.other)"], "give the transition once"),
    ],
)
def test_bad_notebooks_are_refused_naming_the_cell(tmp_path, cells, needle):
    path = _write(_notebook([*cells, "%%step end\npass"]), tmp_path / "bad.ipynb")
    run = _flowbook("run", str(path), cwd=tmp_path, datastore=tmp_path / ".flowbook")
    assert run.returncode == 1
    assert needle in run.stderr
    assert TRACEBACK not in run.stderr


# ---------------------------------------------------------------------- exports
def test_exports_run_with_flowbook_and_with_real_metaflow(tmp_path, client_at):
    datastore = tmp_path / ".flowbook"
    path = _write(_notebook(TAGGED, name="ExportedFlow", tags=TAGS), tmp_path / "nb.ipynb")
    headless = _flowbook("run", str(path), cwd=tmp_path, datastore=datastore)
    assert headless.returncode == 0, headless.stderr
    for target, filename in (("flow", "fb_flow.py"), ("metaflow", "mf_flow.py")):
        export = _flowbook(
            "export", str(path), "--to", target, "-o", filename, cwd=tmp_path, datastore=datastore
        )
        assert export.returncode == 0, export.stderr
    text = (tmp_path / "fb_flow.py").read_text()
    assert "EXPLORATION_RAN" not in text and "import flowbook" not in text
    assert "alpha = Parameter('alpha', default=5)" in text
    assert "from metaflow import" in (tmp_path / "mf_flow.py").read_text()
    env = _env(datastore)
    fb = subprocess.run(
        [sys.executable, "fb_flow.py", "run"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert fb.returncode == 0, fb.stderr
    mf_home = tmp_path / "mfhome"
    mf_home.mkdir()
    mf_env = dict(env, METAFLOW_HOME=str(mf_home), METAFLOW_DEFAULT_METADATA="local")
    mf = subprocess.run(
        [sys.executable, "mf_flow.py", "--no-pylint", "run"],
        cwd=tmp_path,
        env=mf_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert mf.returncode == 0, mf.stdout + mf.stderr
    read_mf = subprocess.run(
        [
            sys.executable,
            "-c",
            "from metaflow import Flow, namespace\nnamespace(None)\n"
            "run = Flow('ExportedFlow').latest_run\n"
            "print(run.data.total, run.data.summary, sorted(t.data.length for t in run['body']))",
        ],
        cwd=tmp_path,
        env=mf_env,
        capture_output=True,
        text=True,
    )
    assert read_mf.returncode == 0, read_mf.stderr
    client = client_at(datastore)
    runs = list(client.Flow("ExportedFlow"))
    assert len(runs) == 2  # the headless run and the exported file's run
    for run in runs:
        lengths = sorted(t.data.length for t in run["body"])
        expected = f"{run.data.total} {run.data.summary} {lengths}"
        assert read_mf.stdout.strip() == expected


# ---------------------------------------------------------------------- examples
@pytest.fixture(scope="module")
def executed_examples(tmp_path_factory):
    """Every example notebook executed with papermill, in order (train before predict)."""
    workdir = tmp_path_factory.mktemp("examples")
    datastore = workdir / ".flowbook"
    outputs = {}
    for name in ["hello", "counter_branches", "foreach", "wine_train", "wine_predict"]:
        shutil.copy(NOTEBOOKS / f"{name}.ipynb", workdir / f"{name}.ipynb")
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "papermill",
                "--no-progress-bar",
                f"{name}.ipynb",
                f"out_{name}.ipynb",
            ],
            cwd=workdir,
            env=_env(datastore),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        outputs[name] = nbformat.read(str(workdir / f"out_{name}.ipynb"), 4)
    shutil.copy(NOTEBOOKS / "parameters.ipynb", workdir / "parameters.ipynb")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "papermill",
            "--no-progress-bar",
            "parameters.ipynb",
            "out_parameters.ipynb",
            "-p",
            "creature",
            "seal",
            "-p",
            "count",
            "3",
        ],
        cwd=workdir,
        env=_env(datastore),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    outputs["parameters"] = nbformat.read(str(workdir / "out_parameters.ipynb"), 4)
    return outputs, datastore


def test_example_notebooks_run_end_to_end(executed_examples, client_at):
    outputs, datastore = executed_examples
    client = client_at(datastore)
    assert client.Flow("HelloFlow").latest_run.data.greeting == "hello"
    branches = client.Flow("CounterBranchFlow").latest_run.data
    assert (branches.count, branches.creature) == (2, "dog")
    assert client.Flow("ForeachFlow").latest_run.data.best == "mouse"
    train = client.Flow("ClassifierTrainFlow").latest_run
    assert train.successful and train.data.results[0][1] > 0.8
    predict = client.Flow("ClassifierPredictFlow").latest_run
    assert predict.data.prediction == 0
    assert predict.data.train_run_id.startswith("ClassifierTrainFlow/")
    text = "".join(_text(c) for c in outputs["wine_predict"].cells)
    assert "Predicted class 0" in text


def test_papermill_parameters_reach_the_steps(executed_examples, client_at):
    outputs, datastore = executed_examples
    client = client_at(datastore)
    assert client.Flow("ParameterFlow").latest_run.data.summary == "3 x seal at 0.5"
    text = "".join(_text(c) for c in outputs["parameters"].cells)
    assert "seal is a string of 4 characters" in text
    injected = [
        c
        for c in outputs["parameters"].cells
        if "injected-parameters" in c.metadata.get("tags", [])
    ]
    assert injected and "creature = " in injected[0].source


def test_join_mistakes_and_unmarked_methods_are_named_at_their_cell(tmp_path, monkeypatch):
    cells = [
        "%load_ext flowbook\n%flow name JoinMsgFlow",
        "%%step start --next a b\nself.x = 1",
        "%%step a --next join\nself.y = 1",
        "%%step b --next join\nself.y = 2",
        "%%step join --next end\nself.z = 3",  # 4: a join without --join
        "%reload_ext flowbook\n%flow name ForeachMsgFlow",
        "%%step start --next body --foreach items\nself.items = [1, 2]",
        "%%step body --next total\nself.v = self.input",
        "%%step total --next end\nself.total = sum(i.v for i in inputs)",  # 8: no --join
        "from flowbook import FlowSpec, step\nclass UnmarkedFlow(FlowSpec):\n    @step\n"
        "    def start(self):\n        self.next(self.middle)\n    def middle(self):\n"
        "        self.next(self.end)\n    @step\n    def end(self):\n        pass",
        "%flow run UnmarkedFlow",  # 10: middle lacks @step
    ]
    nb = _notebook(cells)
    _execute(nb, tmp_path, tmp_path / ".flowbook", monkeypatch)
    expected = {
        4: "Flow JoinMsgFlow, step 'join' (In[*]): it has several parents (a, b), so it "
        "joins them; write %%step join --join",
        8: "Flow ForeachMsgFlow, step 'total' (In[*]): the body reads `inputs`, which only "
        "a join step has; write %%step total --join",
        10: "Flow UnmarkedFlow: step 'start' calls self.next(self.middle), but 'middle' is "
        "a method without @step; decorate 'def middle' with @step.",
    }
    for index, needle in expected.items():
        errors = _errors(nb.cells[index])
        assert errors, _text(nb.cells[index])
        message = re.sub(r"In\[\d+\]", "In[*]", errors[0].evalue)
        assert needle in message and "\n" not in message
    # the correct cells around them ran
    for index in (1, 2, 3, 6, 7):
        assert not _errors(nb.cells[index]), _text(nb.cells[index])
