"""A wide foreach: splits are made as workers free up, in index order, with consecutive ids."""

from __future__ import annotations

WIDE = """
from flowbook import FlowSpec, Parameter, step


class Wide(FlowSpec):
    splits = Parameter("splits", default=300)

    @step
    def start(self):
        self.items = list(range(self.splits))
        self.next(self.body, foreach="items")

    @step
    def body(self):
        self.square = self.input * self.input
        self.next(self.join)

    @step
    def join(self, inputs):
        self.squares = [i.square for i in inputs]
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    Wide()
"""


def test_a_wide_foreach_keeps_index_order_and_consecutive_ids(run_flow, client):
    result = run_flow(WIDE, "run", "--max-workers", "4", "--max-num-splits", "300")
    assert result.returncode == 0, result
    run = client.Flow("Wide").latest_run
    assert run.data.squares == [i * i for i in range(300)]
    tasks = sorted(run["body"], key=lambda t: t.index)
    ids = [int(t.id) for t in tasks]
    assert ids == list(range(ids[0], ids[0] + 300))
    assert int(run["join"].task.id) == ids[-1] + 1
