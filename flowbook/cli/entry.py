"""Where ``python flow.py ...`` begins, and the fast way into ``run`` and ``resume``.

The full command line (:mod:`flowbook.cli.flow_cli`) is built with click, which
takes about 35 ms to import on a small machine: half of what a whole three-step run
is allowed to take. ``run`` and ``resume`` are on every run's critical path, so a
command line made only of their plain options (``--name value`` pairs, the
documented flags, a resume step) is read here without importing click. Anything
else, ``--help``, an unknown option, a value that does not convert, any other
command, goes to click, which prints the help or the error; the fast reading never
decides a case differently, it only declines. Both read the options from
:mod:`flowbook.options` and hand the same settings to :func:`start_run`.
"""

from __future__ import annotations

import os
import sys
import warnings  # imported by the interpreter at start-up: costs nothing here

from ..exceptions import FlowbookError, FlowbookWarning
from ..graph import FlowGraph
from ..options import COMMANDS, RESUME, RESUME_STEP, TOP, Option, by_name, defaults
from ..plain import Plain

TYPE_CHECKING = False  # typing costs ~6 ms to import; annotations are strings here
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any, NoReturn


def show_flowbook_warnings() -> None:
    """Print flowbook's own warnings (:class:`FlowbookWarning`) as one line,
    ``Warning: <message>``, on stderr; any other warning as Python prints it.

    Python's format adds the file and line that called ``warnings.warn`` and that
    line's source: noise on a command line, where the message says all there is.
    Installed by the command-line entry points only (a notebook keeps its own);
    installing it twice is harmless."""
    if getattr(warnings.showwarning, "_flowbook", False):
        return
    default = warnings.showwarning

    def showwarning(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: Any = None,
        line: str | None = None,
    ) -> None:
        if not issubclass(category, FlowbookWarning):
            default(message, category, filename, lineno, file, line)
            return
        stream = file if file is not None else sys.stderr
        if stream is None:  # pythonw: nowhere to write
            return
        try:
            stream.write(f"Warning: {message}\n")
            stream.flush()
        except (OSError, ValueError):  # a closed or broken stderr
            pass

    showwarning._flowbook = True  # type: ignore[attr-defined]
    warnings.showwarning = showwarning


def fail(message: str) -> NoReturn:
    """Print one error line (red on a terminal) and exit with status 1."""
    if sys.stderr.isatty():
        message = f"\x1b[31m{message}\x1b[0m"
    print(message, file=sys.stderr, flush=True)
    sys.exit(1)


class PlainCommand(Plain):
    """What the fast reading accepts after a command's name: the flow's parameters
    (``--alpha 0.5``) or not, and one positional argument stored under ``positional``
    (``resume STEP``, ``step STEP``), optional or required."""

    def __init__(
        self, parameters: bool, positional: str | None = None, required: bool = False
    ) -> None:
        self.parameters = parameters
        self.positional = positional
        self.required = required


#: The commands of a run: ``run`` and ``resume [STEP]``.
RUN_COMMANDS = {
    command: PlainCommand(True, RESUME_STEP if command == RESUME else None) for command in COMMANDS
}


def read_plain_start(
    argv: list[str], parameter_names: set[str], environ: Mapping[str, str] | None = None
) -> dict[str, Any] | None:
    """The settings of a plain ``run``/``resume`` command line, or None to defer to click.

    ``parameter_names`` are the flow's parameter option names (``--alpha`` -> ``alpha``).
    The settings are those of :func:`flowbook.options.defaults` with what was given.
    """
    return read_plain(argv, parameter_names, RUN_COMMANDS, environ)


def read_plain(
    argv: list[str],
    parameter_names: set[str],
    commands: dict[str, PlainCommand],
    environ: Mapping[str, str] | None = None,
) -> dict[str, Any] | None:
    """The settings of a command line made of the option table's plain options and one
    of ``commands``, or None to defer to click (help, an unknown option, a value that
    does not convert, a bad environment value): click then says what is wrong."""
    given: dict[str, Any] = {}
    args = list(argv)
    top = by_name(TOP)
    while args and args[0].startswith("--"):
        name, value = _split(args.pop(0), args, top)
        if not _take(given, top.get(name), name, value):
            return None
    if not args or args[0] not in commands:
        return None
    command = args.pop(0)
    shape = commands[command]
    options = by_name(command)
    parameters: dict[str, str] = {}
    positional = None
    while args:
        arg = args.pop(0)
        if not arg.startswith("--"):
            if shape.positional is None or positional is not None or arg.startswith("-"):
                return None
            positional = arg
            continue
        name, value = _split(arg, args, options)
        if name in options:
            if not _take(given, options[name], name, value):
                return None
        elif (
            shape.parameters
            and value is not None
            and name[2:] in parameter_names
            and name[2:] not in parameters
        ):
            parameters[name[2:]] = value
        else:
            return None
    if shape.required and positional is None:
        return None
    try:
        settings = defaults(command, environ)
    except FlowbookError:
        return None  # click reports the bad environment value
    settings.update(given, parameters=parameters)
    if shape.positional is not None:
        settings[shape.positional] = positional
    return settings


def _split(arg: str, rest: list[str], options: dict[str, Option]) -> tuple[str, str | None]:
    """``--name=value`` or ``--name value`` (the value taken from ``rest``) or a flag."""
    if "=" in arg:
        name, _, value = arg.partition("=")
        return name, value
    option = options.get(arg)
    if option is not None and option.is_flag:
        return arg, None
    if rest and not rest[0].startswith("--"):
        return arg, rest.pop(0)
    return arg, None


def _take(given: dict[str, Any], option: Option | None, name: str, value: str | None) -> bool:
    """Store one option's value in ``given``; False when the fast reading must decline."""
    if option is None or option.is_flag != (value is None):
        return False
    if option.is_flag:
        given[option.key] = name == option.name
        return True
    try:
        converted = option.convert(value)
    except FlowbookError:
        return False  # click says what is wrong
    if option.repeatable:
        given.setdefault(option.key, []).append(converted)
    else:
        given[option.key] = converted
    return True


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
    given = given_parameters(flow_name, settings)
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
        console=Console(quiet=settings["quiet"]),
        resume=resume,
        origin_run_id=settings.get("origin_run_id"),
        resume_step=settings.get(RESUME_STEP),
        run_id_file=settings["run_id_file"],
        executor_settings=settings,  # --executor and its options (runtime/launch.py)
        reuse=bool(settings.get("reuse")),
    )
    return outcome.successful


def given_parameters(flow_name: str, settings: Mapping[str, Any]) -> dict[str, str]:
    """The parameter texts given: on the command line and in ``--params-file``."""
    given = dict(settings["parameters"])
    if settings.get("params_file"):
        from ..exceptions import ParameterError
        from ..options import read_params_file

        for name, text in read_params_file(settings["params_file"]).items():
            if name in given:
                raise ParameterError(
                    f"Flow {flow_name}: parameter '{name}' is given twice "
                    f"(--{name} and --params-file)."
                )
            given[name] = text
    return given


def exit_process(code: int) -> NoReturn:
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


def _in_a_live_shell() -> bool:
    """True inside a running IPython shell or kernel (``MyFlow()`` in a cell)."""
    get_ipython = getattr(sys.modules.get("IPython"), "get_ipython", None)
    return get_ipython is not None and get_ipython() is not None


def main(flow_cls: type, args: list[str] | None = None, graph: FlowGraph | None = None) -> None:
    """Validate the flow, then run its command line; never returns.

    ``graph`` is given when the class's source is not readable here (a flow class
    defined in a notebook and sent to a subprocess by NBRunner).
    """
    argv = sys.argv[1:] if args is None else list(args)
    if not _in_a_live_shell():
        show_flowbook_warnings()
    try:
        graph = graph or FlowGraph.from_flow_class(flow_cls)
        from ..parameters import flow_parameters

        names = {p.name for p in flow_parameters(flow_cls).values()}
        settings = read_plain_start(argv, names)
        if settings is not None:
            exit_process(0 if start_run(flow_cls, graph, settings) else 1)
    except FlowbookError as exc:
        fail(str(exc))
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (runtime/launch.py)
        fail(f"Stopped: {exc}." if str(exc) else "Interrupted.")
    from .flow_cli import run_click_cli

    run_click_cli(flow_cls, graph, argv)
