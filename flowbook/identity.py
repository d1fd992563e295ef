"""Who runs a flow: the user's name and the system tags every run records.

Kept apart from the runtime so that the Client API can find the default namespace
(``user:<you>``) without importing the task runtime.
"""

from __future__ import annotations

import os
import sys
import time


def current_user() -> str:
    """``FLOWBOOK_USER``, then ``METAFLOW_USER``, ``USER``, ``USERNAME``, the login name."""
    for var in ("FLOWBOOK_USER", "METAFLOW_USER", "USER", "USERNAME"):
        if os.environ.get(var):
            return os.environ[var]
    try:
        import getpass

        return getpass.getuser()
    except Exception:
        return "unknown"


def system_tags(user: str) -> list[str]:
    """The tags flowbook gives every run (as Metaflow does)."""
    version = sys.version_info
    return [
        f"user:{user}",
        "runtime:dev",
        f"python_version:{version.major}.{version.minor}.{version.micro}",
        f"date:{time.strftime('%Y-%m-%d')}",
    ]
