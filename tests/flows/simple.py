import sys

from flowbook import FlowSpec, Parameter, step


class SimpleFlow(FlowSpec):
    """A small flow whose artifacts the Client API reads back."""

    label = Parameter("label", default="plain")

    @step
    def start(self):
        """Begin."""
        self.x = 1
        self.items = ["p", "q"]
        print("start says hi")
        self.next(self.each, foreach="items")

    @step
    def each(self):
        self.item = self.input.upper()
        print("each", self.item, file=sys.stderr)
        self.next(self.join)

    @step
    def join(self, inputs):
        self.items = [i.item for i in inputs]
        self.x = inputs[0].x + 1
        self.next(self.end)

    @step
    def end(self):
        self.final = f"{self.label}:{self.x}:{','.join(self.items)}"
        print("final", self.final)


if __name__ == "__main__":
    SimpleFlow()
