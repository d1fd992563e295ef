"""``@schedule`` as cron: Argo's (and Kubernetes') 5 fields, AWS EventBridge's 6.

``@schedule(hourly=True)`` is ``0 * * * *``, ``daily=True`` ``0 0 * * *``,
``weekly=True`` ``0 0 * * 0`` (Sundays at midnight); ``cron=`` takes either dialect:
5 fields (``minute hour day-of-month month day-of-week``, days of the week 0-6 from
Sunday) or AWS's 6 (``minute hour day-of-month month day-of-week year``, ``?`` for
"any", days of the week 1-7 from Sunday). Conversions refuse what the other dialect
cannot say (``L``, ``W``, ``#``, a year other than ``*``) with a message naming the
expression. Shared by Argo Workflows (5 fields) and Step Functions (6 fields).
"""

from __future__ import annotations

from ..exceptions import FlowbookError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

HOURLY = "0 * * * *"
DAILY = "0 0 * * *"
WEEKLY = "0 0 * * 0"

_MONTHS = ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"]
_DAYS = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"]
#: (name, lowest, highest, names) of the five standard fields.
_FIELDS = (
    ("minute", 0, 59, None),
    ("hour", 0, 23, None),
    ("day of month", 1, 31, None),
    ("month", 1, 12, _MONTHS),
    ("day of week", 0, 7, _DAYS),
)


class CronError(FlowbookError):
    """A cron expression that is invalid or cannot be converted."""


def schedule_of(flow_cls: type) -> dict[str, Any] | None:
    """The ``@schedule`` attributes of a flow class, or None."""
    return getattr(flow_cls, "_flowbook_schedule", None)


def schedule_cron(schedule: dict[str, Any]) -> str:
    """The 5-field cron of ``@schedule``'s attributes (cron, weekly, hourly, daily:
    the first given wins, as in Metaflow). CronError naming a bad expression."""
    if schedule.get("cron"):
        return to_five_fields(str(schedule["cron"]))
    if schedule.get("weekly"):
        return WEEKLY
    if schedule.get("hourly"):
        return HOURLY
    return DAILY


def _check_value(text: str, low: int, high: int, names: list[str] | None) -> int:
    upper = text.upper()
    if names and upper in names:
        return names.index(upper) + (1 if names is _MONTHS else 0)
    if not text.isdigit():
        raise ValueError(f"'{text}' is not a number")
    value = int(text)
    if not low <= value <= high:
        raise ValueError(f"{value} is outside {low}-{high}")
    return value


def _check_field(text: str, low: int, high: int, names: list[str] | None) -> None:
    for part in text.split(","):
        base, slash, step = part.partition("/")
        if slash and (not step.isdigit() or int(step) == 0):
            raise ValueError(f"'{part}' has a bad step")
        if base == "*":
            continue
        start, dash, end = base.partition("-")
        first = _check_value(start, low, high, names)
        if dash and _check_value(end, low, high, names) < first:
            raise ValueError(f"'{base}' is a range backwards")


def check_five_fields(cron: str) -> str:
    """``cron`` if it is a valid 5-field expression; CronError naming it otherwise."""
    fields = cron.split()
    if len(fields) != 5:
        raise CronError(
            f"Invalid cron expression '{cron}': expected 5 fields (minute hour "
            "day-of-month month day-of-week) or AWS's 6."
        )
    for text, (what, low, high, names) in zip(fields, _FIELDS, strict=True):
        try:
            _check_field(text, low, high, names)
        except ValueError as exc:
            raise CronError(f"Invalid cron expression '{cron}': {what} {exc}.") from None
    return " ".join(fields)


def to_five_fields(cron: str) -> str:
    """A 5-field expression from either dialect (AWS's 6 fields converted: ``?`` as
    ``*``, days of the week 1-7 as 0-6, the year must be ``*``). CronError naming
    the expression if it is invalid or cannot be converted."""
    fields = cron.split()
    if len(fields) == 5:
        if "?" in cron:
            raise CronError(f"Invalid cron expression '{cron}': '?' needs AWS's 6 fields.")
        return check_five_fields(cron)
    if len(fields) != 6:
        return check_five_fields(cron)  # the message for a wrong count
    minute, hour, dom, month, dow, year = fields
    if year != "*":
        raise CronError(
            f"Cron expression '{cron}' names a year ({year}); Argo's 5-field cron cannot."
        )
    for value in (minute, hour, dom, month, dow):
        for letter in ("L", "W", "#"):
            if letter in value.upper().replace("WED", "").replace("JUL", ""):
                raise CronError(
                    f"Cron expression '{cron}' uses '{letter}', which Argo's 5-field cron "
                    "does not have."
                )
    dom = "*" if dom == "?" else dom
    dow = "*" if dow == "?" else _shift_days(dow, -1, cron)
    return check_five_fields(" ".join((minute, hour, dom, month, dow)))


def to_six_fields(cron: str) -> str:
    """AWS EventBridge's 6-field form of a 5-field (or already 6-field) expression:
    days of the week 0-6 as 1-7, ``?`` in day-of-month or day-of-week (AWS requires
    one of them). CronError naming the expression if it is invalid."""
    fields = cron.split()
    if len(fields) == 6:
        to_five_fields(cron)  # validates
        return " ".join(fields)
    minute, hour, dom, month, dow = check_five_fields(cron).split()
    if dow != "*" and dom != "*":
        raise CronError(
            f"Cron expression '{cron}' gives both a day of month and a day of week; "
            "AWS allows only one."
        )
    dow = "?" if dow == "*" else _shift_days(dow.replace("7", "0"), 1, cron)
    if dow != "?" and dom == "*":
        dom = "?"
    return " ".join((minute, hour, dom, month, dow, "*"))


def _shift_days(field: str, delta: int, cron: str) -> str:
    """Numeric days of the week moved by ``delta`` (names and ``*`` unchanged)."""
    parts = []
    for part in field.split(","):
        base, slash, step = part.partition("/")
        if base != "*":
            pieces = []
            for piece in base.split("-"):
                if piece.isdigit():
                    value = int(piece) + delta
                    if not 0 <= value <= 7:
                        raise CronError(
                            f"Invalid cron expression '{cron}': day of week {piece} is "
                            "out of range."
                        )
                    piece = str(value)
                pieces.append(piece)
            base = "-".join(pieces)
        parts.append(base + slash + step)
    return ",".join(parts)


# ---------------------------------------------------------------------- AWS EventBridge
AWS_HOURLY = "0 * * * ? *"
AWS_DAILY = "0 0 * * ? *"
AWS_WEEKLY = "0 0 ? * SUN *"
#: (name, lowest, highest, names) of AWS's six fields.
_AWS_FIELDS = (
    ("minute", 0, 59, None),
    ("hour", 0, 23, None),
    ("day of month", 1, 31, None),
    ("month", 1, 12, _MONTHS),
    ("day of week", 1, 7, _DAYS),
    ("year", 1970, 2199, None),
)


def _check_aws_field(index: int, text: str) -> None:
    """One field of an AWS cron expression; ValueError saying what is wrong."""
    _, low, high, names = _AWS_FIELDS[index]
    if text == "?":
        if index not in (2, 4):
            raise ValueError("cannot be '?'")
        return
    if index == 2 and text.upper() in ("L", "LW"):
        return
    if index == 2 and text.upper().endswith("W") and text[:-1].isdigit():
        _check_value(text[:-1], low, high, None)
        return
    if index == 4:
        upper = text.upper()
        if "#" in upper:
            day, _, nth = upper.partition("#")
            _check_value(day, low, high, None if day.isdigit() else _DAYS)
            if not nth.isdigit() or not 1 <= int(nth) <= 5:
                raise ValueError(f"'{text}': the week after '#' must be 1-5")
            return
        if upper.endswith("L") and upper[:-1]:
            _check_value(upper[:-1], low, high, _DAYS)
            return
        if upper == "L":
            return
        # day names are 1-7 from Sunday here (names.index + 1)
        for part in upper.split(","):
            base, slash, step = part.partition("/")
            if slash and (not step.isdigit() or int(step) == 0):
                raise ValueError(f"'{part}' has a bad step")
            if base == "*":
                continue
            for piece in base.split("-"):
                if piece in _DAYS:
                    continue
                _check_value(piece, low, high, None)
        return
    _check_field(text, low, high, names)


def check_six_fields(cron: str) -> str:
    """``cron`` if it is a valid AWS EventBridge expression (6 fields, ``?`` in exactly
    one of day-of-month and day-of-week, ``L``/``W``/``#`` where AWS allows them);
    CronError naming it otherwise."""
    fields = cron.split()
    if len(fields) != 6:
        raise CronError(
            f"Invalid cron expression '{cron}': AWS EventBridge expects 6 fields (minute "
            "hour day-of-month month day-of-week year)."
        )
    for index, text in enumerate(fields):
        try:
            _check_aws_field(index, text)
        except ValueError as exc:
            raise CronError(
                f"Invalid cron expression '{cron}': {_AWS_FIELDS[index][0]} {exc}."
            ) from None
    if (fields[2] == "?") == (fields[4] == "?"):
        raise CronError(
            f"Invalid cron expression '{cron}': AWS needs '?' in exactly one of day of "
            "month and day of week."
        )
    return " ".join(fields)


def schedule_aws_cron(schedule: dict[str, Any]) -> str:
    """The 6-field EventBridge cron of ``@schedule``'s attributes (cron, weekly, hourly,
    daily: the first given wins). A 5-field ``cron=`` is converted; CronError naming
    a bad expression."""
    if schedule.get("cron"):
        cron = str(schedule["cron"])
        if len(cron.split()) == 5:
            return to_six_fields(cron)
        return check_six_fields(cron)
    if schedule.get("weekly"):
        return AWS_WEEKLY
    if schedule.get("hourly"):
        return AWS_HOURLY
    return AWS_DAILY
