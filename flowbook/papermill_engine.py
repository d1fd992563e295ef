"""A papermill engine that sends each cell's metadata, as JupyterLab does.

``papermill --engine flowbook in.ipynb out.ipynb -p alpha 0.5`` runs a notebook whose
flow cells are marked with tags (``flowbook:step=NAME``, ``flowbook:setup``, ...):
nbclient sends only a cell's code, so the kernel could not see its tags. This engine
sends the cell's metadata and an id with every execute request
(``kernel.get_parent()["metadata"]`` in the kernel), and the flowbook extension runs
tagged cells as their magics would (see :mod:`flowbook.notebook.cellmeta`).
Registered as the entry point ``papermill.engine`` named ``flowbook``.
"""

from __future__ import annotations

from typing import Any

from papermill.clientwrap import PapermillNotebookClient
from papermill.engines import NBClientEngine
from papermill.log import logger
from papermill.utils import merge_kwargs, remove_args


class FlowbookNotebookClient(PapermillNotebookClient):
    """papermill's client, whose execute requests carry the cell's metadata."""

    def __init__(self, nb_man: Any, **kwargs: Any) -> None:
        super().__init__(nb_man, **kwargs)
        self.on_cell_execute = self._send_metadata_with

    def _send_metadata_with(self, cell: Any, cell_index: int) -> None:
        """Called by nbclient just before it sends ``cell``'s execute request."""
        kc = self.kc
        metadata = dict(cell.get("metadata") or {})
        metadata["cellId"] = cell.get("id") or f"cell-{cell_index}"

        def execute(
            code: str,
            silent: bool = False,
            store_history: bool = True,
            user_expressions: dict | None = None,
            allow_stdin: bool | None = None,
            stop_on_error: bool = True,
        ) -> str:
            content = {
                "code": code,
                "silent": silent,
                "store_history": store_history,
                "user_expressions": user_expressions or {},
                "allow_stdin": kc.allow_stdin if allow_stdin is None else allow_stdin,
                "stop_on_error": stop_on_error,
            }
            msg = kc.session.msg("execute_request", content, metadata=metadata)
            kc.shell_channel.send(msg)
            return msg["header"]["msg_id"]

        kc.execute = execute  # this cell's request only: replaced before the next one


class FlowbookEngine(NBClientEngine):
    """``papermill --engine flowbook``: nbclient's engine, sending cell metadata."""

    @classmethod
    def execute_managed_notebook(
        cls,
        nb_man: Any,
        kernel_name: str,
        log_output: bool = False,
        stdout_file: Any = None,
        stderr_file: Any = None,
        start_timeout: int = 60,
        execution_timeout: float | None = None,
        **kwargs: Any,
    ) -> Any:
        kwargs = remove_args(["input_path"], **kwargs)
        safe_kwargs = remove_args(["timeout", "startup_timeout"], **kwargs)
        final_kwargs = merge_kwargs(
            safe_kwargs,
            timeout=execution_timeout if execution_timeout else kwargs.get("timeout"),
            startup_timeout=start_timeout,
            kernel_name=kernel_name,
            log=logger,
            log_output=log_output,
            stdout_file=stdout_file,
            stderr_file=stderr_file,
        )
        return FlowbookNotebookClient(nb_man, **final_kwargs).execute()
