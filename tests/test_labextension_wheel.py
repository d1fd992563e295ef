"""The wheel carries the prebuilt JupyterLab extension: installed without node, it is enabled.

Builds a wheel of the checkout (the extension in flowbook/labextension is built by
``make test``; the build hook skips a built one), installs it into a fresh prefix
with no Node.js on PATH, and asks ``jupyter labextension list`` there.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BUILT = REPO / "flowbook" / "labextension" / "static" / "style.js"
SHARE = "share/jupyter/labextensions/flowbook"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    if not BUILT.exists():
        pytest.skip("the extension is not built (make test builds it: jlpm build:prod)")
    out = tmp_path_factory.mktemp("wheel")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(REPO)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (found,) = out.glob("flowbook-*.whl")
    return found


def test_the_wheel_holds_the_extension_as_shared_data(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    data = [n.split(".data/data/", 1)[1] for n in names if ".data/data/" in n]
    assert f"{SHARE}/package.json" in data
    assert f"{SHARE}/install.json" in data
    assert any(re.fullmatch(rf"{SHARE}/static/remoteEntry\.[0-9a-f]+\.js", n) for n in data)
    # built output only once: not inside the package as well
    assert not [n for n in names if n.startswith("flowbook/labextension")]
    entry_points = zipfile.ZipFile(wheel).read(
        next(n for n in names if n.endswith("entry_points.txt"))
    )
    assert b"flowbook = flowbook.cli.main:main" in entry_points
    assert b"[papermill.engine]" in entry_points


def test_installed_without_node_the_extension_is_enabled(wheel, tmp_path):
    # A fresh environment of its own: `pip install --prefix` would first uninstall the
    # project's editable install from this one.
    prefix = tmp_path / "prefix"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(prefix)], check=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(prefix / "bin" / "python")]
        + ["install", "-q", "--no-deps", str(wheel)],
        check=True,
        capture_output=True,
    )
    bin_dir = Path(sys.executable).parent
    env = {
        "PATH": str(bin_dir),  # the venv's programs only: no node
        "HOME": str(tmp_path),
        "JUPYTER_PATH": str(prefix / "share" / "jupyter"),
    }
    assert not any((bin_dir / name).exists() for name in ("node", "nodejs"))
    listed = subprocess.run(
        [str(bin_dir / "jupyter"), "labextension", "list"],
        capture_output=True,
        text=True,
        env=env,
    )
    text = re.sub(r"\x1b\[[0-9;]*m", "", listed.stdout + listed.stderr)
    lines = [line.strip() for line in text.splitlines()]
    assert "flowbook v0.1.0 enabled OK (python, flowbook)" in lines, text
    assert str(prefix / "share" / "jupyter" / "labextensions") in text
    assert os.path.exists(prefix / SHARE / "static" / "style.js")
