"""Remember what graph.py read from a flow file, so that the next run need not parse it.

Reading a graph means importing ``ast`` and ``linecache`` and parsing the file:
about 5 ms of a 50 ms run on a small machine. What it yields per step function is
tiny (the number of parameters, the ``self.next`` targets, the foreach), so it is
kept, as Python keeps bytecode, in ``__pycache__/<file>.flowbook-graph.json`` beside
the flow file. The cache is keyed by the file's size and CRC-32 (not its modification
time, which two quick edits can share) and by flowbook's version; anything that does
not match, cannot be read, or cannot be written is simply ignored. Only shapes that
parsed without error are kept, so a broken step is reported on every run.
"""

from __future__ import annotations

import os
from binascii import crc32

from . import __version__, jsonio

TYPE_CHECKING = False  # typing costs ~6 ms to import; annotations are strings here
if TYPE_CHECKING:
    from typing import Any

#: A step function's shape: [number of parameters, next steps, foreach variable].
Shape = list


class GraphCache:
    """The cached shapes of the step functions of the source files one graph reads."""

    def __init__(self) -> None:
        self._files: dict[str, dict[str, Any] | None] = {}
        self._changed: set[str] = set()

    def get(self, filename: str, name: str, first_line: int) -> Shape | None:
        entry = self._entry(filename)
        return None if entry is None else entry["steps"].get(f"{name}:{first_line}")

    def put(self, filename: str, name: str, first_line: int, shape: Shape) -> None:
        entry = self._entry(filename)
        if entry is not None:
            entry["steps"][f"{name}:{first_line}"] = shape
            self._changed.add(filename)

    def save(self) -> None:
        """Write what changed; a directory that cannot be written is left alone."""
        from .datastore.storage import replace_file

        for filename in self._changed:
            entry = self._files[filename]
            path = _cache_path(filename)
            try:
                os.makedirs(os.path.dirname(path), exist_ok=True)
            except OSError:
                continue
            replace_file(path, jsonio.dumps(entry).encode("utf-8"))
        self._changed.clear()

    def _entry(self, filename: str) -> dict[str, Any] | None:
        """The cache of one source file (None when it is not a file on disk)."""
        if filename not in self._files:
            self._files[filename] = _load(filename)
        return self._files[filename]


def _cache_path(filename: str) -> str:
    directory, base = os.path.split(filename)
    return os.path.join(directory, "__pycache__", f"{base}.flowbook-graph.json")


def _load(filename: str) -> dict[str, Any] | None:
    try:
        with open(filename, "rb") as handle:
            source = handle.read()
    except OSError:  # not a file (a notebook cell's source lives in linecache)
        return None
    key = {"v": 1, "flowbook": __version__, "size": len(source), "crc32": crc32(source)}
    try:
        with open(_cache_path(filename), "rb") as handle:
            cached = jsonio.loads(handle.read())
        if cached.get("key") == key and isinstance(cached.get("steps"), dict):
            return cached
    except (OSError, ValueError):
        pass
    return {"key": key, "steps": {}}
