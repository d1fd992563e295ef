"""Cells marked with tags, run interactively: the kernel reads each cell's metadata.

JupyterLab 4 sends every cell's metadata (its ``tags`` included) and ``cellId`` with
the execute request; in the kernel it is ``kernel.get_parent()["metadata"]``. An
input transformer reads it before IPython compiles the cell: a cell tagged
``flowbook:step=NAME`` runs exactly as the same cell written as ``%%step NAME ...``,
``flowbook:setup`` as ``%%setup`` and papermill's ``parameters`` as ``%%parameters``.

papermill and nbclient send no metadata; ``papermill --engine flowbook`` does. When
no metadata came with a cell and the cell uses ``self`` as a step body does, the cell
fails with one line saying how to run a tag-marked notebook.
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from typing import Any

from .cells import _tag_values

REFUSAL = (
    "{where} uses 'self' outside a step and came without cell metadata (papermill and "
    "nbclient send none), so its flowbook:step tag is not seen: run the notebook with "
    "`papermill --engine flowbook IN OUT` or `flowbook run NOTEBOOK`."
)


def execute_request(shell: Any) -> dict | None:
    """The execute request being handled, or None outside a kernel's execute request."""
    kernel = getattr(shell, "kernel", None)
    if kernel is None:
        return None
    try:
        parent = kernel.get_parent()
    except Exception:
        return None
    if not parent or (parent.get("header") or {}).get("msg_type") != "execute_request":
        return None
    return parent


def cell_transformer(magics: Any) -> Callable[[list[str]], list[str]]:
    """The cleanup transformer that turns a tag-marked cell into its magic call."""
    shell = magics.shell

    def flowbook_cell_tags(lines: list[str]) -> list[str]:
        if magics.in_body:  # the body of a %%setup / %%parameters cell, transformed again
            return lines
        parent = execute_request(shell)
        if parent is None:
            return lines
        code = (parent.get("content") or {}).get("code")
        text = "".join(lines)
        if not isinstance(code, str) or text.rstrip("\n") != code.rstrip("\n"):
            return lines  # not the cell itself (a string IPython transforms for itself)
        if text.lstrip().startswith("%%"):
            return lines  # a magic says what the cell is; magics win over tags
        metadata = parent.get("metadata") or {}
        tags = [t for t in metadata.get("tags") or [] if isinstance(t, str)]
        values = _tag_values(tags)
        if "step" in values:
            kind = "step"
        elif "setup" in values:
            kind = "setup"
        elif "parameters" in tags and "injected-parameters" not in tags:
            kind = "parameters"
        elif "cellId" not in metadata and _uses_self_at_top_level(text, shell):
            kind = "refuse"
        else:
            return lines
        return [f"get_ipython()._flowbook_magics.tagged_cell({kind!r}, {tags!r}, {text!r})\n"]

    return flowbook_cell_tags


def _uses_self_at_top_level(code: str, shell: Any) -> bool:
    """Whether ``code`` reads ``self`` outside any function or class (and none exists)."""
    if "self" not in code or "self" in shell.user_ns:
        return False
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return False
    todo: list[ast.AST] = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            continue
        if isinstance(node, ast.Name) and node.id == "self":
            return True
        todo.extend(ast.iter_child_nodes(node))
    return False


def install(magics: Any) -> None:
    uninstall(magics.shell)  # a second %load_ext replaces the first transformer
    transformers = magics.shell.input_transformers_cleanup
    transformers.insert(0, cell_transformer(magics))


def uninstall(shell: Any) -> None:
    transformers = shell.input_transformers_cleanup
    transformers[:] = [
        t for t in transformers if getattr(t, "__name__", "") != "flowbook_cell_tags"
    ]
