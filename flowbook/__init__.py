"""flowbook: Jupyter-first, Metaflow-style workflows.

The public names are Metaflow's, so a flow written for Metaflow runs with only its
import changed. They are loaded on first use, which keeps ``import flowbook`` (and
therefore every task process and the kernel extension) fast.
"""

from __future__ import annotations

import importlib

TYPE_CHECKING = False  # typing costs ~6 ms to import; annotations are strings here
if TYPE_CHECKING:
    from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "FlowSpec": "flowbook.flowspec",
    "step": "flowbook.flowspec",
    "Parameter": "flowbook.parameters",
    "JSONType": "flowbook.parameters",
    "IncludeFile": "flowbook.parameters",
    "current": "flowbook.current_task",
    "Metaflow": "flowbook.client",
    "Flow": "flowbook.client",
    "Run": "flowbook.client",
    "Step": "flowbook.client",
    "Task": "flowbook.client",
    "DataArtifact": "flowbook.client",
    "namespace": "flowbook.client",
    "get_namespace": "flowbook.client",
    "default_namespace": "flowbook.client",
    "Runner": "flowbook.runner",
    "NBRunner": "flowbook.runner",
    "ExecutingRun": "flowbook.runner",
    "ui": "flowbook.widgets",
    "FlowbookError": "flowbook.exceptions",
    "StepException": "flowbook.exceptions",
    "retry": "flowbook.decorators",
    "catch": "flowbook.decorators",
    "timeout": "flowbook.decorators",
    "resources": "flowbook.decorators",
    "reuse": "flowbook.decorators",
    "schedule": "flowbook.decorators",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'flowbook' has no attribute '{name}'")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def load_ipython_extension(shell: Any) -> None:
    """``%load_ext flowbook``: the %%step, %%setup, %%parameters and %flow magics."""
    from .notebook.magics import load_ipython_extension as load

    load(shell)


def unload_ipython_extension(shell: Any) -> None:
    from .notebook.magics import unload_ipython_extension as unload

    unload(shell)


def __dir__() -> list[str]:
    return __all__
