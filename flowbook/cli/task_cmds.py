"""``init``, ``step`` and ``mark-failed``: the commands an orchestrator runs, one task each.

::

    python flow.py [--datastore URL] [--with DECO] init --run-id RUN --task-id TASK
        [--tag T ...] [--<parameter> VALUE ...]
    python flow.py [--datastore URL] [--with DECO] step STEP --run-id RUN --task-id TASK
        --input-paths PATHS [--split-index I] [--retry-count N]
        [--max-user-code-retries M] [--max-num-splits N] [--tag T ...]
    python flow.py [--datastore URL] mark-failed --run-id RUN [--reason TEXT]

Every Argo pod, Step Functions job and Dask task pays for ``python flow.py step`` in
a fresh process, so a command line made of the table's plain options is read here
without click (as :mod:`flowbook.cli.entry` reads ``run``); anything else goes to
click (:mod:`flowbook.cli.flow_cli`), which builds the same commands from the same
table and hands the same settings to :func:`start_task_command`. What the commands
do is :mod:`flowbook.runtime.one_task`; see docs/one_task.md.
"""

from __future__ import annotations

import os

from ..exceptions import FlowbookError
from ..graph import FlowGraph
from ..options import (
    INIT,
    MARK_FAILED,
    STEP,
    TASK_STEP,
)
from .entry import PlainCommand, read_plain

TYPE_CHECKING = False  # typing costs ~6 ms to import; annotations are strings here
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

#: What each command cannot do without (settings key -> option name).
REQUIRED = {
    INIT: ("run_id", "task_id"),
    STEP: ("run_id", "task_id", "input_paths"),
    MARK_FAILED: ("run_id",),
}


#: How each command reads: ``init`` takes the flow's parameters, ``step`` its step.
TASK_SHAPES = {
    INIT: PlainCommand(True),
    STEP: PlainCommand(False, TASK_STEP, required=True),
    MARK_FAILED: PlainCommand(False),
}


def read_plain_task(
    argv: list[str], parameter_names: set[str], environ: Mapping[str, str] | None = None
) -> dict[str, Any] | None:
    """The settings of a plain ``init``/``step``/``mark-failed`` command line, or None
    to leave it to click (help, an unknown option, a value that does not convert)."""
    return read_plain(argv, parameter_names, TASK_SHAPES, environ)


def start_task_command(flow_cls: type, graph: FlowGraph, settings: dict[str, Any]) -> int:
    """Run ``init``, ``step`` or ``mark-failed`` with parsed settings; the exit code."""
    from ..runtime import one_task

    command = settings["command"]
    for key in REQUIRED[command]:
        if settings.get(key) in (None, ""):
            option = "--" + key.replace("_", "-")
            raise FlowbookError(f"Flow {flow_cls.__name__}: {command} needs {option}.")
    if settings["decospecs"]:
        from ..decorators import parse_decospec

        graph.apply_decospecs([parse_decospec(text) for text in settings["decospecs"]])
    quiet = settings["quiet"]
    if command == INIT:
        one_task.init_run(
            flow_cls,
            graph,
            settings["run_id"],
            settings["task_id"],
            given=settings["parameters"],
            datastore_url=settings["datastore"],
            tags=settings["tags"],
            quiet=quiet,
        )
        return 0
    if command == MARK_FAILED:
        one_task.mark_failed(
            graph.name,
            settings["run_id"],
            settings.get("reason"),
            datastore_url=settings["datastore"],
            quiet=quiet,
        )
        return 0
    return one_task.run_step(
        flow_cls,
        graph,
        settings[TASK_STEP],
        settings["run_id"],
        settings["task_id"],
        settings["input_paths"],
        split_index=settings["split_index"],
        retry_count=settings["retry_count"],
        max_user_code_retries=settings["max_user_code_retries"],
        tags=settings["tags"],
        datastore_url=settings["datastore"],
        output_dir=os.environ.get(one_task.OUTPUT_DIR_ENV) or None,
        max_num_splits=settings["max_num_splits"],
        quiet=quiet,
    )
