"""Pickle an artifact: the standard pickler when it can, cloudpickle when it must.

Artifacts must survive outside the program that made them: a class or function
defined in the flow file (``__main__``) or in a notebook cell has to travel *by
value*, which is what cloudpickle does. But cloudpickle takes about 20 ms to import
on a small machine, and most artifacts (numbers, strings, lists, dicts, arrays,
objects of installed libraries) need nothing of it. So the standard pickler runs
first, with a hook that stops at the first class or function that could only be
pickled by reference to a module another process cannot import; that value, or any
value the standard pickler cannot handle at all (a lambda, a local function), is
pickled again by cloudpickle. Both write the same protocol 5 stream, which the
standard ``pickle.loads`` reads (importing cloudpickle only when the stream needs it).

Code sent to run elsewhere (a notebook's flow class, NBRunner's class) goes through
``dumps_code``: cloudpickle, but each code object travels as its ``marshal`` form, so
it keeps its file name (cloudpickle 3.1.3 replaced it with ``<dynamic-code>``) and a
traceback from the other process still points at the cell it came from.
"""

from __future__ import annotations

import io
import marshal
import sys
import types
from collections.abc import Callable

TYPE_CHECKING = False  # typing costs ~6 ms to import; annotations are strings here
if TYPE_CHECKING:
    from typing import Any

if TYPE_CHECKING:  # (one name for the checker: the fallback is the same API)
    import _pickle as cpickle
else:
    try:  # the C pickler that pickle.py wraps: pickle.py itself imports re, ~5 ms here
        import _pickle as cpickle
    except ImportError:  # pragma: no cover - not CPython
        import pickle as cpickle

PROTOCOL = 5


class _NeedsValue(Exception):
    """Raised inside the standard pickler: this object must travel by value."""


def _importable_elsewhere(obj: Any) -> bool:
    """Whether another process can find ``obj`` (a class or function) by its name."""
    module_name = getattr(obj, "__module__", None)
    if not module_name or module_name == "__main__":
        return False
    module = sys.modules.get(module_name)
    if module is None or getattr(module, "__file__", None) is None:
        return False  # a module made at run time (a notebook's, a dynamic one)
    found: Any = module
    for part in getattr(obj, "__qualname__", "").split("."):
        found = getattr(found, part, None)
    return found is obj


class _ReferencePickler(cpickle.Pickler):
    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, (type, types.FunctionType)) and not _importable_elsewhere(obj):
            raise _NeedsValue
        return NotImplemented


def dumps(obj: Any, buffer_callback: Callable[[cpickle.PickleBuffer], Any] | None = None) -> bytes:
    """``obj`` as a protocol 5 pickle stream; large buffers go to ``buffer_callback``.

    Raises what cloudpickle raises for a value that cannot be pickled at all.
    """
    collected: list[cpickle.PickleBuffer] = []
    stream = io.BytesIO()
    out_of_band = collected.append if buffer_callback is not None else None
    try:
        _ReferencePickler(stream, PROTOCOL, buffer_callback=out_of_band).dump(obj)
    except Exception:  # _NeedsValue, or anything the standard pickler cannot do
        import cloudpickle

        return cloudpickle.dumps(obj, protocol=PROTOCOL, buffer_callback=buffer_callback)
    if buffer_callback is not None:
        for buffer in collected:
            buffer_callback(buffer)
    return stream.getvalue()


def dumps_code(obj: Any) -> bytes:
    """``obj`` pickled by cloudpickle, with code objects keeping their file names.

    Only for the same Python version on both ends (a server or run this process
    started), since ``marshal``'s format follows the interpreter's.
    """
    import cloudpickle

    class CodeKeepingPickler(cloudpickle.Pickler):
        def reducer_override(self, obj: Any) -> Any:
            if type(obj) is types.CodeType:
                return marshal.loads, (marshal.dumps(obj),)
            return super().reducer_override(obj)

    stream = io.BytesIO()
    CodeKeepingPickler(stream, PROTOCOL).dump(obj)
    return stream.getvalue()
