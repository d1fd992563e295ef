"""Short previews of artifacts: type, size, and a look at the value without loading too much.

The record already knows an artifact's type and size, so a large value is never
loaded just to be previewed. NumPy and pandas are never imported here: an object is
recognised by its type's name.
"""

from __future__ import annotations

import base64
import io
from html import escape
from typing import Any

#: Values larger than this (stored size) are described, not loaded.
PREVIEW_LIMIT = 20 * 1024 * 1024


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def _full_type(value: Any) -> str:
    kind = type(value)
    return f"{kind.__module__}.{kind.__qualname__}"


def value_html(value: Any) -> str:
    """An HTML look at a loaded value."""
    kind = _full_type(value)
    if kind == "numpy.ndarray":
        body = escape(repr(value) if value.size <= 100 else repr(value.ravel()[:20]) + " ...")
        return f"<div>shape {value.shape}, dtype {value.dtype}</div><pre>{body}</pre>"
    if kind == "pandas.core.frame.DataFrame":
        return f"<div>{value.shape[0]} rows x {value.shape[1]} columns</div>" + value.head(
            10
        ).to_html(classes="flowbook-table", border=0)
    if kind.startswith("PIL.") and hasattr(value, "save"):
        buffer = io.BytesIO()
        value.save(buffer, format="PNG")
        data = base64.b64encode(buffer.getvalue()).decode()
        return f"<img class='flowbook-image' src='data:image/png;base64,{data}'/>"
    if kind == "matplotlib.figure.Figure":
        buffer = io.BytesIO()
        value.savefig(buffer, format="png")
        data = base64.b64encode(buffer.getvalue()).decode()
        return f"<img class='flowbook-image' src='data:image/png;base64,{data}'/>"
    try:
        text = repr(value)
    except Exception as exc:  # a user's __repr__ may fail
        text = f"<repr failed: {type(exc).__name__}: {exc}>"
    if len(text) > 2000:
        text = text[:2000] + " ..."
    return f"<pre class='flowbook-repr'>{escape(text)}</pre>"


def artifact_html(artifact: Any) -> str:
    """Type, size and preview of a Client ``DataArtifact``."""
    header = (
        f"<div class='flowbook-artifact-meta'><b>{escape(artifact.id)}</b>: "
        f"{escape(artifact.type)}, {human_size(artifact.size)}</div>"
    )
    if artifact.size > PREVIEW_LIMIT:
        return header + "<div>Too large to preview here; load it into the kernel.</div>"
    try:
        value = artifact.data
    except Exception as exc:
        return (
            header
            + f"<div class='flowbook-error'>{escape(type(exc).__name__)}: {escape(str(exc))}</div>"
        )
    return header + value_html(value)
