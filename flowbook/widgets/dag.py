"""The flow's DAG as an SVG (graphviz), coloured by state; a text rendering without ``dot``.

Shapes tell the kind of step: start and end are ovals, a static split a trapezium,
a foreach a stack of boxes (``box3d``), a join an inverted trapezium. Each node's
SVG group has ``id="flowbook-node-<step>"`` and its ``<title>``-based tooltip is the
step's docstring; the state is in the node's CSS class (``flowbook-state-done``).
"""

from __future__ import annotations

import shutil
from html import escape

from ..graph import FlowGraph
from .state import DONE, FAILED, NOT_RUN, RUNNING, STALE, RunState

COLORS = {
    NOT_RUN: ("#ffffff", "#9e9e9e"),
    RUNNING: ("#fff3c4", "#f0a500"),
    DONE: ("#d7f5dd", "#2e9e47"),
    FAILED: ("#ffd6d6", "#d32f2f"),
    STALE: ("#eeeeee", "#9e9e9e"),
}
#: A step whose tasks all reused earlier results (``--reuse``): done, drawn apart.
REUSED_COLORS = ("#dcecfb", "#2f6fb5")
SHAPES = {
    "start": "oval",
    "end": "oval",
    "split": "trapezium",
    "foreach": "box3d",
    "join": "invtrapezium",
    "linear": "box",
}
INSTALL_HINT = "Install graphviz's `dot` (e.g. apt-get install graphviz) for the drawn DAG."


def has_dot() -> bool:
    return shutil.which("dot") is not None


def _label(graph: FlowGraph, state: RunState | None, name: str) -> str:
    if state is None or name not in state.steps:
        return name
    step = state.steps[name]
    node = graph[name]
    in_foreach = any(graph[p].foreach for p in node.in_funcs if p in graph)
    if step.total > 1 or in_foreach:
        return f"{name}\n{step.done}/{step.total}"
    return name


def dag_svg(graph: FlowGraph, state: RunState | None = None) -> str:
    """The SVG text of the DAG (raises graphviz.ExecutableNotFound without ``dot``)."""
    import graphviz

    dot = graphviz.Digraph(graph.name, format="svg")
    dot.attr(rankdir="TB", bgcolor="transparent", margin="0")
    dot.attr("node", fontname="Helvetica", fontsize="11", style="filled")
    dot.attr("edge", color="#777777", arrowsize="0.7")
    for node in graph:
        step = state.steps.get(node.name) if state else None
        step_state = step.state if step else NOT_RUN
        reused = step is not None and step.reused and step_state == DONE
        fill, line = REUSED_COLORS if reused else COLORS[step_state]
        style = "filled,dashed" if step_state == STALE else "filled,bold" if reused else None
        why = f"\n{step.reason}" if step and step.reason else ""
        css = f"flowbook-node flowbook-state-{step_state}" + (" flowbook-reused" if reused else "")
        dot.node(
            node.name,
            _label(graph, state, node.name) + ("\n(reused)" if reused else ""),
            id=f"flowbook-node-{node.name}",
            **{"class": css},
            shape=SHAPES.get(node.type, "box"),
            fillcolor=fill,
            color=line,
            penwidth="2" if step_state in (RUNNING, FAILED) else "1.2",
            tooltip=(node.doc or node.name) + f" [{step_state}]{why}",
            **({"style": style} if style else {}),
        )
        for target in node.out_funcs:
            if target in graph:
                dot.edge(node.name, target, style="dashed" if node.foreach else "solid")
    svg = dot.pipe(format="svg").decode("utf-8")
    # Drop the XML prologue (the SVG goes inside HTML); graphviz writes "-" as "&#45;".
    return svg[svg.index("<svg") :].replace("&#45;", "-")


def dag_text(graph: FlowGraph, state: RunState | None = None) -> str:
    """A text rendering: one line per step with its transition and state."""
    lines = []
    for node in graph:
        step_state = state.steps[node.name].state if state and node.name in state.steps else NOT_RUN
        label = _label(graph, state, node.name).replace("\n", " ")
        step = state.steps.get(node.name) if state else None
        if step is not None and step.reason:
            label += f"  ({step.reason})"
        if node.foreach:
            arrow = f" -> {node.out_funcs[0]} (foreach {node.foreach})"
        elif node.out_funcs:
            arrow = " -> " + ", ".join(node.out_funcs)
        else:
            arrow = ""
        lines.append(f"[{step_state:^8}] {label}{arrow}")
    return "\n".join(lines)


def dag_html(graph: FlowGraph, state: RunState | None = None) -> str:
    """The SVG when ``dot`` exists, else the text rendering with a hint to install it."""
    if has_dot():
        try:
            return f"<div class='flowbook-dag-svg'>{dag_svg(graph, state)}</div>"
        except Exception:  # graphviz.ExecutableNotFound or a broken dot
            pass
    return (
        f"<pre class='flowbook-dag-text'>{escape(dag_text(graph, state))}</pre>"
        f"<div class='flowbook-hint'>{escape(INSTALL_HINT)}</div>"
    )
