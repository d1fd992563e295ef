"""One table of options (flowbook/options.py), five faces: the same inputs give the
same settings through the fast reading, click, the ``flowbook`` program, the Runner's
command line and ``%flow run``/``%flow resume``."""

from __future__ import annotations

import inspect
import sys

import pytest
from conftest import assert_refused

from flowbook import options
from flowbook.cli.entry import read_plain_start
from flowbook.cli.flow_cli import build_cli
from flowbook.cli.main import UsageError, split_args
from flowbook.exceptions import FlowbookError
from flowbook.graph import FlowGraph
from flowbook.loader import load_flow_class
from flowbook.notebook.magics import read_flow_line
from flowbook.runner import Runner

FLOW = """
from flowbook import FlowSpec, JSONType, Parameter, step


class RoundTripFlow(FlowSpec):
    alpha = Parameter("alpha", default=1)
    my_list = Parameter("my-list", type=JSONType, default="[]")

    @step
    def start(self):
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    RoundTripFlow()
"""

#: (top-level words, command, the command's words, Runner(**top), runner.run(**kwargs))
CASES = [
    ([], "run", [], {}, {}),
    (
        ["--with", "retry:times=2", "--with", "catch", "--datastore", "/tmp/ds", "--quiet"],
        "run",
        ["--max-workers", "3", "--max-num-splits", "7", "--tag", "a", "--tag", "b"]
        + ["--alpha", "5", "--my-list", "[1, 2]"],
        {"decospecs": ["retry:times=2", "catch"], "datastore": "/tmp/ds", "quiet": True},
        {"max_workers": 3, "max_num_splits": 7, "tags": ["a", "b"], "alpha": 5, "my_list": [1, 2]},
    ),
    (["--datastore", "/d"], "run", ["--reuse"], {"datastore": "/d"}, {"reuse": True}),
    (
        ["--datastore=/d", "--no-pylint"],
        "run",
        ["--max-workers=2", "--alpha=-3"],
        {"datastore": "/d", "pylint": False},
        {"max_workers": 2, "alpha": -3},
    ),
    (
        ["--not-quiet", "--pylint"],
        "resume",
        ["start", "--origin-run-id", "12", "--tag", "x"],
        {"quiet": False, "pylint": True},
        {"step": "start", "origin_run_id": "12", "tags": ["x"]},
    ),
    (["--quiet"], "resume", ["--max-num-splits", "4"], {"quiet": True}, {"max_num_splits": 4}),
]


@pytest.fixture(scope="module")
def flow(tmp_path_factory):
    path = tmp_path_factory.mktemp("roundtrip") / "roundtrip_flow.py"
    path.write_text(FLOW)
    flow_cls = load_flow_class(str(path))
    return path, flow_cls, FlowGraph.from_flow_class(flow_cls)


@pytest.fixture(autouse=True)
def no_run_environment(monkeypatch):
    for option in options.OPTIONS:
        for variable in option.env:
            monkeypatch.delenv(variable, raising=False)


NAMES = {"alpha", "my-list"}


def fast(argv: list[str]) -> dict | None:
    return read_plain_start(argv, NAMES)


def clicked(flow, argv: list[str]) -> dict:
    """The settings click's ``run``/``resume`` hands to the run."""
    _, flow_cls, graph = flow
    seen = []
    cli = build_cli(flow_cls, graph, start=lambda cls, g, settings: seen.append(settings) or True)
    cli.main(args=argv, prog_name="flow.py", standalone_mode=False)
    (settings,) = seen
    return settings


def runner_settings(flow, tmp_path, top: dict, kwargs: dict, command: str) -> dict:
    """What the Runner's command line reads as (its own --run-id-file left out)."""
    path, flow_cls, _ = flow
    runner = Runner(str(path), show_output=False, **top)
    runner._flow_cls = flow_cls
    argv = runner._command(command, kwargs, str(tmp_path))
    assert argv[:2] == [sys.executable, str(path)]
    settings = fast(argv[2:])
    assert settings is not None, argv  # the Runner's runs take the fast road
    assert settings["run_id_file"] == str(tmp_path / "run_id")
    return dict(settings, run_id_file=None)


@pytest.mark.parametrize("case", CASES, ids=range(len(CASES)))
def test_every_face_reads_the_same_settings(flow, tmp_path, case):
    top, command, words, runner_top, runner_kwargs = case
    argv = [*top, command, *words]
    expected = fast(argv)
    assert expected is not None
    assert clicked(flow, argv) == expected
    for program_argv in ([*top, command, "flow.py", *words], [command, "flow.py", *words, *top]):
        before, cmd, path, rest = split_args(program_argv)
        assert (cmd, path) == (command, "flow.py")
        assert fast([*before, cmd, *rest]) == expected
        assert clicked(flow, [*before, cmd, *rest]) == expected
    assert runner_settings(flow, tmp_path, runner_top, runner_kwargs, command) == expected
    if all(
        options.by_name(options.TOP)[w.partition("=")[0]].notebook
        for w in top
        if w.startswith("--")
    ):
        assert read_flow_line(command, [*top, *words]) == expected
    else:
        with pytest.raises(FlowbookError, match="is not available in a notebook"):
            read_flow_line(command, [*top, *words])


def test_the_settings_are_what_was_given_over_the_tables_defaults(flow):
    settings = fast(CASES[1][0] + ["run"] + CASES[1][2])
    assert settings == {
        "command": "run",
        "datastore": "/tmp/ds",
        "decospecs": ["retry:times=2", "catch"],
        "quiet": True,
        "pylint": True,
        "max_workers": 3,
        "max_num_splits": 7,
        "tags": ["a", "b"],
        "executor": "local",
        "dask_scheduler": None,
        "dask_scheduler_file": None,
        "allow_local_datastore": False,
        "reuse": False,
        "run_id_file": None,
        "params_file": None,
        "parameters": {"alpha": "5", "my-list": "[1, 2]"},
    }
    assert fast(["resume"]) == dict(
        options.defaults("resume"), command="resume", parameters={}, step=None
    )


def test_environment_defaults_reach_every_face(flow, tmp_path, monkeypatch):
    monkeypatch.setenv("FLOWBOOK_RUN_MAX_WORKERS", "5")
    monkeypatch.setenv("METAFLOW_RUN_MAX_NUM_SPLITS", "9")
    expected = fast(["run"])
    assert expected["max_workers"] == 5 and expected["max_num_splits"] == 9
    assert clicked(flow, ["run"]) == expected
    assert read_flow_line("run", []) == expected
    assert runner_settings(flow, tmp_path, {}, {}, "run") == expected
    # given on the command line, the option wins over the environment
    assert clicked(flow, ["run", "--max-workers", "1"])["max_workers"] == 1
    assert fast(["run", "--max-workers", "1"])["max_workers"] == 1


def test_a_bad_environment_value_is_named_by_every_face(flow, monkeypatch):
    monkeypatch.setenv("METAFLOW_RUN_MAX_WORKERS", "lots")
    assert fast(["run"]) is None  # left to click, which says what is wrong
    message = r"^METAFLOW_RUN_MAX_WORKERS='lots' is not an integer \(it sets --max-workers\)\.$"
    with pytest.raises(FlowbookError, match=message):
        clicked(flow, ["run"])
    with pytest.raises(FlowbookError, match=message):
        read_flow_line("run", [])


def test_flow_line_errors_name_what_is_wrong():
    with pytest.raises(FlowbookError, match=r"^%flow run: --max-workers: 'x' is not an integer"):
        read_flow_line("run", ["--max-workers", "x"])
    with pytest.raises(FlowbookError, match=r"^%flow run: --tag needs a value"):
        read_flow_line("run", ["--tag"])
    with pytest.raises(FlowbookError, match=r"^%flow run: --quiet takes no value"):
        read_flow_line("run", ["--quiet=1"])
    with pytest.raises(FlowbookError, match=r"^%flow run: expected --name value pairs, got 'x'"):
        read_flow_line("run", ["x"])
    with pytest.raises(FlowbookError, match=r"^%flow resume: parameter --a is given twice"):
        read_flow_line("resume", ["--a", "1", "--a", "2"])
    with pytest.raises(FlowbookError, match=r"^Invalid run id '\.\./1'"):
        read_flow_line("resume", ["--origin-run-id", "../1"])
    with pytest.raises(FlowbookError, match=r"^Invalid step name 'a b'"):
        read_flow_line("resume", ["a b"])
    # a parameter's value is taken as click takes it, even when it looks like an option
    assert read_flow_line("resume", ["--a", "5"])["parameters"] == {"a": "5"}
    assert read_flow_line("resume", ["--a", "5"])["step"] is None


def test_the_flowbook_program_keeps_option_values_in_place():
    top, _, _, rest = split_args(["run", "f.py", "--msg", "--with", "--quiet", "--", "--with"])
    assert top == ["--quiet"] and rest == ["--msg", "--with", "--", "--with"]
    # a flag of the command takes no value: the top-level option after it is one
    argv = ["argo-workflows", "create", "f.py", "--only-json", "--datastore", "s3://b/x"]
    top, command, path, rest = split_args(argv)
    assert (top, command, path, rest) == (
        ["--datastore", "s3://b/x"],
        "argo-workflows",
        "f.py",
        ["create", "--only-json"],
    )
    top, _, _, rest = split_args(["resume", "f.py", "--not-quiet", "--with", "retry"])
    assert top == ["--not-quiet", "--with", "retry"] and rest == []
    for bad, message in [
        (["--colour", "run", "f.py"], "unknown option --colour"),
        (["--quiet=1", "run", "f.py"], "--quiet takes no value"),
        (["--datastore"], "--datastore needs a value"),
        (["run"], "give a COMMAND and a FILE"),
    ]:
        with pytest.raises(UsageError, match=message):
            split_args(bad)


def test_the_runtime_defaults_are_the_tables():
    from flowbook.notebook.session import NotebookSession
    from flowbook.runtime.launch import run_flow
    from flowbook.runtime.scheduler import Scheduler

    for function in (run_flow, Scheduler.__init__, NotebookSession.run_flow):
        parameters = inspect.signature(function).parameters
        assert parameters["max_workers"].default == options.DEFAULT_MAX_WORKERS
        assert parameters["max_num_splits"].default == options.DEFAULT_MAX_NUM_SPLITS


def test_parameters_file_gives_values_as_the_command_line_does(run_flow, client):
    path = run_flow.write(FLOW)
    (path.parent / "p.json").write_text('{"alpha": "7", "my-list": "[3]"}')
    result = run_flow(None, "run", "--params-file", "p.json")
    assert result.returncode == 0, result
    run = client.Flow("RoundTripFlow").latest_run
    assert (run.data.alpha, run.data.my_list) == (7, [3])
    (path.parent / "bad.json").write_text("[1]")
    assert_refused(
        run_flow(None, "run", "--params-file", "bad.json"),
        "--params-file bad.json: expected a JSON object of parameter name -> text.",
    )
    assert_refused(
        run_flow(None, "run", "--params-file", "p.json", "--alpha", "1"),
        "Flow RoundTripFlow: parameter 'alpha' is given twice (--alpha and --params-file).",
    )
    assert_refused(run_flow(None, "run", "--params-file", "nope.json"), "--params-file nope.json")
