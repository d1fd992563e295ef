from flowbook import FlowSpec, Parameter, step


class JoinFlow(FlowSpec):
    """Joins: inputs by index, by step name, by iteration; dropped and merged artifacts."""

    greeting = Parameter("greeting", default="hi")

    @step
    def start(self):
        self.shared = "same everywhere"
        self.dropped = "not reassigned"
        self.next(self.left, self.right)

    @step
    def left(self):
        self.side = "L"
        self.common = 42
        self.next(self.join)

    @step
    def right(self):
        self.side = "R"
        self.common = 42
        self.next(self.join)

    @step
    def join(self, inputs):
        self.by_index = [inputs[0].side, inputs[1].side]
        self.by_name = (inputs.left.side, inputs.right.side)
        self.by_iteration = sorted(i.side for i in inputs)
        self.n_inputs = len(inputs)
        self.input_steps = [i.step_name for i in inputs]
        self.greeting_in_join = self.greeting
        self.greeting_in_inputs = [i.greeting for i in inputs]
        self.shared = inputs.left.shared
        self.next(self.end)

    @step
    def end(self):
        self.greeting_at_end = self.greeting
        print("by_name", self.by_name)


if __name__ == "__main__":
    JoinFlow()
