import time

from flowbook import FlowSpec, Parameter, step


class SleepyFlow(FlowSpec):
    """A foreach whose tasks sleep, recording when their bodies start and end."""

    splits = Parameter("splits", default=6)
    nap = Parameter("nap", default=0.5)

    @step
    def start(self):
        self.items = list(range(self.splits))
        self.next(self.work, foreach="items")

    @step
    def work(self):
        self.started = time.time()
        time.sleep(self.nap)
        self.ended = time.time()
        self.next(self.join)

    @step
    def join(self, inputs):
        self.intervals = [(i.started, i.ended) for i in inputs]
        self.next(self.end)

    @step
    def end(self):
        print("ran", len(self.intervals), "tasks")


if __name__ == "__main__":
    SleepyFlow()
