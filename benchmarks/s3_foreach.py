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
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

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


def start_moto() -> tuple[subprocess.Popen, dict[str, str]]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
    }
    deadline = time.time() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if time.time() > deadline or server.poll() is not None:
                raise RuntimeError("moto's server did not start") from None
            time.sleep(0.1)
    subprocess.run(
        [
            sys.executable,
            "-c",
            f"import boto3; boto3.client('s3').create_bucket(Bucket={BUCKET!r})",
        ],
        env=dict(os.environ, **env),
        check=True,
    )
    return server, env


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
    args = parser.parse_args()
    server, s3_env = start_moto()
    try:
        with tempfile.TemporaryDirectory(prefix="fb-s3-foreach-") as tmp:
            workdir = Path(tmp)
            base = {
                k: v for k, v in os.environ.items() if not k.startswith(("FLOWBOOK_", "METAFLOW_"))
            }
            base.pop("PYTHONDONTWRITEBYTECODE", None)
            base.setdefault("USER", "bench")
            prefix = uuid.uuid4().hex[:8]
            envs = {
                ("flowbook", "local"): dict(base, FLOWBOOK_DATASTORE=str(workdir / ".flowbook")),
                ("metaflow", "local"): dict(
                    base,
                    METAFLOW_DEFAULT_DATASTORE="local",
                    METAFLOW_DATASTORE_SYSROOT_LOCAL=str(workdir),
                ),
                ("flowbook", "s3"): dict(
                    base, **s3_env, FLOWBOOK_DATASTORE=f"s3://{BUCKET}/{prefix}/flowbook"
                ),
                ("metaflow", "s3"): dict(
                    base,
                    **s3_env,
                    METAFLOW_DEFAULT_DATASTORE="s3",
                    METAFLOW_DATASTORE_SYSROOT_S3=f"s3://{BUCKET}/{prefix}/metaflow",
                    METAFLOW_S3_ENDPOINT_URL=s3_env["AWS_ENDPOINT_URL"],
                    METAFLOW_DEFAULT_METADATA="local",
                ),
            }
            times: dict[tuple[str, str], list[float]] = {key: [] for key in envs}
            for _ in range(args.reps):
                for store in ("local", "s3"):
                    for package in ("flowbook", "metaflow"):
                        key = (package, store)
                        times[key].append(timed_run(package, workdir, args.splits, envs[key]))
                        print(f"  {package:8s} {store:5s} {times[key][-1]:7.2f} s", flush=True)
            print(f"\n{args.splits}-split foreach, medians of {args.reps}:")
            for store in ("local", "s3"):
                ours = statistics.median(times[("flowbook", store)])
                theirs = statistics.median(times[("metaflow", store)])
                print(
                    f"  {store:5s} datastore: flowbook {ours:7.2f} s, Metaflow {theirs:7.2f} s, "
                    f"ratio {theirs / ours:5.1f}x"
                )
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
