"""The Runner API: start, resume and watch flow runs from Python.

A :class:`Runner` runs ``python flow.py [top-level options] run|resume [options]`` in
a subprocess, exactly as a user would on the command line, and hands back an
:class:`ExecutingRun` that tracks the process and gives the Client API's ``Run``.
The subprocess writes its output to files owned by the runner, so output can be
read (``stdout``, ``stream_log``) from any thread, inside a running event loop
(Jupyter) or without a terminal. Parameters are type-checked in this process before
anything starts.

The blocking methods (``run``, ``resume``) return when the run ends; the ``async_``
methods return as soon as the run has an id. ``await running.wait()`` waits.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

from .exceptions import FlowbookError, ParameterError
from .parameters import JSONType, Parameter


class ExecutingRun:
    """A run started by a Runner: its process, its output, and its Client ``Run``."""

    def __init__(self, runner: Runner, process: subprocess.Popen, workdir: str) -> None:
        self.runner = runner
        self._process = process
        self._workdir = workdir
        self._run = None
        self._echo: threading.Thread | None = None

    # --------------------------------------------------------------- context manager
    def __enter__(self) -> ExecutingRun:
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._process.poll() is None:
            self.kill()
        self.runner.cleanup()

    # --------------------------------------------------------------- state
    @property
    def returncode(self) -> int | None:
        return self._process.poll()

    @property
    def status(self) -> str:
        """'running', 'successful' or 'failed'."""
        code = self._process.poll()
        if code is None:
            return "running"
        return "successful" if code == 0 else "failed"

    @property
    def run(self):
        """The Client API's Run (None until the subprocess has created it)."""
        if self._run is None:
            pathspec = _read_text(os.path.join(self._workdir, "run_id"))
            if pathspec:
                from .client import Run
                from .datastore import Datastore

                self._run = Run(
                    pathspec,
                    _datastore_obj=Datastore(self.runner.datastore_url),
                    _any_namespace=True,
                )
        return self._run

    def _log_path(self, stream: str) -> str:
        if stream not in ("stdout", "stderr"):
            raise ValueError(f"stream must be 'stdout' or 'stderr', not {stream!r}")
        return os.path.join(self._workdir, stream)

    @property
    def stdout(self) -> str:
        return _read_text(self._log_path("stdout"))

    @property
    def stderr(self) -> str:
        return _read_text(self._log_path("stderr"))

    # --------------------------------------------------------------- control
    def kill(self) -> None:
        """Stop the run: the scheduler stops its tasks and marks the run failed."""
        if self._process.poll() is None:
            self._process.send_signal(2)  # SIGINT: the scheduler's clean stop
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()

    def wait_sync(self, timeout: float | None = None) -> ExecutingRun:
        """Block until the run ends (or ``timeout`` seconds pass)."""
        try:
            self._process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
        if self._echo is not None and self._process.poll() is not None:
            self._echo.join()
        return self

    async def wait(self, timeout: float | None = None, stream: str | None = None) -> ExecutingRun:
        """Wait until the run ends; with ``stream`` ('stdout'/'stderr'), print it meanwhile."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if stream is not None:
            async for _, line in self.stream_log(stream):
                print(line)
                if deadline is not None and time.monotonic() > deadline:
                    return self
        while self._process.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                return self
            await asyncio.sleep(0.05)
        if self._echo is not None:
            self._echo.join()
        return self

    async def stream_log(
        self, stream: str, position: int | None = None
    ) -> AsyncIterator[tuple[int, str]]:
        """Yield ``(position, line)`` as the run writes them, until it ends.

        ``position`` is the byte offset just after the line; pass it back to continue
        where an earlier iteration stopped.
        """
        path = self._log_path(stream)
        offset = position or 0
        partial = b""
        while True:
            finished = self._process.poll() is not None
            with open(path, "rb") as handle:
                handle.seek(offset)
                data = handle.read()
            position_of_data = offset - len(partial)
            offset += len(data)
            lines = (partial + data).split(b"\n")
            partial = lines.pop()
            for line in lines:
                position_of_data += len(line) + 1
                yield position_of_data, line.decode("utf-8", errors="replace")
            if finished:
                if partial:
                    yield offset, partial.decode("utf-8", errors="replace")
                return
            await asyncio.sleep(0.05)

    def _start_echo(self) -> None:
        """Copy the subprocess's output to this process's stdout/stderr as it comes."""

        def echo() -> None:
            offsets = {"stdout": 0, "stderr": 0}
            targets = {"stdout": sys.stdout, "stderr": sys.stderr}
            while True:
                finished = self._process.poll() is not None
                for stream, target in targets.items():
                    with open(self._log_path(stream), "rb") as handle:
                        handle.seek(offsets[stream])
                        data = handle.read()
                    if data:
                        offsets[stream] += len(data)
                        target.write(data.decode("utf-8", errors="replace"))
                        target.flush()
                if finished:
                    return
                time.sleep(0.05)

        self._echo = threading.Thread(target=echo, name="flowbook-runner-echo", daemon=True)
        self._echo.start()

    def __repr__(self) -> str:
        return f"<ExecutingRun {self.run.pathspec if self.run else '(starting)'} {self.status}>"


class Runner:
    """Run a flow file programmatically, as ``python FLOW_FILE ... run`` would.

    ``show_output`` echoes the run's output here; ``quiet`` passes ``--quiet``;
    ``pylint=False`` is ``--no-pylint``; ``decospecs=['retry']`` is ``--with retry``;
    ``env`` adds environment variables; other keywords become top-level options
    (``datastore='s3://...'`` is ``--datastore s3://...``).
    """

    def __init__(
        self,
        flow_file: str,
        show_output: bool = True,
        quiet: bool = False,
        pylint: bool = True,
        decospecs: list[str] | None = None,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        **top_level_options: Any,
    ) -> None:
        self.flow_file = os.path.abspath(flow_file)
        if not os.path.isfile(self.flow_file):
            raise FlowbookError(f"Runner: no such flow file {self.flow_file}.")
        self.show_output = show_output
        self.quiet = quiet
        self.env = dict(os.environ, **(env or {}))
        self.cwd = cwd or os.getcwd()
        self.top_level = ["--quiet"] if quiet else []
        if not pylint:
            self.top_level.append("--no-pylint")
        for spec in decospecs or []:
            self.top_level += ["--with", spec]
        for name, value in top_level_options.items():
            self.top_level += _option_args(name, value)
        self.datastore_url = _datastore_url(top_level_options, self.env, self.cwd)
        self._flow_cls: type | None = None
        self._workdirs: list[str] = []
        self._runs: list[ExecutingRun] = []

    # --------------------------------------------------------------- public API
    def run(self, **kwargs: Any) -> ExecutingRun:
        """Run the flow to its end; parameters and run options as keywords."""
        return self._start("run", kwargs).wait_sync()

    def resume(self, **kwargs: Any) -> ExecutingRun:
        """Resume a run (``origin_run_id=``, ``step=``) to its end."""
        return self._start("resume", kwargs).wait_sync()

    async def async_run(self, **kwargs: Any) -> ExecutingRun:
        """Start a run and return once it has an id; ``await running.wait()`` waits."""
        return await self._started(self._start("run", kwargs))

    async def async_resume(self, **kwargs: Any) -> ExecutingRun:
        return await self._started(self._start("resume", kwargs))

    def cleanup(self) -> None:
        """Remove the temporary files of this runner's runs."""
        for workdir in self._workdirs:
            shutil.rmtree(workdir, ignore_errors=True)
        self._workdirs = []

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: Any) -> None:
        for running in self._runs:
            if running.returncode is None:
                running.kill()
        self.cleanup()

    # --------------------------------------------------------------- internals
    @property
    def flow_cls(self) -> type:
        if self._flow_cls is None:
            from .cli.main import load_flow_class

            self._flow_cls = load_flow_class(self.flow_file)
        return self._flow_cls

    def _command(self, command: str, kwargs: dict[str, Any], workdir: str) -> list[str]:
        kwargs = dict(kwargs)
        args = [command]
        if command == "resume":
            step = kwargs.pop("step", None)
            if step:
                args.append(step)
            origin = kwargs.pop("origin_run_id", None)
            if origin:
                args += ["--origin-run-id", str(origin)]
        for tag in kwargs.pop("tags", None) or []:
            args += ["--tag", str(tag)]
        for name in ("max_workers", "max_num_splits"):
            if kwargs.get(name) is not None:
                args += [f"--{name.replace('_', '-')}", str(int(kwargs.pop(name)))]
            kwargs.pop(name, None)
        args += self._parameter_args(kwargs)
        args += ["--run-id-file", os.path.join(workdir, "run_id")]
        return [sys.executable, self.flow_file, *self.top_level, *args]

    def _parameter_args(self, values: dict[str, Any]) -> list[str]:
        from .parameters import flow_parameters

        flow = self.flow_cls
        parameters = flow_parameters(flow)
        by_key = {}
        for attr, param in parameters.items():
            by_key[param.name.replace("-", "_")] = param
            by_key[attr] = param
        args = []
        for key, value in values.items():
            param = by_key.get(key)
            if param is None:
                known = ", ".join(p.name for p in parameters.values()) or "none"
                raise ParameterError(
                    f"Flow {flow.__name__} has no parameter '{key}' (its parameters: {known})."
                )
            args += [f"--{param.name}", _parameter_text(flow.__name__, param, value)]
        return args

    def _start(self, command: str, kwargs: dict[str, Any]) -> ExecutingRun:
        workdir = tempfile.mkdtemp(prefix="flowbook-runner-")
        self._workdirs.append(workdir)
        try:
            cmd = self._command(command, kwargs, workdir)
        except BaseException:
            shutil.rmtree(workdir, ignore_errors=True)
            self._workdirs.remove(workdir)
            raise
        with (
            open(os.path.join(workdir, "stdout"), "wb") as out,
            open(os.path.join(workdir, "stderr"), "wb") as err,
        ):
            process = subprocess.Popen(
                cmd,
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,  # Ctrl-C in the caller does not reach the run
            )
        running = ExecutingRun(self, process, workdir)
        self._runs.append(running)
        if self.show_output:
            running._start_echo()
        return running

    @staticmethod
    async def _started(running: ExecutingRun) -> ExecutingRun:
        while running.run is None and running.returncode is None:
            await asyncio.sleep(0.02)
        return running


class NBRunner:
    """Run a FlowSpec class defined in a notebook, without writing a flow file by hand.

    The class is sent to the run by value with cloudpickle, together with its graph,
    so functions, classes and imports it uses from *other* cells of the notebook come
    along (Metaflow's NBRunner only sees the one cell that defines the flow).
    """

    def __init__(
        self, flow: type, show_output: bool = True, base_dir: str | None = None, **options: Any
    ) -> None:
        from .datastore.pickling import dumps_code
        from .graph import FlowGraph

        self.flow = flow
        graph = FlowGraph.from_flow_class(flow)
        self._dir = tempfile.mkdtemp(prefix="flowbook-nbrunner-", dir=base_dir)
        pickled = os.path.join(self._dir, "flow.pkl")
        with open(pickled, "wb") as handle:
            handle.write(dumps_code((flow, graph)))
        self.flow_file = os.path.join(self._dir, f"{flow.__name__}.py")
        with open(self.flow_file, "w") as handle:
            handle.write(_NB_FLOW_TEMPLATE.format(pickled=pickled))
        self.runner = Runner(self.flow_file, show_output=show_output, **options)
        self.runner._flow_cls = flow

    def nbrun(self, **kwargs: Any):
        """Run the flow to its end and return its Client ``Run``."""
        running = self.runner.run(**kwargs)
        if running.status != "successful" and running.run is None:
            raise FlowbookError(
                f"Flow {self.flow.__name__} did not start:\n{running.stderr.strip()}"
            )
        return running.run

    def nbresume(self, **kwargs: Any):
        running = self.runner.resume(**kwargs)
        if running.run is None:
            raise FlowbookError(
                f"Flow {self.flow.__name__} did not resume:\n{running.stderr.strip()}"
            )
        return running.run

    async def async_nbrun(self, **kwargs: Any) -> ExecutingRun:
        return await self.runner.async_run(**kwargs)

    async def async_nbresume(self, **kwargs: Any) -> ExecutingRun:
        return await self.runner.async_resume(**kwargs)

    def cleanup(self) -> None:
        self.runner.cleanup()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> NBRunner:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.runner.__exit__(*exc)
        self.cleanup()


_NB_FLOW_TEMPLATE = """\
# Written by flowbook's NBRunner: runs a FlowSpec class sent from a notebook.
import cloudpickle

from flowbook.cli.entry import main

with open({pickled!r}, "rb") as handle:
    flow_cls, graph = cloudpickle.load(handle)
main(flow_cls, graph=graph)
"""


# ------------------------------------------------------------------- helpers
def _read_text(path: str) -> str:
    try:
        with open(path, "rb") as handle:
            return handle.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return ""


def _option_args(name: str, value: Any) -> list[str]:
    flag = "--" + name.replace("_", "-")
    if value is True:
        return [flag]
    if value is False:
        return ["--no-" + name.replace("_", "-")]
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [part for item in value for part in (flag, str(item))]
    return [flag, str(value)]


def _datastore_url(options: dict[str, Any], env: dict[str, str], cwd: str) -> str:
    url = options.get("datastore") or env.get("FLOWBOOK_DATASTORE")
    if not url:
        return os.path.join(cwd, ".flowbook")
    if "://" not in url and not os.path.isabs(url):
        return os.path.join(cwd, url)
    return url


def _parameter_text(flow_name: str, param: Parameter, value: Any) -> str:
    """Check a Python value against the parameter's type; return it as CLI text."""
    kind = param.type
    where = f"Parameter '{param.name}' of flow {flow_name}"
    ok = True
    if param.is_file:
        ok = isinstance(value, (str, os.PathLike))
    elif kind is JSONType:
        if isinstance(value, str):
            try:
                json.loads(value)
            except ValueError as exc:
                raise ParameterError(f"{where} expects JSON, got {value!r}: {exc}") from None
            return value
        try:
            return json.dumps(value)
        except TypeError as exc:
            raise ParameterError(f"{where} expects a JSON value, got {value!r}: {exc}") from None
    elif kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif kind is str:
        ok = isinstance(value, str)
    if not ok:
        raise ParameterError(
            f"{where} expects {param.type_name}, got {type(value).__name__} {value!r}."
        )
    if kind is bool:
        return "true" if value else "false"
    return str(value)
