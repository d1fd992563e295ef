"""Names an orchestrator accepts, made from a flow's and its steps' names.

Argo template and DAG task names follow ``^[a-zA-Z0-9][-a-zA-Z0-9]*$`` (at most 128
characters); Kubernetes resource names are DNS-1123 labels/subdomains: lowercase
letters, digits and ``-``, starting and ending with a letter or digit, at most 63
characters here (a CronWorkflow's at most 52: Kubernetes appends to it). Shared by
Argo Workflows and Step Functions.
"""

from __future__ import annotations

import hashlib

from ..exceptions import FlowbookError

#: The longest Argo template or DAG task name.
MAX_TEMPLATE_NAME = 128
#: The longest resource name (a WorkflowTemplate's).
MAX_RESOURCE_NAME = 63
#: The longest CronWorkflow name (Argo appends a timestamp to it for each Workflow).
MAX_CRON_NAME = 52

_ALNUM = set("abcdefghijklmnopqrstuvwxyz0123456789")


def short_hash(text: str, length: int = 8) -> str:
    """The first ``length`` hex digits of the SHA-256 of ``text``."""
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def template_name(step: str) -> str:
    """A step's name as an Argo template/task name: lowercase, ``_`` as ``-``.

    FlowbookError when the step name cannot become one (not ASCII, too long)."""
    name = step.lower().replace("_", "-")
    if not name.isascii() or not name.replace("-", "").isalnum() or not name:
        raise FlowbookError(
            f"step '{step}' cannot be an Argo template name: only ASCII letters, digits "
            "and '_' are allowed."
        )
    if not name[0].isalnum():
        name = "s" + name  # '_private' -> 's-private'
    if len(name) > MAX_TEMPLATE_NAME:
        raise FlowbookError(
            f"step '{step}' is {len(step)} characters long; Argo allows at most "
            f"{MAX_TEMPLATE_NAME} in a template name."
        )
    return name


def step_template_names(steps: list[str]) -> dict[str, str]:
    """Every step -> its template name; FlowbookError naming two steps that collide."""
    names: dict[str, str] = {}
    seen: dict[str, str] = {}
    for step in steps:
        name = template_name(step)
        if name in seen:
            raise FlowbookError(
                f"steps '{seen[name]}' and '{step}' both become the Argo name '{name}'; "
                "rename one of them."
            )
        seen[name] = step
        names[step] = name
    return names


def resource_name(text: str, max_length: int = MAX_RESOURCE_NAME) -> str:
    """``text`` as a DNS-1123 name: lowercase, other characters as ``-``, at most
    ``max_length``; a longer one is cut and ends with a hash of the whole name."""
    lowered = "".join(c if c in _ALNUM else "-" for c in text.lower())
    while "--" in lowered:
        lowered = lowered.replace("--", "-")
    lowered = lowered.strip("-") or "flow"
    if len(lowered) <= max_length:
        return lowered
    digest = short_hash(text)
    return lowered[: max_length - len(digest) - 1].rstrip("-") + "-" + digest


def is_resource_name(name: str, max_length: int = MAX_RESOURCE_NAME) -> bool:
    """Whether ``name`` is a DNS-1123 label of at most ``max_length`` characters."""
    return (
        0 < len(name) <= max_length
        and set(name) <= _ALNUM | {"-"}
        and name[0] in _ALNUM
        and name[-1] in _ALNUM
    )


#: The longest AWS Step Functions state machine or state name.
MAX_AWS_NAME = 80
_AWS_NAME_CHARS = _ALNUM | set("ABCDEFGHIJKLMNOPQRSTUVWXYZ_-")


def aws_name(text: str, max_length: int = MAX_AWS_NAME) -> str:
    """``text`` as an AWS name (state machine, state, rule, job): ASCII letters,
    digits, ``_`` and ``-`` (others become ``-``), at most ``max_length`` characters;
    a longer one is cut and ends with a hash of the whole name."""
    name = "".join(c if c in _AWS_NAME_CHARS else "-" for c in text) or "flow"
    if len(name) <= max_length:
        return name
    digest = short_hash(text)
    return name[: max_length - len(digest) - 1] + "-" + digest


def is_aws_name(name: str, max_length: int = MAX_AWS_NAME) -> bool:
    """Whether ``name`` is 1..max_length of ASCII letters, digits, ``_`` and ``-``."""
    return 0 < len(name) <= max_length and set(name) <= _AWS_NAME_CHARS
