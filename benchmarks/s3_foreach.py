#!/usr/bin/env python3
"""A foreach of trivial tasks on an S3 datastore, flowbook and Metaflow side by side.

    python benchmarks/s3_foreach.py                 # 200 splits, 2 repetitions each
    python benchmarks/s3_foreach.py --splits 50 --reps 1

Starts moto's S3 server on 127.0.0.1 (a free port) and points both frameworks at
it: flowbook with ``--datastore s3://...`` and ``AWS_ENDPOINT_URL``, Metaflow with
``METAFLOW_DEFAULT_DATASTORE=s3``, ``METAFLOW_DATASTORE_SYSROOT_S3`` and
``METAFLOW_S3_ENDPOINT_URL``. The same flow runs on each framework's local
datastore too, so the two ratios can be compared. Repetitions alternate between
the frameworks; medians are printed. Nothing asserts.

Needs ``metaflow``, ``moto[server]``, ``boto3`` and ``s3fs`` in the interpreter
(``.venv`` with the test extras has them); ``PYTHONDONTWRITEBYTECODE`` is unset for
the runs, as a user's install is byte-compiled.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from s3bench import Moto, bench_env, load_average, machine_lines, print_repetitions

FLOW = """
from {package} import FlowSpec, Parameter, step


class S3Foreach(FlowSpec):
    splits = Parameter("splits", default=10)

    @step
    def start(self):
        self.items = list(range(self.splits))
        self.next(self.body, foreach="items")

    @step
    def body(self):
        self.square = self.input * self.input
        self.next(self.join)

    @step
    def join(self, inputs):
        self.total = sum(i.square for i in inputs)
        self.next(self.end)

    @step
    def end(self):
        print("total", self.total)


if __name__ == "__main__":
    S3Foreach()
"""

BUCKET = "flowbook-bench"


def timed_run(package: str, workdir: Path, splits: int, env: dict[str, str]) -> float:
    """Seconds for one ``python flow.py run`` of ``splits`` splits; raises on failure."""
    path = workdir / f"{package}_flow.py"
    if not path.exists():
        path.write_text(FLOW.format(package=package))
    command = [sys.executable, str(path), "run", "--splits", str(splits)]
    command += ["--max-num-splits", str(splits + 1), "--max-workers", "16"]
    started = time.perf_counter()
    result = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if result.returncode != 0 or "total" not in result.stdout + result.stderr:
        raise RuntimeError(f"{package} failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--splits", type=int, default=200)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument(
        "--metaflow-reps",
        type=int,
        default=None,
        help="repetitions of Metaflow (default: --reps); its S3 runs take minutes each",
    )
    args = parser.parse_args()
    mf_reps = args.reps if args.metaflow_reps is None else args.metaflow_reps
    with tempfile.TemporaryDirectory(prefix="fb-s3-foreach-") as tmp:
        workdir = Path(tmp)
        moto = Moto(workdir / "moto.log", BUCKET)
        try:
            measure(args, mf_reps, workdir, moto)
        finally:
            moto.stop()


def measure(args: argparse.Namespace, mf_reps: int, workdir: Path, moto: Moto) -> None:
    prefix = uuid.uuid4().hex[:8]
    endpoint = moto.env["AWS_ENDPOINT_URL"]
    envs = {
        ("flowbook", "local"): bench_env({"FLOWBOOK_DATASTORE": str(workdir / ".flowbook")}),
        ("metaflow", "local"): bench_env(
            {
                "METAFLOW_DEFAULT_DATASTORE": "local",
                "METAFLOW_DATASTORE_SYSROOT_LOCAL": str(workdir),
            }
        ),
        ("flowbook", "s3"): bench_env(
            dict(moto.env, FLOWBOOK_DATASTORE=f"s3://{BUCKET}/{prefix}/flowbook")
        ),
        ("metaflow", "s3"): bench_env(
            dict(
                moto.env,
                METAFLOW_DEFAULT_DATASTORE="s3",
                METAFLOW_DATASTORE_SYSROOT_S3=f"s3://{BUCKET}/{prefix}/metaflow",
                METAFLOW_S3_ENDPOINT_URL=endpoint,
                METAFLOW_DEFAULT_METADATA="local",
            )
        ),
    }
    for package in ("flowbook", "metaflow"):  # once, untimed: byte-compile, warm caches
        timed_run(package, workdir, 2, envs[(package, "local")])
    load_before = load_average()
    times: dict[tuple[str, str], list[float]] = {key: [] for key in envs}
    requests: dict[tuple[str, str], list[int]] = {key: [] for key in envs}
    moto_cpu: dict[tuple[str, str], list[float]] = {key: [] for key in envs}
    started = time.time()
    for rep in range(max(args.reps, mf_reps)):
        for store in ("local", "s3"):
            for package in ("flowbook", "metaflow"):
                if rep >= (args.reps if package == "flowbook" else mf_reps):
                    continue
                key = (package, store)
                before, cpu = moto.requests(), moto.cpu_seconds()
                times[key].append(timed_run(package, workdir, args.splits, envs[key]))
                requests[key].append(moto.requests() - before)
                moto_cpu[key].append(moto.cpu_seconds() - cpu)
                print(
                    f"  {package:8s} {store:5s} {times[key][-1]:7.2f} s"
                    + (f", {requests[key][-1]} S3 requests" if store == "s3" else "")
                    + f"  (load {load_average()})",
                    flush=True,
                )
    tasks = args.splits + 3
    minutes = (time.time() - started) / 60
    print(f"\n### A {args.splits}-split foreach of trivial tasks ({tasks} tasks), S3 and local\n")
    print(
        f"Written by `python benchmarks/s3_foreach.py --splits {args.splits} --reps {args.reps}"
        + (f" --metaflow-reps {mf_reps}" if mf_reps != args.reps else "")
        + f"` on {time.strftime('%Y-%m-%d %H:%M')} ({minutes:.0f} min). Medians; the ratio is "
        "Metaflow's median over flowbook's. Both frameworks ran the same flow "
        "(`--max-workers 16`), alternating, against one moto server on 127.0.0.1 "
        "(Metaflow: `METAFLOW_DEFAULT_DATASTORE=s3`, `METAFLOW_DATASTORE_SYSROOT_S3`, "
        "`METAFLOW_S3_ENDPOINT_URL`; flowbook: `FLOWBOOK_DATASTORE=s3://...`, "
        "`AWS_ENDPOINT_URL`). Load average (1/5/15 min) "
        f"{load_before} before, {load_average()} after.\n"
    )
    print(
        "| Datastore | flowbook | Metaflow | Metaflow / flowbook "
        "| S3 requests per task (fb / MF) | moto CPU per task (fb / MF) | reps (fb / MF) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for store in ("local", "s3"):
        ours = statistics.median(times[("flowbook", store)])
        theirs = statistics.median(times[("metaflow", store)])
        if store == "s3":
            per_task = [
                statistics.median(requests[(p, store)]) / tasks for p in ("flowbook", "metaflow")
            ]
            cpu = [
                statistics.median(moto_cpu[(p, store)]) / tasks * 1000
                for p in ("flowbook", "metaflow")
            ]
            extra = f"{per_task[0]:.1f} / {per_task[1]:.1f} | {cpu[0]:.0f} ms / {cpu[1]:.0f} ms"
        else:
            extra = "- | -"
        print(
            f"| {store} | {ours:.2f} s | {theirs:.1f} s | {theirs / ours:.1f}x | {extra} "
            f"| {len(times[('flowbook', store)])} / {len(times[('metaflow', store)])} |"
        )
    print_repetitions({f"{key[0]}, {key[1]}": samples for key, samples in times.items()})
    print()
    print("\n".join(machine_lines()))


if __name__ == "__main__":
    main()
