"""Run one task anywhere: ``init``, ``step`` and ``mark-failed`` as an orchestrator runs them.

The tests play the orchestrator (Argo, Step Functions): they walk the flow's graph,
start every task as its own ``python flow.py step ...`` subprocess with ids they
chose, pass input paths and split indexes, and read what each task leaves in
``FLOWBOOK_OUTPUT_DIR``. The runs they make are compared, artifact by artifact, with
a local ``run`` of the same flow, on a local datastore and on S3 (moto on 127.0.0.1).
"""

from __future__ import annotations

import json
import time
import uuid

import pytest
from conftest import MOTO_BUCKET, TRACEBACK, FlowResult, FlowRunner, assert_refused, example_source

from flowbook.datastore import Datastore
from flowbook.graph import FlowGraph
from flowbook.loader import load_flow_class
from flowbook.runtime.frames import FramesError, successors, task_frames
from flowbook.runtime.one_task import latest_successful, parse_input_paths
from flowbook.runtime.resume import task_identity

FOREACH_FLOW = """
import json

from flowbook import FlowSpec, JSONType, Parameter, step


def deployed(context):
    return json.dumps({"who": context.user_name, "flow": context.flow_name,
                       "param": context.parameter_name})


class ForeachParamsFlow(FlowSpec):
    creatures = Parameter("creatures", type=JSONType, default='["bird", "mouse", "dog"]')
    bonus = Parameter("bonus", default=1)
    info = Parameter("info", type=JSONType, default=deployed)

    @step
    def start(self):
        self.items = list(self.creatures)
        self.next(self.analyze, foreach="items")

    @step
    def analyze(self):
        print("Analyzing", self.input)
        self.creature = self.input
        self.score = len(self.creature) + self.bonus
        self.next(self.join)

    @step
    def join(self, inputs):
        self.order = [i.creature for i in inputs]
        self.best = max(inputs, key=lambda x: x.score).creature
        self.next(self.end)

    @step
    def end(self):
        print(self.best, "won!", self.info["who"])


if __name__ == "__main__":
    ForeachParamsFlow()
"""

FAILING_FLOW = """
import os

from flowbook import FlowSpec, step


class FlakyFlow(FlowSpec):
    @step
    def start(self):
        self.xs = [1, 2, 3]
        self.next(self.body, foreach="xs")

    @step
    def body(self):
        if self.input == 2 and os.environ.get("FLAKY_FAIL"):
            raise RuntimeError("split two is broken")
        self.y = self.input * 10
        self.next(self.join)

    @step
    def join(self, inputs):
        self.total = sum(i.y for i in inputs)
        self.next(self.end)

    @step
    def end(self):
        print("total", self.total)


if __name__ == "__main__":
    FlakyFlow()
"""


def _alive(pid: int) -> bool:
    """Whether a process runs (a zombie, killed and not yet reaped, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


class Orchestrator:
    """Walks a flow's graph and runs each task as ``python flow.py step``, as Argo or
    Step Functions would: with its own run and task ids, a fresh output directory per
    task, and the inputs of a join listed in an order of its own (reversed)."""

    def __init__(self, runner: FlowRunner, filename: str, env: dict[str, str] | None = None):
        self.runner = runner
        self.filename = filename
        self.env = dict(env or {})
        self.graph = FlowGraph.from_flow_class(load_flow_class(str(runner.workdir / filename)))
        self.run_id = _id("argo-flow")
        self.results: list[FlowResult] = []
        self.outputs: dict[str, dict[str, str]] = {}

    def command(self, *args: str, env: dict[str, str] | None = None) -> FlowResult:
        result = self.runner(None, *args, filename=self.filename, env={**self.env, **(env or {})})
        self.results.append(result)
        return result

    def init(self, *params: str, env: dict[str, str] | None = None) -> str:
        task_id = _id("p")
        result = self.command(
            "init", "--run-id", self.run_id, "--task-id", task_id, *params, env=env
        )
        assert result.returncode == 0, result
        return f"{self.run_id}/_parameters/{task_id}"

    def step(self, step: str, inputs: str, split_index: int | None = None, *extra: str) -> str:
        """Run one task; its path ``run/step/task``. Reads its output directory."""
        task_id = _id("t")
        out = self.runner.workdir / "out" / task_id
        args = ["step", step, "--run-id", self.run_id, "--task-id", task_id]
        args += ["--input-paths", inputs]
        if split_index is not None:
            args += ["--split-index", str(split_index)]
        result = self.command(*args, *extra, env={"FLOWBOOK_OUTPUT_DIR": str(out)})
        assert result.returncode == 0, result
        self.outputs[task_id] = {p.name: p.read_text() for p in out.iterdir()}
        assert self.outputs[task_id]["task_id"] == task_id
        return f"{self.run_id}/{step}/{task_id}"

    def walk(
        self, step: str, inputs: str, split_index: int | None = None, stop_at: str | None = None
    ):
        """Run ``step`` and what follows it up to ``stop_at`` (a join outside this
        segment); returns the input path that arrives at ``stop_at``."""
        while step != stop_at:
            path = self.step(step, inputs, split_index)
            split_index = None
            node = self.graph[step]
            outputs = self.outputs[path.rsplit("/", 1)[1]]
            if node.type == "end":
                assert "splits" not in outputs
                return None
            if node.foreach is not None:
                count = int(outputs["split_cardinality"])
                assert json.loads(outputs["splits"]) == list(range(count))
                arrivals = [
                    self.walk(node.out_funcs[0], path, i, stop_at=node.matching_join)
                    for i in range(count)
                ]
                # the compact form, in an order of the orchestrator's own
                run, body, _ = arrivals[0].split("/")
                tasks = [a.rsplit("/", 1)[1] for a in reversed(arrivals)]
                inputs = f"{run}/{body}/:{','.join(tasks)}"
                step = node.matching_join
            elif len(node.out_funcs) > 1:
                assert "splits" not in outputs
                arrivals = [self.walk(b, path, stop_at=node.matching_join) for b in node.out_funcs]
                inputs = ",".join(reversed(arrivals))
                step = node.matching_join
            else:
                assert "splits" not in outputs
                inputs = path
                step = node.out_funcs[0]
        return inputs

    def run(self, *params: str, env: dict[str, str] | None = None) -> str:
        parameters_task = self.init(*params, env=env)
        self.walk("start", parameters_task)
        return self.run_id


def artifacts_by_position(datastore: Datastore, flow: str, run_id: str) -> dict:
    """{(step, position in splits): {artifact: value}} of every task of a run."""
    found = {}
    for step in datastore.list_steps(flow, run_id):
        if step.startswith("_"):
            continue
        for task_id in datastore.list_tasks(flow, run_id, step):
            record = latest_successful(datastore, flow, run_id, step, task_id)
            assert record is not None, (step, task_id)
            key = task_identity(step, record["split_stack"])
            values = {
                name: datastore.load_artifact(entry, name, f"{flow}/{run_id}/{step}/{task_id}")
                for name, entry in record["artifacts"].items()
            }
            assert key not in found, key
            found[key] = values
    return found


def stdout_by_position(datastore: Datastore, flow: str, run_id: str) -> dict:
    found = {}
    for step in datastore.list_steps(flow, run_id):
        for task_id in datastore.list_tasks(flow, run_id, step):
            record = latest_successful(datastore, flow, run_id, step, task_id)
            key = task_identity(step, record["split_stack"])
            found[key] = datastore.read_log(
                flow, run_id, step, task_id, record["attempt"], "stdout"
            )
    return found


def local_run_id(result: FlowResult) -> str:
    assert result.returncode == 0, result
    assert result.run_id, result
    return result.run_id


def compare_with_local_run(
    runner: FlowRunner, orchestrator: Orchestrator, datastore_url: str, *params: str
) -> None:
    local = local_run_id(
        runner(None, "run", *params, filename=orchestrator.filename, env=orchestrator.env)
    )
    datastore = Datastore(datastore_url)
    flow = orchestrator.graph.name
    theirs = artifacts_by_position(datastore, flow, orchestrator.run_id)
    ours = artifacts_by_position(datastore, flow, local)
    assert theirs.keys() == ours.keys()
    for key in ours:
        assert theirs[key] == ours[key], key
    assert stdout_by_position(datastore, flow, orchestrator.run_id) == {
        **stdout_by_position(datastore, flow, local),
        ("_parameters", ()): "",
    }
    for run_id in (local, orchestrator.run_id):
        status = datastore.read_run_status(flow, run_id)
        assert status["successful"] is True and status["failures"] == []
        run = datastore.read_run(flow, run_id)
        assert run["parameters"].keys() == datastore.read_run(flow, local)["parameters"].keys()
        for step in orchestrator.graph.nodes:  # the step indexes of a finished run
            index = datastore.read_step_index(flow, run_id, step)
            assert index is not None and len(index) == len(datastore.list_tasks(flow, run_id, step))
    # the Client lists the same steps for both (not flowbook's own _parameters)
    from flowbook.client import Run

    steps = [
        [s.id for s in Run(f"{flow}/{r}", datastore=datastore_url, namespace=None)]
        for r in (local, orchestrator.run_id)
    ]
    assert steps[0] == steps[1] and "_parameters" not in steps[1], steps


def assert_task_output_reached_stdout(orchestrator: Orchestrator, text: str) -> None:
    assert any(text in r.stdout for r in orchestrator.results), orchestrator.results


# ---------------------------------------------------------------------- whole runs
def test_a_foreach_flow_run_task_by_task_matches_a_local_run(run_flow, monkeypatch):
    run_flow.write(FOREACH_FLOW)
    orchestrator = Orchestrator(run_flow, "flow.py")
    orchestrator.run("--bonus", "2")
    compare_with_local_run(run_flow, orchestrator, str(run_flow.datastore), "--bonus", "2")
    assert_task_output_reached_stdout(orchestrator, "Analyzing mouse")
    # the Client reads the run like any other: its id is not a number
    from conftest import client_for

    with client_for(run_flow, monkeypatch) as client:
        flow = client.Flow("ForeachParamsFlow")
        assert orchestrator.run_id in [r.id for r in flow.runs()]
        run = flow[orchestrator.run_id]
        assert run.successful and run.finished
        assert run.data.best == "mouse" and run.data.order == ["bird", "mouse", "dog"]
        assert run.data.info == {"who": "tester", "flow": "ForeachParamsFlow", "param": "info"}
        assert sorted(t.index for t in run["analyze"]) == [0, 1, 2]
    dumped = run_flow(None, "dump", f"{orchestrator.run_id}/join")
    assert dumped.returncode == 0 and "best" in dumped.stdout, dumped
    logs = run_flow(None, "logs", f"{orchestrator.run_id}/analyze")
    assert logs.returncode == 0 and "Analyzing dog" in logs.stdout, logs


def test_a_branch_flow_run_task_by_task_matches_a_local_run(run_flow):
    run_flow.write(example_source("counter_branch"))
    orchestrator = Orchestrator(run_flow, "flow.py")
    orchestrator.run()
    compare_with_local_run(run_flow, orchestrator, str(run_flow.datastore))
    assert_task_output_reached_stdout(orchestrator, "The final count is 2")


def test_nested_foreach_and_split_inside_a_foreach(run_flow):
    run_flow.write("nested")
    orchestrator = Orchestrator(run_flow, "flow.py")
    orchestrator.run()
    compare_with_local_run(run_flow, orchestrator, str(run_flow.datastore))


def test_parameters_of_every_kind_from_the_command_line_and_flowbook_parameters(run_flow):
    run_flow.write("params")
    (run_flow.workdir / "notes.txt").write_text("some notes")
    orchestrator = Orchestrator(run_flow, "flow.py")
    values = {"name": "Ada", "count": 3, "flag": True, "typed": 7, "config": {"k": [3]}}
    orchestrator.run(
        "--notes",
        "notes.txt",
        "--learning-rate",
        "0.5",
        env={"FLOWBOOK_PARAMETERS": json.dumps(values), "FLOWBOOK_RUN_RATIO": "0.25"},
    )
    compare_with_local_run(
        run_flow,
        orchestrator,
        str(run_flow.datastore),
        "--notes",
        "notes.txt",
        "--learning-rate",
        "0.5",
        "--name",
        "Ada",
        "--count",
        "3",
        "--flag",
        "true",
        "--typed",
        "7",
        "--config",
        '{"k": [3]}',
        "--ratio",
        "0.25",
    )


def test_on_s3_served_by_moto(run_flow, moto_s3):
    url = f"s3://{MOTO_BUCKET}/{uuid.uuid4().hex[:8]}"
    env = {**moto_s3, "FLOWBOOK_DATASTORE": url}
    for name, source, text in (
        ("foreach", FOREACH_FLOW, "Analyzing bird"),
        ("branch", example_source("counter_branch"), "The creature is dog"),
    ):
        run_flow.write(source, f"{name}.py")
        orchestrator = Orchestrator(run_flow, f"{name}.py", env=env)
        orchestrator.run()
        assert_task_output_reached_stdout(orchestrator, text)
        assert not run_flow.datastore.exists()  # everything went to S3
        with pytest.MonkeyPatch.context() as patch:
            for key, value in moto_s3.items():
                patch.setenv(key, value)
            compare_with_local_run(run_flow, orchestrator, url)


# ---------------------------------------------------------------------- unhappy paths
@pytest.fixture
def flaky(run_flow):
    run_flow.write(FAILING_FLOW)
    return Orchestrator(run_flow, "flow.py")


def _start(orchestrator: Orchestrator) -> str:
    return orchestrator.step("start", orchestrator.init())


def test_bad_ids_are_refused_in_one_line(flaky):
    bad = flaky.command("init", "--run-id", "../../etc", "--task-id", "p1")
    assert_refused(bad, "Invalid run id '../../etc'")
    bad = flaky.command("init", "--run-id", "r1", "--task-id", "p 1")
    assert_refused(bad, "Invalid task id 'p 1'")
    parameters = flaky.init()
    bad = flaky.command(
        "step", "start", "--run-id", flaky.run_id, "--task-id", "a/b", "--input-paths", parameters
    )
    assert_refused(bad, "Invalid task id 'a/b'")
    bad = flaky.command(
        "step", "start", "--run-id", flaky.run_id, "--task-id", "t1", "--input-paths", "x/../y"
    )
    assert_refused(bad, "Invalid step name in input path 'x/../y': '..'")
    bad = flaky.command(
        "step", "start", "--run-id", flaky.run_id, "--task-id", "t1", "--input-paths", "x/y"
    )
    assert_refused(bad, "--input-paths: 'x/y' is not of the form RUN_ID/STEP/TASK_ID")
    bad = flaky.command(
        "step", "nope", "--run-id", flaky.run_id, "--task-id", "t1", "--input-paths", parameters
    )
    assert_refused(bad, "has no step 'nope'")
    bad = flaky.command(
        "step",
        "start",
        "--run-id",
        "no-such-run",
        "--task-id",
        "t1",
        "--input-paths",
        "no-such-run/_parameters/p",
    )
    assert_refused(bad, "has no run no-such-run", "init --run-id no-such-run")
    bad = flaky.command("step", "start", "--run-id", flaky.run_id, "--task-id", "t1")
    assert_refused(bad, "step needs --input-paths")


def test_inputs_that_do_not_fit_the_graph_are_refused(flaky):
    parameters = flaky.init()
    start = flaky.step("start", parameters)
    run = flaky.run_id

    def refused(step: str, inputs: str, *extra: str) -> FlowResult:
        return flaky.command(
            "step", step, "--run-id", run, "--task-id", _id("t"), "--input-paths", inputs, *extra
        )

    assert_refused(
        refused("start", start), "the input of the start step is the run's parameters task"
    )
    assert_refused(refused("body", parameters, "--split-index", "0"), "is the parameters task")
    assert_refused(
        refused("body", start), "is a foreach step with 3 splits; give --split-index 0..2"
    )
    assert_refused(refused("body", start, "--split-index", "3"), "--split-index 3 is out of range")
    assert_refused(refused("join", start), "which leads to body")
    assert_refused(
        refused("end", f"{run}/join/nothing-here"), f"input {run}/join/nothing-here does not exist"
    )
    assert_refused(
        refused("body", f"other-run/start/{start.rsplit('/')[-1]}", "--split-index", "0"),
        "not of run",
    )
    bodies = [flaky.step("body", start, i) for i in range(3)]
    ids = [b.rsplit("/", 1)[1] for b in bodies]
    assert_refused(refused("join", f"{run}/body/:{ids[0]},{ids[2]}"), "the inputs lack split 1")
    assert_refused(refused("join", f"{run}/body/:{ids[0]},{ids[0]},{ids[2]}"), "are both split 0")
    assert_refused(refused("end", bodies[0]), "which leads to join")
    # and nothing of the refused tasks reached the datastore
    ds = Datastore(str(flaky.runner.datastore))
    assert sorted(ds.list_steps("FlakyFlow", run)) == ["_parameters", "body", "start"]


def test_a_task_that_already_succeeded_is_reused_never_run_again(flaky):
    start = flaky.step("start", flaky.init())
    body = flaky.step("body", start, 1)
    task_id = body.rsplit("/", 1)[1]
    ds = Datastore(str(flaky.runner.datastore))
    before = ds.read_attempt_done("FlakyFlow", flaky.run_id, "body", task_id, 0)
    out = flaky.runner.workdir / "again"
    again = flaky.command(
        "step",
        "body",
        "--run-id",
        flaky.run_id,
        "--task-id",
        task_id,
        "--input-paths",
        start,
        "--split-index",
        "1",
        "--retry-count",
        "1",
        env={"FLOWBOOK_OUTPUT_DIR": str(out), "FLAKY_FAIL": "1"},
    )
    assert again.returncode == 0, again
    assert "already finished successfully (attempt 0); not run again" in again.output
    assert (out / "task_id").read_text() == task_id
    assert ds.task_attempts("FlakyFlow", flaky.run_id, "body", task_id) == {
        0: {"start.json", "done.json", "stdout", "stderr"}
    }
    assert ds.read_attempt_done("FlakyFlow", flaky.run_id, "body", task_id, 0) == before
    # the same id for another task (another split) is refused
    other = flaky.command(
        "step",
        "body",
        "--run-id",
        flaky.run_id,
        "--task-id",
        task_id,
        "--input-paths",
        start,
        "--split-index",
        "2",
    )
    assert_refused(
        other, f"task {flaky.run_id}/body/{task_id} already finished successfully with other inputs"
    )
    # a foreach task reused writes its splits again
    start_id = start.rsplit("/", 1)[1]
    params = ds.read_run("FlakyFlow", flaky.run_id)["parameters_task"]
    out2 = flaky.runner.workdir / "again2"
    again = flaky.command(
        "step",
        "start",
        "--run-id",
        flaky.run_id,
        "--task-id",
        start_id,
        "--input-paths",
        params,
        env={"FLOWBOOK_OUTPUT_DIR": str(out2)},
    )
    assert again.returncode == 0, again
    assert json.loads((out2 / "splits").read_text()) == [0, 1, 2]
    assert (out2 / "split_cardinality").read_text() == "3"


def test_a_failing_step_with_retries_left_then_none_then_resume_completes_the_run(flaky):
    run = flaky.run_id
    start = flaky.step("start", flaky.init())
    flaky.step("body", start, 0)
    ds = Datastore(str(flaky.runner.datastore))
    task_id = "t-flaky"
    args = ["step", "body", "--run-id", run, "--task-id", task_id, "--input-paths", start]
    args += ["--split-index", "1", "--max-user-code-retries", "1"]
    first = flaky.command(*args, "--retry-count", "0", env={"FLAKY_FAIL": "1"})
    assert first.returncode == 1, first
    assert "RuntimeError: split two is broken" in first.stderr  # the task's own stderr, teed
    assert "1 retry left" in first.output
    assert ds.read_run_status("FlakyFlow", run) is None  # not failed yet: a retry is left
    last = flaky.command(*args, "--retry-count", "1", env={"FLAKY_FAIL": "1"})
    assert last.returncode == 1, last
    assert TRACEBACK in last.stderr  # the user's traceback, as the task wrote it
    status = ds.read_run_status("FlakyFlow", run)
    assert status["successful"] is False
    assert status["failures"] == [
        f"step 'body' (task {run}/body/{task_id}): RuntimeError: split two is broken"
    ]
    assert sorted(ds.task_attempts("FlakyFlow", run, "body", task_id)) == [0, 1]
    # the orchestrator's exit handler: idempotent, the reason added once
    for _ in range(2):
        marked = flaky.command("mark-failed", "--run-id", run, "--reason", "workflow failed")
        assert marked.returncode == 0, marked
    status = ds.read_run_status("FlakyFlow", run)
    assert status["failures"][-1] == "workflow failed" and len(status["failures"]) == 2
    # a failed run gains no task: neither an attempt beyond the retries, nor a split
    # not run yet, nor the end task (which would mark the run successful)
    beyond = flaky.command(*args, "--retry-count", "2")
    assert_refused(beyond, f"run {run} has failed (step 'body'", "resume --origin-run-id")
    other = ["step", "body", "--run-id", run, "--task-id", "t-late", "--input-paths", start]
    assert_refused(flaky.command(*other, "--split-index", "2"), f"run {run} has failed")
    assert ds.read_run_status("FlakyFlow", run)["failures"] == status["failures"]
    assert not ds.task_attempts("FlakyFlow", run, "body", "t-late")
    # resumed locally: only the failed split and what follows run again
    resumed = flaky.runner(None, "resume", "--origin-run-id", run)
    assert resumed.returncode == 0, resumed
    assert "total 60" in resumed.stdout
    assert resumed.stdout.count("Cloned from") == 2  # start and split 0
    # and `resume` without an origin finds this run: it is the latest
    assert flaky.runner(None, "resume").returncode == 0


def test_an_attempt_beyond_the_retries_is_refused(flaky):
    start = _start(flaky)
    args = ["step", "body", "--run-id", flaky.run_id, "--task-id", "t-1", "--input-paths", start]
    beyond = flaky.command(*args, "--split-index", "0", "--retry-count", "1")
    assert_refused(beyond, "--retry-count 1 is beyond the step's retries (0)")
    ds = Datastore(str(flaky.runner.datastore))
    assert not ds.task_attempts("FlakyFlow", flaky.run_id, "body", "t-1")


def test_a_step_outside_any_split_has_one_task_per_run(flaky):
    parameters = flaky.init()
    first = flaky.step("start", parameters)
    again = flaky.command(
        "step", "start", "--run-id", flaky.run_id, "--task-id", "s-2", "--input-paths", parameters
    )
    assert_refused(again, f"has its task of step 'start' already ({first.split('/', 1)[1]})")
    ds = Datastore(str(flaky.runner.datastore))
    assert ds.list_tasks("FlakyFlow", flaky.run_id, "start") == [first.rsplit("/", 1)[1]]
    # the same task id again is the orchestrator retrying it: not refused, not re-run
    task_id = first.rsplit("/", 1)[1]
    same = flaky.command(
        "step", "start", "--run-id", flaky.run_id, "--task-id", task_id, "--input-paths", parameters
    )
    assert same.returncode == 0 and "not run again" in same.output, same


def test_finishing_a_run_marked_failed_meanwhile_keeps_it_failed(run_flow):
    from flowbook.runtime.one_task import finish_run

    ds = Datastore(str(run_flow.datastore))
    failed = {"successful": False, "finished_at": 1.0, "failures": ["workflow timed out"]}
    ds.write_run_status("SomeFlow", "r-1", failed)
    finish_run(ds, "SomeFlow", "r-1", quiet=True)
    assert ds.read_run_status("SomeFlow", "r-1") == failed


def test_a_run_marked_failed_by_its_exit_handler_after_success_stays_successful(run_flow):
    run_flow.write(example_source("counter_branch"))
    orchestrator = Orchestrator(run_flow, "flow.py")
    orchestrator.run()
    marked = orchestrator.command("mark-failed", "--run-id", orchestrator.run_id)
    assert marked.returncode == 0 and "finished successfully; not marked failed" in marked.output
    ds = Datastore(str(run_flow.datastore))
    assert ds.read_run_status("CounterBranchFlow", orchestrator.run_id)["successful"] is True
    missing = orchestrator.command("mark-failed", "--run-id", "no-such-run")
    assert_refused(missing, "has no run no-such-run")


def test_init_is_idempotent_and_refuses_other_values(run_flow):
    run_flow.write(FOREACH_FLOW)
    orchestrator = Orchestrator(run_flow, "flow.py")
    run, task = orchestrator.run_id, "p-1"
    first = orchestrator.command("init", "--run-id", run, "--task-id", task, "--bonus", "5")
    assert first.returncode == 0, first
    ds = Datastore(str(run_flow.datastore))
    record = ds.read_run("ForeachParamsFlow", run)
    again = orchestrator.command(
        "init", "--run-id", run, "--task-id", task, env={"FLOWBOOK_PARAMETERS": '{"bonus": 5}'}
    )
    assert again.returncode == 0 and "(reused)" in again.output, again
    assert ds.read_run("ForeachParamsFlow", run) == record  # the deploy-time value too
    other = orchestrator.command("init", "--run-id", run, "--task-id", task, "--bonus", "6")
    assert_refused(other, "parameter 'bonus' = 5; init cannot change it to 6")


@pytest.mark.parametrize(
    ("parameters", "needles"),
    [
        (
            '{"bonus": "many"}',
            ["Parameter 'bonus'", "expects int", "(given in FLOWBOOK_PARAMETERS)"],
        ),
        (
            '{"bonus": true}',
            ["Parameter 'bonus'", "a boolean is not an integer", "FLOWBOOK_PARAMETERS"],
        ),
        ('{"nope": 1}', ["has no parameter 'nope'", "FLOWBOOK_PARAMETERS"]),
        ("[1, 2]", ["FLOWBOOK_PARAMETERS must be a JSON object"]),
        ("{bad json", ["FLOWBOOK_PARAMETERS is not JSON text"]),
    ],
)
def test_flowbook_parameters_of_the_wrong_type_are_refused(run_flow, parameters, needles):
    run_flow.write(FOREACH_FLOW)
    result = run_flow(
        None,
        "init",
        "--run-id",
        "sfn-1",
        "--task-id",
        "p",
        env={"FLOWBOOK_PARAMETERS": parameters},
    )
    assert_refused(result, *needles)
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (run_flow.datastore / "flows" / "ForeachParamsFlow" / "sfn-1").exists()


def test_a_timeout_kills_the_task_and_its_children(run_flow):
    run_flow.write(
        """
        import subprocess, time
        from flowbook import FlowSpec, step, timeout

        class SlowFlow(FlowSpec):
            @timeout(seconds=1)
            @step
            def start(self):
                print("child", subprocess.Popen(["sleep", "60"]).pid, flush=True)
                time.sleep(60)
                self.next(self.end)

            @step
            def end(self):
                pass

        if __name__ == "__main__":
            SlowFlow()
        """
    )
    orchestrator = Orchestrator(run_flow, "flow.py")
    parameters = orchestrator.init()
    result = orchestrator.command(
        "step",
        "start",
        "--run-id",
        orchestrator.run_id,
        "--task-id",
        "t1",
        "--input-paths",
        parameters,
    )
    assert result.returncode != 0, result
    assert "timed out after 1 s (@timeout)" in result.stderr
    child = int(result.stdout.split("child ", 1)[1].split()[0])
    deadline = time.time() + 10
    while _alive(child) and time.time() < deadline:
        time.sleep(0.05)
    assert not _alive(child)
    ds = Datastore(str(run_flow.datastore))
    assert ds.read_run_status("SlowFlow", orchestrator.run_id)["successful"] is False


# ---------------------------------------------------------------------- pure parts
def test_input_paths_in_every_form():
    assert parse_input_paths("r/a/1") == [("r", "a", "1")]
    assert parse_input_paths("r/a/1,r/b/t-2") == [("r", "a", "1"), ("r", "b", "t-2")]
    assert parse_input_paths("r/join/:1,2,3") == [("r", "join", t) for t in "123"]
    import base64
    import zlib

    packed = "!" + base64.b64encode(zlib.compress(b"r/a/:x,y")).decode()
    assert parse_input_paths(packed) == [("r", "a", "x"), ("r", "a", "y")]


def test_task_frames_give_what_the_scheduler_gives(tmp_path):
    """For every task of a finished local run, the frames derived from its parents'
    records equal the frames the scheduler gave it (nested foreach, split in foreach)."""
    runner = FlowRunner(tmp_path)
    result = runner("nested", "run")
    run_id = local_run_id(result)
    graph = FlowGraph.from_flow_class(load_flow_class(str(tmp_path / "flow.py")))
    ds = Datastore(str(runner.datastore))
    records = {}
    for step in ds.list_steps("NestedFlow", run_id):
        for task_id in ds.list_tasks("NestedFlow", run_id, step):
            record = latest_successful(ds, "NestedFlow", run_id, step, task_id)
            records[f"NestedFlow/{run_id}/{step}/{task_id}"] = record
    checked = 0
    for record in records.values():
        if record["step"] == "start":
            continue
        parents = [records[p] for p in record["parents"]]
        split_index = None
        if (
            len(parents) == 1
            and graph[parents[0]["step"]].foreach
            and not graph[record["step"]].is_join
        ):
            split_index = record["split_stack"][-1]["index"]
        ordered, stack = task_frames(graph, record["step"], list(reversed(parents)), split_index)
        assert stack == record["split_stack"], record["step"]
        assert [f"NestedFlow/{run_id}/{p['step']}/{p['task_id']}" for p in ordered] == record[
            "parents"
        ]
        checked += 1
    assert checked == len(records) - 1
    # and successors() hands each child the stack it ran with
    start = next(r for r in records.values() if r["step"] == "start")
    handed = successors(graph["start"], start)
    outers = sorted(
        (r for r in records.values() if r["step"] == "outer"),
        key=lambda r: r["split_stack"][0]["index"],
    )
    assert [stack for _, stack in handed] == [r["split_stack"] for r in outers]
    with pytest.raises(FramesError, match="which leads to inner"):
        task_frames(graph, "p", [outers[0]])
    with pytest.raises(FramesError, match="takes one input"):
        task_frames(graph, "inner", [outers[0], outers[1]], 0)


# ---------------------------------------------------------------------- the command line
TASK_ARGVS = [
    ["init", "--run-id", "r1", "--task-id", "p1"],
    ["--datastore", "/tmp/ds", "--quiet", "init", "--run-id=r1", "--task-id", "p1", "--bonus", "3"],
    ["init", "--run-id", "r1", "--task-id", "p1", "--tag", "a", "--tag", "b"],
    ["--with", "retry:times=2", "step", "start", "--run-id", "r1", "--task-id", "t1"]
    + ["--input-paths", "r1/_parameters/p1"],
    ["step", "analyze", "--run-id", "r1", "--task-id", "t2", "--input-paths", "r1/start/t1"]
    + ["--split-index", "2", "--retry-count", "1", "--max-user-code-retries", "3"]
    + ["--max-num-splits", "7", "--tag", "x"],
    ["mark-failed", "--run-id", "r1", "--reason", "the workflow failed"],
    ["mark-failed", "--run-id", "r1"],
]


@pytest.mark.parametrize("argv", TASK_ARGVS, ids=range(len(TASK_ARGVS)))
def test_the_plain_reading_and_click_give_the_same_settings(tmp_path, argv, monkeypatch):
    from flowbook.cli.flow_cli import build_cli
    from flowbook.cli.task_cmds import read_plain_task

    monkeypatch.delenv("FLOWBOOK_RUN_MAX_NUM_SPLITS", raising=False)
    monkeypatch.delenv("METAFLOW_RUN_MAX_NUM_SPLITS", raising=False)
    path = tmp_path / "flow.py"
    path.write_text(FOREACH_FLOW)
    flow_cls = load_flow_class(str(path))
    graph = FlowGraph.from_flow_class(flow_cls)
    fast = read_plain_task(argv, {"creatures", "bonus", "info"})
    assert fast is not None
    seen = []
    cli = build_cli(flow_cls, graph, start_task=lambda c, g, settings: seen.append(settings) or 0)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(args=argv, prog_name="flow.py", standalone_mode=False)
    assert exit_info.value.code == 0
    assert seen == [fast]


def test_step_does_not_import_click_and_click_serves_help(run_flow):
    run_flow.write(FOREACH_FLOW)
    orchestrator = Orchestrator(run_flow, "flow.py")
    parameters = orchestrator.init()
    result = orchestrator.command(
        "step",
        "start",
        "--run-id",
        orchestrator.run_id,
        "--task-id",
        "t1",
        "--input-paths",
        parameters,
        env={"PYTHONPROFILEIMPORTTIME": "1"},
    )
    assert result.returncode == 0, result
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()}
    assert "flowbook.runtime.one_task" in imported
    assert "click" not in imported and "flowbook.runtime.scheduler" not in imported
    shown = run_flow(None, "step", "--help")
    assert shown.returncode == 0, shown
    assert "--input-paths" in shown.stdout and "--split-index" in shown.stdout
    shown = run_flow(None, "init", "--help")
    assert shown.returncode == 0 and "--bonus" in shown.stdout and "--task-id" in shown.stdout
    unknown = run_flow(None, "step", "start", "--run-id", "r", "--bogus", "1")
    assert unknown.returncode == 2 and "No such option '--bogus'" in unknown.stderr, unknown


def test_catch_on_the_last_retry_continues_the_flow(run_flow):
    run_flow.write(
        """
        from flowbook import FlowSpec, catch, step

        class CatchFlow(FlowSpec):
            @catch(var="problem")
            @step
            def start(self):
                raise ValueError("no luck")
                self.next(self.end)  # never reached: @catch continues the flow

            @step
            def end(self):
                print("problem was", self.problem.exception)

        if __name__ == "__main__":
            CatchFlow()
        """
    )
    orchestrator = Orchestrator(run_flow, "flow.py")
    start = orchestrator.step("start", orchestrator.init())
    orchestrator.step("end", start)
    assert_task_output_reached_stdout(orchestrator, "problem was")
    ds = Datastore(str(run_flow.datastore))
    task_id = start.rsplit("/", 1)[1]
    assert sorted(ds.task_attempts("CatchFlow", orchestrator.run_id, "start", task_id)) == [0, 1]
    assert ds.read_run_status("CatchFlow", orchestrator.run_id)["successful"] is True


SLEEPY_FLOW = """
import subprocess, time
from flowbook import FlowSpec, step

class SleepyFlow(FlowSpec):
    @step
    def start(self):
        print("child", subprocess.Popen(["sleep", "60"]).pid, flush=True)
        time.sleep(60)
        self.next(self.end)

    @step
    def end(self):
        pass

if __name__ == "__main__":
    SleepyFlow()
"""


@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGKILL"])
def test_a_stopped_step_process_takes_its_task_with_it(run_flow, signal_name):
    """SIGTERM (a pod deleted) is forwarded to the task's group; SIGKILL of the step
    process ends the task through its lifeline. Neither marks the run failed: the
    orchestrator decides (a retry, or its exit handler)."""
    import signal
    import subprocess
    import sys

    run_flow.write(SLEEPY_FLOW)
    orchestrator = Orchestrator(run_flow, "flow.py")
    parameters = orchestrator.init()
    args = ["step", "start", "--run-id", orchestrator.run_id, "--task-id", "t1"]
    proc = subprocess.Popen(
        [sys.executable, "flow.py", *args, "--input-paths", parameters],
        cwd=run_flow.workdir,
        env=run_flow.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline()
    assert line.startswith("child "), (line, proc.stderr.read() if proc.poll() is not None else "")
    child = int(line.split()[1])
    proc.send_signal(getattr(signal, signal_name))
    proc.wait(timeout=20)
    deadline = time.time() + 10
    while _alive(child) and time.time() < deadline:
        time.sleep(0.05)
    assert not _alive(child)
    if signal_name == "SIGTERM":
        assert proc.returncode == 128 + signal.SIGTERM, proc.stderr.read()
    ds = Datastore(str(run_flow.datastore))
    assert ds.read_run_status("SleepyFlow", orchestrator.run_id) is None
