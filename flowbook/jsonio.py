"""JSON for flowbook's own records, without importing the ``json`` package.

``import json`` imports ``re`` and ``enum`` for its pure-Python fallbacks, about a
third of what a small run spends importing on a slow machine; yet every record
flowbook reads or writes goes through CPython's C accelerator ``_json`` anyway.
This module calls that accelerator the way ``json`` does (``json.dumps`` with no
indent and ``json.loads`` on a ``str`` take exactly these paths), so the bytes
written and the values read are the same as with ``json``. Without ``_json`` (not
CPython), or for any text the fast path does not accept, ``json`` itself is used,
so errors are ``json.JSONDecodeError`` as usual.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

if TYPE_CHECKING:  # (the checker sees CPython, which always has _json)
    from _json import encode_basestring_ascii, make_encoder, make_scanner
else:
    try:
        from _json import encode_basestring_ascii, make_encoder, make_scanner
    except ImportError:  # pragma: no cover - every CPython has _json
        make_scanner = None


class _DecoderSettings:
    """The attributes ``_json.make_scanner`` reads from a ``json.JSONDecoder``."""

    def __init__(self) -> None:
        constants = {"-Infinity": float("-inf"), "Infinity": float("inf"), "NaN": float("nan")}
        self.strict = True
        self.object_hook = None
        self.object_pairs_hook = None
        self.parse_float = float
        self.parse_int = int
        self.parse_constant = constants.__getitem__


_WHITESPACE = " \t\n\r"


def _not_serializable(obj: Any) -> Any:
    raise TypeError(f"Object of type {obj.__class__.__name__} is not JSON serializable")


if make_scanner is not None:
    # typeshed types the context as a make_scanner; it is duck-typed (a TODO in _json.pyi)
    _scan = make_scanner(_DecoderSettings())  # type: ignore[arg-type]


def loads(text: str | bytes | bytearray) -> Any:
    """``json.loads(text)``."""
    if make_scanner is not None and isinstance(text, (str, bytes, bytearray)):
        try:
            string = text if isinstance(text, str) else text.decode("utf-8")
        except UnicodeDecodeError:
            string = None  # json.loads also detects UTF-16 and UTF-32
        if string is not None:
            start = len(string) - len(string.lstrip(_WHITESPACE))
            try:
                value, end = _scan(string, start)
            except (StopIteration, ValueError, SystemError):
                # (on bad text the C scanner raises json.decoder.JSONDecodeError only
                # when json.decoder is already imported; else a SystemError)
                value, end = None, -1
            if end == len(string) or (end >= 0 and not string[end:].strip(_WHITESPACE)):
                return value
    import json

    return json.loads(text)


def dumps(obj: Any, sort_keys: bool = False, default: Any = None) -> str:
    """``json.dumps(obj, separators=(",", ":"), sort_keys=..., default=...)``;
    ``default`` may be None or ``str``."""
    if make_scanner is not None and default in (None, str):
        # what json.dumps(obj, separators=(",", ":")) builds, with a fresh dict of
        # the containers being encoded (the C encoder leaves entries in it on errors)
        encoder = make_encoder(
            {},
            default or _not_serializable,
            encode_basestring_ascii,
            None,
            ":",
            ",",
            sort_keys,
            False,
            True,
        )
        return "".join(encoder(obj, 0))
    import json

    return json.dumps(obj, separators=(",", ":"), sort_keys=sort_keys, default=default)
