"""``flowbook export`` and ``flowbook tag``: tools that read or rewrite notebook files."""

from __future__ import annotations

import click

from ..exceptions import FlowbookError
from .entry import fail


@click.command(help="Write NOTEBOOK's flow as a standalone FlowSpec file.")
@click.argument("notebook", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--to", "target", type=click.Choice(["flow", "metaflow"]), default="flow", show_default=True
)
@click.option("-o", "--output", required=True, help="The .py file to write.")
def export_command(notebook: str, target: str, output: str) -> None:
    from ..export.flowfile import export_flow_file
    from ..notebook.cells import read_notebook

    try:
        source = read_notebook(notebook)
        export_flow_file(source, output, "metaflow" if target == "metaflow" else "flowbook")
    except FlowbookError as exc:
        fail(str(exc))
    click.echo(f"Wrote flow {source.flow_name} to {output}")


@click.command(help="Convert %%step/%%setup magics in NOTEBOOK to cell tags, or back.")
@click.argument("notebook", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--to", "form", type=click.Choice(["tags", "magics"]), default="tags", show_default=True
)
@click.option("-o", "--output", default=None, help="Where to write (default: in place).")
def tag_command(notebook: str, form: str, output: str | None) -> None:
    from ..notebook.tagging import convert_notebook

    try:
        changed = convert_notebook(notebook, form, output or notebook)
    except FlowbookError as exc:
        fail(str(exc))
    click.echo(f"Converted {changed} cell(s) of {notebook} to {form}.")
