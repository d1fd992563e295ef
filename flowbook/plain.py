"""A base for small value classes, used instead of ``dataclasses`` on the run path.

``dataclasses`` imports ``inspect`` and builds every class with ``exec``: about 8 ms
plus 1 ms per class in each ``python flow.py run`` on a small machine, a tenth of a
short run. The classes on that path write their ``__init__`` by hand and get
``__repr__`` and ``__eq__`` from here.
"""

from __future__ import annotations


class Plain:
    """``__repr__`` and ``__eq__`` over the instance's attributes."""

    __hash__ = None  # type: ignore[assignment]  # mutable, like a dataclass

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={value!r}" for name, value in vars(self).items())
        return f"{type(self).__name__}({fields})"

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return vars(self) == vars(other)
