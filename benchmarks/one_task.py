#!/usr/bin/env python3
"""The per-task cost of ``python flow.py step``: what every Argo pod and Dask task pays.

    python benchmarks/one_task.py                     # this interpreter, 21 repetitions
    python benchmarks/one_task.py --python .bench-venv/bin/python --reps 41

Times, alternating them, in one temporary directory:

* ``python -c pass``: the interpreter alone;
* ``python -c "import click"``: what the click road would add (the plain reading of
  ``step`` in flowbook/cli/task_cmds.py avoids it);
* ``python flow.py step work ...``: start, imports, reading the parents' records, one
  trivial task (forked, its record and logs written, its output copied), exit; each
  repetition is a new task (a new ``--task-id``) of the same run;
* ``python flow.py run`` of the same three-step flow, for comparison.

Like benchmarks/run.py: PYTHONDONTWRITEBYTECODE is unset (users run byte-compiled
installs), no FLOWBOOK_/METAFLOW_ settings are inherited, and the flow runs once
before timing (byte-compiling it and filling the graph cache). An editable install
adds an import hook that costs every process some milliseconds: use the benchmark
virtualenv's Python (a regular install) for figures to compare with RESULTS.md.
Prints medians (and quartiles) in milliseconds; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FLOW = """
from flowbook import FlowSpec, step


class OneTaskFlow(FlowSpec):
    @step
    def start(self):
        self.x = 1
        self.next(self.work)

    @step
    def work(self):
        self.y = self.x + 1
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    OneTaskFlow()
"""


def timed(argv: list[str], cwd: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{done.stdout}\n{done.stderr}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python", default=sys.executable, help="the interpreter to time")
    parser.add_argument("--reps", type=int, default=21)
    args = parser.parse_args()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("FLOWBOOK_", "METAFLOW_", "PYTHONDONT"))
        and k not in ("PYTHONPATH", "PYTHONSTARTUP", "USERNAME")
    }
    env["USER"] = "bench"
    python = args.python
    with tempfile.TemporaryDirectory(prefix="flowbook-one-task-") as root:
        work = Path(root)
        (work / "flow.py").write_text(FLOW)
        run_id = "bench-run"
        timed([python, "flow.py", "run"], work, env)  # byte-compile, fill the graph cache
        timed([python, "flow.py", "init", "--run-id", run_id, "--task-id", "p"], work, env)
        start = ["step", "start", "--run-id", run_id, "--task-id", "s"]
        timed([python, "flow.py", *start, "--input-paths", f"{run_id}/_parameters/p"], work, env)
        commands = {
            "python -c pass": lambda i: [python, "-c", "pass"],
            'python -c "import click"': lambda i: [python, "-c", "import click"],
            "python flow.py step work (one task)": lambda i: [
                python,
                "flow.py",
                "step",
                "work",
                "--run-id",
                run_id,
                "--task-id",
                f"w{i}",
                "--input-paths",
                f"{run_id}/start/s",
            ],
            "python flow.py run (3 steps)": lambda i: [python, "flow.py", "run"],
        }
        times: dict[str, list[float]] = {name: [] for name in commands}
        for i in range(args.reps):
            for name, argv in commands.items():
                times[name].append(timed(argv(i), work, env))
    print(f"{python}, {args.reps} repetitions, alternating; milliseconds:")
    width = max(map(len, times))
    print(f"{'':{width}}  median      q1      q3")
    for name, values in times.items():
        q1, _, q3 = statistics.quantiles(values, n=4)
        print(
            f"{name:{width}}  {statistics.median(values) * 1000:6.1f}  {q1 * 1000:6.1f}  "
            f"{q3 * 1000:6.1f}"
        )


if __name__ == "__main__":
    main()
