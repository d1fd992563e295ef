import os

from flowbook import FlowSpec, step


class PidFlow(FlowSpec):
    """Every step records the process it ran in."""

    @step
    def start(self):
        self.pid = os.getpid()
        self.ppid = os.getppid()
        self.items = [1, 2, 3]
        self.next(self.a, self.b)

    @step
    def a(self):
        self.pid = os.getpid()
        self.ppid = os.getppid()
        self.next(self.join)

    @step
    def b(self):
        self.pid = os.getpid()
        self.ppid = os.getppid()
        self.next(self.join)

    @step
    def join(self, inputs):
        self.items = inputs.a.items
        self.pid = os.getpid()
        self.ppid = os.getppid()
        self.next(self.body, foreach="items")

    @step
    def body(self):
        self.pid = os.getpid()
        self.ppid = os.getppid()
        self.next(self.body_join)

    @step
    def body_join(self, inputs):
        self.pid = os.getpid()
        self.ppid = os.getppid()
        self.next(self.end)

    @step
    def end(self):
        self.pid = os.getpid()
        self.ppid = os.getppid()


if __name__ == "__main__":
    PidFlow()
