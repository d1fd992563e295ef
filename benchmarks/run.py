#!/usr/bin/env python3
"""Side-by-side benchmarks of flowbook and Metaflow on this machine.

    python benchmarks/run.py            # full run (what `make bench` calls)
    python benchmarks/run.py --quick    # small sizes, one repetition, for development

Creates (or reuses) the virtualenv ``.bench-venv`` with the released ``metaflow``
from the package index, flowbook installed from this repository as a regular
(non-editable) package, as a user would get it, and NumPy; runs every workload
with both frameworks, alternating them, in fresh temporary directories; prints a table of medians and Metaflow/flowbook ratios and
writes it, with the machine and the exact commands, to ``benchmarks/RESULTS.md``.
Nothing here asserts on timings. See ``--help`` for the options.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from measure import MB, CommandResult, median, run_command, time_python_startup
from notebook_cells import TITLES as NOTEBOOK_CELL_TITLES
from workloads import FRAMEWORKS, Workload, build_workloads, render

NOTEBOOK_TITLES = list(NOTEBOOK_CELL_TITLES.values())

REPO = Path(__file__).resolve().parent.parent
BENCH_DIR = REPO / "benchmarks"
DEFAULT_VENV = REPO / ".bench-venv"
LABELS = {"flowbook": "flowbook", "metaflow": "Metaflow"}


@dataclass
class Series:
    """One framework's repetitions of one measurement; ``error`` once one failed."""

    values: list[float] = field(default_factory=list)
    error: str | None = None

    def median(self) -> float | None:
        return median(self.values) if self.values and not self.error else None


@dataclass
class Row:
    """One line of the results table: a measurement with both frameworks."""

    title: str
    unit: str  # "s", "ms" or "MB"
    series: dict[str, Series] = field(default_factory=lambda: {fw: Series() for fw in FRAMEWORKS})
    note: str = ""


# ----------------------------------------------------------------------------- setup


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reps", type=int, default=None, help="repetitions (default 3; 1 quick)")
    parser.add_argument(
        "--slow-reps",
        type=int,
        default=None,
        help="repetitions of the slow workloads (the wide foreach and the 500 MB artifact), "
        "for both frameworks (default: --reps)",
    )
    parser.add_argument(
        "--import-reps", type=int, default=None, help="fresh imports timed (default 20; 5 quick)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="100 splits, 10 and 50 MB artifacts, 1 repetition; writes RESULTS-quick.md",
    )
    parser.add_argument("--splits", type=int, default=None, help="foreach splits (default 1000)")
    parser.add_argument(
        "--only", nargs="+", metavar="KEY", help="run only these workloads (see --list)"
    )
    parser.add_argument("--skip", nargs="+", metavar="KEY", default=[], help="skip these")
    parser.add_argument("--list", action="store_true", help="list the workload keys and exit")
    parser.add_argument(
        "--frameworks", nargs="+", choices=FRAMEWORKS, default=list(FRAMEWORKS), metavar="NAME"
    )
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV, help="benchmark virtualenv")
    parser.add_argument("--recreate-venv", action="store_true", help="delete and rebuild it")
    parser.add_argument(
        "--skip-install", action="store_true", help="reuse the virtualenv without running pip"
    )
    parser.add_argument(
        "--workdir", type=Path, default=None, help="parent of the temporary directories"
    )
    parser.add_argument("--keep-dirs", action="store_true", help="keep the run directories")
    parser.add_argument("--output", type=Path, default=None, help="the Markdown file to write")
    parser.add_argument(
        "--timeout", type=float, default=3600.0, help="seconds before one command is killed"
    )
    args = parser.parse_args(argv)
    args.reps = args.reps or (1 if args.quick else 3)
    args.slow_reps = args.slow_reps or args.reps
    args.import_reps = args.import_reps or (5 if args.quick else 20)
    args.splits = args.splits or (100 if args.quick else 1000)
    args.artifact_megabytes = (10, 50) if args.quick else (100, 500)
    if args.output is None:
        args.output = BENCH_DIR / ("RESULTS-quick.md" if args.quick else "RESULTS.md")
    return args


def ensure_venv(venv: Path, recreate: bool, install: bool) -> Path:
    """The benchmark virtualenv's Python, after creating the venv and installing into it."""
    python = venv / "bin" / "python"
    if recreate and venv.exists():
        shutil.rmtree(venv)
    if not python.exists():
        log(f"creating the virtualenv {venv}")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    if install:
        # A regular install, as a user gets from the package index: an editable one
        # adds an import hook that costs every process ~14 ms here.
        log("installing metaflow, numpy and flowbook (this checkout, not editable) into it")
        pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        subprocess.run(pip + ["metaflow", "numpy", str(REPO)], check=True)
        subprocess.run(pip + ["--force-reinstall", "--no-deps", str(REPO)], check=True)
    return python


def bench_env(venv: Path, home: Path) -> dict[str, str]:
    """The environment of every benchmark process: the venv first on PATH, a fixed
    user, an empty Metaflow home (no personal config) and no FLOWBOOK_/METAFLOW_
    settings inherited from the caller."""
    # PYTHONDONTWRITEBYTECODE would make every process recompile what changed since
    # its last .pyc: users run byte-compiled installs.
    dropped = {
        "PYTHONPATH",
        "PYTHONHOME",
        "PYTHONSTARTUP",
        "PYTHONDONTWRITEBYTECODE",
        "VIRTUAL_ENV",
        "USERNAME",
    }
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in dropped and not k.startswith(("FLOWBOOK_", "METAFLOW_"))
    }
    metaflow_home = home / "metaflow-home"
    metaflow_home.mkdir(parents=True, exist_ok=True)
    env.update(BENCH_ENV_SETTINGS)
    env["METAFLOW_HOME"] = str(metaflow_home)
    env["VIRTUAL_ENV"] = str(venv)
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return env


BENCH_ENV_SETTINGS = {
    "USER": "bench",
    "METAFLOW_USER": "bench",
    "METAFLOW_DEFAULT_DATASTORE": "local",
    "METAFLOW_DEFAULT_METADATA": "local",
}


def venv_versions(python: Path, env: dict[str, str], cwd: Path) -> dict[str, str]:
    code = (
        "import json, platform, importlib.metadata as m, flowbook; "
        "print(json.dumps({'python': platform.python_version(), "
        "'flowbook': m.version('flowbook'), 'flowbook_path': flowbook.__file__, "
        "'metaflow': m.version('metaflow'), 'numpy': m.version('numpy')}))"
    )
    out = subprocess.run(
        [str(python), "-c", code], cwd=cwd, env=env, check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout)


def machine_info(workdir: Path) -> dict[str, str]:
    info = {"cores": str(os.cpu_count()), "platform": platform.platform()}
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            info["cpu"] = line.split(":", 1)[1].strip()
            break
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            info["memory"] = f"{int(line.split()[1]) / 2**20:.1f} GiB"
    df = subprocess.run(
        ["df", "--output=source,fstype,size", str(workdir)], capture_output=True, text=True
    )
    if df.returncode == 0 and len(df.stdout.splitlines()) > 1:
        info["disk"] = " ".join(df.stdout.splitlines()[1].split()) + f" (holds {workdir})"
    git = ["git", "-C", str(REPO)]
    commit = subprocess.run(git + ["rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    status = subprocess.run(git + ["status", "--porcelain"], capture_output=True, text=True)
    if commit.returncode == 0:
        dirty = " with uncommitted changes" if status.stdout.strip() else ""
        info["commit"] = commit.stdout.strip() + dirty
    return info


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


# ----------------------------------------------------------------------------- running


class Harness:
    def __init__(self, args: argparse.Namespace, python: Path, env: dict[str, str], base: Path):
        self.args = args
        self.python = python
        self.env = env
        self.base = base
        self.rows: list[Row] = []
        self.errors: list[str] = []
        self.commands: dict[str, list[str]] = {}  # workload title -> commands, both frameworks
        self.kept: dict[tuple[str, str], Path] = {}  # (workload key, framework) -> directory
        self.disk: dict[str, list[float]] = {}

    # -- helpers

    def new_dir(self, name: str) -> Path:
        path = self.base / name
        if path.exists():
            shutil.rmtree(path)
        path.mkdir()
        return path

    def prepare(self, workload: Workload, framework: str, directory: Path) -> None:
        source = render(workload.flow_template, framework, **workload.params)
        (directory / workload.flow_file).write_text(source)
        if workload.script_template:
            (directory / "client_script.py").write_text(render(workload.script_template, framework))

    def argv(self, argv: tuple[str, ...], workload: Workload) -> list[str]:
        names = {
            "python": str(self.python),
            "flow": workload.flow_file,
            "script": "client_script.py",
        }
        return [part.format(**names) for part in argv]

    def record_command(self, title: str, framework: str, argv: list[str], extra: dict) -> None:
        env = " ".join(f"{k}={v}" for k, v in extra.items())
        shown = (env + " " if env else "") + shlex.join(argv)
        commands = self.commands.setdefault(title, [])
        line = f"{LABELS[framework]}: {shown}"
        if line not in commands:
            commands.append(line)

    def execute(
        self, workload: Workload, framework: str, command, directory: Path, name: str, memory: bool
    ) -> CommandResult:
        argv = self.argv(command.argv, workload)
        extra = dict(command.env)
        self.record_command(workload.title, framework, argv, extra)
        return run_command(
            argv,
            directory,
            {**self.env, **extra},
            log_name=name,
            sample_memory=memory,
            timeout=self.args.timeout,
        )

    def failure(self, workload: Workload, framework: str, result: CommandResult, why: str) -> str:
        cmd = shlex.join(result.argv)
        message = (
            f"### {workload.title}: {LABELS[framework]}\n\n{why}\n\n"
            f"Command (in `{result.cwd}`, exit code {result.returncode}"
            f"{', killed after the timeout' if result.timed_out else ''}):\n\n"
            f"```\n{cmd}\n```\n\nLast lines of its output:\n\n```\n{result.tail()}\n```\n"
        )
        self.errors.append(message)
        log(f"ERROR {workload.key} / {framework}: {why} (exit code {result.returncode})")
        return why

    def setup(self, workload: Workload, framework: str, directory: Path) -> str | None:
        """Run the untimed setup commands; an error message if one went wrong."""
        for i, command in enumerate(workload.setup):
            result = self.execute(workload, framework, command, directory, f"setup{i}", False)
            if command.expect_success and result.returncode != 0:
                return self.failure(workload, framework, result, "the setup command failed")
            if not command.expect_success and result.returncode == 0:
                return self.failure(
                    workload, framework, result, "the setup command should have failed"
                )
        return None

    def timed(
        self, workload: Workload, framework: str, directory: Path, rep: int
    ) -> tuple[float, int | None] | str:
        """One measurement: (seconds, peak RSS bytes), or an error message."""
        result = self.execute(
            workload, framework, workload.timed, directory, f"timed{rep}", workload.measure_memory
        )
        if result.returncode != 0:
            return self.failure(workload, framework, result, "the measured command failed")
        if not workload.metric_from_stdout:
            return result.seconds, result.peak_rss_bytes
        lines = [ln for ln in result.stdout().splitlines() if ln.startswith("{")]
        try:
            data = json.loads(lines[-1])
        except (IndexError, ValueError):
            return self.failure(workload, framework, result, "it printed no JSON result")
        wrong = {k: data.get(k) for k, v in workload.expected.items() if data.get(k) != v}
        if wrong:
            return self.failure(
                workload,
                framework,
                result,
                f"it returned {wrong}, expected {dict(workload.expected)}",
            )
        return float(data["seconds"]), None

    # -- workloads

    def run_import_times(self) -> None:
        reps = self.args.import_reps
        directory = self.new_dir("imports")
        codes = {"pass": "pass"}
        for fw in self.args.frameworks:
            codes[f"import {fw}"] = f"import {fw}"
            codes[f"from {fw}"] = f"from {fw} import FlowSpec, step"
        times: dict[str, list[float]] = {key: [] for key in codes}
        log(f"import times: {reps} fresh processes each")
        for _ in range(reps):
            for key, code in codes.items():
                times[key].append(time_python_startup(str(self.python), code, directory, self.env))
        baseline = median(times["pass"])
        self.import_baseline = baseline
        title_import = "`import X` (fresh process, minus `python -c pass`)"
        title_from = "`from X import FlowSpec, step` (same)"
        self.commands[title_import] = [
            f"{shlex.join([str(self.python), '-c', code])}  (x{reps})" for code in codes.values()
        ]
        for title, prefix in ((title_import, "import"), (title_from, "from")):
            row = Row(title, "ms")
            for fw in self.args.frameworks:
                row.series[fw].values = [(t - baseline) * 1000 for t in times[f"{prefix} {fw}"]]
            self.rows.append(row)
        self.rows[-2].note = f"`python -c pass` itself: {baseline * 1000:.0f} ms"

    def run_notebook_cells(self) -> None:
        """flowbook only: a trivial %%step cell and a 100-split foreach cell in a kernel."""
        directory = self.new_dir("notebook")
        reps = max(self.args.reps, 3)
        log(f"notebook cells: {reps} of each, in a real kernel")
        argv = [str(self.python), str(BENCH_DIR / "notebook_cells.py"), str(reps)]
        out = subprocess.run(
            argv, cwd=directory, env=self.env, capture_output=True, text=True, timeout=900
        )
        for title in NOTEBOOK_TITLES:
            row = Row(title, "ms")
            self.commands[title] = [f"{shlex.join(argv)}  (in an empty directory)"]
            if out.returncode != 0:
                row.series["flowbook"].error = out.stderr.strip()[-500:]
                self.errors.append(f"{title}: {row.series['flowbook'].error}")
            else:
                seconds = json.loads(out.stdout.strip().splitlines()[-1])[title]
                row.series["flowbook"].values = [s * 1000 for s in seconds]
            self.rows.append(row)
        shutil.rmtree(directory, ignore_errors=True)

    def run_disk_speed(self, megabytes: int) -> None:
        directory = self.new_dir("disk")
        log(f"disk speed: {megabytes} MB, {self.args.slow_reps} times")
        argv = [str(self.python), str(BENCH_DIR / "measure.py"), "disk", ".", str(megabytes)]
        self.disk_command = shlex.join(argv)
        for _ in range(self.args.slow_reps):
            out = subprocess.run(
                argv, cwd=directory, env=self.env, check=True, capture_output=True, text=True
            )
            for key, value in json.loads(out.stdout).items():
                self.disk.setdefault(key, []).append(value)
        self.disk_megabytes = megabytes
        shutil.rmtree(directory)

    def run_workload(self, workload: Workload) -> None:
        reps = self.args.slow_reps if workload.slow else self.args.reps
        unit = "s"
        time_row = Row(workload.title + (", wall time" if workload.measure_memory else ""), unit)
        if workload.metric_from_stdout:
            time_row.note = "timed inside the process around the loop"
        rows = [time_row]
        memory_row = None
        if workload.measure_memory:
            memory_row = Row(workload.title + ", peak RSS of the process tree", "MB")
            rows.append(memory_row)
        self.rows.extend(rows)
        frameworks = list(self.args.frameworks)

        shared: dict[str, Path] = {}
        if workload.setup_once:
            for fw in frameworks:
                reused = self.kept.get((workload.reuse_dir_of or "", fw))
                if reused:
                    shared[fw] = reused
                    self.prepare(workload, fw, reused)
                    log(f"{workload.key} / {fw}: reusing the run in {reused}")
                    continue
                directory = self.new_dir(f"{workload.key}-{fw}")
                self.prepare(workload, fw, directory)
                log(f"{workload.key} / {fw}: setup")
                error = self.setup(workload, fw, directory)
                if error:
                    time_row.series[fw].error = error
                shared[fw] = directory

        for rep in range(reps):
            order = frameworks if rep % 2 == 0 else frameworks[::-1]
            for fw in order:
                if time_row.series[fw].error:
                    continue
                if workload.setup_once:
                    directory = shared[fw]
                else:
                    directory = self.new_dir(f"{workload.key}-{fw}-{rep}")
                    self.prepare(workload, fw, directory)
                    error = self.setup(workload, fw, directory)
                    if error:
                        time_row.series[fw].error = error
                        if memory_row:
                            memory_row.series[fw].error = error
                        continue
                outcome = self.timed(workload, fw, directory, rep)
                if isinstance(outcome, str):
                    for row in rows:
                        row.series[fw].error = outcome
                    continue
                seconds, peak = outcome
                time_row.series[fw].values.append(seconds)
                shown = f"{seconds:.3f} s"
                if memory_row and peak is not None:
                    memory_row.series[fw].values.append(peak / MB)
                    shown += f", peak RSS {peak / MB:.0f} MB"
                log(f"{workload.key} / {fw} rep {rep + 1}/{reps}: {shown}")
                if not workload.setup_once:
                    self.keep_or_remove(workload.key, fw, directory)

    def keep_or_remove(self, key: str, framework: str, directory: Path) -> None:
        """Keep the newest directory of each workload (a later one may read its run)."""
        previous = self.kept.get((key, framework))
        if previous and previous != directory and not self.args.keep_dirs:
            shutil.rmtree(previous, ignore_errors=True)
        self.kept[(key, framework)] = directory
        if key.startswith("artifact") and not self.args.keep_dirs:
            shutil.rmtree(directory, ignore_errors=True)  # hundreds of MB; nothing reads it
            del self.kept[(key, framework)]

    def warm_up(self, workloads: list[Workload]) -> None:
        """One untimed run of the hello flow with each framework (byte-compiles the venv)."""
        hello = next(w for w in workloads if w.key == "hello")
        for fw in self.args.frameworks:
            directory = self.new_dir(f"warmup-{fw}")
            self.prepare(hello, fw, directory)
            result = run_command(self.argv(hello.timed.argv, hello), directory, self.env, "warmup")
            log(f"warm-up run of {fw}: {result.seconds:.2f} s, exit code {result.returncode}")
            shutil.rmtree(directory)


# ----------------------------------------------------------------------------- report


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "s":
        return f"{value:.3f} s" if value < 10 else f"{value:.1f} s"
    if unit == "ms":
        return f"{value:.1f} ms" if value < 100 else f"{value:.0f} ms"
    return f"{value:.0f} {unit}"


def cell(series: Series, unit: str) -> str:
    if series.error:
        return "error"
    return fmt(series.median(), unit)


def results_table(rows: list[Row]) -> str:
    lines = [
        "| Workload | flowbook | Metaflow | Metaflow / flowbook | reps (fb / MF) |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        fb, mf = row.series["flowbook"], row.series["metaflow"]
        ratio = ""
        if fb.median() is not None and mf.median() is not None:
            if fb.median() <= 0:  # below the noise of the baseline it is measured against
                ratio = "n/a (flowbook's figure is within the noise)"
            else:
                ratio = f"{mf.median() / fb.median():.1f}x"
        title = row.title + (f" ({row.note})" if row.note else "")
        reps = f"{len(fb.values)} / {len(mf.values)}"
        lines.append(
            f"| {title} | {cell(fb, row.unit)} | {cell(mf, row.unit)} | {ratio} | {reps} |"
        )
    return "\n".join(lines)


def disk_table(disk: dict[str, list[float]], megabytes: int) -> str:
    labels = {
        "write_seconds": "write (plain `write()`, no fsync)",
        "write_fsync_seconds": "write + fsync",
        "read_cached_seconds": "read back (from the page cache)",
        "read_uncached_seconds": "read back after `posix_fadvise(DONTNEED)` (from the disk)",
        "flowbook_put_seconds": "flowbook stores the array (pickle, SHA-256 tree hash on two "
        "threads while writing, rename)",
        "flowbook_load_seconds": "flowbook loads it (maps the file it wrote; one value read from every page)",
        "flowbook_load_verified_seconds": "flowbook loads it from a file it did not write "
        "(every byte hashed again)",
    }
    lines = ["| Operation | median time | throughput |", "|---|---:|---:|"]
    for key, label in labels.items():
        if key in disk:
            seconds = median(disk[key])
            lines.append(f"| {label} | {fmt(seconds, 's')} | {megabytes / seconds:.0f} MB/s |")
    return "\n".join(lines)


def per_rep_table(rows: list[Row]) -> str:
    lines = ["| Measurement | flowbook | Metaflow |", "|---|---|---|"]
    for row in rows:
        cells = []
        for fw in FRAMEWORKS:
            series = row.series[fw]
            values = ", ".join(fmt(v, row.unit) for v in series.values)
            cells.append(values + (" then error" if series.error else "") or "-")
        lines.append(f"| {row.title} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def write_report(
    harness: Harness,
    args: argparse.Namespace,
    versions: dict[str, str],
    machine: dict[str, str],
    started: float,
    invocation: str,
) -> str:
    minutes = (time.time() - started) / 60
    table = results_table(harness.rows)
    parts = [
        "# flowbook vs Metaflow: benchmark results",
        "",
        f"Written by `{invocation}` on {time.strftime('%Y-%m-%d %H:%M', time.localtime(started))}"
        f" (the whole run took {minutes:.0f} min). Both frameworks ran in the same run, on this"
        " machine, alternating repetition by repetition. Medians; the ratio is Metaflow's"
        " median over flowbook's (above 1: flowbook is faster, or uses less memory).",
        "",
        table,
        "",
    ]
    if harness.disk:
        parts += [
            f"## The disk, for comparison with the artifact figures ({harness.disk_megabytes} MB)",
            "",
            f"The same {harness.disk_megabytes} MB as the artifact workload, written and read "
            "with plain file I/O, then stored and loaded by flowbook's datastore in the same "
            f"process, {len(next(iter(harness.disk.values())))} times:"
            f" `{harness.disk_command}`",
            "",
            disk_table(harness.disk, harness.disk_megabytes),
            "",
        ]
    parts += [
        "## Machine",
        "",
        f"- CPU: {machine.get('cpu', '?')}, {machine['cores']} cores",
        f"- Memory: {machine.get('memory', '?')}",
        f"- OS: {machine['platform']}",
        f"- Disk: {machine.get('disk', '?')}",
        f"- Python {versions['python']} (virtualenv `{args.venv}`)",
        f"- flowbook {versions['flowbook']} (installed from commit {machine.get('commit', '?')}, not editable)",
        f"- metaflow {versions['metaflow']} (released, from the package index)",
        f"- numpy {versions['numpy']}",
        "",
        "## How it was measured",
        "",
        "- Every flow is generated from one template with only its import changed"
        " (`benchmarks/workloads.py`), and every repetition runs in a fresh temporary"
        " directory, so each datastore (`.flowbook`, `.metaflow`) starts empty.",
        "- Wall time is from starting the command to its exit (`time.perf_counter`), the"
        " interpreter's start included. Before timing, each framework ran the hello flow"
        " once, untimed, to warm the file cache and byte-compile the virtualenv.",
        "- Peak RSS: `/proc` polled every 10 ms, summing the RSS of every process in the"
        " command's session or descended from it; pages shared between processes"
        " (forked children) count once per process.",
        "- Resume: the flow first runs with `BENCH_FAIL=1` (its third step fails), then"
        " `resume` runs without it; only the resume is timed.",
        "- Client API: a fresh process in the directory of the wide foreach's last run times,"
        " with `time.perf_counter`, the loop"
        ' `for task in Flow("WideForeachFlow").latest_run["multiply"]: task.data.result`'
        " (the import is not included); it checks the count and the sum of the results.",
        "- Import times: medians of fresh `python -c` processes, minus the median of"
        " `python -c pass`.",
        "- Environment of every command: "
        + ", ".join(f"`{k}={v}`" for k, v in BENCH_ENV_SETTINGS.items())
        + ", `METAFLOW_HOME` an empty directory, the virtualenv first on `PATH`, and no"
        " other `FLOWBOOK_*` or `METAFLOW_*` variable.",
        "",
        "## Commands",
        "",
        "Each ran in its own temporary directory holding the generated flow file.",
        "",
    ]
    for title, commands in harness.commands.items():
        parts.append(f"- {title}:")
        parts += [f"  - `{c}`" for c in commands]
    parts.append("")
    if harness.errors:
        parts += ["## Errors", ""] + harness.errors
    parts += ["## Every repetition", "", per_rep_table(harness.rows), ""]
    args.output.write_text("\n".join(parts))
    return table


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workloads = build_workloads(args.splits, args.artifact_megabytes)
    if args.list:
        for w in workloads:
            print(f"{w.key:14} {w.title}")
        print(f"{'imports':14} import times\n{'disk':14} plain file I/O speed")
        print(f"{'notebook':14} flowbook only: %%step cells in a real kernel")
        return 0
    selected = {w.key for w in workloads} | {"imports", "disk", "notebook"}
    unknown = set(args.only or []) | set(args.skip)
    if unknown - selected:
        sys.exit(f"unknown workload(s): {', '.join(sorted(unknown - selected))} (see --list)")
    if args.only:
        selected &= set(args.only)
    selected -= set(args.skip)

    started = time.time()
    invocation = shlex.join(
        ["python", "benchmarks/run.py", *(sys.argv[1:] if argv is None else argv)]
    )
    python = ensure_venv(args.venv, args.recreate_venv, not args.skip_install)
    base = Path(tempfile.mkdtemp(prefix="flowbook-bench-", dir=args.workdir))
    env = bench_env(args.venv, base)
    versions = venv_versions(python, env, base)
    machine = machine_info(base)
    log(
        f"flowbook {versions['flowbook']} ({versions['flowbook_path']}), metaflow "
        f"{versions['metaflow']}, Python {versions['python']}; directories in {base}"
    )
    harness = Harness(args, python, env, base)
    try:
        harness.warm_up(workloads)
        if "imports" in selected:
            harness.run_import_times()
        for workload in workloads:
            if workload.key == f"artifact-{args.artifact_megabytes[-1]}" and "disk" in selected:
                harness.run_disk_speed(args.artifact_megabytes[-1])
            if workload.key in selected:
                log(f"workload {workload.key}: {workload.title}")
                harness.run_workload(workload)
        if "disk" in selected and not harness.disk:
            harness.run_disk_speed(args.artifact_megabytes[-1])
        if "notebook" in selected and "flowbook" in args.frameworks:
            harness.run_notebook_cells()
    finally:
        if not args.keep_dirs:
            shutil.rmtree(base, ignore_errors=True)
        if harness.rows or harness.disk:
            table = write_report(harness, args, versions, machine, started, invocation)
            print("\n" + table + "\n")
            log(f"wrote {args.output}")
    if harness.errors:
        log(f"{len(harness.errors)} workload(s) failed; see the Errors section of {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
