"""What every deployed pod runs first: fetch the code package, then the task.

``python -m flowbook.deploy.pod --datastore URL --package KEY --sha SHA
[--foreach-join RUN/STEP OUTPUTS] -- ARGS...``

1. reads ``KEY`` from the datastore and checks its SHA-256;
2. unpacks it into ``$FLOWBOOK_PACKAGE_DIR/<sha>`` (default: the temporary
   directory), once per machine;
3. ``--foreach-join``: OUTPUTS is what Argo gives for a fanned-out task's outputs
   (a JSON list of ``{"task-id": ...}`` maps, one per split); they become
   ``--input-paths RUN/STEP/:ID,ID,...`` for the join;
4. replaces itself (``exec``, no shell) with ``python FLOW_FILE ARGS...`` in the
   package's directory, the package's flowbook first on ``PYTHONPATH``.

Every value arrives as one argument and leaves as one argument: nothing is ever
interpreted by a shell.
"""

from __future__ import annotations

import os
import sys

from ..exceptions import FlowbookError

TYPE_CHECKING = False  # typing costs ~6 ms to import; annotations are strings here
if TYPE_CHECKING:
    from typing import Any


def _fail(message: str) -> None:
    sys.stderr.write(f"flowbook pod: {message}\n")
    sys.exit(2)


def parse(argv: list[str]) -> tuple[dict[str, Any], list[str]]:
    """(options, the flow's arguments) of the pod's command line: each option's
    value, a list of them for ``--foreach-join`` (it takes two)."""
    if "--" not in argv:
        raise FlowbookError("expected '--' before the flow's arguments.")
    split = argv.index("--")
    own, rest = argv[:split], argv[split + 1 :]
    options: dict[str, Any] = {}
    arity = {"--datastore": 1, "--package": 1, "--sha": 1, "--foreach-join": 2}
    while own:
        name = own.pop(0)
        if name not in arity or name in options:
            raise FlowbookError(f"unexpected argument {name!r}.")
        if len(own) < arity[name]:
            raise FlowbookError(f"{name} needs {arity[name]} value(s).")
        values = [own.pop(0) for _ in range(arity[name])]
        options[name] = values[0] if arity[name] == 1 else values
    for name in ("--datastore", "--package", "--sha"):
        if name not in options:
            raise FlowbookError(f"{name} is required.")
    return options, rest


def foreach_join_paths(prefix: str, outputs: str) -> str:
    """``RUN/STEP/:ID,ID`` from Argo's outputs of a fanned-out task."""
    import json

    try:
        items = json.loads(outputs)
    except ValueError:
        raise FlowbookError(f"--foreach-join: {outputs[:80]!r} is not JSON.") from None
    if not isinstance(items, list) or not items:
        raise FlowbookError(f"--foreach-join: expected a non-empty list, got {outputs[:80]!r}.")
    ids = []
    for item in items:
        if isinstance(item, str):
            try:
                item = json.loads(item)
            except ValueError:
                ids.append(item)
                continue
        if isinstance(item, dict) and isinstance(item.get("task-id"), str):
            ids.append(item["task-id"])
        elif isinstance(item, str):
            ids.append(item)
        else:
            raise FlowbookError(f"--foreach-join: no task id in {item!r}.")
    return f"{prefix}/:{','.join(ids)}"


def prepare(argv: list[str]) -> tuple[str, list[str], dict[str, str]]:
    """(working directory, the command, its environment) for the task."""
    import tempfile

    from ..datastore import open_storage
    from .package import unpack

    options, rest = parse(argv)
    storage = open_storage(options["--datastore"])
    try:
        data = storage.read_bytes(options["--package"])
    except Exception as exc:  # every backend fails differently
        raise FlowbookError(
            f"cannot read the code package {options['--package']} from "
            f"{options['--datastore']}: {exc}"
        ) from None
    base = os.environ.get("FLOWBOOK_PACKAGE_DIR") or os.path.join(
        tempfile.gettempdir(), "flowbook-packages"
    )
    directory = os.path.join(base, options["--sha"])
    manifest = unpack(data, options["--sha"], directory)
    if "--foreach-join" in options:
        prefix, outputs = options["--foreach-join"]
        rest = [*rest, "--input-paths", foreach_join_paths(prefix, outputs)]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [directory, env.get("PYTHONPATH")]))
    flow_dir = os.path.join(directory, "flow")
    command = [sys.executable, os.path.join(flow_dir, manifest["flow_file"]), *rest]
    return flow_dir, command, env


def main(argv: list[str] | None = None) -> None:
    try:
        cwd, command, env = prepare(list(sys.argv[1:] if argv is None else argv))
    except FlowbookError as exc:
        _fail(str(exc))
        return
    os.chdir(cwd)
    sys.stdout.flush()
    os.execve(command[0], command, env)


if __name__ == "__main__":
    main()
