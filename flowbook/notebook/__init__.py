"""Notebook flows: cells and tags (cells.py), building a FlowSpec from them (builder.py),
the kernel session (session.py), its magics (magics.py), and the kernel's task server
(executor.py)."""
