"""Every Client object takes ``datastore=`` and ``namespace=`` for itself.

Two datastores, each with a run made by a real ``python flow.py run`` by a
different user, are read side by side while the global settings
(``flowbook.client.datastore`` and ``namespace``) point somewhere else and are
never touched. Modules other than client.py use only this public way.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest
from conftest import FlowRunner

import flowbook
from flowbook import client
from flowbook.datastore import Datastore
from flowbook.exceptions import ClientNotFound

PACKAGE = Path(flowbook.__file__).parent


@pytest.fixture(scope="module")
def two_datastores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str]]:
    """{"a": (root, run_id) by alice, "b": (root, run_id) by bob}, made by subprocesses."""
    made = {}
    for name, user in (("a", "alice"), ("b", "bob")):
        runner = FlowRunner(tmp_path_factory.mktemp(f"store_{name}"))
        result = runner("simple", "run", "--label", name, env={"USER": user})
        assert result.returncode == 0, result
        made[name] = (runner.datastore, result.run_id)
    return made


@pytest.fixture
def global_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The global settings point at an empty datastore, in the namespace of 'carol'."""
    for var in ("FLOWBOOK_USER", "METAFLOW_USER", "FLOWBOOK_DATASTORE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("USER", "carol")
    empty = tmp_path / "empty"
    client.datastore(str(empty))
    client.default_namespace()
    try:
        yield str(empty)
    finally:
        client.datastore(None)
        client.default_namespace()


def _unchanged(empty: str) -> None:
    assert client.get_datastore() == empty
    assert client.get_namespace() == "user:carol"


def test_two_datastores_side_by_side(two_datastores, global_settings):
    (root_a, run_a), (root_b, run_b) = two_datastores["a"], two_datastores["b"]
    flow_a = client.Flow("SimpleFlow", datastore=str(root_a), namespace=None)
    flow_b = client.Flow("SimpleFlow", datastore=Datastore(str(root_b)), namespace=None)

    assert [r.id for r in flow_a] == [run_a]
    assert [r.id for r in flow_b] == [run_b]
    run_a_obj, run_b_obj = flow_a.latest_run, flow_b[run_b]
    # Everything a run gives reads its own datastore: steps, tasks, artifacts, logs.
    assert run_a_obj.data.final == "a:2:P,Q"
    assert run_b_obj.data.final == "b:2:P,Q"
    assert run_a_obj["start"].task["items"].data == ["p", "q"]
    assert run_b_obj["end"].task.stdout == "final b:2:P,Q\n"
    each_b = sorted(run_b_obj["each"], key=lambda t: t.index)
    assert [t.data.item for t in each_b] == ["P", "Q"]
    for obj in (run_a_obj, run_a_obj["end"], run_a_obj["end"].task, run_a_obj["end"].task["final"]):
        assert obj.datastore.url == str(root_a)
        assert obj.namespace is None
    assert run_b_obj["start"].task.datastore.url == str(root_b)
    assert run_a_obj == client.Run(run_a_obj.pathspec, datastore=str(root_a), namespace=None)
    copy = shutil.copytree(root_a, global_settings + "_copy_of_a")
    twin = client.Run(run_a_obj.pathspec, datastore=copy, namespace=None)
    assert twin.data.final == "a:2:P,Q"
    assert twin != run_a_obj and len({twin, run_a_obj}) == 2  # same pathspec, two datastores
    assert [f.id for f in client.Metaflow(datastore=str(root_a)).flows] == ["SimpleFlow"]
    # The global datastore is empty and was never changed.
    with pytest.raises(ClientNotFound):
        client.Flow("SimpleFlow")
    _unchanged(global_settings)


def test_objects_by_pathspec_check_their_own_datastore(two_datastores, global_settings):
    (root_a, run_a), (root_b, _) = two_datastores["a"], two_datastores["b"]
    where = {"datastore": str(root_a), "namespace": None}
    step = client.Step(f"SimpleFlow/{run_a}/start", **where)
    task = client.Task(f"SimpleFlow/{run_a}/start/{step.task.id}", **where)
    artifact = client.DataArtifact(f"{task.pathspec}/label", **where)
    assert artifact.data == "a"
    assert task.data.x == 1
    # The same pathspec is not in datastore b (unless b's run has the same id).
    if not (root_b / "SimpleFlow" / run_a).exists():
        with pytest.raises(ClientNotFound, match=str(root_b)):
            client.Run(f"SimpleFlow/{run_a}", datastore=str(root_b), namespace=None)
    _unchanged(global_settings)


def test_namespace_per_object(two_datastores, global_settings):
    root_a, run_a = two_datastores["a"]
    # The global namespace is carol's: alice's run is hidden...
    with pytest.raises(ClientNotFound, match="namespace"):
        client.Run(f"SimpleFlow/{run_a}", datastore=str(root_a))
    with pytest.raises(ClientNotFound, match="namespace"):
        client.Step(f"SimpleFlow/{run_a}/start", datastore=str(root_a))
    assert client.Flow("SimpleFlow", datastore=str(root_a)).latest_run is None
    # ... unless an object names its own namespace, which its children keep.
    flow = client.Flow("SimpleFlow", datastore=str(root_a), namespace="user:alice")
    assert flow.namespace == "user:alice"
    assert flow.latest_run.id == run_a
    assert flow.latest_run["end"].task.namespace == "user:alice"
    assert client.Run(f"SimpleFlow/{run_a}", datastore=str(root_a), namespace="user:alice")
    with pytest.raises(ClientNotFound, match="user:bob"):
        client.Run(f"SimpleFlow/{run_a}", datastore=str(root_a), namespace="user:bob")
    _unchanged(global_settings)
    # An object left to the global namespace follows it when it changes.
    lazy = client.Flow("SimpleFlow", datastore=str(root_a))
    assert lazy.latest_run is None
    client.namespace("user:alice")
    assert lazy.latest_run.id == run_a


def test_the_panel_reads_the_datastore_it_is_given(two_datastores, global_settings):
    pytest.importorskip("ipywidgets")
    from flowbook.widgets import ui

    root_b, run_b = two_datastores["b"]
    panel = ui(f"SimpleFlow/{run_b}", datastore=str(root_b))
    assert panel.datastore.url == str(root_b)
    assert panel.state.pathspec == f"SimpleFlow/{run_b}"
    assert panel._client_run().data.final == "b:2:P,Q"
    _unchanged(global_settings)


PRIVATE_KEYWORDS = {"_datastore_obj", "_any_namespace", "_checked", "_record", "_run"}
PRIVATE_ATTRIBUTES = {"_ds", "_ns", "_datastore", "_record", "_record_cache", "_entries"}


def test_no_module_reaches_into_the_clients_private_names():
    """Outside client.py, Client objects are made and read through public names only."""
    offences = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "client.py" and path.parent == PACKAGE:
            continue
        tree = ast.parse(path.read_text(), str(path))
        client_names = _client_names(tree)
        for node in ast.walk(tree):
            where = f"{path.relative_to(PACKAGE.parent)}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, ast.Call) and _called_name(node) in client_names:
                offences += [
                    f"{where}: {k.arg}=" for k in node.keywords if k.arg in PRIVATE_KEYWORDS
                ]
            elif (
                isinstance(node, ast.Attribute)
                and node.attr in PRIVATE_ATTRIBUTES
                and not (isinstance(node.value, ast.Name) and node.value.id == "self")
            ):
                offences.append(f"{where}: .{node.attr}")
    assert not offences, "private Client names used outside client.py:\n" + "\n".join(offences)


CLIENT_CLASSES = {"Metaflow", "Flow", "Run", "Step", "Task", "DataArtifact"}


def _client_names(tree: ast.Module) -> set[str]:
    """Names under which a module imports the Client's classes."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").endswith("client"):
            names |= {a.asname or a.name for a in node.names if a.name in CLIENT_CLASSES}
        elif isinstance(node, ast.ImportFrom) and any(a.name == "client" for a in node.names):
            names |= {f"client.{c}" for c in CLIENT_CLASSES}
    return names


def _called_name(call: ast.Call) -> str:
    func = call.func
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
        return f"{func.value.id}.{func.attr}"
    return ""


def test_notebook_step_results_give_client_tasks_of_the_sessions_datastore(
    two_datastores, global_settings
):
    from types import SimpleNamespace

    from flowbook.notebook.results import StepResults

    root_a, run_a = two_datastores["a"]
    run = client.Run(f"SimpleFlow/{run_a}", datastore=str(root_a), namespace=None)
    each = sorted(run["each"], key=lambda t: t.index)
    session = SimpleNamespace(
        flow_name="SimpleFlow",
        datastore=Datastore(str(root_a)),
        latest={"each": [{"run_id": run_a, "step": "each", "task_id": t.id} for t in each]},
    )
    tasks = StepResults(session, "each").tasks
    assert [t.pathspec for t in tasks] == [t.pathspec for t in each]
    assert [t.data.item for t in tasks] == ["P", "Q"]
    _unchanged(global_settings)


def test_logs_and_dump_read_the_datastore_given_on_the_command_line(two_datastores, tmp_path):
    root_a, run_a = two_datastores["a"]
    runner = FlowRunner(tmp_path)  # its own FLOWBOOK_DATASTORE is empty
    runner.write("simple")
    logs = runner(None, "--datastore", str(root_a), "logs", f"{run_a}/start")
    assert logs.returncode == 0, logs
    assert logs.stdout == "start says hi\n", logs
    dump = runner(None, "--datastore", str(root_a), "dump", f"{run_a}/end")
    assert dump.returncode == 0, dump
    assert "a:2:P,Q" in dump.output, dump
    elsewhere = runner(None, "logs", f"{run_a}/start")
    assert elsewhere.returncode != 0, elsewhere
