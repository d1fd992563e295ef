"""What every AWS Batch job of a deployed flow runs: the values of the execution
from the job's environment, the code package, the task, the foreach's split count.

``python -m flowbook.deploy.batch --datastore URL --package KEY --sha SHA
[--dynamodb-table TABLE] [--foreach-join-step STEP] -- ARGS...``

1. The state machine passes an execution's values only as environment variables of
   the job (never in its command, which is fixed at deploy time):
   ``FLOWBOOK_SFN_RUN_ID`` -> ``--run-id``, ``FLOWBOOK_SFN_TASK_ID`` -> ``--task-id``,
   ``FLOWBOOK_SFN_INPUT_PATHS`` -> ``--input-paths``, ``FLOWBOOK_SFN_SPLIT_INDEX`` ->
   ``--split-index``, ``FLOWBOOK_SFN_RETRY_COUNT`` -> ``--retry-count``,
   ``FLOWBOOK_SFN_REASON`` -> ``--reason``; with ``--foreach-join-step STEP``,
   ``FLOWBOOK_SFN_FOREACH_OUTPUTS`` (the Map state's result, a JSON list of
   ``{"task-id": ...}``) -> ``--input-paths RUN/STEP/:ID,ID,...``. Each value is one
   argument: no shell sees it.
2. The package is fetched and checked as :mod:`flowbook.deploy.pod` does, and the
   flow runs as a child (``python FLOW_FILE ARGS...``) with ``FLOWBOOK_OUTPUT_DIR`` a
   fresh directory; SIGTERM/SIGINT (Batch stopping the job) are passed to it.
3. ``--dynamodb-table``: after a foreach task succeeded, its split indexes (the
   ``splits`` file of the output directory) are written to the table as
   ``{"pathspec": RUN/STEP/TASK, "for_each_cardinality": {"NS": [...]}}``, which
   the state machine's ``dynamodb:getItem`` state reads for its Map state.

The exit status is the task's.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

from ..exceptions import FlowbookError

#: Environment variable -> the flow command's option.
ENV_OPTIONS = (
    ("FLOWBOOK_SFN_RUN_ID", "--run-id"),
    ("FLOWBOOK_SFN_TASK_ID", "--task-id"),
    ("FLOWBOOK_SFN_INPUT_PATHS", "--input-paths"),
    ("FLOWBOOK_SFN_SPLIT_INDEX", "--split-index"),
    ("FLOWBOOK_SFN_RETRY_COUNT", "--retry-count"),
    ("FLOWBOOK_SFN_REASON", "--reason"),
)
FOREACH_OUTPUTS = "FLOWBOOK_SFN_FOREACH_OUTPUTS"


def parse(argv: list[str]) -> tuple[list[str], dict[str, str], list[str]]:
    """(the pod's own options, this module's options, the flow's arguments)."""
    if "--" not in argv:
        raise FlowbookError("expected '--' before the flow's arguments.")
    split = argv.index("--")
    own, rest = argv[:split], argv[split + 1 :]
    pod_options: list[str] = []
    mine: dict[str, str] = {}
    while own:
        name = own.pop(0)
        if not own:
            raise FlowbookError(f"{name} needs a value.")
        value = own.pop(0)
        if name in ("--dynamodb-table", "--foreach-join-step"):
            if name in mine:
                raise FlowbookError(f"{name} given twice.")
            mine[name] = value
        elif name in ("--datastore", "--package", "--sha"):
            pod_options += [name, value]
        else:
            raise FlowbookError(f"unexpected argument {name!r}.")
    return pod_options, mine, rest


def flow_arguments(rest: list[str], mine: dict[str, str], environ: dict[str, str]) -> list[str]:
    """The flow's arguments with the execution's values from ``environ`` appended."""
    from .pod import foreach_join_paths

    args = list(rest)
    for variable, option in ENV_OPTIONS:
        if variable in environ:
            args += [option, environ[variable]]
    if "--foreach-join-step" in mine:
        run_id = environ.get("FLOWBOOK_SFN_RUN_ID")
        outputs = environ.get(FOREACH_OUTPUTS)
        if not run_id or outputs is None:
            raise FlowbookError(
                f"--foreach-join-step needs FLOWBOOK_SFN_RUN_ID and {FOREACH_OUTPUTS}."
            )
        args += [
            "--input-paths",
            foreach_join_paths(f"{run_id}/{mine['--foreach-join-step']}", outputs),
        ]
    return args


def record_splits(table: str, out_dir: str, environ: dict[str, str], step: str) -> bool:
    """Write a foreach task's split indexes to DynamoDB; False when it wrote none."""
    path = os.path.join(out_dir, "splits")
    if not os.path.exists(path):
        return False
    with open(path) as handle:
        splits = json.load(handle)
    with open(os.path.join(out_dir, "task_id")) as handle:
        task_id = handle.read().strip()
    import boto3  # the image needs boto3 (pip install 'flowbook[aws]')

    pathspec = f"{environ['FLOWBOOK_SFN_RUN_ID']}/{step}/{task_id}"
    boto3.client("dynamodb").put_item(
        TableName=table,
        Item={
            "pathspec": {"S": pathspec},
            "for_each_cardinality": {"NS": [str(int(i)) for i in splits]},
        },
    )
    return True


def _step_of(rest: list[str]) -> str | None:
    """The STEP of ``... step STEP ...`` in the flow's arguments."""
    for index, word in enumerate(rest[:-1]):
        if word == "step":
            return rest[index + 1]
    return None


def main(argv: list[str] | None = None) -> int:
    import tempfile

    from .pod import prepare

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        pod_options, mine, rest = parse(argv)
        args = flow_arguments(rest, mine, dict(os.environ))
        cwd, command, env = prepare([*pod_options, "--", *args])
    except FlowbookError as exc:
        sys.stderr.write(f"flowbook batch job: {exc}\n")
        return 2
    out_dir = env.get("FLOWBOOK_OUTPUT_DIR") or tempfile.mkdtemp(prefix="flowbook-out-")
    os.makedirs(out_dir, exist_ok=True)
    env["FLOWBOOK_OUTPUT_DIR"] = out_dir
    sys.stdout.flush()
    child = subprocess.Popen(command, cwd=cwd, env=env)

    def forward(signum: int, _frame: object) -> None:
        child.send_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, forward)
    code = child.wait()
    if code != 0:
        return code if code > 0 else 128 - code
    table = mine.get("--dynamodb-table")
    step = _step_of(rest)
    if table and step:
        try:
            record_splits(table, out_dir, env, step)
        except Exception as exc:  # any boto3 failure: the job fails, Step Functions retries
            sys.stderr.write(f"flowbook batch job: cannot record the splits in {table}: {exc}\n")
            return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
