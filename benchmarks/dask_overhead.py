#!/usr/bin/env python3
"""What running on a Dask cluster and an S3 datastore costs.

    python benchmarks/dask_overhead.py                 # 200 splits, 3 reps
    python benchmarks/dask_overhead.py --splits 50 --reps 1

Starts, as processes on 127.0.0.1, an S3 API (moto's server) and a Dask cluster
(``dask scheduler`` and ``dask worker --nworkers 2 --nthreads 1``), then measures
side by side in this one run:

* a foreach of N trivial tasks (``--max-workers 2``) on the local executor and on
  Dask, on a local datastore and on S3: wall time, and per task;
* a breakdown of one Dask task's cost: the Dask round trip of a no-op submission,
  the start of a worker's task process (``python -m flowbook.runtime.dask_executor``
  imports), with S3 reached directly or through s3fs, and small S3 requests (PUT,
  GET, HEAD; LIST, which s3fs sends) to moto, sent directly (flowbook's default) and
  through s3fs (``FLOWBOOK_S3_DIRECT=0``), with the CPU each costs the client and the
  server, and the S3 requests per task (counted in moto's log).

(The 500 MB artifact against plain s3fs/boto3 is ``s3_artifact.py``.)

Prints medians in a table; asserts nothing. Everything started is stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from s3bench import Moto, bench_env, load_average, machine_lines, print_repetitions

FLOW = """
from flowbook import FlowSpec, step


class WideFlow(FlowSpec):
    @step
    def start(self):
        self.items = list(range({splits}))
        self.next(self.work, foreach="items")

    @step
    def work(self):
        self.y = self.input
        self.next(self.join)

    @step
    def join(self, inputs):
        self.total = sum(i.y for i in inputs)
        self.next(self.end)

    @step
    def end(self):
        print("total", self.total)


if __name__ == "__main__":
    WideFlow()
"""

BIN = Path(sys.executable).parent


def start_dask(workdir: Path, env: dict) -> tuple[str, list[subprocess.Popen]]:
    sched_file = workdir / "scheduler.json"
    log = open(workdir / "dask.log", "ab")  # noqa: SIM115
    scheduler = subprocess.Popen(
        [str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", "0"]
        + ["--dashboard-address", "127.0.0.1:0", "--scheduler-file", str(sched_file)],
        stdout=log,
        stderr=log,
        env=env,
    )
    while not sched_file.exists() or not sched_file.read_text():
        time.sleep(0.1)
    time.sleep(0.2)
    address = json.loads(sched_file.read_text())["address"]
    workers = subprocess.Popen(
        [str(BIN / "dask"), "worker", address, "--nworkers", "2", "--nthreads", "1"]
        + ["--host", "127.0.0.1", "--no-dashboard", "--local-directory", str(workdir)],
        stdout=log,
        stderr=log,
        env=env,
    )
    import distributed

    with distributed.Client(address, set_as_default=False) as client:
        client.wait_for_workers(2, timeout=60)
    return address, [workers, scheduler]


def timed_run(args: list[str], cwd: Path, env: dict) -> float:
    started = time.perf_counter()
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return elapsed


def median_ms(samples: list[float]) -> str:
    return f"{statistics.median(samples) * 1000:.1f} ms"


def breakdown(address: str, env: dict, reps: int, moto: Moto) -> list[tuple[str, str]]:
    import distributed

    rows = []
    with distributed.Client(address, set_as_default=False) as client:
        client.submit(int, 0, pure=False).result()
        for _ in range(20):
            client.submit(int, 0, pure=False).result()
        samples = []
        for _ in range(100):
            started = time.perf_counter()
            client.submit(int, 0, pure=False).result()
            samples.append(time.perf_counter() - started)
        rows.append(("Dask round trip: submit a no-op, get its result", median_ms(samples)))
    for label, code in (
        ("python -c pass", "pass"),
        (
            "task process imports (one_task, datastore, spec), local datastore",
            "import flowbook.runtime.dask_executor, flowbook.runtime.one_task, "
            "flowbook.datastore, flowbook.loader",
        ),
        (
            "the same plus S3 requests without s3fs (S3 datastore)",
            "import flowbook.runtime.one_task, flowbook.datastore, "
            "flowbook.datastore.s3direct, http.client, hmac",
        ),
        (
            "the same plus fsspec + s3fs (S3 datastore, FLOWBOOK_S3_DIRECT=0)",
            "import flowbook.runtime.one_task, flowbook.datastore, s3fs",
        ),
    ):
        samples = []
        for _ in range(max(reps * 3, 5)):
            started = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], env=env, check=True)
            samples.append(time.perf_counter() - started)
        rows.append((f"a fresh interpreter per task (not paid): {label}", median_ms(samples)))
    from flowbook.datastore.pickling import cpickle
    from flowbook.runtime.executor import TaskExited
    from flowbook.runtime.server import TaskServerClient

    server = TaskServerClient.start_spawned(("pickled", cpickle.dumps(int)))
    samples = []
    for i in range(60):
        started = time.perf_counter()
        server.submit(i, 0)
        done = False
        while not done:
            done = any(isinstance(e, TaskExited) for e in server.wait_events(1.0))
        samples.append(time.perf_counter() - started)
    server.close()
    rows.append(
        (
            "what a worker pays instead: a no-op task forked by a warm task server",
            median_ms(samples[10:]),
        )
    )
    rows += s3_requests(moto, "", "bench/breakdown")
    os.environ["FLOWBOOK_S3_DIRECT"] = "0"
    try:
        rows += s3_requests(moto, ", through s3fs", "bench/breakdown-s3fs")
    finally:
        del os.environ["FLOWBOOK_S3_DIRECT"]
    return rows


def s3_requests(moto: Moto, how: str, prefix: str) -> list[tuple[str, str]]:
    """The wall time of one small S3 request of each kind, and the CPU it costs."""
    from flowbook.datastore.storage import open_storage

    rows = []
    storage = open_storage(f"s3://{prefix}")
    storage.write_bytes("warm.json", b"{}")
    record = b'{"status": "successful"}' * 20
    for label, action in (
        (f"S3 PUT of a 500-byte record{how}", lambda i: storage.write_bytes(f"r/{i}.json", record)),
        (f"S3 GET of it{how}", lambda i: storage.read_bytes(f"r/{i}.json")),
        (f"S3 HEAD (exists){how}", lambda i: storage.exists(f"r/{i}.json")),
        ("S3 LIST of a task directory (s3fs)", lambda i: storage.list("r")),
    ):
        if how and "LIST" in label:
            continue
        samples = []
        cpu, server = time.process_time(), moto.cpu_seconds()
        for i in range(50):
            started = time.perf_counter()
            action(i)
            samples.append(time.perf_counter() - started)
        client_ms = (time.process_time() - cpu) * 1000 / 50
        server_ms = (moto.cpu_seconds() - server) * 1000 / 50
        rows.append(
            (
                f"{label} (CPU: client {client_ms:.1f} ms, moto {server_ms:.1f} ms)",
                median_ms(samples),
            )
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--splits", type=int, default=200)
    parser.add_argument("--reps", type=int, default=3)
    options = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="flowbook-dask-bench-"))
    moto = Moto(workdir / "moto.log", "bench")
    env = bench_env(moto.env)
    os.environ.update(moto.env)
    procs: list[subprocess.Popen] = []
    try:
        address, procs = start_dask(workdir, env)
        measure(options, workdir, moto, env, address)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        moto.stop()


def measure(
    options: argparse.Namespace, workdir: Path, moto: Moto, env: dict, address: str
) -> None:
    flow = workdir / "flow.py"
    flow.write_text(FLOW.format(splits=options.splits))
    common = ["--max-workers", "2", "--max-num-splits", str(options.splits)]
    dask = ["--executor", "dask", "--dask-scheduler", address]
    cases = {
        "local executor, local datastore": (str(workdir / "ds"), []),
        "local executor, S3 datastore": ("s3://bench/local", []),
        "Dask (2 workers), local datastore": (str(workdir / "ds"), dask),
        "Dask (2 workers), S3 datastore": ("s3://bench/dask", dask),
    }
    for datastore, extra in cases.values():  # once before timing: byte-compile, warm
        timed_run(
            [sys.executable, str(flow), "--datastore", datastore, "run", *common, *extra],
            workdir,
            env,
        )
    load_before = load_average()
    started = time.time()
    walls: dict[str, list[float]] = {label: [] for label in cases}
    requests: dict[str, list[int]] = {label: [] for label in cases}
    for _ in range(options.reps):
        for label, (datastore, extra) in cases.items():
            args = [sys.executable, str(flow), "--datastore", datastore, "run", *common, *extra]
            before = moto.requests()
            walls[label].append(timed_run(args, workdir, env))
            requests[label].append(moto.requests() - before)
            print(f"  {label}: {walls[label][-1]:.2f} s (load {load_average()})", flush=True)
    tasks = options.splits + 3
    print(f"\n### Dask: a {options.splits}-split foreach of trivial tasks ({tasks} tasks)\n")
    print(
        f"Written by `python benchmarks/dask_overhead.py --splits {options.splits} "
        f"--reps {options.reps}` on {time.strftime('%Y-%m-%d %H:%M')} "
        f"({(time.time() - started) / 60:.0f} min for the foreach rows): a `dask scheduler` and "
        "`dask worker --nworkers 2 --nthreads 1` and moto's S3 server, all processes on "
        f"127.0.0.1; `--max-workers 2`; medians of {options.reps}. Load average (1/5/15 min) "
        f"{load_before} before, {load_average()} after.\n"
    )
    print(
        "| Executor, datastore | wall time | per task (wall / tasks) "
        "| per task per worker slot | S3 requests per task |"
    )
    print("|---|---:|---:|---:|---:|")
    for label, samples in walls.items():
        wall = statistics.median(samples)
        sent = statistics.median(requests[label]) / tasks
        print(
            f"| {label} | {wall:.2f} s | {wall / tasks * 1000:.1f} ms "
            f"| {wall * 2 / tasks * 1000:.1f} ms | {sent:.1f} |"
        )
    print_repetitions(walls)
    print("\n#### One Dask task, broken down\n")
    print("| Part | median |")
    print("|---|---:|")
    for label, value in breakdown(address, env, options.reps, moto):
        print(f"| {label} | {value} |")
    print()
    print("\n".join(machine_lines()))


if __name__ == "__main__":
    main()
