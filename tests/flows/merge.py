from flowbook import FlowSpec, Parameter, step


class MergeFlow(FlowSpec):
    """merge_artifacts with exclude= and include=, chosen by the 'mode' parameter."""

    mode = Parameter("mode", default="exclude")

    @step
    def start(self):
        self.creature = "dog"
        self.count = 0
        self.next(self.add_one, self.add_two)

    @step
    def add_one(self):
        self.increment = 1
        self.count += self.increment
        self.only_one = "one"
        self.next(self.join)

    @step
    def add_two(self):
        self.increment = 2
        self.count += self.increment
        self.next(self.join)

    @step
    def join(self, inputs):
        if self.mode == "exclude":
            self.count = max(i.count for i in inputs)
            self.merge_artifacts(inputs, exclude=["increment"])
        elif self.mode == "include":
            self.merge_artifacts(inputs, include=["creature"])
        elif self.mode == "assigned":
            self.count = -1
            self.increment = -1
            self.merge_artifacts(inputs)
        elif self.mode == "include-divergent":
            self.merge_artifacts(inputs, include=["creature", "count"])
        elif self.mode == "include-missing":
            self.merge_artifacts(inputs, include=["creature", "nothing_like_this"])
        elif self.mode == "both":
            self.merge_artifacts(inputs, include=["creature"], exclude=["creature"])
        else:  # "divergent": count and increment differ and are not handled
            self.merge_artifacts(inputs)
        self.next(self.end)

    @step
    def end(self):
        print("creature", self.creature)


if __name__ == "__main__":
    MergeFlow()
