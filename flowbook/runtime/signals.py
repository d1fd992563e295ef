"""The signal functions and numbers the runtime uses, without ``signal.py``.

``signal.py`` only wraps the C module ``_signal`` in enums, and importing ``enum``
costs ~2 ms on every run. Names for messages (``signal.Signals(n).name``) are
looked up where a message needs one.
"""

try:
    from _signal import (
        SIG_DFL,
        SIG_IGN,
        SIGCHLD,
        SIGINT,
        SIGKILL,
        SIGTERM,
        default_int_handler,
        set_wakeup_fd,
        signal,
    )
except ImportError:  # pragma: no cover - not CPython
    from signal import (  # noqa: F401
        SIG_DFL,
        SIG_IGN,
        SIGCHLD,
        SIGINT,
        SIGKILL,
        SIGTERM,
        default_int_handler,
        set_wakeup_fd,
        signal,
    )

__all__ = [
    "SIG_DFL",
    "SIG_IGN",
    "SIGCHLD",
    "SIGINT",
    "SIGKILL",
    "SIGTERM",
    "default_int_handler",
    "set_wakeup_fd",
    "signal",
]
