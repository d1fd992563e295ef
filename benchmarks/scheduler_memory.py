#!/usr/bin/env python3
"""Memory of the scheduler per pending task: a foreach of N splits, side by side.

    python benchmarks/scheduler_memory.py                   # N = 100000, both frameworks
    python benchmarks/scheduler_memory.py --splits 1000 --only flowbook

For each framework the same flow runs twice, with a foreach of 10 splits and of N
splits. Its body waits (for a file that never comes) as soon as it starts, so when
the first body task is running the scheduler holds every other split as pending.
Then the resident memory of the scheduler's own process (the one running
``python flow.py run``, not its tasks) is read from /proc, and the run is stopped.
The difference between the two runs, divided by N - 10, is the memory one pending
task costs. Nothing here asserts; it prints one line per framework.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FLOW = """
import os, time
from {package} import FlowSpec, Parameter, step


class WideFlow(FlowSpec):
    splits = Parameter("splits", default=10)

    @step
    def start(self):
        self.items = list(range(self.splits))
        self.next(self.body, foreach="items")

    @step
    def body(self):
        open("body-started", "w").close()
        while not os.path.exists("never"):
            time.sleep(0.1)
        self.next(self.join)

    @step
    def join(self, inputs):
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    WideFlow()
"""


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def scheduler_rss(python: str, package: str, splits: int, timeout: float) -> int:
    """The scheduler's RSS (KiB) once the first body task of ``splits`` runs."""
    with tempfile.TemporaryDirectory(prefix="fb-schedmem-") as workdir:
        path = Path(workdir) / "wide.py"
        path.write_text(FLOW.format(package=package))
        env = dict(os.environ)
        env.pop("PYTHONDONTWRITEBYTECODE", None)  # a user's install is byte-compiled
        env.update(
            FLOWBOOK_DATASTORE=str(Path(workdir) / ".flowbook"),
            METAFLOW_DATASTORE_SYSROOT_LOCAL=workdir,
            USER=env.get("USER", "bench"),
        )
        command = [python, str(path), "run", "--splits", str(splits)]
        command += ["--max-num-splits", str(splits + 1), "--max-workers", "1"]
        proc = subprocess.Popen(
            command,
            cwd=workdir,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + timeout
            marker = Path(workdir) / "body-started"
            while not marker.exists():
                if proc.poll() is not None:
                    raise RuntimeError(f"{package} run ended early: {proc.stderr.read()[-2000:]}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{package}: no body task started in {timeout:g} s")
                time.sleep(0.05)
            time.sleep(1.0)  # let the scheduler settle after starting the task
            return rss_kib(proc.pid)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--splits", type=int, default=100_000)
    parser.add_argument("--only", choices=["flowbook", "metaflow"])
    parser.add_argument("--python", default=sys.executable, help="interpreter with both installed")
    parser.add_argument("--timeout", type=float, default=900.0)
    args = parser.parse_args()
    frameworks = [args.only] if args.only else ["flowbook", "metaflow"]
    for package in frameworks:
        small = scheduler_rss(args.python, package, 10, args.timeout)
        large = scheduler_rss(args.python, package, args.splits, args.timeout)
        per_task = (large - small) * 1024 / (args.splits - 10)
        print(
            f"{package:9s} scheduler RSS: {small / 1024:6.1f} MB with 10 splits, "
            f"{large / 1024:6.1f} MB with {args.splits} pending: "
            f"{per_task:7.1f} bytes per pending task",
            flush=True,
        )


if __name__ == "__main__":
    main()
