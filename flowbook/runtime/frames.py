"""Split frames: where a task is in the splits and foreaches around it, as pure functions.

A task carries a stack of *split frames*, outermost first (docs/architecture.md):

* ``{"kind": "foreach", "step", "task", "index", "num_splits", "var", "sha"}``,
  pushed for each task a foreach step creates (``index`` is the task's split);
* ``{"kind": "split", "step", "task", "branch", "num_splits"}``, pushed for each
  branch of a static split (``branch`` is the step the branch starts with).

A join pops the top frame; it runs once every one of that frame's ``num_splits``
arrivals with the same frames below the top has finished, with its inputs in
foreach order or in the order of the split's ``self.next(...)``.

Two callers derive the same frames from the same records: the scheduler, which
learns of finished tasks one at a time and creates the tasks after them, and
:mod:`flowbook.runtime.one_task`, which is told a task's parents (``--input-paths``,
``--split-index``) by an orchestrator and must give the task exactly the stack the
scheduler would have given it. Nothing here reads or writes anything.
"""

from __future__ import annotations

from .. import jsonio
from ..exceptions import FlowbookError

TYPE_CHECKING = False  # typing costs ~6 ms to import; annotations are strings here
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

    from ..datastore.schema import ForeachFrame, Frame, ParentInfo, SplitFrame, TaskRecord
    from ..graph import FlowGraph, StepNode


class FramesError(FlowbookError):
    """The given parents of a task do not fit the flow's graph (one line, naming them)."""


def parent_info(flow: str, record: TaskRecord) -> ParentInfo:
    """What a child task needs to know about a finished parent task (its ``TaskSpec``)."""
    return {
        "pathspec": f"{flow}/{record['run_id']}/{record['step']}/{record['task_id']}",
        "step": record["step"],
        "task_id": record["task_id"],
        "artifacts": record["artifacts"],
        "dropped": record.get("dropped", {}),
        "foreach_stack": record.get("foreach_stack", []),
        # what the parent made itself (the rest it passed on): for reuse's reasons
        "own": record.get("own", []),
        # cloned by resume (not reused: a reused task equals an older run's, not the origin's)
        "cloned": bool(record.get("origin_pathspec")) and not record.get("reused_from"),
    }


def foreach_frame(node: StepNode, record: TaskRecord, index: int) -> ForeachFrame:
    """The frame a foreach step's finished task ``record`` pushes for split ``index``."""
    transition: Mapping[str, Any] = record.get("next") or {}
    return {
        "kind": "foreach",
        "step": node.name,
        "task": record["task_id"],
        "index": index,
        "num_splits": transition["num_splits"],
        "var": transition["foreach"],
        "sha": transition["sha"],
    }


def split_frame(node: StepNode, record: TaskRecord, branch: str) -> SplitFrame:
    """The frame a static split's finished task ``record`` pushes for ``branch``."""
    return {
        "kind": "split",
        "step": node.name,
        "task": record["task_id"],
        "branch": branch,
        "num_splits": len(node.out_funcs),
    }


def successors(node: StepNode, record: TaskRecord) -> list[tuple[str, list[Frame]]]:
    """``(child step, stack handed to it)`` for every arrival the scheduler makes after
    the finished task ``record`` of ``node``: one per split of a foreach, one per
    branch of a split, else one. A join pops the top frame of what it is handed
    (:func:`join_key`). The end step has none. (The scheduler checks a foreach's
    split count against ``--max-num-splits`` and zero before it asks.)"""
    if node.type == "end":
        return []
    stack = list(record.get("split_stack", []))
    if node.foreach is not None:
        transition: Mapping[str, Any] = record.get("next") or {}
        count = transition["num_splits"]
        return [(node.out_funcs[0], stack + [foreach_frame(node, record, i)]) for i in range(count)]
    if len(node.out_funcs) > 1:
        return [(b, stack + [split_frame(node, record, b)]) for b in node.out_funcs]
    return [(node.out_funcs[0], stack)]


def join_key(step: str, stack: list[Frame]) -> tuple:
    """Which join task an arrival with ``stack`` at join ``step`` belongs to: arrivals
    with equal keys are the inputs of one task."""
    top = stack[-1]
    return (step, top["step"], top["task"], jsonio.dumps(stack[:-1], sort_keys=True))


def join_slot(stack: list[Frame]) -> int | str:
    """The place of an arrival among its join's inputs: its foreach index or branch."""
    top = stack[-1]
    return top["index"] if top["kind"] == "foreach" else top["branch"]


def join_order(graph: FlowGraph, top: Frame, slots: list) -> list:
    """``slots`` (of one join's arrivals, whose top frame is ``top``) in the order of
    the join's inputs: foreach order, or the order of the split's ``self.next(...)``."""
    if top["kind"] == "foreach":
        return sorted(slots)
    order = graph[top["step"]].out_funcs
    return [branch for branch in order if branch in slots]


# ---------------------------------------------------------------------- one task
def task_frames(
    graph: FlowGraph, step: str, records: list[TaskRecord], split_index: int | None = None
) -> tuple[list[TaskRecord], list[Frame]]:
    """The parents (in input order) and split stack of one task of ``step`` whose
    parent tasks finished with ``records``, as the scheduler would make them.

    ``split_index`` is the task's index when its parent is a foreach step (and only
    then). Raises :class:`FramesError` naming what does not fit: a parent whose step
    does not lead to ``step``, a missing or extra ``split_index``, an index out of
    range, inputs of a join that are not exactly one arrival of each split or branch.
    """
    flow = graph.name
    node = graph[step]
    where = f"Flow {flow}, step '{step}'"
    if step == "start" or not records:
        raise FramesError(f"{where}: a task of this step needs the tasks before it as inputs.")
    handed: list[tuple[TaskRecord, list[Frame]]] = []
    used_index = False
    for record in records:
        parent = graph.nodes.get(record["step"])
        shown = _shown(record)
        if parent is None or step not in parent.out_funcs:
            leads = f"leads to {', '.join(parent.out_funcs)}" if parent else "is not in the flow"
            raise FramesError(
                f"{where}: input {shown} is a task of step '{record['step']}', which {leads}; "
                f"the inputs of '{step}' are tasks of {_either(node.in_funcs)}."
            )
        if parent.foreach is not None:
            transition: Mapping[str, Any] = record.get("next") or {}
            count = transition.get("num_splits")
            if not isinstance(count, int):
                raise FramesError(f"{where}: input {shown} has no foreach split count.")
            if node.is_join and split_index is None:
                # a foreach step straight into its join: every split arrives at once
                handed += [
                    (record, _push(record, foreach_frame(parent, record, i))) for i in range(count)
                ]
                continue
            if split_index is None:
                raise FramesError(
                    f"{where}: input {shown} is a foreach step with {count} splits; "
                    f"give --split-index 0..{count - 1}."
                )
            if not 0 <= split_index < count:
                raise FramesError(
                    f"{where}: --split-index {split_index} is out of range: foreach step "
                    f"'{parent.name}' made {count} splits (0..{count - 1})."
                )
            used_index = True
            handed.append((record, _push(record, foreach_frame(parent, record, split_index))))
        elif len(parent.out_funcs) > 1:
            handed.append((record, _push(record, split_frame(parent, record, step))))
        else:
            handed.append((record, list(record.get("split_stack", []))))
    if split_index is not None and not used_index:
        raise FramesError(
            f"{where}: --split-index is only for a task whose input is a foreach step's "
            f"task; the input of this one is {_either(sorted({r['step'] for r in records}))}."
        )
    if not node.is_join:
        if len(records) != 1:
            raise FramesError(
                f"{where} is not a join: it takes one input, got {len(records)} "
                f"({', '.join(_shown(r) for r in records)})."
            )
        return [records[0]], handed[0][1]
    return _join(graph, step, where, handed)


def _join(
    graph: FlowGraph, step: str, where: str, handed: list[tuple[TaskRecord, list[Frame]]]
) -> tuple[list[TaskRecord], list[Frame]]:
    if any(not stack for _, stack in handed):
        bad = next(_shown(r) for r, stack in handed if not stack)
        raise FramesError(f"{where}: input {bad} is not inside a split or foreach to join.")
    keys = {join_key(step, stack) for _, stack in handed}
    if len(keys) > 1:
        raise FramesError(
            f"{where}: the inputs come from different splits "
            f"({', '.join(f'{_shown(r)} from {_split_name(s)}' for r, s in handed)}); "
            "a join's inputs are the branches of one split."
        )
    top = handed[0][1][-1]
    arrivals: dict[int | str, TaskRecord] = {}
    for record, stack in handed:
        slot = join_slot(stack)
        if slot in arrivals:
            raise FramesError(
                f"{where}: inputs {_shown(arrivals[slot])} and {_shown(record)} are both "
                f"{_slot_name(top, slot)} of {_split_name(stack)}."
            )
        arrivals[slot] = record
    expected = (
        list(range(top["num_splits"]))
        if top["kind"] == "foreach"
        else list(graph[top["step"]].out_funcs)
    )
    missing = [slot for slot in expected if slot not in arrivals]
    if missing:
        names = ", ".join(_slot_name(top, slot) for slot in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise FramesError(
            f"{where}: the inputs lack {names}{more} of {_split_name(handed[0][1])} "
            f"({top['num_splits']} expected, {len(arrivals)} given)."
        )
    ordered = [arrivals[slot] for slot in join_order(graph, top, list(arrivals))]
    return ordered, list(handed[0][1][:-1])


def _push(record: TaskRecord, frame: Frame) -> list[Frame]:
    return list(record.get("split_stack", [])) + [frame]


def _shown(record: TaskRecord) -> str:
    return f"{record['run_id']}/{record['step']}/{record['task_id']}"


def _either(steps: list[str]) -> str:
    return " or ".join(f"'{s}'" for s in steps) or "no step"


def _split_name(stack: list[Frame]) -> str:
    top = stack[-1]
    return f"{top['kind']} step '{top['step']}' (task {top['task']})"


def _slot_name(top: Frame, slot: int | str) -> str:
    return f"split {slot}" if top["kind"] == "foreach" else f"branch '{slot}'"
