"""The options of a flow's command line, defined once for every face over it.

``python flow.py [TOP-LEVEL OPTIONS] run|resume [OPTIONS] [--<parameter> VALUE ...]``
is the one command line; everything else is a face over it and reads this table:

- the fast reading of a plain ``run``/``resume`` (:mod:`flowbook.cli.entry`),
- the click command line (:mod:`flowbook.cli.flow_cli`) and the ``flowbook``
  program (:mod:`flowbook.cli.main`),
- the Runner, which builds the command line from keywords (:mod:`flowbook.runner`),
- ``%flow run`` and ``%flow resume`` in a notebook (:mod:`flowbook.notebook.magics`),
- the runtime, which takes its defaults from here (``DEFAULT_MAX_WORKERS``, ...),
- the orchestrators' commands ``init``, ``step`` and ``mark-failed``
  (:mod:`flowbook.cli.task_cmds`, docs/one_task.md), read without click as well.

Each face turns its input into the same *settings*: a dict with one key per option
of the command (``Option.key``), plus ``command``, ``parameters`` (parameter name ->
text, as given) and, for ``resume`` and ``step``, ``step``. :func:`defaults` is what nothing was
given. This module is on the run path: it imports nothing beyond what a run has
already loaded (no click, json, re or typing).
"""

from __future__ import annotations

import os

from .exceptions import FlowbookError
from .plain import Plain

TYPE_CHECKING = False  # typing costs ~6 ms to import; annotations are strings here
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

#: How many tasks run at once unless ``--max-workers`` says otherwise.
DEFAULT_MAX_WORKERS = 16
#: The most splits one foreach may make unless ``--max-num-splits`` says otherwise.
DEFAULT_MAX_NUM_SPLITS = 100

#: Where an option goes: before the command (``TOP``), or after ``run``/``resume``.
TOP = "top"
RUN = "run"
RESUME = "resume"
COMMANDS = (RUN, RESUME)
#: ``resume``'s one argument, the step to run again (a settings key and a Runner keyword).
RESUME_STEP = "step"
#: The commands an orchestrator runs, one task each (see docs/one_task.md).
INIT = "init"
STEP = "step"
MARK_FAILED = "mark-failed"
TASK_COMMANDS = (INIT, STEP, MARK_FAILED)
#: ``step``'s one argument, the step whose task to run (the same settings key as resume's).
TASK_STEP = RESUME_STEP


class Option(Plain):
    """One option of the command line.

    ``kind`` is ``str``, ``int`` or ``bool`` (a flag: ``name`` sets True, ``negative``
    sets False). ``env`` names the environment variables that give the default, first
    found wins. ``repeatable`` options collect a list. ``notebook`` options are also
    understood by ``%flow run``/``%flow resume``. ``hidden`` options are written by
    flowbook itself (the Runner) and not shown in ``--help``.
    """

    def __init__(
        self,
        name: str,
        key: str,
        kind: type = str,
        default: Any = None,
        *,
        commands: tuple[str, ...] = COMMANDS,
        env: tuple[str, ...] = (),
        repeatable: bool = False,
        negative: str | None = None,
        help: str = "",  # noqa: A002
        metavar: str | None = None,
        notebook: bool = False,
        hidden: bool = False,
    ) -> None:
        self.name = name
        self.key = key
        self.kind = kind
        self.default = default
        self.commands = commands
        self.env = env
        self.repeatable = repeatable
        self.negative = negative
        self.help = help
        self.metavar = metavar
        self.notebook = notebook
        self.hidden = hidden

    @property
    def is_flag(self) -> bool:
        return self.kind is bool

    @property
    def names(self) -> tuple[str, ...]:
        """Every spelling on the command line (a flag's two)."""
        return (self.name, self.negative) if self.negative else (self.name,)

    def convert(self, text: Any) -> Any:
        """A value given on a command line (text) as the option's kind."""
        if self.kind is int and not isinstance(text, int):
            try:
                return int(text)
            except ValueError:
                raise FlowbookError(f"{self.name}: {text!r} is not an integer.") from None
        return text


OPTIONS: tuple[Option, ...] = (
    Option(
        "--datastore",
        "datastore",
        commands=(TOP,),
        metavar="URL",
        help="Where runs are stored: a directory or an fsspec URL "
        "(default: $FLOWBOOK_DATASTORE, else ./.flowbook).",
    ),
    Option(
        "--with",
        "decospecs",
        commands=(TOP,),
        repeatable=True,
        metavar="DECORATOR",
        help="Add a decorator to every step that does not have it, e.g. "
        "--with retry or --with retry:times=2 (repeatable).",
    ),
    Option(
        "--quiet",
        "quiet",
        bool,
        False,
        commands=(TOP,),
        negative="--not-quiet",
        notebook=True,
        help="Show only the tasks' own output and errors.",
    ),
    Option(
        "--pylint",
        "pylint",
        bool,
        True,
        commands=(TOP,),
        negative="--no-pylint",
        help="Accepted for Metaflow compatibility; flowbook runs no linter.",
    ),
    Option(
        "--max-workers",
        "max_workers",
        int,
        DEFAULT_MAX_WORKERS,
        env=("FLOWBOOK_RUN_MAX_WORKERS", "METAFLOW_RUN_MAX_WORKERS"),
        notebook=True,
        help="How many tasks run at once",
    ),
    Option(
        "--max-num-splits",
        "max_num_splits",
        int,
        DEFAULT_MAX_NUM_SPLITS,
        commands=(RUN, RESUME, STEP),
        env=("FLOWBOOK_RUN_MAX_NUM_SPLITS", "METAFLOW_RUN_MAX_NUM_SPLITS"),
        notebook=True,
        help="The most splits one foreach may make",
    ),
    Option(
        "--tag",
        "tags",
        commands=(RUN, RESUME, INIT, STEP),
        repeatable=True,
        notebook=True,
        metavar="TAG",
        help="A tag for the run (repeatable).",
    ),
    Option(
        "--origin-run-id",
        "origin_run_id",
        commands=(RESUME,),
        notebook=True,
        metavar="RUN_ID",
        help="The run to resume (default: your latest run of this flow).",
    ),
    Option(
        "--reuse",
        "reuse",
        bool,
        False,
        negative="--no-reuse",
        env=("FLOWBOOK_RUN_REUSE",),
        notebook=True,
        help="Reuse the result of an earlier task of this flow instead of running a task "
        "when its code, the inputs it read and its parameters are the same; say why "
        "each step runs (docs/reuse.md)",
    ),
    Option(
        "--run-id",
        "run_id",
        commands=TASK_COMMANDS,
        metavar="RUN_ID",
        help="The run, with an id the orchestrator chose (letters, digits, '_', '-').",
    ),
    Option(
        "--task-id",
        "task_id",
        commands=(INIT, STEP),
        metavar="TASK_ID",
        help="The task, with an id the orchestrator chose, unique within the run.",
    ),
    Option(
        "--input-paths",
        "input_paths",
        commands=(STEP,),
        metavar="PATHS",
        help="The task's inputs: RUN_ID/STEP/TASK_ID,... or RUN_ID/STEP/:TASK_ID,TASK_ID "
        "(for the start step, the parameters task RUN_ID/_parameters/TASK_ID).",
    ),
    Option(
        "--split-index",
        "split_index",
        int,
        commands=(STEP,),
        metavar="INDEX",
        help="The task's split, when its input is a foreach step's task.",
    ),
    Option(
        "--retry-count",
        "retry_count",
        int,
        0,
        commands=(STEP,),
        metavar="N",
        help="Which attempt this is (0 for the first).",
    ),
    Option(
        "--max-user-code-retries",
        "max_user_code_retries",
        int,
        commands=(STEP,),
        metavar="N",
        help="How many retries the task has in all (default: the step's @retry); after "
        "the last one a failure marks the run failed.",
    ),
    Option(
        "--reason",
        "reason",
        commands=(MARK_FAILED,),
        metavar="TEXT",
        help="Why the run failed, as the run's status will say.",
    ),
    Option(
        "--executor",
        "executor",
        default="local",
        env=("FLOWBOOK_EXECUTOR",),
        metavar="local|dask",
        help="Where tasks run: local (processes of this machine) or dask (a Dask "
        "cluster: --dask-scheduler, else a local one started for the run)",
        notebook=True,
    ),
    Option(
        "--dask-scheduler",
        "dask_scheduler",
        env=("FLOWBOOK_DASK_SCHEDULER",),
        metavar="ADDRESS",
        help="The Dask scheduler for --executor dask (tcp://host:8786, or a scheduler file)",
        notebook=True,
    ),
    Option(
        "--dask-scheduler-file",
        "dask_scheduler_file",
        metavar="FILE",
        help="The Dask scheduler's scheduler file, for --executor dask.",
        notebook=True,
    ),
    Option(
        "--allow-local-datastore",
        "allow_local_datastore",
        bool,
        False,
        negative="--no-allow-local-datastore",
        help="With --executor dask, use a local datastore directory even when workers "
        "run on other hosts (the directory is shared with them).",
        notebook=True,
    ),
    Option(
        "--run-id-file",
        "run_id_file",
        hidden=True,
        help="Write FLOW/RUN_ID of the new run to this file once it exists (the Runner).",
    ),
    Option(
        "--params-file",
        "params_file",
        hidden=True,
        help="Parameter values from a JSON object {name: text} in this file, as if given "
        "as --name text (the Runner passes values too long for argv, or with a NUL).",
    ),
)

BY_KEY: dict[str, Option] = {option.key: option for option in OPTIONS}


def options_for(command: str) -> list[Option]:
    """The options of ``command`` (``TOP``, ``RUN``, ``RESUME`` or one of
    ``TASK_COMMANDS``), in table order."""
    return [option for option in OPTIONS if command in option.commands]


def by_name(command: str) -> dict[str, Option]:
    """Every spelling of ``command``'s options -> its option."""
    return {name: option for option in options_for(command) for name in option.names}


def env_default(option: Option, environ: Mapping[str, str] | None = None) -> Any:
    """The option's default: from the first of its environment variables that is set,
    else the table's. FlowbookError naming the variable if its value does not convert."""
    environ = os.environ if environ is None else environ
    for variable in option.env:
        text = environ.get(variable)
        if text and option.is_flag:
            return flag_value(variable, text)
        if text:
            try:
                return option.kind(text)
            except ValueError:
                raise FlowbookError(
                    f"{variable}={text!r} is not an integer (it sets {option.name})."
                ) from None
    return [] if option.repeatable else option.default


def flag_value(variable: str, text: str) -> bool:
    """The flag an environment variable's text sets; FlowbookError naming it if the
    text is no boolean (the words a boolean parameter takes)."""
    from .parameters import FALSE_TEXTS, TRUE_TEXTS

    word = text.strip().lower()
    if word in TRUE_TEXTS:
        return True
    if word in FALSE_TEXTS:
        return False
    raise FlowbookError(f"{variable}={text!r}: expected 1 or 0 (true or false).")


def defaults(command: str, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The settings of ``python flow.py COMMAND`` with nothing given."""
    settings: dict[str, Any] = {"command": command, "parameters": {}}
    if command in (RESUME, STEP):
        settings[RESUME_STEP] = None
    for option in (*options_for(TOP), *options_for(command)):
        settings[option.key] = env_default(option, environ)
    return settings


def option_args(option: Option, value: Any) -> list[str]:
    """The command-line words that give ``option`` the Python ``value`` ([] for None).

    FlowbookError naming the option when the value has the wrong type or cannot be
    passed in an argument (a NUL character).
    """
    if value is None:
        return []
    if option.is_flag:
        if not isinstance(value, bool):
            raise FlowbookError(f"{option.name}: expected True or False, got {value!r}.")
        if value == option.default:
            return []
        if TYPE_CHECKING:  # every flag option has its negative spelling
            assert option.negative is not None
        return [option.name if value else option.negative]
    values = value if option.repeatable and isinstance(value, (list, tuple, set)) else [value]
    words: list[str] = []
    for item in values:
        if option.kind is int and (not isinstance(item, int) or isinstance(item, bool)):
            raise FlowbookError(f"{option.name}: expected an integer, got {item!r}.")
        if option.kind is str and (
            not isinstance(item, (str, int, float, os.PathLike)) or isinstance(item, bool)
        ):
            raise FlowbookError(f"{option.name}: expected a string, got {item!r}.")
        text = os.fspath(item) if isinstance(item, os.PathLike) else str(item)
        if "\0" in text:
            raise FlowbookError(f"{option.name}: the value {_cut(text)} contains a NUL character.")
        words += [option.name, text]
    return words


def to_argv(command: str, values: Mapping[str, Any]) -> list[str]:
    """The words for ``command``'s options (``TOP``, ``RUN``, ``RESUME``) from values by key.

    Values equal to a flag's default and None values give no words. FlowbookError for
    a key that is not an option of ``command``.
    """
    table = {option.key: option for option in options_for(command)}
    unknown = [key for key in values if key not in table]
    if unknown:
        known = ", ".join(key for key, option in table.items() if not option.hidden)
        raise FlowbookError(f"unknown option {unknown[0]!r} (options: {known}).")
    words: list[str] = []
    for key, option in table.items():
        if key in values:
            words += option_args(option, values[key])
    return words


def _cut(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def write_params_file(path: str, values: Mapping[str, str]) -> None:
    """Write parameter texts (name -> text) for ``--params-file``."""
    from . import jsonio

    with open(path, "w", encoding="utf-8") as handle:
        handle.write(jsonio.dumps(dict(values)))


def read_params_file(path: str) -> dict[str, str]:
    """The parameter texts of a ``--params-file``; FlowbookError naming the file if bad."""
    from . import jsonio

    try:
        with open(path, encoding="utf-8") as handle:
            values = jsonio.loads(handle.read())
    except (OSError, ValueError) as exc:
        raise FlowbookError(f"--params-file {path}: cannot read it ({exc}).") from None
    if not isinstance(values, dict) or not all(isinstance(v, str) for v in values.values()):
        raise FlowbookError(
            f"--params-file {path}: expected a JSON object of parameter name -> text."
        )
    return values
