from flowbook import FlowSpec, step


class NestedFlow(FlowSpec):
    """A flow with a foreach inside a foreach and a static split inside a foreach body."""

    @step
    def start(self):
        """Fan out over the outer items."""
        self.xs = [1, 2]
        self.next(self.outer, foreach="xs")

    @step
    def outer(self):
        """One task per outer item; fans out again."""
        self.x = self.input
        self.outer_index = self.index
        self.ys = ["a", "b", "c"]
        self.next(self.inner, foreach="ys")

    @step
    def inner(self):
        """One task per (outer, inner) pair."""
        self.label = f"{self.x}{self.input}"
        self.stack = self.foreach_stack()
        self.next(self.inner_join)

    @step
    def inner_join(self, inputs):
        """The inner foreach's join."""
        self.labels = [i.label for i in inputs]
        self.x = inputs[0].x
        self.next(self.p, self.q)

    @step
    def p(self):
        self.pv = self.x * 100
        self.next(self.body_join)

    @step
    def q(self):
        self.qv = self.x * 1000
        self.next(self.body_join)

    @step
    def body_join(self, inputs):
        self.pq = (inputs.p.pv, inputs.q.qv)
        self.x = inputs.p.x
        self.labels = inputs.q.labels
        self.next(self.outer_join)

    @step
    def outer_join(self, inputs):
        """Join the outer foreach."""
        self.summary = [(i.x, i.labels, sum(i.pq)) for i in inputs]
        self.next(self.end)

    @step
    def end(self):
        print("summary", self.summary)


if __name__ == "__main__":
    NestedFlow()
