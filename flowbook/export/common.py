"""What every orchestrator's compiler shares: a deployment's settings and how a
parameter's value is written for an orchestrator (as text, as on the command line)."""

from __future__ import annotations

import json
from typing import Any

from ..exceptions import FlowbookError

#: How many tasks of a deployed run run at once unless --max-workers says (as Metaflow).
DEFAULT_MAX_WORKERS = 100


class DeploySettings:
    """What a deployment needs besides the flow, whatever runs it: the shared
    datastore, the code package (its key and SHA-256), how many tasks run at once,
    ``--with`` decorators, tags for every run, and extra environment for the tasks."""

    def __init__(
        self,
        datastore: str,
        package_key: str,
        package_sha: str,
        max_workers: int = DEFAULT_MAX_WORKERS,
        decospecs: list[str] | None = None,
        tags: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        if max_workers < 1:
            raise FlowbookError(f"--max-workers must be at least 1, got {max_workers}.")
        self.datastore = datastore
        self.package_key = package_key
        self.package_sha = package_sha
        self.max_workers = max_workers
        self.decospecs = list(decospecs or [])
        self.tags = list(tags or [])
        self.env = dict(env or {})


def parameter_text(value: Any, is_json: bool) -> str:
    """A parameter's value as an orchestrator passes it (text, as on the command line)."""
    if is_json and not isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
