"""Flow parameters: ``Parameter``, ``JSONType`` and ``IncludeFile``.

A parameter is declared at class level and read in every step as ``self.<attr>``.
Its value comes from, in order: the command line (``--name value``), the
environment (``FLOWBOOK_RUN_<NAME>``, then Metaflow's ``METAFLOW_RUN_<NAME>``), the
default. Values are converted and checked before any task runs; an error names the
parameter. Parameters are stored as artifacts of the run and cannot be assigned.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from . import jsonio
from .exceptions import ParameterError
from .plain import Plain

TYPE_CHECKING = False  # typing costs ~6 ms to import; annotations are strings here
if TYPE_CHECKING:
    from typing import Any


class _JSONTypeMarker:
    """The type of a parameter whose value is JSON text, decoded before the run."""

    name = "JSON"

    def __repr__(self) -> str:
        return "JSONType"


JSONType = _JSONTypeMarker()

#: The texts a boolean parameter, or a flag from the environment, reads as True / False.
TRUE_TEXTS = {"1", "true", "t", "yes", "y", "on"}
FALSE_TEXTS = {"0", "false", "f", "no", "n", "off"}


def parameter_env_name(name: str) -> str:
    """The environment variable that gives parameter ``name`` a value:
    ``FLOWBOOK_RUN_<NAME>`` (dashes become underscores)."""
    return "FLOWBOOK_RUN_" + name.upper().replace("-", "_")


class ParameterContext(Plain):
    """What a deploy-time parameter function (``default=callable``) is called with."""

    def __init__(self, flow_name: str, user_name: str, parameter_name: str) -> None:
        self.flow_name = flow_name
        self.user_name = user_name
        self.parameter_name = parameter_name


class Parameter:
    """A value given to a run from outside, immutable during the run.

    ``Parameter('creature', help=..., required=True)``; ``default=`` infers the type
    when ``type=`` is not given (str, int, float, bool, or ``JSONType``). A callable
    default is evaluated when the run starts (a deploy-time parameter).
    """

    is_file = False

    def __init__(
        self,
        name: str,
        default: Any = None,
        type: Any = None,  # noqa: A002 - Metaflow's keyword
        help: str | None = None,  # noqa: A002
        required: bool = False,
        show_default: bool = True,
        **_ignored: Any,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ParameterError(f"A Parameter needs a name string, got {name!r}.")
        self.name = name
        self.default = default
        self.help = help or ""
        self.required = required
        self.show_default = show_default
        self.type = type if type is not None else _infer_type(default)
        self.attribute_name: str | None = None  # set by FlowSpec's metaclass

    # The descriptor protocol makes `self.alpha` in a step read the run's value and
    # makes `self.alpha = ...` fail with a clear message.
    def __set_name__(self, owner: type, attribute_name: str) -> None:
        self.attribute_name = attribute_name

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        if instance is None:
            return self
        return instance._read_parameter(self.attribute_name)

    def __set__(self, instance: Any, value: Any) -> None:
        instance._refuse_parameter_assignment(self.attribute_name)

    @property
    def type_name(self) -> str:
        if self.type is JSONType:
            return "JSON"
        return getattr(self.type, "__name__", str(self.type))

    def env_names(self) -> list[str]:
        key = self.name.upper().replace("-", "_")
        return [parameter_env_name(self.name), f"METAFLOW_RUN_{key}"]

    def convert(self, value: Any, flow_name: str = "") -> Any:
        """Turn a command-line string (or a Python value) into the parameter's type."""
        where = f"Parameter '{self.name}'" + (f" of flow {flow_name}" if flow_name else "")
        try:
            return _convert(self.type, value)
        except (ValueError, TypeError) as exc:
            raise ParameterError(
                f"{where} expects {self.type_name}, got {value!r}: {exc}"
            ) from None

    def resolve_default(self, flow_name: str) -> Any:
        if callable(self.default) and not isinstance(self.default, type):
            ctx = ParameterContext(flow_name, _user_name(), self.name)
            return self.default(ctx)
        return self.default

    def __repr__(self) -> str:
        return f"Parameter({self.name!r}, type={self.type_name})"


class IncludeFile(Parameter):
    """A parameter whose value is the content of a file, versioned with the run.

    On the command line the value is a path; the run stores the file's content (text
    when ``is_text``, else bytes) so that it stays readable after the file changes.
    """

    is_file = True

    def __init__(
        self,
        name: str,
        required: bool = False,
        is_text: bool = True,
        encoding: str = "utf-8",
        help: str | None = None,  # noqa: A002
        default: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(name, default=default, type=str, help=help, required=required, **kwargs)
        self.is_text = is_text
        self.encoding = encoding

    @property
    def type_name(self) -> str:
        return "file path"

    def convert(self, value: Any, flow_name: str = "") -> Any:
        path = os.path.expanduser(str(value))
        try:
            with open(path, "rb") as handle:
                content = handle.read()
        except OSError as exc:
            raise ParameterError(
                f"IncludeFile '{self.name}' of flow {flow_name}: cannot read {path!r} "
                f"({exc.strerror or exc})."
            ) from None
        if not self.is_text:
            return content
        try:
            return content.decode(self.encoding)
        except UnicodeDecodeError as exc:
            raise ParameterError(
                f"IncludeFile '{self.name}' of flow {flow_name}: {path!r} is not "
                f"{self.encoding} text ({exc}); use is_text=False for binary files."
            ) from None


def _infer_type(default: Any) -> Any:
    if default is None or callable(default):
        return str
    if isinstance(default, bool):
        return bool
    if isinstance(default, int):
        return int
    if isinstance(default, float):
        return float
    if isinstance(default, (dict, list)):
        return JSONType
    return str


def _convert(kind: Any, value: Any) -> Any:
    if kind is JSONType:
        return jsonio.loads(value) if isinstance(value, (str, bytes)) else value
    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in TRUE_TEXTS:
            return True
        if text in FALSE_TEXTS:
            return False
        raise ValueError("not a boolean (use true or false)")
    if kind is int:
        if isinstance(value, bool):
            raise TypeError("a boolean is not an integer")
        if isinstance(value, float) and not value.is_integer():
            raise ValueError("not an integer")
        return int(value)
    if kind is float:
        if isinstance(value, bool):
            raise TypeError("a boolean is not a number")
        return float(value)
    if kind is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise TypeError(f"a {type(value).__name__} is not a string")
        return str(value)
    if callable(kind):
        return kind(value)
    raise TypeError(f"unsupported parameter type {kind!r}")


def _user_name() -> str:
    for var in ("FLOWBOOK_USER", "METAFLOW_USER", "USER", "USERNAME"):
        if os.environ.get(var):
            return os.environ[var]
    return "unknown"


def _reserved_names() -> frozenset[str]:
    from .options import OPTIONS  # os, exceptions and plain only: already loaded here

    names = {name[2:] for option in OPTIONS for name in option.names}
    # Names click, resume and the task entry point use besides the options table's,
    # and Metaflow's (a flow moved from Metaflow must not take them either).
    names |= {"tags", "namespace", "params", "help"}
    names |= {"run-id", "task-id", "input-paths", "split-index", "retry-count"}
    names |= {"max-user-code-retries", "origin-run-id"}
    return frozenset(names)


#: Names the command line uses itself (every option of :mod:`flowbook.options`, both
#: spellings of a flag, and a few more): a parameter may not take them.
RESERVED_PARAMETER_NAMES = _reserved_names()


def flow_parameters(flow_cls: type) -> dict[str, Parameter]:
    """The class's parameters by attribute name, in definition order (bases first)."""
    found: dict[str, Parameter] = {}
    for klass in reversed(flow_cls.__mro__):
        for attr_name, value in vars(klass).items():
            if isinstance(value, Parameter):
                found[attr_name] = value
    names: dict[str, str] = {}
    for attr_name, param in found.items():
        if param.name.replace("_", "-") in RESERVED_PARAMETER_NAMES:
            raise ParameterError(
                f"Flow {flow_cls.__name__}: parameter name '{param.name}' (attribute "
                f"'{attr_name}') is reserved for an option of the command line; choose "
                "another name."
            )
        if param.name in names:
            raise ParameterError(
                f"Flow {flow_cls.__name__}: attributes '{names[param.name]}' and "
                f"'{attr_name}' both declare a parameter named '{param.name}'."
            )
        names[param.name] = attr_name
    return found


def convert_given(
    flow_name: str, parameters: Mapping[str, Parameter], given: Mapping[str, Any]
) -> dict[str, Any]:
    """Only the values given (by parameter name), converted, by attribute name.

    What a resume checks against the origin run's values: nothing is defaulted.
    """
    _refuse_unknown(flow_name, parameters, given)
    by_name = {param.name: (attr, param) for attr, param in parameters.items()}
    return {by_name[n][0]: by_name[n][1].convert(v, flow_name) for n, v in given.items()}


def _refuse_unknown(
    flow_name: str, parameters: Mapping[str, Parameter], given: Mapping[str, Any]
) -> None:
    known = {param.name for param in parameters.values()}
    unknown = [name for name in given if name not in known]
    if unknown:
        raise ParameterError(
            f"Flow {flow_name} has no parameter {', '.join(repr(u) for u in unknown)} "
            f"(its parameters: {', '.join(sorted(known)) or 'none'})."
        )


def resolve_parameters(
    flow_name: str,
    parameters: Mapping[str, Parameter],
    given: Mapping[str, Any],
    environ: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Values for every parameter, by attribute name, checked and converted.

    ``given`` maps parameter names (as on the command line) to raw values; values of
    IncludeFile parameters are paths. Raises ParameterError naming the parameter.
    """
    environ = os.environ if environ is None else environ
    _refuse_unknown(flow_name, parameters, given)
    values: dict[str, Any] = {}
    for attr_name, param in parameters.items():
        if param.name in given and given[param.name] is not None:
            values[attr_name] = param.convert(given[param.name], flow_name)
            continue
        env_value = next((environ[k] for k in param.env_names() if k in environ), None)
        if env_value is not None:
            values[attr_name] = param.convert(env_value, flow_name)
            continue
        default = param.resolve_default(flow_name)
        if default is None:
            if param.required:
                raise ParameterError(
                    f"Flow {flow_name}: missing required parameter '{param.name}' "
                    f"(give --{param.name} VALUE or set {param.env_names()[0]})."
                )
            values[attr_name] = None
            continue
        values[attr_name] = param.convert(default, flow_name)
    return values
