"""The fast way into ``run`` and ``resume``: what it reads, what it leaves to click."""

from __future__ import annotations

import pytest

from flowbook.cli.entry import read_plain_start

PARAMS = {"alpha", "my-list"}


def test_a_plain_run_is_read_with_its_defaults(monkeypatch):
    monkeypatch.delenv("FLOWBOOK_RUN_MAX_WORKERS", raising=False)
    monkeypatch.delenv("METAFLOW_RUN_MAX_WORKERS", raising=False)
    monkeypatch.delenv("FLOWBOOK_RUN_MAX_NUM_SPLITS", raising=False)
    monkeypatch.delenv("METAFLOW_RUN_MAX_NUM_SPLITS", raising=False)
    settings = read_plain_start(["run"], PARAMS)
    assert settings == {
        "command": "run",
        "datastore": None,
        "decospecs": [],
        "quiet": False,
        "pylint": True,
        "tags": [],
        "parameters": {},
        "max_workers": 16,
        "max_num_splits": 100,
        "executor": "local",
        "dask_scheduler": None,
        "dask_scheduler_file": None,
        "allow_local_datastore": False,
        "reuse": False,
        "run_id_file": None,
        "params_file": None,
    }


def test_options_parameters_and_globals_are_read(monkeypatch):
    monkeypatch.setenv("FLOWBOOK_RUN_MAX_NUM_SPLITS", "7")
    argv = [
        "--datastore=/tmp/ds",
        "--quiet",
        "--no-pylint",
        "--with",
        "retry:times=2",
        "run",
        "--max-workers",
        "4",
        "--tag",
        "a",
        "--tag=b",
        "--alpha",
        "-3",
        "--my-list",
        "[1, 2]",
    ]
    settings = read_plain_start(argv, PARAMS)
    assert settings["datastore"] == "/tmp/ds"
    assert settings["quiet"] is True and settings["pylint"] is False
    assert settings["decospecs"] == ["retry:times=2"]
    assert settings["max_workers"] == 4 and settings["max_num_splits"] == 7
    assert settings["tags"] == ["a", "b"]
    assert settings["parameters"] == {"alpha": "-3", "my-list": "[1, 2]"}


def test_negative_flags_and_repeated_with_are_read():
    settings = read_plain_start(
        ["--quiet", "--not-quiet", "--with=retry", "--with", "catch", "--pylint", "run"], PARAMS
    )
    assert settings["quiet"] is False and settings["pylint"] is True
    assert settings["decospecs"] == ["retry", "catch"]


def test_the_params_file_option_is_read():
    settings = read_plain_start(["run", "--params-file", "/tmp/p.json"], PARAMS)
    assert settings["params_file"] == "/tmp/p.json"


def test_resume_reads_a_step_and_an_origin():
    settings = read_plain_start(["resume", "train", "--origin-run-id", "123"], PARAMS)
    assert settings["command"] == "resume"
    assert settings["step"] == "train" and settings["origin_run_id"] == "123"


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["show"],
        ["check"],
        ["run", "--help"],
        ["--help"],
        ["run", "-h"],
        ["run", "--max-workers", "many"],  # click says what is wrong
        ["run", "--max-workers"],  # no value
        ["run", "--no-such-option", "1"],
        ["run", "--alpha", "1", "--alpha", "2"],  # click decides which wins
        ["run", "extra"],  # run takes no argument
        ["resume", "a", "b"],
        ["--datastore", "run"],  # the value is missing: "run" is the datastore
        ["--quiet=yes", "run"],
        ["run", "--origin-run-id", "5"],  # only resume has it
        ["--max-workers", "3", "run"],  # a run option before the command
        ["run", "--with", "retry"],  # a top-level option after the command
        ["run", "--quiet"],
        ["--not-quiet=1", "run"],
        ["--with", "--quiet", "run"],  # --with's value is missing
    ],
)
def test_anything_else_is_left_to_click(argv):
    assert read_plain_start(argv, PARAMS) is None


def test_a_bad_environment_default_is_left_to_click(monkeypatch):
    monkeypatch.setenv("FLOWBOOK_RUN_MAX_WORKERS", "lots")
    assert read_plain_start(["run"], PARAMS) is None


def test_a_plain_run_does_not_import_click(run_flow):
    result = run_flow("simple", "run", env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert result.returncode == 0, result
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()}
    assert "flowbook.runtime.launch" in imported
    assert "click" not in imported
    assert "flowbook.cli.flow_cli" not in imported
    shown = run_flow(None, "run", "--help")
    assert shown.returncode == 0 and "--max-workers" in shown.stdout


ATEXIT_FLOW = """
import atexit
import sys

from flowbook import FlowSpec, step

atexit.register(lambda: print("atexit handler ran", flush=True))


class AtExitFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.end)

    @step
    def end(self):
        print("end ran")


if __name__ == "__main__":
    print("unflushed output of the flow file", end="")
    AtExitFlow()
"""


@pytest.mark.parametrize("succeed", [True, False])
def test_the_process_ends_with_output_flushed_and_atexit_handlers_run(run_flow, succeed):
    """The run ends without interpreter teardown, but nothing a user sees is lost."""
    source = ATEXIT_FLOW if succeed else ATEXIT_FLOW.replace('print("end ran")', "1 / 0")
    result = run_flow(source, "run")
    assert result.returncode == (0 if succeed else 1), result
    assert "unflushed output of the flow file" in result.stdout
    assert result.stdout.rstrip().endswith("atexit handler ran")
    assert ("Done!" in result.stdout) is succeed
