"""Rewrite a notebook between the two forms of flow cells: magics and tags."""

from __future__ import annotations

from ..exceptions import FlowbookError
from .cells import TAG_PREFIX, _tag_values, parse_step_line, split_magic, step_from_tags


def convert_notebook(path: str, form: str, output: str) -> int:
    """Convert every flow cell of ``path`` to ``form`` ("tags" or "magics"); returns the count."""
    import nbformat

    try:
        nb = nbformat.read(path, as_version=4)
    except (OSError, ValueError) as exc:
        raise FlowbookError(f"Cannot read notebook {path}: {exc}") from None
    changed = 0
    for index, cell in enumerate(nb.cells):
        if cell.get("cell_type") != "code":
            continue
        where = f"cell {index + 1}"
        metadata = cell.setdefault("metadata", {})
        tags = [t for t in metadata.get("tags", []) if isinstance(t, str)]
        others = [t for t in tags if not t.startswith(TAG_PREFIX)]
        values = _tag_values(tags)
        magic, line, body = split_magic(cell.get("source") or "")
        if form == "tags":
            if magic == "step":
                step = parse_step_line(line, body, where=where)
                metadata["tags"] = others + step.tags()
                cell["source"] = body
            elif magic == "setup":
                metadata["tags"] = others + [f"{TAG_PREFIX}setup"]
                cell["source"] = body
            elif magic == "parameters":
                metadata["tags"] = [t for t in others if t != "parameters"] + ["parameters"]
                cell["source"] = body
            else:
                continue
        else:
            if "step" in values and magic is None:
                step = step_from_tags(values, cell.get("source") or "", where)
                cell["source"] = step.magic_line() + "\n" + (cell.get("source") or "")
            elif "setup" in values and magic is None:
                cell["source"] = "%%setup\n" + (cell.get("source") or "")
            else:
                continue
            metadata["tags"] = others
        changed += 1
    nbformat.write(nb, output)
    return changed
