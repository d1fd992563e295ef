"""The graph cache: a second run reads the steps' shapes without parsing the source."""

from __future__ import annotations

import json

from conftest import assert_refused

FLOW = """
from flowbook import FlowSpec, step


class CachedFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.left, self.right)

    @step
    def left(self):
        self.next(self.join)

    @step
    def right(self):
        self.next(self.join)

    @step
    def join(self, inputs):
        self.next(self.end)

    @step
    def end(self):
        print("reached the end")


if __name__ == "__main__":
    CachedFlow()
"""


def _imported(result) -> set[str]:
    return {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()}


def _cache_file(run_flow):
    return run_flow.workdir / "__pycache__" / "flow.py.flowbook-graph.json"


def test_a_second_run_does_not_parse_the_source(run_flow):
    first = run_flow(FLOW, "run", env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert first.returncode == 0, first
    assert "ast" in _imported(first)
    cached = json.loads(_cache_file(run_flow).read_text())
    shapes = {key.split(":")[0]: shape for key, shape in cached["steps"].items()}
    assert shapes["join"] == [2, ["end"], None]
    assert shapes["start"] == [1, ["left", "right"], None]

    second = run_flow(None, "run", env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert second.returncode == 0, second
    assert "reached the end" in second.stdout
    assert "ast" not in _imported(second) and "linecache" not in _imported(second)


def test_an_edit_of_the_same_size_is_seen(run_flow):
    assert run_flow(FLOW, "check").returncode == 0
    # swap the two branches' targets: same size, same lines, other graph
    edited = FLOW.replace("self.next(self.left, self.right)", "self.next(self.right, self.left)")
    assert len(edited) == len(FLOW)
    run_flow.write(edited)
    shown = run_flow(None, "show")
    assert shown.returncode == 0, shown
    assert "=> right, left" in shown.stdout
    broken = FLOW.replace("self.next(self.end)", "self.next(self.nowhere)")
    run_flow.write(broken)
    assert_refused(run_flow(None, "check"), "nowhere")
    assert_refused(run_flow(None, "check"), "nowhere")  # errors are never cached


def test_a_damaged_or_unwritable_cache_is_ignored(run_flow):
    assert run_flow(FLOW, "check").returncode == 0
    cache = _cache_file(run_flow)
    cache.write_text("{not json")
    assert run_flow(None, "run").returncode == 0
    assert json.loads(cache.read_text())["steps"]  # rewritten
    steps = json.loads(cache.read_text())["steps"]
    wrong = {key: [1, ["end"], None] for key in steps}  # every step straight to the end
    cache.write_text(json.dumps({"key": {"v": 1}, "steps": wrong}))
    result = run_flow(None, "run")  # another file's key: not used
    assert result.returncode == 0 and "/left/" in result.output, result
    cache.unlink()
    cache.parent.rmdir()
    cache.parent.write_text("a file where the cache directory would go")
    result = run_flow(None, "run")
    assert result.returncode == 0, result
