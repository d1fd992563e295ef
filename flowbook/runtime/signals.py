"""The signal functions and numbers the runtime uses, without ``signal.py``.

``signal.py`` only wraps the C module ``_signal`` in enums, and importing ``enum``
costs ~2 ms on every run. Names for messages (``signal.Signals(n).name``) are
looked up where a message needs one. Use as ``signals.signal(signals.SIGINT, ...)``.
"""

try:
    from _signal import *  # noqa: F403 - SIGKILL, signal(), set_wakeup_fd(), ...
except ImportError:  # pragma: no cover - not CPython
    from signal import *  # noqa: F403
