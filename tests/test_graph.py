"""Flow shapes that run, and every invalid graph refused before anything runs."""

from __future__ import annotations

import pytest
from conftest import assert_refused

HEADER = "from flowbook import FlowSpec, step\n\n"


def flow(name: str, body: str) -> str:
    return (
        HEADER
        + f"class {name}(FlowSpec):\n"
        + body
        + f"\n\nif __name__ == '__main__':\n    {name}()\n"
    )


# ---------------------------------------------------------------------- valid shapes
def test_linear_flow_runs_steps_in_order(run_flow, client):
    result = run_flow(
        flow(
            "LinearFlow",
            """
    @step
    def start(self):
        self.trail = ["start"]
        self.next(self.middle)

    @step
    def middle(self):
        self.trail = self.trail + ["middle"]
        self.next(self.end)

    @step
    def end(self):
        self.trail = self.trail + ["end"]
""",
        ),
        "run",
    )
    assert result.returncode == 0, result
    run = client.Flow("LinearFlow").latest_run
    assert run.successful
    assert run.data.trail == ["start", "middle", "end"]
    assert {s.id for s in run} == {"start", "middle", "end"}


def test_static_split_and_join(run_flow, client):
    result = run_flow(
        flow(
            "SplitFlow",
            """
    @step
    def start(self):
        self.base = 10
        self.next(self.a, self.b, self.c)

    @step
    def a(self):
        self.v = self.base + 1
        self.next(self.join)

    @step
    def b(self):
        self.v = self.base + 2
        self.next(self.join)

    @step
    def c(self):
        self.v = self.base + 3
        self.next(self.join)

    @step
    def join(self, inputs):
        self.vs = [i.v for i in inputs]
        self.next(self.end)

    @step
    def end(self):
        pass
""",
        ),
        "run",
    )
    assert result.returncode == 0, result
    run = client.Flow("SplitFlow").latest_run
    assert run["join"].task.data.vs == [11, 12, 13]
    assert run.successful


def test_nested_foreach_and_split_inside_foreach(run_flow, client):
    result = run_flow("nested", "run")
    assert result.returncode == 0, result
    run = client.Flow("NestedFlow").latest_run
    assert run.successful
    # foreach inside foreach: 2 outer x 3 inner tasks, each knowing both levels
    inner = list(run["inner"])
    assert len(inner) == 6
    assert sorted(t.data.label for t in inner) == sorted(
        f"{x}{y}" for x in (1, 2) for y in ("a", "b", "c")
    )
    for task in inner:
        stack = task.data.stack
        assert [(i, n) for i, n, _ in stack] == [
            (task.data.outer_index, 2),
            (task.index, 3),
        ]
    # the inner join runs once per outer item, with the outer item still visible
    inner_joins = sorted((t.data.x, t.data.labels) for t in run["inner_join"])
    assert inner_joins == [(1, ["1a", "1b", "1c"]), (2, ["2a", "2b", "2c"])]
    # a static split inside the foreach body: p and q once per outer item
    assert len(list(run["p"])) == 2
    assert len(list(run["q"])) == 2
    body_joins = sorted(t.data.pq for t in run["body_join"])
    assert body_joins == [(1 * 100, 1 * 1000), (2 * 100, 2 * 1000)]
    assert run.data.summary == [(1, ["1a", "1b", "1c"], 1100), (2, ["2a", "2b", "2c"], 2200)]


def test_show_prints_steps_docstrings_and_transitions(run_flow):
    result = run_flow("nested", "show")
    assert result.returncode == 0, result
    out = result.stdout
    assert "A flow with a foreach inside a foreach" in out
    for name in ("start", "outer", "inner", "inner_join", "p", "q", "body_join", "end"):
        assert f"Step {name}" in out
    assert "Fan out over the outer items." in out
    assert "The inner foreach's join." in out
    assert "=> outer (foreach over 'xs')" in out
    assert "=> inner (foreach over 'ys')" in out
    assert "=> p, q" in out
    assert "=> outer_join" in out
    # steps come in topological order
    positions = [out.index(f"Step {n}\n") for n in ("start", "outer", "inner", "outer_join", "end")]
    assert positions == sorted(positions)


def test_check_validates_without_running(run_flow, tmp_path):
    result = run_flow("nested", "check")
    assert result.returncode == 0, result
    assert "NestedFlow" in result.stdout
    assert "looks good" in result.stdout
    assert not (tmp_path / ".flowbook" / "flows").exists()


def test_bare_command_validates_and_prints_help(run_flow, tmp_path):
    result = run_flow("nested")
    assert result.returncode == 0, result
    assert "looks good" in result.stdout
    assert "Usage:" in result.stdout
    for command in ("run", "show", "check", "logs", "dump"):
        assert command in result.stdout
    assert not (tmp_path / ".flowbook" / "flows").exists()


def test_no_pylint_is_accepted(run_flow):
    result = run_flow("nested", "--no-pylint", "check")
    assert result.returncode == 0, result
    assert "looks good" in result.stdout


# ---------------------------------------------------------------------- refused graphs
LINEAR_END = """
    @step
    def end(self):
        pass
"""

INVALID = {
    "no_start": (
        """
    @step
    def begin(self):
        self.next(self.end)
"""
        + LINEAR_END,
        ["'start'"],
    ),
    "no_end": (
        """
    @step
    def start(self):
        self.next(self.finish)

    @step
    def finish(self):
        pass
""",
        ["'end'"],
    ),
    "next_to_a_method_without_step": (
        """
    @step
    def start(self):
        self.next(self.middle)

    def middle(self):
        self.next(self.end)
"""
        + LINEAR_END,
        ["'middle' is a method without @step", "decorate 'def middle' with @step"],
    ),
    "foreach_join_without_inputs": (
        """
    @step
    def start(self):
        self.items = [1, 2]
        self.next(self.body, foreach="items")

    @step
    def body(self):
        self.next(self.gather)

    @step
    def gather(self):
        self.next(self.end)
"""
        + LINEAR_END,
        ["split at step 'start' has no matching join", "'def gather(self, inputs)'"],
    ),
    "unknown_next": (
        """
    @step
    def start(self):
        self.next(self.nowhere)
"""
        + LINEAR_END,
        ["'start'", "nowhere"],
    ),
    "missing_next": (
        """
    @step
    def start(self):
        self.next(self.middle)

    @step
    def middle(self):
        self.x = 1
"""
        + LINEAR_END,
        ["'middle'", "self.next"],
    ),
    "end_with_next": (
        """
    @step
    def start(self):
        self.next(self.end)

    @step
    def end(self):
        self.next(self.start)
""",
        ["'end'"],
    ),
    "cycle": (
        """
    @step
    def start(self):
        self.next(self.a)

    @step
    def a(self):
        self.next(self.b)

    @step
    def b(self):
        self.next(self.a)
"""
        + LINEAR_END,
        ["cycle", "a", "b"],
    ),
    "join_of_different_splits": (
        """
    @step
    def start(self):
        self.next(self.a, self.b)

    @step
    def a(self):
        self.next(self.a1, self.a2)

    @step
    def a1(self):
        self.next(self.mixed)

    @step
    def a2(self):
        self.next(self.join_a)

    @step
    def b(self):
        self.next(self.mixed)

    @step
    def mixed(self, inputs):
        self.next(self.join_a)

    @step
    def join_a(self, inputs):
        self.next(self.end)
"""
        + LINEAR_END,
        ["'mixed'", "different splits"],
    ),
    "split_without_join": (
        """
    @step
    def start(self):
        self.next(self.a, self.b)

    @step
    def a(self):
        self.next(self.end)

    @step
    def b(self):
        self.next(self.end)
"""
        + LINEAR_END,
        ["'end'"],
    ),
    "split_reaching_end_without_join": (
        """
    @step
    def start(self):
        self.next(self.a, self.b)

    @step
    def a(self):
        self.next(self.c)

    @step
    def b(self):
        self.next(self.c)

    @step
    def c(self):
        self.next(self.end)
"""
        + LINEAR_END,
        ["'c'", "join"],
    ),
    "foreach_without_join": (
        """
    @step
    def start(self):
        self.items = [1, 2]
        self.next(self.body, foreach="items")

    @step
    def body(self):
        self.next(self.end)
"""
        + LINEAR_END,
        ["'start'", "no matching join"],
    ),
    "join_with_one_input": (
        """
    @step
    def start(self):
        self.next(self.a, self.b)

    @step
    def a(self):
        self.next(self.join)

    @step
    def b(self):
        self.next(self.other)

    @step
    def join(self, inputs):
        self.next(self.other)

    @step
    def other(self, inputs):
        self.next(self.end)
"""
        + LINEAR_END,
        ["'join'", "one input"],
    ),
    "join_without_split": (
        """
    @step
    def start(self):
        self.next(self.join)

    @step
    def join(self, inputs):
        self.next(self.end)
"""
        + LINEAR_END,
        ["'join'"],
    ),
    "two_outputs_and_foreach": (
        """
    @step
    def start(self):
        self.items = [1, 2]
        self.next(self.a, self.b, foreach="items")

    @step
    def a(self):
        self.next(self.join)

    @step
    def b(self):
        self.next(self.join)

    @step
    def join(self, inputs):
        self.next(self.end)
"""
        + LINEAR_END,
        ["'start'", "foreach"],
    ),
    "next_called_with_a_string": (
        """
    @step
    def start(self):
        self.next("end")
"""
        + LINEAR_END,
        ["'start'", "self.next"],
    ),
    "different_transitions": (
        """
    @step
    def start(self):
        if self.__class__:
            self.next(self.a)
        else:
            self.next(self.end)

    @step
    def a(self):
        self.next(self.end)
"""
        + LINEAR_END,
        ["'start'", "different targets"],
    ),
    "unreachable_step": (
        """
    @step
    def start(self):
        self.next(self.end)

    @step
    def orphan(self):
        self.next(self.end)
"""
        + LINEAR_END,
        ["'orphan'"],
    ),
}


@pytest.mark.parametrize("command", ["run", "check", "show"])
@pytest.mark.parametrize("case", sorted(INVALID))
def test_invalid_graph_is_refused(run_flow, tmp_path, case, command):
    body, needles = INVALID[case]
    result = run_flow(flow("BadFlow", body), command)
    assert_refused(result, "BadFlow", *needles)
    assert result.stdout.count("Task is starting") == 0
    assert not (tmp_path / ".flowbook" / "flows").exists()


def test_invalid_graph_refused_by_bare_command(run_flow):
    body, needles = INVALID["cycle"]
    result = run_flow(flow("BadFlow", body))
    assert_refused(result, "BadFlow", *needles)
    assert "looks good" not in result.output


def test_split_inside_split_and_foreach_inside_a_branch(run_flow, client):
    result = run_flow("branches", "run")
    assert result.returncode == 0, result
    run = client.Flow("BranchesFlow").latest_run
    assert run.successful
    assert run.data.result == {"left_join": ["la", "lb"], "each_join": [30, 20, 10, 0]}
    assert run.data.order == ["left_join", "each_join"]
    assert len(list(run["each"])) == 4
