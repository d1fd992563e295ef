"""Run ids, task ids and names entering from outside are checked (flowbook/names.py).

Real runs made by subprocesses; the refusals come from the Client, ``resume
--origin-run-id``, ``logs``/``dump`` and the Datastore's path helpers. Non-numeric
run ids (an orchestrator's ``argo-...`` or ``sfn-<uuid>``) are listed and read.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
from conftest import assert_refused

from flowbook.exceptions import FlowbookError, InvalidNameError

LONG = "x" * 5000


@pytest.fixture
def one_run(run_flow, client):
    result = run_flow("simple", "run", "--label", "one")
    assert result.returncode == 0, result
    return result.run_id


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text, text
    assert len(text) < 300, text
    return text


# ---------------------------------------------------------------------- Client
@pytest.mark.parametrize(
    ("kind", "pathspec", "needle"),
    [
        ("Flow", "..", "'..'"),
        ("Flow", "Simple Flow", "'Simple Flow'"),
        ("Run", "SimpleFlow/..", "'..'"),
        ("Run", "SimpleFlow/.", "'.'"),
        ("Run", "SimpleFlow/1\x00", "'1\\x00'"),
        ("Run", "SimpleFlow/-1", "'-1'"),
        ("Run", "../SimpleFlow", "'..'"),
        ("Run", "SimpleFlow/" + LONG, "5000 characters"),
        ("Run", "SimpleFlow//{run}", "SimpleFlow//"),
        ("Step", "SimpleFlow/{run}/..", "'..'"),
        ("Step", "SimpleFlow/../start", "'..'"),
        ("Task", "SimpleFlow/{run}/start/..", "'..'"),
        ("Task", "SimpleFlow/{run}/start/1\n2", "'1\\n2'"),
        ("DataArtifact", "SimpleFlow/{run}/start/1/..", "'..'"),
        ("DataArtifact", "SimpleFlow/{run}/../1/x", "'..'"),
    ],
)
def test_client_refuses_ids_outside_the_grammar(one_run, client, kind, pathspec, needle):
    with pytest.raises(InvalidNameError) as info:
        getattr(client, kind)(pathspec.replace("{run}", one_run))
    text = _one_line(info.value)
    assert needle in text, text
    assert isinstance(info.value, FlowbookError) and isinstance(info.value, ValueError)


def test_client_item_lookups_refuse_bad_keys(one_run, client):
    flow = client.Flow("SimpleFlow")
    run = flow[one_run]
    step = run["start"]
    for lookup, key in [(flow, ".."), (flow, "1/start"), (run, ".."), (run, "a/b"), (step, "..")]:
        with pytest.raises(InvalidNameError, match="Invalid"):
            lookup[key]
    with pytest.raises(InvalidNameError, match="5000 characters"):
        flow[LONG]
    assert ".." not in run


def test_run_dotdot_does_not_read_a_record_outside_the_flow(one_run, client, run_flow):
    # Before the check, Run("SimpleFlow/..") read <root>/flows/run.json.
    flows = Path(run_flow.datastore) / "flows"
    shutil.copy(flows / "SimpleFlow" / one_run / "run.json", flows / "run.json")
    with pytest.raises(InvalidNameError, match="run id"):
        client.Run("SimpleFlow/..")


def test_a_long_bad_value_is_cut_in_the_message(one_run, client):
    with pytest.raises(InvalidNameError) as info:
        client.Task(f"SimpleFlow/{one_run}/start/{'/' * 3}{LONG}")
    assert LONG not in str(info.value)
    _one_line(info.value)


# ---------------------------------------------------------------------- datastore paths
def test_datastore_path_helpers_refuse_bad_parts(tmp_path):
    from flowbook.datastore import Datastore

    ds = Datastore(str(tmp_path / "ds"))
    assert ds.run_path("F", "argo-f-x7k2p") == "flows/F/argo-f-x7k2p"
    assert ds.task_path("F", "1", "_parameters", "2") == "flows/F/1/_parameters/2"
    for args in [
        ("F", ".."),
        ("F", "1/../../x"),
        ("..", "1"),
        ("F", ""),
        ("F", "1\x00"),
        ("F", None),
    ]:
        with pytest.raises(InvalidNameError):
            ds.run_path(*args)
    with pytest.raises(InvalidNameError, match="task id"):
        ds.task_path("F", "1", "start", "..")
    with pytest.raises(InvalidNameError, match="step name"):
        ds.attempt_file("F", "1", "../x", "2", 0, "done.json")
    with pytest.raises(InvalidNameError):
        ds.read_run("F", "..")
    with pytest.raises(InvalidNameError):
        ds.list_tasks("F", "1", "..")


# ---------------------------------------------------------------------- resume
def test_resume_origin_run_id_cannot_reach_another_datastore(run_flow, client, tmp_path):
    # A run in a second datastore next to the first one.
    other = run_flow("simple", "run", env={"FLOWBOOK_DATASTORE": str(tmp_path / "other")})
    assert other.returncode == 0, other
    assert run_flow(None, "run").returncode == 0
    before = sorted(os.listdir(run_flow.datastore / "flows" / "SimpleFlow"))
    sneaky = f"../../../other/flows/SimpleFlow/{other.run_id}"
    assert (run_flow.datastore / "flows" / "SimpleFlow" / sneaky / "run.json").exists()
    result = run_flow(None, "resume", "--origin-run-id", sneaky)
    assert_refused(result, "Invalid origin run id", "'../../../other")
    assert result.output.count("\n") <= 2, result
    assert sorted(os.listdir(run_flow.datastore / "flows" / "SimpleFlow")) == before


@pytest.mark.parametrize("bad", ["..", "a b", "1;rm", "-1", LONG])
def test_resume_refuses_bad_origin_run_ids(run_flow, bad):
    assert run_flow("simple", "run").returncode == 0
    result = run_flow(None, "resume", "--origin-run-id", bad)
    assert_refused(result, "Invalid origin run id")
    assert LONG not in result.output


def test_resume_plan_checks_the_origin_run_id(run_flow, client):
    from flowbook.datastore import Datastore
    from flowbook.runtime.resume import ResumePlan

    class Graph:  # just what ResumePlan reads before the check
        name = "SimpleFlow"

    with pytest.raises(InvalidNameError, match="origin run id"):
        ResumePlan(Datastore(str(run_flow.datastore)), Graph(), "../x", None)  # type: ignore[arg-type]


# ---------------------------------------------------------------------- logs and dump
@pytest.mark.parametrize(
    ("command", "pathspec", "needle"),
    [
        ("logs", "../start", "run id '..'"),
        ("logs", "{run}/../1", "step name '..'"),
        ("logs", "{run}/start/..", "task id '..'"),
        ("dump", "{run}/start/..", "task id '..'"),
        ("dump", "../../start", "'../../start'"),
        ("dump", "{run}", "RUN_ID/STEP"),
    ],
)
def test_logs_and_dump_refuse_bad_pathspecs(one_run, run_flow, command, pathspec, needle):
    result = run_flow(None, command, pathspec.replace("{run}", one_run))
    assert_refused(result, needle)
    assert len(result.output.strip().splitlines()) == 1, result


# ---------------------------------------------------------------------- non-numeric ids
def _copy_run(datastore: Path, flow: str, run_id: str, new_id: str, created_at: float) -> None:
    """Make a copy of a run under ``new_id``, as an orchestrator would have written it."""
    base = datastore / "flows" / flow
    shutil.copytree(base / run_id, base / new_id)
    for path in (base / new_id).rglob("*.json"):
        path.write_text(path.read_text().replace(f'"{run_id}"', f'"{new_id}"'))
        path.write_text(path.read_text().replace(f"/{run_id}/", f"/{new_id}/"))
    run_json = base / new_id / "run.json"
    text = run_json.read_text()
    from flowbook import jsonio

    record = jsonio.loads(text)
    record["created_at"] = created_at
    run_json.write_text(jsonio.dumps(record))


def test_runs_with_orchestrator_ids_are_listed_newest_first_and_read(one_run, client, run_flow):
    numeric_time = int(one_run) / 1e6
    argo, sfn = "argo-simpleflow-x7k2p", "sfn-3f2a9c1e-5b7d-4e8f-9a0b-1c2d3e4f5a6b"
    _copy_run(run_flow.datastore, "SimpleFlow", one_run, argo, numeric_time + 0.001)
    _copy_run(run_flow.datastore, "SimpleFlow", one_run, sfn, numeric_time - 10)

    flow = client.Flow("SimpleFlow")
    assert [r.id for r in flow.runs()] == [argo, one_run, sfn]
    latest = flow.latest_run
    assert latest.id == argo and latest.pathspec == f"SimpleFlow/{argo}"
    assert latest.successful
    assert latest.data.final == "one:2:P,Q"
    assert flow.latest_successful_run.id == argo
    start = client.Task(flow[sfn]["start"].task.pathspec)
    assert start.data.x == 1 and start.stdout == "start says hi\n"
    assert [t.data.item for t in sorted(flow[sfn]["each"], key=lambda t: t.index)] == ["P", "Q"]
    end = flow[argo]["end"].task
    assert client.DataArtifact(f"{end.pathspec}/final").data == "one:2:P,Q"

    logs = run_flow(None, "logs", f"{argo}/start")
    assert logs.returncode == 0 and logs.stdout == "start says hi\n", logs
    dump = run_flow(None, "dump", f"{sfn}/end")
    assert dump.returncode == 0 and "one:2:P,Q" in dump.stdout, dump

    # resume from it, by name and as the latest run
    resumed = run_flow(None, "resume", "end", "--origin-run-id", argo)
    assert resumed.returncode == 0, resumed
    new_id = resumed.output.split(f"Resuming run {argo} as run ", 1)[1].split(":", 1)[0]
    new = client.Run(f"SimpleFlow/{new_id}")
    assert new.origin_run_id == argo and new.data.final == "one:2:P,Q"
    assert client.Flow("SimpleFlow").latest_run.id == new_id


def test_listing_a_thousand_runs_with_mixed_ids_is_fast(tmp_path):
    from flowbook.datastore import Datastore

    ds = Datastore(str(tmp_path / "ds"))
    now = time.time()
    for i in range(500):
        run_id = str(int((now - 1000 + i) * 1e6))
        ds.write_run("F", run_id, {"run_id": run_id, "created_at": now - 1000 + i})
        other = f"argo-f-{i:04d}"
        ds.write_run("F", other, {"run_id": other, "created_at": now - 1000 + i + 0.5})
    os.makedirs(tmp_path / "ds" / "flows" / "F" / "not a run")  # ignored
    os.makedirs(tmp_path / "ds" / "flows" / "F" / ".tmp")
    started = time.perf_counter()
    runs = ds.list_runs("F")
    elapsed = time.perf_counter() - started
    assert len(runs) == 1000
    assert runs[0] == "argo-f-0499" and runs[1] == str(int((now - 1000 + 499) * 1e6))
    assert runs[-1] == str(int((now - 1000) * 1e6))
    assert elapsed < 0.5, elapsed
