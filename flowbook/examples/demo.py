"""``make demo``: run an example flow and an example notebook end to end, print DAGs and results.

The flow runs in a subprocess exactly as a user would run it
(``python counter_branch_helper.py run``) on the default local datastore
(``./.flowbook``); the notebook (given as the first argument) is executed top to
bottom by papermill in a real kernel, its ``%%step`` cells running as tasks. The
results of both are then read back through the Client API.
"""

from __future__ import annotations

import os
import subprocess
import sys

from flowbook import Flow, namespace
from flowbook.cli.inspect_cmds import short_repr

EXAMPLES = os.path.dirname(os.path.abspath(__file__))
FLOW_FILE = os.path.join(EXAMPLES, "counter_branch_helper.py")
FLOW_NAME = "CounterBranchHelperFlow"


def main() -> int:
    print(f"== The DAG of {FLOW_NAME} (python {os.path.basename(FLOW_FILE)} show)\n")
    subprocess.run([sys.executable, FLOW_FILE, "show"], check=True)
    print(f"\n== Running it (python {os.path.basename(FLOW_FILE)} run)\n")
    result = subprocess.run([sys.executable, FLOW_FILE, "run"])
    if result.returncode != 0:
        return result.returncode
    namespace(None)
    run = Flow(FLOW_NAME).latest_run
    print(f"\n== Results of {run.pathspec}, read with the Client API\n")
    print(f"successful: {run.successful}")
    for step in reversed(list(run)):
        for task in step:
            values = ", ".join(
                f"{a.id}={short_repr(a.data, 30)}" for a in sorted(task, key=lambda a: a.id)
            )
            print(f"  {task.pathspec:<50} {values}")
    print(f"\nrun.data.count = {run.data.count}, run.data.creature = {run.data.creature!r}")
    if len(sys.argv) > 1:
        return run_notebook(sys.argv[1])
    return 0


def run_notebook(path: str) -> int:
    import tempfile

    import nbformat

    print(f"\n== The DAG of notebook {path} (flowbook show {path})\n")
    subprocess.run([sys.executable, "-m", "flowbook", "show", path], check=True)
    output = os.path.join(tempfile.mkdtemp(prefix="flowbook-demo-"), os.path.basename(path))
    print(f"\n== Executing it with papermill (output: {output})\n")
    result = subprocess.run(
        [sys.executable, "-m", "papermill", "--no-progress-bar", path, output],
        cwd=os.getcwd(),
    )
    if result.returncode != 0:
        return result.returncode
    for cell in nbformat.read(output, as_version=4).cells:
        if cell.cell_type != "code":
            continue
        print(f">>> {cell.source.splitlines()[0] if cell.source else ''}")
        for out in cell.get("outputs", []):
            text = out.get("text") or out.get("data", {}).get("text/plain", "")
            if text:
                print("    " + str(text).rstrip().replace("\n", "\n    "))
    run = Flow("CounterBranchFlow").latest_run
    print(f"\n== {run.pathspec} (from the notebook's %flow run): successful={run.successful}")
    print(f"run.data.count = {run.data.count}, run.data.creature = {run.data.creature!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
