"""Artifacts pickle with the standard pickler unless they must travel by value."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import textwrap

import pytest

from flowbook.datastore import pickling


def _in_fresh_process(code: str) -> dict:
    """Run ``code`` (which prints one JSON line) in a new interpreter."""
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_plain_values_do_not_import_cloudpickle():
    result = _in_fresh_process(
        """
        import json, pickle, sys, collections, datetime
        from flowbook.datastore import pickling
        values = [1, "x", [1, 2.5], {"a": (1, None)}, {1, 2}, b"raw",
                  collections.OrderedDict(a=1), datetime.date(2020, 1, 2), len]
        same = all(pickle.loads(pickling.dumps(v)) == v for v in values)
        print(json.dumps({"same": same, "cloudpickle": "cloudpickle" in sys.modules}))
        """
    )
    assert result == {"same": True, "cloudpickle": False}


def test_classes_and_functions_of_main_travel_by_value():
    """A value made in ``__main__`` loads in a process that never saw its class."""
    result = _in_fresh_process(
        """
        import json, subprocess, sys
        from flowbook.datastore import pickling

        class Point:
            def __init__(self, x):
                self.x = x
            def double(self):
                return self.x * 2

        def helper(v):
            return v + 1

        data = pickling.dumps({"point": Point(4), "helper": helper, "fn": lambda v: v * 3})
        reader = (
            "import pickle, sys, json; d = pickle.loads(sys.stdin.buffer.read()); "
            "print(json.dumps([d['point'].double(), d['helper'](1), d['fn'](2)]))"
        )
        out = subprocess.run([sys.executable, "-c", reader], input=data, capture_output=True)
        print(json.dumps({"loaded": json.loads(out.stdout), "cloudpickle": "cloudpickle" in sys.modules}))
        """
    )
    assert result == {"loaded": [8, 2, 6], "cloudpickle": True}


def test_large_buffers_stay_out_of_band():
    np = pytest.importorskip("numpy")
    array = np.arange(1000, dtype=np.float64)
    buffers: list[pickle.PickleBuffer] = []
    stream = pickling.dumps(array, buffer_callback=buffers.append)
    assert len(buffers) == 1 and buffers[0].raw().nbytes == array.nbytes
    assert len(stream) < 500
    assert (pickle.loads(stream, buffers=buffers) == array).all()
    in_band = pickling.dumps(array)
    assert len(in_band) > array.nbytes


def test_unpicklable_values_raise():
    import threading

    with pytest.raises(TypeError):
        pickling.dumps(threading.Lock())


def test_code_sent_elsewhere_keeps_its_file_names():
    namespace: dict = {}
    source = "def outer(x):\n    def inner():\n        return 1 / x\n    return inner()\n"
    exec(compile(source, "<step outer>", "exec"), namespace)
    loaded = pickle.loads(pickling.dumps_code(namespace["outer"]))
    assert loaded.__code__.co_filename == "<step outer>"
    inner_code = next(c for c in loaded.__code__.co_consts if hasattr(c, "co_filename"))
    assert inner_code.co_filename == "<step outer>"
    assert loaded(4) == 0.25
    with pytest.raises(ZeroDivisionError) as caught:
        loaded(0)
    assert [str(entry.path) for entry in caught.traceback[-2:]] == ["<step outer>"] * 2


BY_VALUE_FOREACH = """
from flowbook import FlowSpec, step


class Box:
    def __init__(self, value):
        self.value = value


class ByValueFlow(FlowSpec):
    @step
    def start(self):
        self.items = list(range(4))
        self.next(self.pack, foreach="items")

    @step
    def pack(self):
        self.box = Box(self.input)
        self.next(self.gather)

    @step
    def gather(self, inputs):
        self.values = [i.box.value for i in inputs]
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    ByValueFlow()
"""


def test_the_task_server_imports_cloudpickle_once_a_task_needed_it(run_flow, client):
    """Only the first task that pickles by value imports cloudpickle itself; the
    scheduler then has the server import it, so later tasks start with it."""
    result = run_flow(BY_VALUE_FOREACH, "run", "--max-workers", "1")
    assert result.returncode == 0, result
    run = client.Flow("ByValueFlow").latest_run
    assert run["end"].task.data.values == [0, 1, 2, 3]
    warmed = {t.id: t._record.get("warm") for t in run["pack"]}
    assert list(warmed.values()) == [["cloudpickle"], None, None, None]  # in task order
    assert run["start"].task._record.get("warm") is None
    assert client.Flow("ByValueFlow").latest_run["pack"].task.data.box.value == 0


LARGE_VALUE_FOREACH = """
from flowbook import FlowSpec, step


class LargeValueFlow(FlowSpec):
    @step
    def start(self):
        self.small = "x" * 100  # hashed by CPython's built-in SHA-256
        self.items = list(range(3))
        self.next(self.grow, foreach="items")

    @step
    def grow(self):
        self.blob = bytes([self.input]) * (200 << 10)  # over 64 KiB: hashed by hashlib
        self.next(self.gather)

    @step
    def gather(self, inputs):
        self.sizes = [len(i.blob) for i in inputs]
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    LargeValueFlow()
"""


def test_hashlib_is_imported_only_for_large_values_then_kept_warm(run_flow, client):
    result = run_flow(LARGE_VALUE_FOREACH, "run", "--max-workers", "1")
    assert result.returncode == 0, result
    run = client.Flow("LargeValueFlow").latest_run
    assert run["gather"].task.data.sizes == [200 << 10] * 3
    assert run["start"].task._record.get("warm") is None
    warmed = [t._record.get("warm") for t in run["grow"]]
    assert warmed == [["hashlib"], None, None]  # in task order
    assert run["grow"].task.data.blob[:1] in (b"\x00", b"\x01", b"\x02")
