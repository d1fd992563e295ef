"""Load a flow class from a Python file: what the ``flowbook`` program, the Runner and
the task server (``FLOWBOOK_START_METHOD=spawn``) share.

It sits below the command line and the runtime, so that neither imports the other.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys


def load_flow_class(path: str, flow_name: str | None = None) -> type:
    """Import a Python file and return the FlowSpec subclass it defines.

    ``flow_name`` picks one class when the file defines several. FlowbookError when
    the file does not exist or does not define exactly one (matching) FlowSpec class.
    """
    from .exceptions import FlowbookError
    from .flowspec import FlowSpec

    path = os.path.abspath(path)
    if not os.path.isfile(path):
        raise FlowbookError(f"No such flow file: {path}")
    module_name = os.path.splitext(os.path.basename(path))[0]
    sys.path.insert(0, os.path.dirname(path))
    # a loader named outright: Python source whatever the file's suffix (`myflow`
    # runs as `python myflow` would run it)
    loader = importlib.machinery.SourceFileLoader(module_name, path)
    spec = importlib.util.spec_from_file_location(module_name, path, loader=loader)
    if spec is None:
        raise FlowbookError(f"Cannot load {path} as a Python flow file.")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    loader.exec_module(module)
    flows = [
        value
        for value in vars(module).values()
        if isinstance(value, type)
        and issubclass(value, FlowSpec)
        and value is not FlowSpec
        and value.__module__ == module_name
    ]
    if flow_name:
        flows = [f for f in flows if f.__name__ == flow_name]
    if len(flows) != 1:
        names = ", ".join(f.__name__ for f in flows) or "none"
        raise FlowbookError(f"{path} must define exactly one FlowSpec subclass (found: {names}).")
    return flows[0]
