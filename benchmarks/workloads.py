"""The workloads: flow sources, client scripts and the commands that run them.

Every flow is one template rendered twice, with only its import line changed
(``from flowbook import ...`` or ``from metaflow import ...``), so both frameworks
run the same code. Templates use ``string.Template`` placeholders (``${framework}``,
``${splits}``, ``${nbytes}``), which do not clash with Python's braces.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from string import Template

FRAMEWORKS = ("flowbook", "metaflow")

HELLO = """\
from ${framework} import FlowSpec, step


class HelloFlow(FlowSpec):
    @step
    def start(self):
        print("This is start step")
        self.next(self.hello)

    @step
    def hello(self):
        print("Hello World!")
        self.next(self.end)

    @step
    def end(self):
        print("This is end step")


if __name__ == "__main__":
    HelloFlow()
"""

BRANCH = """\
from ${framework} import FlowSpec, step


class BranchFlow(FlowSpec):
    @step
    def start(self):
        self.creature = "dog"
        self.count = 0
        self.next(self.add_one, self.add_two)

    @step
    def add_one(self):
        self.count += 1
        self.next(self.join)

    @step
    def add_two(self):
        self.count += 2
        self.next(self.join)

    @step
    def join(self, inputs):
        self.count = max(inp.count for inp in inputs)
        self.creature = inputs[0].creature
        self.next(self.end)

    @step
    def end(self):
        print("The creature is", self.creature, "and the count", self.count)


if __name__ == "__main__":
    BranchFlow()
"""

WIDE_FOREACH = """\
from ${framework} import FlowSpec, step


class WideForeachFlow(FlowSpec):
    @step
    def start(self):
        self.ints = list(range(${splits}))
        self.next(self.multiply, foreach="ints")

    @step
    def multiply(self):
        self.result = self.input * 1000
        self.next(self.join)

    @step
    def join(self, inputs):
        self.total = sum(inp.result for inp in inputs)
        self.next(self.end)

    @step
    def end(self):
        print("Total sum is", self.total)


if __name__ == "__main__":
    WideForeachFlow()
"""

ARTIFACT = """\
import numpy as np
from ${framework} import FlowSpec, step


class ArtifactFlow(FlowSpec):
    @step
    def start(self):
        self.array = np.random.default_rng(0).random(${nbytes} // 8)
        self.next(self.consume)

    @step
    def consume(self):
        if self.array.nbytes != ${nbytes}:
            raise ValueError(f"the array has {self.array.nbytes} bytes, not ${nbytes}")
        self.checksum = float(self.array[::4096].sum())
        self.next(self.end)

    @step
    def end(self):
        print("checksum", self.checksum)


if __name__ == "__main__":
    ArtifactFlow()
"""

# Four steps; the third fails while BENCH_FAIL is set in the environment.
RESUME = """\
import os
from ${framework} import FlowSpec, step


class ResumeFlow(FlowSpec):
    @step
    def start(self):
        self.values = list(range(10))
        self.next(self.double)

    @step
    def double(self):
        self.doubled = [v * 2 for v in self.values]
        self.next(self.fragile)

    @step
    def fragile(self):
        if os.environ.get("BENCH_FAIL"):
            raise RuntimeError("failing on purpose: BENCH_FAIL is set")
        self.total = sum(self.doubled)
        self.next(self.end)

    @step
    def end(self):
        print("total", self.total)


if __name__ == "__main__":
    ResumeFlow()
"""

# Run in a fresh process in the directory of a finished WideForeachFlow run; prints
# one JSON line. Only the loop is timed, not the interpreter's start or the import.
CLIENT = """\
import json
import time

from ${framework} import Flow

start = time.perf_counter()
count = 0
total = 0
for task in Flow("WideForeachFlow").latest_run["multiply"]:
    total += task.data.result
    count += 1
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "count": count, "total": total}))
"""


def render(template: str, framework: str, **params: object) -> str:
    """The template's source for one framework: only the import line differs."""
    if framework not in FRAMEWORKS:
        raise ValueError(f"unknown framework {framework!r}")
    return Template(template).substitute(framework=framework, **params)


@dataclass(frozen=True)
class Command:
    """One command of a workload. ``argv`` may name ``{python}``, ``{flow}`` and
    ``{script}``; ``env`` is added to the benchmark environment."""

    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()
    expect_success: bool = True


@dataclass(frozen=True)
class Workload:
    """A measured command, preceded by untimed setup commands in the same directory.

    If ``setup_once`` is true the setup runs once per framework and every repetition
    of the timed command reuses its directory (the client reads the same run);
    otherwise each repetition gets a fresh directory and its own setup.
    ``reuse_dir_of`` names a workload whose last directory can stand in for the setup.
    """

    key: str
    title: str
    flow_file: str
    flow_template: str
    params: dict[str, object]
    timed: Command
    setup: tuple[Command, ...] = ()
    setup_once: bool = False
    reuse_dir_of: str | None = None
    script_template: str | None = None
    measure_memory: bool = False
    slow: bool = False
    metric_from_stdout: bool = False  # the timed command prints {"seconds": ...}
    expected: dict[str, int] = field(default_factory=dict)  # checked against that JSON


def flow_argv(command: str, *args: str) -> tuple[str, ...]:
    """``python flow.py --no-pylint COMMAND ARGS`` (flowbook accepts ``--no-pylint`` too)."""
    return ("{python}", "{flow}", "--no-pylint", command, *args)


def build_workloads(splits: int, artifact_megabytes: tuple[int, ...]) -> list[Workload]:
    """Every flow workload, in the order they run."""
    from measure import MB

    foreach_run = Command(flow_argv("run", "--max-workers", "16", "--max-num-splits", str(splits)))
    workloads = [
        Workload(
            key="hello",
            title="hello (3 steps)",
            flow_file="hello_flow.py",
            flow_template=HELLO,
            params={},
            timed=Command(flow_argv("run")),
        ),
        Workload(
            key="branch",
            title="static branch + join (5 steps)",
            flow_file="branch_flow.py",
            flow_template=BRANCH,
            params={},
            timed=Command(flow_argv("run")),
        ),
        Workload(
            key="foreach",
            title=f"foreach, {splits} splits, --max-workers 16",
            flow_file="wide_foreach_flow.py",
            flow_template=WIDE_FOREACH,
            params={"splits": splits},
            timed=foreach_run,
            slow=True,
        ),
    ]
    for megabytes in artifact_megabytes:
        workloads.append(
            Workload(
                key=f"artifact-{megabytes}",
                title=f"NumPy artifact {megabytes} MB, start -> next step",
                flow_file="artifact_flow.py",
                flow_template=ARTIFACT,
                params={"nbytes": megabytes * MB},
                timed=Command(flow_argv("run")),
                measure_memory=True,
                slow=megabytes >= 500,
            )
        )
    workloads += [
        Workload(
            key="resume",
            title="resume of a failed 4-step flow (resume only)",
            flow_file="resume_flow.py",
            flow_template=RESUME,
            params={},
            setup=(Command(flow_argv("run"), env=(("BENCH_FAIL", "1"),), expect_success=False),),
            timed=Command(flow_argv("resume")),
        ),
        Workload(
            key="client",
            title=f"Client API: one artifact from each of {splits} tasks (in-process loop)",
            flow_file="wide_foreach_flow.py",
            flow_template=WIDE_FOREACH,
            params={"splits": splits},
            setup=(foreach_run,),
            setup_once=True,
            reuse_dir_of="foreach",
            script_template=CLIENT,
            timed=Command(("{python}", "{script}")),
            metric_from_stdout=True,
            expected={"count": splits, "total": sum(i * 1000 for i in range(splits))},
        ),
    ]
    return workloads


# ---------------------------------------------------------------------------------
# flowbook-only workloads: NOT POSSIBLE YET.
#
# These need the notebook layer (the `%%step` cell magic and running a flow from
# notebook cells), which does not exist yet. When it does, add them here and run
# them from the harness (e.g. execute a small notebook with nbclient in the bench
# virtualenv and time the cell):
#   - a trivial `%%step` cell (start -> end, one assignment);
#   - a `%%step` cell with a 100-split foreach.
# The harness lists them in the results table as "not yet".
# ---------------------------------------------------------------------------------
