import time

from flowbook import FlowSpec, Parameter, step


class BranchesFlow(FlowSpec):
    """A split inside a split, and a foreach inside one branch of a split."""

    scale = Parameter("scale", default=10)

    @step
    def start(self):
        self.next(self.left, self.right)

    @step
    def left(self):
        self.next(self.left_a, self.left_b)

    @step
    def left_a(self):
        time.sleep(0.3)  # finishes last: the join's inputs keep self.next's order
        self.v = "la"
        self.next(self.left_join)

    @step
    def left_b(self):
        self.v = "lb"
        self.next(self.left_join)

    @step
    def left_join(self, inputs):
        self.v = [i.v for i in inputs]
        self.next(self.join)

    @step
    def right(self):
        self.items = [3, 2, 1, 0]
        self.next(self.each, foreach="items")

    @step
    def each(self):
        time.sleep(self.input * 0.1)  # later items finish first
        self.v = self.input * self.scale
        self.next(self.each_join)

    @step
    def each_join(self, inputs):
        self.v = [i.v for i in inputs]
        self.next(self.join)

    @step
    def join(self, inputs):
        self.result = {i.step_name: i.v for i in inputs}
        self.order = [i.step_name for i in inputs]
        self.next(self.end)

    @step
    def end(self):
        print(self.result)


if __name__ == "__main__":
    BranchesFlow()
