"""Reuse: a wide foreach run in full, then run again with every task reused.

    python benchmarks/reuse.py [--splits 1000] [--reps 3] [--max-workers 16]

Each repetition works in a fresh directory: a plain ``run`` (no fingerprints) on a
datastore of its own; ``run --reuse`` on another fresh datastore (nothing to reuse:
every task runs, and records its reads and code fingerprint); the same command
again (every task is reused: the decision, a clone of each record, no task
process); and ``--note b``: a parameter that the start step reads and the foreach
body does not, so start runs again, makes the same list, and the body is reused.

Metaflow is not run here: it has no reuse, and its full run of this foreach is in
benchmarks/RESULTS.md (``foreach, 1000 splits``: minutes, against seconds).
Figures are printed as a Markdown table with the commands, medians and every
repetition.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import median, run_command  # noqa: E402

FLOW = """\
from flowbook import FlowSpec, Parameter, step


class ReuseBenchFlow(FlowSpec):
    note = Parameter("note", default="a")

    @step
    def start(self):
        self.label = self.note  # start reads the parameter; the body does not
        self.items = list(range({splits}))
        self.next(self.work, foreach="items")

    @step
    def work(self):
        self.result = self.input * 2
        self.next(self.join)

    @step
    def join(self, inputs):
        self.total = sum(i.result for i in inputs)
        self.next(self.end)

    @step
    def end(self):
        print("total", self.total)


if __name__ == "__main__":
    ReuseBenchFlow()
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--splits", type=int, default=1000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--max-workers", type=int, default=16)
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLOWBOOK_", "METAFLOW_"))}
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # a user's install is byte-compiled
    env["USER"] = "bench"
    python = sys.executable
    base = [python, "flow.py", "run", "--max-workers", str(args.max_workers)]
    base += ["--max-num-splits", str(args.splits)]
    # (name, argv, datastore): the plain run has a fresh datastore of its own, as
    # the first --reuse run has, so both start equally cold
    commands = [
        ("plain run (no --reuse, no fingerprints)", base, ".flowbook-plain"),
        ("run --reuse, nothing to reuse (every task runs)", base + ["--reuse"], ".flowbook"),
        ("run --reuse again (every task reused)", base + ["--reuse"], ".flowbook"),
        (
            f"run --reuse --note b (start runs, the {args.splits} body tasks reused)",
            base + ["--reuse", "--note", "b"],
            ".flowbook",
        ),
    ]
    times: dict[str, list[float]] = {name: [] for name, _, _ in commands}
    load = os.getloadavg()[0]
    for _ in range(args.reps):
        with tempfile.TemporaryDirectory(prefix="flowbook-reuse-bench-") as tmp:
            work = Path(tmp)
            (work / "flow.py").write_text(FLOW.replace("{splits}", str(args.splits)))
            warm = run_command([python, "flow.py", "--help"], work, env, "warm")
            assert warm.returncode == 0
            for index, (name, argv, datastore) in enumerate(commands):
                env["FLOWBOOK_DATASTORE"] = str(work / datastore)
                result = run_command(argv, work, env, f"cmd{index}")
                if result.returncode != 0:
                    sys.exit(f"{name} failed:\n{result.stderr_path.read_text()[-2000:]}")
                times[name].append(result.seconds)
            reused = (work / "cmd2.stdout").read_text()
            assert f"work: {args.splits} of {args.splits} tasks reused, 0 ran." in reused, reused
            partial = (work / "cmd3.stdout").read_text()
            assert "start: runs (parameter note" in partial, partial
            assert f"work: {args.splits} of {args.splits} tasks reused" in partial, partial
    full = median(times["plain run (no --reuse, no fingerprints)"])
    print(
        f"# Reuse of a {args.splits}-split foreach ({args.reps} reps, "
        f"{time.strftime('%Y-%m-%d %H:%M')}, load {load:.1f} at start, "
        f"{os.cpu_count()} cores, Python {platform.python_version()})\n"
    )
    print("| Command | median | vs the plain run | every repetition |")
    print("|---|---:|---:|---|")
    for name, values in times.items():
        value = median(values)
        shown = ", ".join(f"{v:.2f} s" for v in values)
        print(f"| {name} | {value:.2f} s | {value / full:.2f}x | {shown} |")
    print(f"\nCommand: `{' '.join(['python', *base[1:]])} [--reuse] [--note b]` (in this order).")


if __name__ == "__main__":
    main()
