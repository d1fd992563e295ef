from flowbook import FlowSpec, step


class DedupFlow(FlowSpec):
    """Two branches store an equal value; one stores a different one."""

    @step
    def start(self):
        self.next(self.a, self.b)

    @step
    def a(self):
        self.payload = {"numbers": list(range(5000)), "label": "same"}
        self.own = "a"
        self.next(self.join)

    @step
    def b(self):
        self.payload = {"numbers": list(range(5000)), "label": "same"}
        self.own = "b"
        self.next(self.join)

    @step
    def join(self, inputs):
        self.payload = inputs.a.payload
        self.long_text = "x" * 5000
        self.small = 3
        self.pair = (1, "two")
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    DedupFlow()
