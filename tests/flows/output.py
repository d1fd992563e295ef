import sys

from flowbook import FlowSpec, step


class OutputFlow(FlowSpec):
    """Prints to stdout and stderr in every step."""

    @step
    def start(self):
        print("hello from start")
        print("warning from start", file=sys.stderr)
        self.words = ["alpha", "beta"]
        self.big = list(range(1000))
        self.next(self.each, foreach="words")

    @step
    def each(self):
        print(f"word {self.index} is {self.input}")
        print(f"stderr of {self.input}", file=sys.stderr)
        self.word = self.input
        self.next(self.join)

    @step
    def join(self, inputs):
        self.words = [i.word for i in inputs]
        print("joined", self.words)
        self.next(self.end)

    @step
    def end(self):
        print("line one\nline two")
        sys.stdout.write("no newline at the end")


if __name__ == "__main__":
    OutputFlow()
