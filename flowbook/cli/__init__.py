"""Command lines: ``python flow.py ...`` (flow_cli) and the ``flowbook`` program (main)."""
