"""Compare two flowbook installations on the short workloads, alternating runs.

Short runs on a small VM vary by 20% from one minute to the next, so a change is
judged by running the old and the new installation in turn, many times, and
comparing medians. Give each installation's Python (two virtualenvs, one with the
old flowbook and one with the new, e.g. ``pip install .`` from two checkouts)::

    python benchmarks/ab.py /tmp/old/bin/python /tmp/new/bin/python --reps 20

Times hello (``run``) and the resume workload (``resume`` after a failed run),
each in a fresh temporary directory, from starting the command to its exit.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from workloads import HELLO, RESUME, render


def timed(argv: list[str], cwd: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed in {cwd}:\n{done.stderr}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pythons", nargs="+", type=Path, help="interpreters to compare")
    parser.add_argument("--reps", type=int, default=20)
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLOWBOOK_", "PYTHONDONT"))}
    env["USER"] = "bench"
    times: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="flowbook-ab-") as root:
        work = Path(root)
        (work / "hello_flow.py").write_text(render(HELLO, "flowbook"))
        (work / "resume_flow.py").write_text(render(RESUME, "flowbook"))
        for python in args.pythons:  # byte-compile and fill the graph cache first
            timed([str(python), "hello_flow.py", "run"], work, env)
        for _ in range(args.reps):
            for python in args.pythons:
                shutil.rmtree(work / ".flowbook", ignore_errors=True)
                hello = timed([str(python), "hello_flow.py", "run"], work, env)
                failing = dict(env, BENCH_FAIL="1")
                subprocess.run(
                    [str(python), "resume_flow.py", "run"],
                    cwd=work,
                    env=failing,
                    capture_output=True,
                )
                resume = timed([str(python), "resume_flow.py", "resume"], work, env)
                times.setdefault((str(python), "hello"), []).append(hello)
                times.setdefault((str(python), "resume"), []).append(resume)
    for (python, workload), values in times.items():
        print(
            f"{python}  {workload:7s} median {1e3 * statistics.median(values):6.1f} ms"
            f"  min {1e3 * min(values):6.1f} ms  ({len(values)} runs)"
        )


if __name__ == "__main__":
    main()
