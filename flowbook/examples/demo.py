"""``make demo``: run an example flow end to end and print its DAG and its results.

The flow runs in a subprocess exactly as a user would run it
(``python counter_branch_helper.py run``) on the default local datastore
(``./.flowbook``); the results are then read back through the Client API.
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
