"""A parameter may not take a name the command line uses itself.

The reserved names come from the options table (flowbook/options.py), both
spellings of a flag, plus the names click, resume and the task entry point use;
a flow declaring one is refused in one line, by real subprocesses.
"""

from __future__ import annotations

import pytest
from conftest import assert_refused

from flowbook.options import OPTIONS
from flowbook.parameters import RESERVED_PARAMETER_NAMES

SOURCE = """
from flowbook import FlowSpec, Parameter, step


class ReservedFlow(FlowSpec):
    p = Parameter("{name}", default="x")

    @step
    def start(self):
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    ReservedFlow()
"""


@pytest.mark.parametrize(
    ("name", "args"),
    [
        ("params-file", ["run"]),
        ("params_file", ["run", "--p", "y"]),  # a parameter's '_' is '-' on the line
        ("not-quiet", ["run"]),
        ("no-pylint", ["resume"]),
        ("input-paths", ["run"]),
        ("max-user-code-retries", ["run"]),
    ],
)
def test_a_parameter_with_a_reserved_name_is_refused_in_one_line(run_flow, name, args):
    result = run_flow(SOURCE.replace("{name}", name), *args)
    assert_refused(result, f"'{name}'", "reserved", code=1)
    assert len(result.output.strip().splitlines()) == 1, result


def test_every_option_of_the_table_is_reserved():
    for option in OPTIONS:
        for spelling in option.names:
            assert spelling[2:] in RESERVED_PARAMETER_NAMES, spelling
    for extra in ("tags", "namespace", "run-id", "params", "help", "task-id", "split-index"):
        assert extra in RESERVED_PARAMETER_NAMES


def test_an_ordinary_name_is_not_reserved(run_flow):
    result = run_flow(SOURCE.replace("{name}", "params-dir"), "run", "--params-dir", "y")
    assert result.returncode == 0, result
