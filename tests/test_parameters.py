"""Parameters: types, defaults, the environment, IncludeFile, and bad values refused early."""

from __future__ import annotations

import json

import pytest
from conftest import assert_refused, assert_task_failed

DEFAULTS = {
    "count": (1, "int"),
    "ratio": (0.5, "float"),
    "flag": (False, "bool"),
    "typed": (None, "NoneType"),
    "config": ({"k": [1, 2]}, "dict"),
    "mapping": ({"x": 1}, "dict"),
    "rate": (0.01, "float"),
    "stamp": ("ParamsFlow:stamp", "str"),
}


def _no_run_created(tmp_path) -> bool:
    return not (tmp_path / ".flowbook" / "flows").exists()


@pytest.fixture
def notes(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("first line\nsecond line, é\n")
    return path


def test_defaults_and_inferred_types(run_flow, client, notes):
    result = run_flow("params", "run", "--name", "bob", "--notes", str(notes))
    assert result.returncode == 0, result
    seen = client.Flow("ParamsFlow").latest_run["start"].task.data.seen_start
    for name, expected in DEFAULTS.items():
        assert seen[name] == expected, name
    assert seen["name"] == ("bob", "str")


def test_values_from_the_command_line(run_flow, client, notes):
    result = run_flow(
        "params",
        "run",
        "--name",
        "alice",
        "--count",
        "3",
        "--ratio",
        "0.25",
        "--flag",
        "true",
        "--typed",
        "-4",
        "--config",
        '{"a": {"b": [1, "two", null]}}',
        "--mapping",
        "[1, 2]",
        "--learning-rate",
        "1e-3",
        "--stamp",
        "given",
        "--notes",
        str(notes),
    )
    assert result.returncode == 0, result
    run = client.Flow("ParamsFlow").latest_run
    seen = run["start"].task.data.seen_start
    assert seen["name"] == ("alice", "str")
    assert seen["count"] == (3, "int")
    assert seen["ratio"] == (0.25, "float")
    assert seen["flag"] == (True, "bool")
    assert seen["typed"] == (-4, "int")
    assert seen["config"] == ({"a": {"b": [1, "two", None]}}, "dict")
    assert seen["mapping"] == ([1, 2], "list")
    assert seen["rate"] == (0.001, "float")
    assert seen["stamp"] == ("given", "str")
    assert "hello alice x 3" in run["end"].task.stdout


def test_parameters_are_visible_in_every_step_and_are_run_artifacts(run_flow, client, notes):
    result = run_flow("params", "run", "--name", "bob", "--count", "9", "--notes", str(notes))
    assert result.returncode == 0, result
    run = client.Flow("ParamsFlow").latest_run
    join = run["join"].task.data
    end = run["end"].task.data
    snapshots = [join.seen_start, join.seen_a, join.seen_join, end.seen_end]
    assert all(s == snapshots[0] for s in snapshots)
    assert snapshots[0]["count"] == (9, "int")
    # parameters are artifacts of every task, and of the run
    for step in run:
        for task in step:
            assert task.data.name == "bob"
            assert task.data.count == 9
            assert task["count"].data == 9
    assert run.data.count == 9
    assert run.data.rate == 0.01  # stored under the attribute's name
    assert run.parameters["count"] == 9


def test_environment_default_and_command_line_wins(run_flow, client, notes):
    env = {
        "FLOWBOOK_RUN_COUNT": "7",
        "FLOWBOOK_RUN_NAME": "from-env",
        "FLOWBOOK_RUN_LEARNING_RATE": "0.5",
        "FLOWBOOK_RUN_NOTES": str(notes),
    }
    result = run_flow("params", "run", env=env)
    assert result.returncode == 0, result
    seen = client.Flow("ParamsFlow").latest_run.data.seen_end
    assert seen["count"] == (7, "int")
    assert seen["name"] == ("from-env", "str")
    assert seen["rate"] == (0.5, "float")
    assert seen["notes"][0].startswith("first line")

    result = run_flow("params", "run", "--count", "8", env=env)
    assert result.returncode == 0, result
    seen = client.Flow("ParamsFlow").latest_run.data.seen_end
    assert seen["count"] == (8, "int")
    assert seen["name"] == ("from-env", "str")


def test_missing_required_parameter_refused_before_any_task(run_flow, tmp_path, notes):
    result = run_flow("params", "run", "--notes", str(notes))
    assert_refused(result, "'name'", "required")
    assert "Task is starting" not in result.output
    assert _no_run_created(tmp_path)


@pytest.mark.parametrize(
    ("option", "value", "needles"),
    [
        ("--count", "abc", ["'count'", "int", "abc"]),
        ("--count", "1.5", ["'count'", "int"]),
        ("--ratio", "half", ["'ratio'", "float", "half"]),
        ("--flag", "maybe", ["'flag'", "maybe"]),
        ("--typed", "x", ["'typed'", "int"]),
        ("--config", "{not json", ["'config'", "JSON"]),
        ("--mapping", "[1, 2", ["'mapping'"]),
        ("--learning-rate", "fast", ["'learning-rate'", "float"]),
    ],
)
def test_wrong_type_refused_before_any_task(run_flow, tmp_path, notes, option, value, needles):
    result = run_flow("params", "run", "--name", "bob", "--notes", str(notes), option, value)
    assert_refused(result, *needles)
    assert "Task is starting" not in result.output
    assert _no_run_created(tmp_path)


def test_wrong_type_from_environment_refused(run_flow, tmp_path, notes):
    result = run_flow(
        "params",
        "run",
        "--name",
        "bob",
        "--notes",
        str(notes),
        env={"FLOWBOOK_RUN_COUNT": "lots"},
    )
    assert_refused(result, "'count'", "lots")
    assert _no_run_created(tmp_path)


BAD_DEFAULT = """
from flowbook import FlowSpec, Parameter, step


class BadDefaultFlow(FlowSpec):
    size = Parameter("size", type=int, default="large")

    @step
    def start(self):
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    BadDefaultFlow()
"""


def test_default_of_the_wrong_type_refused(run_flow, tmp_path):
    result = run_flow(BAD_DEFAULT, "run")
    assert_refused(result, "'size'", "int", "large")
    assert _no_run_created(tmp_path)
    result = run_flow(None, "run", "--size", "3")
    assert result.returncode == 0, result


def test_unknown_parameter_refused(run_flow, tmp_path):
    result = run_flow("params", "run", "--name", "bob", "--colour", "red")
    assert_refused(result, "--colour")
    assert _no_run_created(tmp_path)


def test_help_shows_parameters(run_flow):
    result = run_flow("params", "run", "--help")
    assert result.returncode == 0, result
    for option, text in [
        ("--name", "Who to greet"),
        ("--count", "How many"),
        ("--learning-rate", "Dashed name"),
        ("--notes", "A text file"),
    ]:
        assert option in result.stdout
        assert text in result.stdout
    assert "required" in result.stdout


# ---------------------------------------------------------------------- IncludeFile
def test_include_file_content_is_stored_and_outlives_the_file(run_flow, client, notes):
    result = run_flow("params", "run", "--name", "bob", "--notes", str(notes))
    assert result.returncode == 0, result
    notes.unlink()
    run = client.Flow("ParamsFlow").latest_run
    assert run.data.notes == "first line\nsecond line, é\n"
    assert run["start"].task.data.seen_start["notes"] == ("first line\nsecond line, é\n", "str")


def test_include_file_missing_is_refused(run_flow, tmp_path):
    result = run_flow("params", "run", "--name", "bob", "--notes", "nowhere.txt")
    assert_refused(result, "'notes'", "nowhere.txt")
    assert _no_run_created(tmp_path)


INCLUDE_DEFAULT = """
from flowbook import FlowSpec, IncludeFile, step


class IncludeDefaultFlow(FlowSpec):
    data = IncludeFile("data", default="default.txt")

    @step
    def start(self):
        self.copy = self.data
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    IncludeDefaultFlow()
"""


def test_include_file_default_path(run_flow, client, tmp_path):
    (tmp_path / "default.txt").write_text("from the default file\n")
    result = run_flow(INCLUDE_DEFAULT, "run")
    assert result.returncode == 0, result
    assert client.Flow("IncludeDefaultFlow").latest_run.data.copy == "from the default file\n"
    (tmp_path / "other.txt").write_text("given\n")
    result = run_flow(None, "run", "--data", "other.txt")
    assert result.returncode == 0, result
    assert client.Flow("IncludeDefaultFlow").latest_run.data.copy == "given\n"
    (tmp_path / "default.txt").unlink()
    result = run_flow(None, "run")
    assert_refused(result, "'data'", "default.txt")


BINARY_INCLUDE = """
from flowbook import FlowSpec, IncludeFile, step


class BinaryFlow(FlowSpec):
    blob = IncludeFile("blob", is_text=False, required=True)

    @step
    def start(self):
        self.size = len(self.blob)
        self.kind = type(self.blob).__name__
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    BinaryFlow()
"""


def test_include_file_binary(run_flow, client, tmp_path):
    (tmp_path / "data.bin").write_bytes(bytes(range(256)))
    result = run_flow(BINARY_INCLUDE, "run", "--blob", "data.bin")
    assert result.returncode == 0, result
    data = client.Flow("BinaryFlow").latest_run.data
    assert (data.size, data.kind) == (256, "bytes")
    assert data.blob == bytes(range(256))


def test_include_file_required_missing(run_flow, tmp_path):
    result = run_flow(BINARY_INCLUDE, "run")
    assert_refused(result, "'blob'")
    assert _no_run_created(tmp_path)


# ---------------------------------------------------------------------- immutability
ASSIGN = """
from flowbook import FlowSpec, Parameter, step


class AssignFlow(FlowSpec):
    alpha = Parameter("alpha", default=1)

    @step
    def start(self):
        self.next(self.change)

    @step
    def change(self):
        self.alpha = 2
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    AssignFlow()
"""


def test_assigning_to_a_parameter_fails_the_task(run_flow, client):
    result = run_flow(ASSIGN, "run")
    assert_task_failed(result, "change", "'alpha'", "parameter")
    run = client.Flow("AssignFlow").latest_run
    assert not run.successful
    change = run["change"].task
    assert not change.successful
    assert "'alpha'" in change.exception
    assert "end" not in run


# ---------------------------------------------------------------------- seed-style flows
def test_json_parameter_round_trip(run_flow, client):
    from conftest import example_source

    value = {"nested": {"list": [1, 2.5, "x"]}, "flag": True}
    result = run_flow(example_source("json_parameter"), "run", "--mapping", json.dumps(value))
    assert result.returncode == 0, result
    run = client.Flow("JSONParameterFlow").latest_run
    assert run.data.mapping == value
    assert "key nested value {'list': [1, 2.5, 'x']}" in run["start"].task.stdout


@pytest.mark.parametrize("reserved", ["tag", "max-workers", "max-num-splits"])
def test_parameter_with_a_reserved_name_is_refused(run_flow, reserved):
    source = f"""
from flowbook import FlowSpec, Parameter, step


class ReservedFlow(FlowSpec):
    p = Parameter("{reserved}", default="x")

    @step
    def start(self):
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    ReservedFlow()
"""
    result = run_flow(source, "run")
    assert_refused(result, f"'{reserved}'")
