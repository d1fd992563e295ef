"""What the S3 benchmarks share: moto's S3 server on 127.0.0.1, request counting
from its log, and the machine's description (with its load, which others share).

Not a benchmark itself: ``s3_foreach.py``, ``dask_overhead.py`` and
``s3_artifact.py`` import it.
"""

from __future__ import annotations

import os
import platform
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
#: A request line in moto's (werkzeug's) log: ``"PUT /bucket/key HTTP/1.1" 200 -``
#: (answers other than 200 are coloured: ANSI escapes before the method).
REQUEST = re.compile(rb'"(?:\x1b\[[0-9;]*m)*(?:GET|PUT|HEAD|POST|DELETE) [^"]*HTTP/1\.[01]')


class Moto:
    """moto's S3 server as a process on 127.0.0.1 (a free port), its requests logged
    to ``log`` so that a benchmark can count what each run sent."""

    def __init__(self, log: Path, bucket: str) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.log = log
        self._log_handle = open(log, "ab")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=self._log_handle,
            stderr=self._log_handle,
        )
        self.env = {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{self.port}",
        }
        deadline = time.time() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                break
            except OSError:
                if time.time() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise RuntimeError("moto's server did not start") from None
                time.sleep(0.1)
        subprocess.run(
            [
                sys.executable,
                "-c",
                f"import boto3; boto3.client('s3').create_bucket(Bucket={bucket!r})",
            ],
            env=dict(os.environ, **self.env),
            check=True,
        )

    def requests(self) -> int:
        """How many requests the server has answered so far."""
        self._log_handle.flush()
        return len(REQUEST.findall(self.log.read_bytes()))

    def cpu_seconds(self) -> float:
        """CPU time the server has used so far (user + system)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._log_handle.close()


def bench_env(extra: dict[str, str]) -> dict[str, str]:
    """The environment of a measured process: no FLOWBOOK_*/METAFLOW_* variables of
    ours, byte-compiled imports (as in a user's install), and ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLOWBOOK_", "METAFLOW_"))}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.setdefault("USER", "bench")
    env.update(extra)
    return env


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.1f} / {five:.1f} / {fifteen:.1f}"


def machine_lines() -> list[str]:
    """Markdown bullet lines describing the machine and the software measured."""
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    memory = "?"
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            memory = f"{int(line.split()[1]) / 2**20:.1f} GiB"
    versions = []
    for name in ("flowbook", "metaflow", "moto", "s3fs", "aiobotocore", "botocore", "distributed"):
        try:
            from importlib.metadata import version

            versions.append(f"{name} {version(name)}")
        except Exception:
            continue
    commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    return [
        f"- CPU: {cpu}, {os.cpu_count()} cores; memory {memory}",
        f"- OS: {platform.platform()}; Python {platform.python_version()} ({sys.executable})",
        f"- {', '.join(versions)}",
        f"- flowbook from the working tree at commit {commit or '?'}",
    ]


def print_repetitions(samples: dict[str, list[float]]) -> None:
    """Every repetition's seconds, one line per measurement, as markdown."""
    print("\nEvery repetition (seconds):\n")
    for label, values in samples.items():
        print(f"- {label}: " + ", ".join(f"{t:.2f}" for t in values))
