"""Where ``python flow.py ...`` begins, and the fast way into ``run`` and ``resume``.

The full command line (:mod:`flowbook.cli.flow_cli`) is built with click, which
takes about 35 ms to import on a small machine: half of what a whole three-step run
is allowed to take. ``run`` and ``resume`` are on every run's critical path, so a
command line made only of their plain options (``--name value`` pairs, the
documented flags, a resume step) is read here without importing click. Anything
else, ``--help``, an unknown option, a value that does not convert, any other
command, goes to click, which prints the help or the error; the fast reading never
decides a case differently, it only declines.
"""

from __future__ import annotations

import os
import sys

from ..exceptions import FlowbookError
from ..graph import FlowGraph

TYPE_CHECKING = False  # typing costs ~6 ms to import; annotations are strings here
if TYPE_CHECKING:
    from typing import Any

#: Options before the command: name -> (key, takes a value, value when a flag).
GLOBAL_OPTIONS: dict[str, tuple[str, bool, Any]] = {
    "--datastore": ("datastore", True, None),
    "--with": ("decospecs", True, None),
    "--quiet": ("quiet", False, True),
    "--not-quiet": ("quiet", False, False),
    "--pylint": ("pylint", False, True),
    "--no-pylint": ("pylint", False, False),
}
#: Options of ``run`` and ``resume`` that take a value (besides the parameters).
RUN_OPTIONS = {
    "--max-workers": "max_workers",
    "--max-num-splits": "max_num_splits",
    "--tag": "tags",
    "--run-id-file": "run_id_file",
}
RESUME_OPTIONS = {**RUN_OPTIONS, "--origin-run-id": "origin_run_id"}
INT_OPTIONS = {"max_workers", "max_num_splits"}
REPEATABLE = {"tags", "decospecs"}


def fail(message: str) -> None:
    """Print one error line (red on a terminal) and exit with status 1."""
    if sys.stderr.isatty():
        message = f"\x1b[31m{message}\x1b[0m"
    print(message, file=sys.stderr, flush=True)
    sys.exit(1)


def env_int(name: str, default: int) -> int:
    """``FLOWBOOK_RUN_<name>`` (or ``METAFLOW_RUN_<name>``) as an int; ValueError if bad."""
    value = os.environ.get(f"FLOWBOOK_RUN_{name}") or os.environ.get(f"METAFLOW_RUN_{name}")
    return int(value) if value else default


def read_plain_start(argv: list[str], parameter_names: set[str]) -> dict[str, Any] | None:
    """The settings of a plain ``run``/``resume`` command line, or None to defer to click.

    ``parameter_names`` are the flow's parameter option names (``--alpha`` -> ``alpha``).
    """
    settings: dict[str, Any] = {"decospecs": [], "tags": [], "parameters": {}}
    args = list(argv)
    while args and args[0].startswith("--"):
        name, value = _split(args.pop(0), args)
        spec = GLOBAL_OPTIONS.get(name)
        if spec is None:
            return None
        key, takes_value, flag_value = spec
        if takes_value != (value is not None):
            return None
        _store(settings, key, value if takes_value else flag_value)
    if not args or args[0] not in ("run", "resume"):
        return None
    settings["command"] = command = args.pop(0)
    options = RESUME_OPTIONS if command == "resume" else RUN_OPTIONS
    while args:
        arg = args.pop(0)
        if not arg.startswith("--"):
            if command != "resume" or "step" in settings or arg.startswith("-"):
                return None
            settings["step"] = arg
            continue
        name, value = _split(arg, args)
        if value is None:
            return None
        if name in options:
            key = options[name]
            if key in INT_OPTIONS:
                try:
                    value = int(value)
                except ValueError:
                    return None
            _store(settings, key, value)
        elif name[2:] in parameter_names and name[2:] not in settings["parameters"]:
            settings["parameters"][name[2:]] = value
        else:
            return None
    try:
        settings.setdefault("max_workers", env_int("MAX_WORKERS", 16))
        settings.setdefault("max_num_splits", env_int("MAX_NUM_SPLITS", 100))
    except ValueError:
        return None  # click reports the bad environment value
    return settings


def _split(arg: str, rest: list[str]) -> tuple[str, str | None]:
    """``--name=value`` or ``--name value`` (the value taken from ``rest``) or a flag."""
    if "=" in arg:
        name, _, value = arg.partition("=")
        return name, value
    if arg in GLOBAL_OPTIONS and not GLOBAL_OPTIONS[arg][1]:
        return arg, None
    if rest and not rest[0].startswith("--"):
        return arg, rest.pop(0)
    return arg, None


def _store(settings: dict[str, Any], key: str, value: Any) -> None:
    if key in REPEATABLE:
        settings[key].append(value)
    else:
        settings[key] = value


def start_run(flow_cls: type, graph: FlowGraph, settings: dict[str, Any]) -> bool:
    """Run or resume the flow with parsed settings; True when the run succeeded."""
    from ..decorators import parse_decospec
    from ..parameters import convert_given, flow_parameters, resolve_parameters
    from ..runtime.console import Console
    from ..runtime.launch import run_flow

    if settings["decospecs"]:
        graph.apply_decospecs([parse_decospec(text) for text in settings["decospecs"]])
    flow_name = flow_cls.__name__
    parameters = flow_parameters(flow_cls)
    given = settings["parameters"]
    resume = settings["command"] == "resume"
    if resume:  # only the values given now, checked against the origin run's
        values = convert_given(flow_name, parameters, given)
    else:
        values = resolve_parameters(flow_name, parameters, given)
    outcome = run_flow(
        flow_cls,
        graph,
        values,
        datastore_url=settings.get("datastore"),
        max_workers=settings["max_workers"],
        max_num_splits=settings["max_num_splits"],
        tags=list(settings["tags"]),
        console=Console(quiet=settings.get("quiet", False)),
        resume=resume,
        origin_run_id=settings.get("origin_run_id"),
        resume_step=settings.get("step"),
        run_id_file=settings.get("run_id_file"),
    )
    return outcome.successful


def exit_process(code: int) -> None:
    """End a command-line process: flush, run ``atexit`` handlers, and skip the
    interpreter's teardown of every module (about 10 ms on a small machine, a sixth
    of a short run). Inside IPython (a notebook calling a flow's ``main``) the
    interpreter must live on, so there this is a plain ``sys.exit``."""
    if "IPython" in sys.modules:
        sys.exit(code)
    import atexit

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def main(flow_cls: type, args: list[str] | None = None, graph: FlowGraph | None = None) -> None:
    """Validate the flow, then run its command line; never returns.

    ``graph`` is given when the class's source is not readable here (a flow class
    defined in a notebook and sent to a subprocess by NBRunner).
    """
    argv = sys.argv[1:] if args is None else list(args)
    try:
        graph = graph or FlowGraph.from_flow_class(flow_cls)
        from ..parameters import flow_parameters

        names = {p.name for p in flow_parameters(flow_cls).values()}
        settings = read_plain_start(argv, names)
        if settings is not None:
            exit_process(0 if start_run(flow_cls, graph, settings) else 1)
    except FlowbookError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        fail("Interrupted.")
    from .flow_cli import run_click_cli

    run_click_cli(flow_cls, graph, argv)
