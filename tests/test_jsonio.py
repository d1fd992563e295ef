"""flowbook.jsonio reads and writes exactly what the json package does."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from flowbook import jsonio

VALUES = [
    {},
    [],
    {"flow": "F", "run_id": "123", "n": 3, "x": 2.5, "ok": True, "none": None},
    {"nested": [{"a": [1, 2, {"b": 'ü ☃ \n " \\ \u0001'}]}], "big": 10**30, "neg": -0.0},
    {"floats": [1e-300, 1.7976931348623157e308, 0.1, 3.0]},
    {3: "int key", 1.5: "float key", True: "bool key"},
    {None: "none key", "s": 1},
    "just a string",
    42,
    [[[]]],
]


@pytest.mark.parametrize("value", VALUES)
def test_dumps_writes_what_json_writes(value):
    assert jsonio.dumps(value) == json.dumps(value, separators=(",", ":"))
    if not (isinstance(value, dict) and None in value):  # None and str keys do not sort
        expected = json.dumps(value, separators=(",", ":"), sort_keys=True)
        assert jsonio.dumps(value, sort_keys=True) == expected


@pytest.mark.parametrize("value", VALUES)
def test_loads_reads_what_json_reads(value):
    text = json.dumps(value, separators=(",", ":"))
    assert jsonio.loads(text) == json.loads(text)
    assert jsonio.loads(text.encode()) == json.loads(text)
    assert jsonio.loads(bytearray(f"  {text} \n".encode())) == json.loads(text)


def test_special_values_and_defaults():
    assert math.isnan(jsonio.loads("NaN")) and jsonio.loads("[-Infinity]") == [-math.inf]
    assert jsonio.dumps([math.inf, -math.inf]) == "[Infinity,-Infinity]"
    assert jsonio.dumps({"when": object}, default=str) == json.dumps(
        {"when": object}, separators=(",", ":"), default=str
    )
    with pytest.raises(TypeError, match="not JSON serializable"):
        jsonio.dumps({"x": object()})
    with pytest.raises(ValueError, match="Circular reference"):
        loop: list = []
        loop.append(loop)
        jsonio.dumps(loop)


@pytest.mark.parametrize("bad", ["", "{", '{"a": 1} x', '{"a": 1}{}', "[1,]", b"\xff\xfe"])
def test_bad_text_raises_json_errors(bad):
    with pytest.raises(ValueError) as caught:
        jsonio.loads(bad)
    with pytest.raises(ValueError) as expected:
        json.loads(bad)
    assert type(caught.value) is type(expected.value)


def test_bad_text_in_a_process_without_json_raises_json_errors():
    code = (
        "import flowbook.jsonio as j\n"
        "try:\n    j.loads('{not json')\n"
        "except Exception as exc:\n    print(type(exc).__module__, type(exc).__name__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "json.decoder JSONDecodeError", out.stderr


def test_importing_it_imports_neither_json_nor_re():
    code = (
        "import sys; before = set(sys.modules);"
        "import flowbook.jsonio as j; j.loads(j.dumps({'a': [1, 2.5]}));"
        "print(sorted(m for m in ('json', 're', 'enum') if m in set(sys.modules) - before))"
    )
    out = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "[]", out.stderr


def test_a_failed_dumps_leaves_nothing_behind():
    record = {"ok": [1, 2], "bad": object()}
    with pytest.raises(TypeError):
        jsonio.dumps(record)
    del record["bad"]  # the same containers, fixed: encoded as json would
    assert jsonio.dumps(record) == json.dumps(record, separators=(",", ":"))


@pytest.mark.parametrize("odd", [memoryview(b"[1]"), [49], None, 1.5])
def test_loads_refuses_what_json_refuses(odd):
    with pytest.raises(TypeError) as caught:
        jsonio.loads(odd)
    with pytest.raises(TypeError) as expected:
        json.loads(odd)
    assert str(caught.value) == str(expected.value)
