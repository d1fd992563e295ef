#!/usr/bin/env python3
"""What running on a Dask cluster and an S3 datastore costs.

    python benchmarks/dask_overhead.py                 # 200 splits, 500 MB, 3 reps
    python benchmarks/dask_overhead.py --splits 50 --mb 100 --reps 1

Starts, as processes on 127.0.0.1, an S3 API (moto's server) and a Dask cluster
(``dask scheduler`` and ``dask worker --nworkers 2 --nthreads 1``), then measures
side by side in this one run:

* a foreach of N trivial tasks (``--max-workers 2``) on the local executor and on
  Dask, on a local datastore and on S3: wall time, and per task;
* a breakdown of one Dask task's cost: the Dask round trip of a no-op submission,
  the start of a worker's task process (``python -m flowbook.runtime.dask_executor``
  imports), with s3fs, and small S3 requests (PUT, GET, HEAD, LIST) to moto;
* storing and loading an N MB NumPy artifact through flowbook's datastore on S3, and
  the same bytes with plain s3fs (``pipe``/``cat``) and boto3 (``upload_fileobj``/
  ``download_fileobj``, its transfer manager) against the same server.

Prints medians in a table; asserts nothing. Everything started is stopped at the end.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_moto(env: dict) -> subprocess.Popen:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    env.update(
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}",
    )
    os.environ.update(env)
    deadline = time.time() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if time.time() > deadline:
                raise SystemExit("moto did not start") from None
            time.sleep(0.1)
    import boto3

    boto3.client("s3").create_bucket(Bucket="bench")
    return proc


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


def breakdown(address: str, env: dict, reps: int) -> list[tuple[str, str]]:
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
            "the same plus fsspec + s3fs (S3 datastore)",
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
    from flowbook.datastore.storage import open_storage

    storage = open_storage("s3://bench/breakdown")
    record = b'{"status": "successful"}' * 20
    for label, action in (
        ("S3 PUT of a 500-byte record", lambda i: storage.write_bytes(f"r/{i}.json", record)),
        ("S3 GET of it", lambda i: storage.read_bytes(f"r/{i}.json")),
        ("S3 HEAD (exists)", lambda i: storage.exists(f"r/{i}.json")),
        ("S3 LIST of a task directory", lambda i: storage.list("r")),
    ):
        samples = []
        for i in range(50):
            started = time.perf_counter()
            action(i)
            samples.append(time.perf_counter() - started)
        rows.append((label, median_ms(samples)))
    return rows


def artifact_io(mb: int, reps: int) -> list[tuple[str, str, str]]:
    import boto3
    import numpy as np
    import s3fs

    from flowbook.datastore import Datastore

    array = np.random.default_rng(0).integers(0, 255, size=mb * 2**20, dtype=np.uint8)
    data = array.tobytes()
    size = len(data) / 2**20
    import uuid

    fs = s3fs.S3FileSystem(use_listings_cache=False)
    s3 = boto3.client("s3")
    results: dict[str, list[float]] = {}

    def time_it(label: str, action) -> None:
        started = time.perf_counter()
        action()
        results.setdefault(label, []).append(time.perf_counter() - started)

    holder = {}
    for _ in range(reps):
        # a fresh datastore each time: a blob already stored is not stored again
        datastore = Datastore(f"s3://bench/artifacts-{uuid.uuid4().hex}")
        holder["ds"] = datastore
        time_it(
            "flowbook store", lambda: holder.update(entry=holder["ds"].store_artifact(array, "a"))
        )
        time_it("flowbook load", lambda: holder["ds"].load_artifact(holder["entry"], "a", "bench"))
        time_it("s3fs pipe", lambda: fs.pipe_file("bench/plain/blob", data))
        time_it("s3fs cat", lambda: fs.cat_file("bench/plain/blob"))
        time_it(
            "boto3 upload_fileobj",
            lambda: s3.upload_fileobj(io.BytesIO(data), "bench", "plain/boto"),
        )
        time_it(
            "boto3 download_fileobj",
            lambda: s3.download_fileobj("bench", "plain/boto", io.BytesIO()),
        )
    rows = []
    for label, samples in results.items():
        seconds = statistics.median(samples)
        rows.append((f"{label} ({size:.0f} MB)", f"{seconds:.3f} s", f"{size / seconds:.0f} MB/s"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--splits", type=int, default=200)
    parser.add_argument("--mb", type=int, default=500)
    parser.add_argument("--reps", type=int, default=3)
    options = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="flowbook-dask-bench-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLOWBOOK_", "METAFLOW_"))}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    procs: list[subprocess.Popen] = [start_moto(env)]
    try:
        address, dask_procs = start_dask(workdir, env)
        procs[:0] = dask_procs
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
        walls: dict[str, list[float]] = {label: [] for label in cases}
        for _ in range(options.reps):
            for label, (datastore, extra) in cases.items():
                args = [sys.executable, str(flow), "--datastore", datastore, "run", *common, *extra]
                walls[label].append(timed_run(args, workdir, env))
        tasks = options.splits + 3
        print(
            f"\n## A {options.splits}-split foreach of trivial tasks ({tasks} tasks), --max-workers 2\n"
        )
        print(
            "| Executor, datastore | wall time | per task (wall / tasks) | per task per worker slot |"
        )
        print("|---|---:|---:|---:|")
        for label, samples in walls.items():
            wall = statistics.median(samples)
            print(
                f"| {label} | {wall:.2f} s | {wall / tasks * 1000:.1f} ms "
                f"| {wall * 2 / tasks * 1000:.1f} ms |"
            )
        print("\n## One Dask task, broken down\n")
        print("| Part | median |")
        print("|---|---:|")
        for label, value in breakdown(address, env, options.reps):
            print(f"| {label} | {value} |")
        print(f"\n## A {options.mb} MB NumPy artifact on S3 (moto on 127.0.0.1)\n")
        print("| Operation | median | throughput |")
        print("|---|---:|---:|")
        for label, seconds, rate in artifact_io(options.mb, options.reps):
            print(f"| {label} | {seconds} | {rate} |")
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    main()
