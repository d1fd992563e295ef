from flowbook import FlowSpec, step


class ChattyFlow(FlowSpec):
    """Many tasks that print as soon as they start."""

    @step
    def start(self):
        self.items = list(range(100))
        self.next(self.talk, foreach="items")

    @step
    def talk(self):
        print(f"talk {self.input} says hello")
        self.next(self.join)

    @step
    def join(self, inputs):
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    ChattyFlow()
