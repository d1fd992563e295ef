"""flowbook-only notebook workloads: a trivial ``%%step`` cell and a 100-split foreach cell.

Run in the benchmark's virtualenv as ``python notebook_cells.py REPS`` in an empty
directory; prints one JSON object ``{title: [seconds, ...]}``. Each figure is what
the kernel reports for the cell, from the kernel receiving it to its reply
(nbclient's ``iopub.execute_input`` to ``shell.execute_reply`` timestamps), after
one untimed warm-up cell of each kind (the first cell also starts the kernel's
task server).
"""

from __future__ import annotations

import json
import sys
from datetime import datetime

TRIVIAL = "%%step start --next body --foreach items\nself.items = list(range(100))"
FOREACH = "%%step body --next end\nself.value = self.input"
TITLES = {
    TRIVIAL: "notebook: a trivial `%%step` cell (flowbook only)",
    FOREACH: "notebook: a 100-split foreach cell (flowbook only)",
}


def cell_seconds(cell) -> float:
    timing = cell.metadata["execution"]
    start = datetime.fromisoformat(timing["iopub.execute_input"].replace("Z", "+00:00"))
    end = datetime.fromisoformat(timing["shell.execute_reply"].replace("Z", "+00:00"))
    return (end - start).total_seconds()


def main(reps: int) -> None:
    import nbformat
    from nbclient import NotebookClient

    sources = ["%load_ext flowbook", TRIVIAL, FOREACH]  # warm-up
    for _ in range(reps):
        sources += [TRIVIAL, FOREACH]
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(s) for s in sources]
    NotebookClient(nb, kernel_name="python3", timeout=600).execute()
    results: dict[str, list[float]] = {title: [] for title in TITLES.values()}
    for cell in nb.cells[3:]:
        results[TITLES[cell.source]].append(cell_seconds(cell))
    print(json.dumps(results))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5)
