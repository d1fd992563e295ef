"""Widgets: the flow panel (DAG, run status, artifacts, logs, resume) for notebooks.

``ui(target)`` opens a panel for a flow name, a pathspec, a Client ``Run`` or
``Flow``; the notebook magics drive live panels while ``%flow run`` executes.
"""

from __future__ import annotations

from typing import Any

from .panel import FlowPanel, graph_of_run
from .state import RunState

__all__ = ["FlowPanel", "RunState", "ui", "panel_for_run", "graph_of_run"]


def panel_for_run(run: Any, on_resume: Any = None) -> FlowPanel:
    return FlowPanel(graph_of_run(run), RunState.from_run(run), run.datastore, on_resume=on_resume)


def ui(target: Any = None, *, datastore: str | None = None) -> FlowPanel:
    """A panel for a flow name (its latest run), a ``Flow/run_id`` pathspec, a Run or a Flow."""
    from .. import client
    from ..exceptions import ClientError

    if isinstance(target, client.Flow):
        target = target.latest_run
    elif isinstance(target, str):
        if "/" in target:
            target = client.Run(target, datastore=datastore, namespace=None)
        else:
            target = client.Flow(target, datastore=datastore).latest_run
    if not isinstance(target, client.Run):
        raise ClientError(
            f"ui() takes a flow name, a run pathspec, a Run or a Flow, not {target!r}."
        )
    return panel_for_run(target)
