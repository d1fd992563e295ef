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

The command line is built from the option table (:mod:`flowbook.options`). A
parameter value that cannot be an argument (longer than ``ARGV_VALUE_LIMIT``
characters, or holding a NUL character) is passed in a ``--params-file`` written in
the run's working directory instead.

Each run owns a working directory (``flowbook-runner-*`` in the temporary
directory) with its output and its id. When the run has ended and is waited for
(a blocking ``run()``/``resume()``, ``wait()``, ``wait_sync()``, leaving its
``with`` block, ``Runner.cleanup()``), its output is read into memory, where
``stdout``, ``stderr`` and ``stream_log`` keep serving it, and the directory is
removed. Directories of runs never waited for are removed when the Python process
exits; a run still going then is stopped first, as ``kill()`` does.
"""

from __future__ import annotations

import asyncio
import atexit
import errno
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
from .names import check_name, check_run_id
from .options import (
    BY_KEY,
    RESUME,
    RESUME_STEP,
    TOP,
    option_args,
    options_for,
    to_argv,
    write_params_file,
)
from .parameters import JSONType, Parameter

#: Parameter values longer than this (in characters) go through ``--params-file``:
#: Linux refuses one argument of 128 KiB or more, and all of them together past ~2 MB.
ARGV_VALUE_LIMIT = 16 * 1024
STREAMS = ("stdout", "stderr")


class ExecutingRun:
    """A run started by a Runner: its process, its output, and its Client ``Run``."""

    def __init__(self, runner: Runner, process: subprocess.Popen, workdir: str) -> None:
        self.runner = runner
        self._process = process
        self._workdir = workdir
        self._run = None
        self._echo: threading.Thread | None = None
        self._lock = threading.Lock()
        #: Once the run has ended and its files are gone: its output and run id.
        self._kept: dict[str, bytes] | None = None

    # --------------------------------------------------------------- context manager
    def __enter__(self) -> ExecutingRun:
        return self

    def __exit__(self, *exc: Any) -> None:
        """Stop the run if it is still going; remove its files (its output stays readable)."""
        if self._process.poll() is None:
            self.kill()
        self._settle()

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
            pathspec = self._read("run_id").decode("utf-8", errors="replace")
            if pathspec:
                from .client import Run

                self._run = Run(pathspec, datastore=self.runner.datastore_url, namespace=None)
        return self._run

    @property
    def stdout(self) -> str:
        return self._read("stdout").decode("utf-8", errors="replace")

    @property
    def stderr(self) -> str:
        return self._read("stderr").decode("utf-8", errors="replace")

    def _read(self, name: str, offset: int = 0) -> bytes:
        """A working file of the run (``stdout``, ``stderr``, ``run_id``) from ``offset``;
        from memory once the run has ended and its files were removed."""
        with self._lock:
            if self._kept is not None:
                return self._kept[name][offset:]
            try:
                with open(os.path.join(self._workdir, name), "rb") as handle:
                    handle.seek(offset)
                    return handle.read()
            except FileNotFoundError:
                return b""

    def _settle(self) -> None:
        """Once the process has ended: keep its output in memory, remove its files."""
        if self._process.poll() is None or self._kept is not None:
            return
        if self._echo is not None and self._echo is not threading.current_thread():
            self._echo.join()
        with self._lock:
            if self._kept is not None:
                return
            kept = {}
            for name in (*STREAMS, "run_id"):
                try:
                    with open(os.path.join(self._workdir, name), "rb") as handle:
                        kept[name] = handle.read()
                except FileNotFoundError:
                    kept[name] = b""
            self._kept = kept
            shutil.rmtree(self._workdir, ignore_errors=True)
        _LIVE.pop(self._workdir, None)

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
        self._settle()
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
        self._settle()
        return self

    async def stream_log(
        self, stream: str, position: int | None = None
    ) -> AsyncIterator[tuple[int, str]]:
        """Yield ``(position, line)`` as the run writes them, until it ends.

        ``position`` is the byte offset just after the line; pass it back to continue
        where an earlier iteration stopped.
        """
        _check_stream(stream)
        offset = position or 0
        partial = b""
        while True:
            finished = self._process.poll() is not None
            data = self._read(stream, offset)
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
                    data = self._read(stream, offsets[stream])
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


#: Run options a Runner also takes once, as keywords of its constructor.
EXECUTOR_KEYS = ("executor", "dask_scheduler", "dask_scheduler_file", "allow_local_datastore")


class Runner:
    """Run a flow file programmatically, as ``python FLOW_FILE ... run`` would.

    ``show_output`` echoes the run's output here; ``quiet`` passes ``--quiet``;
    ``pylint=False`` is ``--no-pylint``; ``decospecs=['retry']`` is ``--with retry``;
    ``env`` adds environment variables; the other top-level options of
    :mod:`flowbook.options` are keywords too (``datastore='s3://...'`` is
    ``--datastore s3://...``). ``run``/``resume`` take the run options by their keys
    (``max_workers=4``, ``tags=[...]``, ``origin_run_id=...``, ``step=...``) and the
    parameters by name.
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
        for name, value in (env or {}).items():
            if "\0" in f"{name}{value}":
                raise FlowbookError(f"Runner: environment variable {name!r} contains a NUL.")
        self.env = dict(os.environ, **(env or {}))
        self.cwd = os.fspath(cwd or os.getcwd())
        if "\0" in self.cwd:
            raise FlowbookError(f"Runner: cwd {self.cwd!r} contains a NUL.")
        #: Where tasks run (``executor="dask"``, ``dask_scheduler=...``): options of
        #: run and resume, given once here for every run of this Runner.
        self.executor_options = {
            key: top_level_options.pop(key) for key in EXECUTOR_KEYS if key in top_level_options
        }
        top = {"quiet": quiet, "pylint": pylint, "decospecs": decospecs, **top_level_options}
        self.top_level = _words(TOP, top)
        self.datastore_url = _datastore_url(top_level_options, self.env, self.cwd)
        self._flow_cls: type | None = None
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
        """Remove the working files of this runner's runs that have ended (their output
        stays readable); runs still going keep theirs."""
        for running in list(self._runs):
            running._settle()
        self._runs = [running for running in self._runs if running._kept is None]

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: Any) -> None:
        """Stop this runner's runs that are still going and remove their files."""
        for running in self._runs:
            if running.returncode is None:
                running.kill()
        self.cleanup()

    # --------------------------------------------------------------- internals
    @property
    def flow_cls(self) -> type:
        if self._flow_cls is None:
            from .loader import load_flow_class

            self._flow_cls = load_flow_class(self.flow_file)
        return self._flow_cls

    def _command(self, command: str, kwargs: dict[str, Any], workdir: str) -> list[str]:
        """The argv of a run: ``python FLOW_FILE [top-level] COMMAND [STEP] [options]``."""
        kwargs = {**self.executor_options, **kwargs}
        words = [command]
        step = kwargs.pop(RESUME_STEP, None) if command == RESUME else None
        if step:
            words.append(check_name(step, "step name"))
        if kwargs.get("origin_run_id") is not None:
            kwargs["origin_run_id"] = check_run_id(str(kwargs["origin_run_id"]))
        keys = {option.key for option in options_for(command) if not option.hidden}
        words += _words(command, {key: kwargs.pop(key) for key in list(kwargs) if key in keys})
        in_argv, in_file = self._parameter_args(kwargs)
        words += in_argv
        if in_file:
            path = os.path.join(workdir, "parameters.json")
            write_params_file(path, in_file)
            words += option_args(BY_KEY["params_file"], path)
        words += option_args(BY_KEY["run_id_file"], os.path.join(workdir, "run_id"))
        return [sys.executable, self.flow_file, *self.top_level, *words]

    def _parameter_args(self, values: dict[str, Any]) -> tuple[list[str], dict[str, str]]:
        """(``--name text`` words, {name: text} of values that cannot be arguments)."""
        from .parameters import flow_parameters

        flow = self.flow_cls
        parameters = flow_parameters(flow)
        by_key: dict[str, Parameter] = {}
        param: Parameter | None  # each parameter below; then the one a key names, or None
        for attr, param in parameters.items():
            by_key[param.name.replace("-", "_")] = param
            by_key[attr] = param
        words: list[str] = []
        in_file: dict[str, str] = {}
        for key, value in values.items():
            param = by_key.get(key)
            if param is None:
                known = ", ".join(p.name for p in parameters.values()) or "none"
                raise ParameterError(
                    f"Flow {flow.__name__} has no parameter '{key}' (its parameters: {known})."
                )
            text = _parameter_text(flow.__name__, param, value)
            if "\0" in text or len(text) > ARGV_VALUE_LIMIT:
                in_file[param.name] = text
            else:
                words += [f"--{param.name}", text]
        return words, in_file

    def _start(self, command: str, kwargs: dict[str, Any]) -> ExecutingRun:
        self._runs = [running for running in self._runs if running._kept is None]
        workdir = tempfile.mkdtemp(prefix="flowbook-runner-")
        cmd: list[str] = []
        try:
            cmd = self._command(command, kwargs, workdir)
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
        except BaseException as exc:
            shutil.rmtree(workdir, ignore_errors=True)
            if isinstance(exc, OSError):
                raise self._start_error(exc, cmd) from None
            raise
        _remember(workdir, process)
        running = ExecutingRun(self, process, workdir)
        self._runs.append(running)
        if self.show_output:
            running._start_echo()
        return running

    def _start_error(self, exc: OSError, cmd: list[str]) -> FlowbookError:
        flow = os.path.basename(self.flow_file)
        if exc.errno == errno.E2BIG:
            size = sum(len(word) + 1 for word in cmd)
            size += sum(len(k) + len(v) + 2 for k, v in self.env.items())
            return FlowbookError(
                f"Runner: cannot start {flow}: its command line and environment are too "
                f"long ({size} bytes); pass fewer or shorter options or variables."
            )
        where = f" ({exc.filename})" if exc.filename else ""
        return FlowbookError(f"Runner: cannot start {flow}: {exc.strerror or exc}{where}.")

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
        _remember(self._dir, None)  # removed by cleanup(), else when the process exits
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
        """Remove the flow's files and those of its runs that have ended."""
        self.runner.cleanup()
        shutil.rmtree(self._dir, ignore_errors=True)
        _LIVE.pop(self._dir, None)

    def __enter__(self) -> NBRunner:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.runner.__exit__(*exc)
        self.cleanup()


_NB_FLOW_TEMPLATE = """\
# Written by flowbook's NBRunner: runs a FlowSpec class sent from a notebook.
import cloudpickle

from flowbook.cli.entry import main

if __name__ == "__main__":
    with open({pickled!r}, "rb") as handle:
        flow_cls, graph = cloudpickle.load(handle)
    main(flow_cls, graph=graph)
"""


# ------------------------------------------------------------------- helpers
def _check_stream(stream: str) -> None:
    if stream not in STREAMS:
        raise ValueError(f"stream must be 'stdout' or 'stderr', not {stream!r}")


def _words(command: str, values: dict[str, Any]) -> list[str]:
    """The option words of ``command`` from keyword values, as a Runner error."""
    try:
        return to_argv(command, values)
    except FlowbookError as exc:
        raise FlowbookError(f"Runner: {exc}") from None


#: Working directories of runs not waited for yet (with their processes, None for an
#: NBRunner's directory): removed at exit.
_LIVE: dict[str, subprocess.Popen | None] = {}
_AT_EXIT: list[bool] = []  # [True] once the exit handler is registered


def _remember(workdir: str, process: subprocess.Popen | None) -> None:
    if not _AT_EXIT:
        atexit.register(_remove_at_exit)
        _AT_EXIT.append(True)
    _LIVE[workdir] = process


def _remove_at_exit() -> None:
    """At the end of the process: stop the runs still going, remove every working dir."""
    for workdir, process in list(_LIVE.items()):
        if process is not None and process.poll() is None:
            process.send_signal(2)  # SIGINT: the scheduler's clean stop
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(workdir, ignore_errors=True)
    _LIVE.clear()


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
