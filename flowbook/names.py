"""The grammar of names that become parts of datastore paths, checked where they enter.

Run ids and task ids are chosen by flowbook (digits) or by an orchestrator
(``argo-parameterflow-x7k2p``, ``sfn-3f2a...``); flow, step and parameter names come
from the user's code. Each of them ends up as one component of a path or a key
under the datastore root, so each must be one safe component: ASCII letters and
digits, ``_`` and ``-``, not starting with ``_`` or ``-``, at most 128 characters.
That rules out ``..``, ``/``, NUL, whitespace and anything a shell or an object
store treats specially, and every refusal is one line naming the bad value.

No ``re`` here: this module is on the run path (see docs/architecture.md).
"""

from __future__ import annotations

from .exceptions import InvalidNameError

#: The longest id or name accepted.
MAX_LENGTH = 128
#: The grammar, as messages state it.
GRAMMAR = "letters, digits, '_' and '-', starting with a letter or digit, at most 128 characters"


def shown(value: object, limit: int = 60) -> str:
    """``repr(value)``, cut to about ``limit`` characters for a message."""
    text = repr(value)
    if len(text) > limit:
        text = text[: limit - 5] + "..." + text[-2:]
    return text


def is_valid(value: object, leading_underscore: bool = False) -> bool:
    """Whether ``value`` is a string in the grammar (``leading_underscore``: names of
    code, such as flowbook's own ``_parameters`` step, may also start with ``_``)."""
    if not isinstance(value, str) or not value or len(value) > MAX_LENGTH:
        return False
    if not value.isascii():
        return False
    if not (value[0].isalnum() or (leading_underscore and value[0] == "_")):
        return False
    return value.replace("_", "").replace("-", "").isalnum()


def check(value: object, what: str, leading_underscore: bool = False) -> str:
    """Return ``value`` if it is in the grammar, else raise InvalidNameError naming it.

    ``what`` says what the value is, e.g. ``"run id"`` or ``"Flow HelloFlow: step name"``.
    """
    if is_valid(value, leading_underscore):
        return value  # type: ignore[return-value]
    if not isinstance(value, str):
        reason = f"it is a {type(value).__name__}, not a string"
    elif not value:
        reason = "it is empty"
    elif len(value) > MAX_LENGTH:
        reason = f"it is {len(value)} characters long"
    else:
        reason = "it must contain only " + GRAMMAR
        if leading_underscore:
            reason += " (or '_')"
    raise InvalidNameError(f"Invalid {what} {shown(value)}: {reason}.")


def check_name(value: object, what: str) -> str:
    """A flow, step, parameter or artifact name: the grammar, or a leading ``_``."""
    return check(value, what, leading_underscore=True)


def check_run_id(value: object) -> str:
    return check(value, "run id")


def check_task_id(value: object) -> str:
    return check(value, "task id")


def check_pathspec(pathspec: object, parts: int, kind: str) -> list[str]:
    """Split a ``Flow/run_id/step/task_id/name`` pathspec of ``parts`` components and
    check each one; raise InvalidNameError naming the pathspec and the bad part."""
    labels = ["flow name", "run id", "step name", "task id", "artifact name"][:parts]
    example = "/".join(["Flow", "run_id", "step", "task_id", "name"][:parts])
    if not isinstance(pathspec, str):
        raise InvalidNameError(
            f"{kind} pathspec {shown(pathspec)} must be a string of the form '{example}'."
        )
    pieces = pathspec.strip("/").split("/")
    if len(pieces) != parts:
        raise InvalidNameError(f"{kind} pathspec {shown(pathspec)} is not of the form '{example}'.")
    for label, piece in zip(labels, pieces, strict=True):
        code_name = label.endswith("name")  # flow, step, artifact: may start with '_'
        if not is_valid(piece, code_name):
            try:
                check(piece, label, code_name)
            except InvalidNameError as exc:
                raise InvalidNameError(f"{kind} pathspec {shown(pathspec)}: {exc}") from None
    return pieces
