from flowbook import FlowSpec, IncludeFile, JSONType, Parameter, step


def deploy_time_default(context):
    return f"{context.flow_name}:{context.parameter_name}"


class ParamsFlow(FlowSpec):
    """Parameters of every kind, recorded in every step."""

    name = Parameter("name", help="Who to greet", required=True)
    count = Parameter("count", help="How many", default=1)
    ratio = Parameter("ratio", help="A ratio", default=0.5)
    flag = Parameter("flag", help="A switch", default=False)
    typed = Parameter("typed", help="Explicitly typed", type=int)
    config = Parameter("config", help="JSON settings", type=JSONType, default='{"k": [1, 2]}')
    mapping = Parameter("mapping", help="Inferred JSON", default={"x": 1})
    rate = Parameter("learning-rate", help="Dashed name", default=0.01)
    stamp = Parameter("stamp", help="Deploy-time default", default=deploy_time_default)
    notes = IncludeFile("notes", help="A text file")

    @step
    def start(self):
        self.seen_start = self.snapshot()
        self.next(self.a, self.b)

    @step
    def a(self):
        self.seen_a = self.snapshot()
        self.next(self.join)

    @step
    def b(self):
        self.next(self.join)

    @step
    def join(self, inputs):
        self.seen_join = self.snapshot()
        self.seen_a = inputs.a.seen_a
        self.seen_start = inputs.a.seen_start
        self.next(self.end)

    @step
    def end(self):
        self.seen_end = self.snapshot()
        print("hello", self.name, "x", self.count)

    def snapshot(self):
        names = ("name", "count", "ratio", "flag", "typed", "config", "mapping", "rate")
        values = {n: getattr(self, n) for n in names}
        values.update(stamp=self.stamp, notes=self.notes)
        return {n: (v, type(v).__name__) for n, v in values.items()}


if __name__ == "__main__":
    ParamsFlow()
