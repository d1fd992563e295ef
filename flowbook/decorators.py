"""Step decorators (``@retry``, ``@catch``, ``@timeout``, ``@resources``, ``@reuse``) and ``@schedule``.

A decorator does not wrap the step: it records a :class:`DecoratorSpec` on the step
function, which the graph carries to the scheduler (retries, timeouts, catch) and to
the exporters (resources, schedule). Each works bare (``@retry``) or with arguments
(``@retry(times=2)``), above or below ``@step``. ``--with retry:times=2`` on the
command line adds a decorator to every step that does not already have it.
"""

from __future__ import annotations

from collections.abc import Callable

from .exceptions import FlowbookError
from .plain import Plain

TYPE_CHECKING = False  # typing costs ~6 ms to import; annotations are strings here
if TYPE_CHECKING:
    from typing import Any

STEP_DECORATOR_DEFAULTS: dict[str, dict[str, Any]] = {
    "retry": {"times": 3, "minutes_between_retries": 2},
    "catch": {"var": None, "print_exception": True},
    "timeout": {"seconds": 0, "minutes": 0, "hours": 0},
    "resources": {"cpu": 1, "gpu": None, "memory": 4096, "disk": None},
    "reuse": {"enabled": True},
}


class DecoratorSpec(Plain):
    """A step decorator by name, with its attributes (``retry``, ``{"times": 2}``)."""

    def __init__(self, name: str, attributes: dict[str, Any] | None = None) -> None:
        self.name = name
        self.attributes: dict[str, Any] = dict(attributes or {})

    def to_dict(self) -> dict:
        return {"name": self.name, "attributes": dict(self.attributes)}


def _make_step_decorator(name: str) -> Callable:
    defaults = STEP_DECORATOR_DEFAULTS[name]

    def attach(func: Any, attributes: dict[str, Any]) -> Any:  # any callable: it gains attributes
        unknown = sorted(set(attributes) - set(defaults))
        if unknown:
            raise FlowbookError(
                f"@{name} on step '{getattr(func, '__name__', func)}' does not take "
                f"{', '.join(unknown)} (it takes {', '.join(defaults)})."
            )
        existing = list(getattr(func, "_flowbook_decorators", []))
        if any(d.name == name for d in existing):
            raise FlowbookError(f"@{name} is given twice on step '{func.__name__}'.")
        existing.append(DecoratorSpec(name, {**defaults, **attributes}))
        func._flowbook_decorators = existing
        return func

    def decorator(func: Callable | None = None, **attributes: Any) -> Callable:
        if func is not None and callable(func) and not attributes:
            return attach(func, {})
        return lambda f: attach(f, attributes)

    decorator.__name__ = name
    decorator.__doc__ = f"The @{name} step decorator (defaults: {defaults})."
    return decorator


retry = _make_step_decorator("retry")
catch = _make_step_decorator("catch")
timeout = _make_step_decorator("timeout")
resources = _make_step_decorator("resources")
_reuse = _make_step_decorator("reuse")


def reuse(enabled: Any = True, **attributes: Any) -> Any:
    """``@reuse(False)``: never reuse this step's earlier results (``--reuse``); for a
    step that reads the clock, the network or data outside the flow. ``@reuse`` and
    ``@reuse(True)`` are the default."""
    if callable(enabled):  # bare @reuse
        return _reuse(enabled)
    if not isinstance(enabled, bool):
        raise FlowbookError(f"@reuse takes True or False, not {enabled!r}.")
    return _reuse(enabled=enabled, **attributes)


def schedule(
    flow_cls: type | None = None,
    *,
    cron: str | None = None,
    daily: bool = True,
    hourly: bool = False,
    weekly: bool = False,
    timezone: str | None = None,
) -> Any:
    """Flow decorator: when a deployed flow (Argo, Step Functions) runs on its own."""

    def attach(cls: Any) -> Any:  # a FlowSpec subclass: it gains an attribute
        cls._flowbook_schedule = {
            "cron": cron,
            "daily": daily,
            "hourly": hourly,
            "weekly": weekly,
            "timezone": timezone,
        }
        return cls

    return attach(flow_cls) if flow_cls is not None else attach


def parse_decospec(text: str) -> DecoratorSpec:
    """``retry`` or ``retry:times=2,minutes_between_retries=0`` from ``--with``."""
    name, _, args = text.partition(":")
    name = name.strip()
    if name not in STEP_DECORATOR_DEFAULTS:
        raise FlowbookError(
            f"--with {text}: unknown decorator '{name}' "
            f"(known: {', '.join(sorted(STEP_DECORATOR_DEFAULTS))})."
        )
    attributes: dict[str, Any] = dict(STEP_DECORATOR_DEFAULTS[name])
    for item in filter(None, (a.strip() for a in args.split(","))):
        key, sep, value = item.partition("=")
        if not sep or key not in attributes:
            raise FlowbookError(
                f"--with {text}: '{item}' is not one of {', '.join(attributes)} as key=value."
            )
        attributes[key] = _literal(value)
    return DecoratorSpec(name, attributes)


def _literal(value: str) -> Any:
    import ast

    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value


def step_settings(decorators: list[DecoratorSpec], step_name: str) -> dict[str, Any]:
    """What the scheduler needs from a step's decorators: attempts, timeout, catch."""
    settings: dict[str, Any] = {
        "max_attempts": 1,
        "retry_delay": 0.0,
        "timeout": None,
        "catch": None,
        "reuse": True,
    }
    for spec in decorators:
        attrs = spec.attributes
        try:
            if spec.name == "retry":
                settings["max_attempts"] = int(attrs["times"]) + 1
                settings["retry_delay"] = float(attrs["minutes_between_retries"]) * 60
            elif spec.name == "timeout":
                seconds = (
                    float(attrs["seconds"] or 0)
                    + 60 * float(attrs["minutes"] or 0)
                    + 3600 * float(attrs["hours"] or 0)
                )
                settings["timeout"] = seconds if seconds > 0 else None
            elif spec.name == "reuse":
                if not isinstance(attrs.get("enabled", True), bool):
                    raise ValueError(attrs)  # --with reuse:enabled=no, say
                settings["reuse"] = attrs.get("enabled", True)
            elif spec.name == "catch":
                settings["catch"] = {
                    "var": attrs.get("var"),
                    "print_exception": bool(attrs.get("print_exception", True)),
                }
        except (TypeError, ValueError):
            raise FlowbookError(
                f"@{spec.name} on step '{step_name}' has an invalid value: {attrs}."
            ) from None
    return settings
