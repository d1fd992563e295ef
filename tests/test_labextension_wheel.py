"""The wheel carries the prebuilt JupyterLab extension: installed without node, it is enabled.

Builds a wheel of the checkout (the extension in flowbook/labextension is built by
``make test``; the build hook skips a built one), installs it into a fresh prefix
with no Node.js on PATH, and asks ``jupyter labextension list`` there. The sdist
carries the extension's sources and its built output, so that a wheel is built from
it on a machine without Node.js.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BUILT = REPO / "flowbook" / "labextension" / "static" / "style.js"
SHARE = "share/jupyter/labextensions/flowbook"


def _built(out: Path, *command: str) -> Path:
    """``python -m COMMAND OUT REPO``: the one flowbook archive it leaves in ``out``."""
    result = subprocess.run(
        [sys.executable, "-m", *command, str(out), str(REPO)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (found,) = out.glob("flowbook-*")
    return found


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    if not BUILT.exists():
        pytest.skip("the extension is not built (make test builds it: jlpm build:prod)")
    return _built(tmp_path_factory.mktemp("wheel"), "pip", "wheel", "--no-deps", "-q", "-w")


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


@pytest.fixture(scope="module")
def sdist(tmp_path_factory) -> Path:
    if not BUILT.exists():
        pytest.skip("the extension is not built (make test builds it: jlpm build:prod)")
    return _built(tmp_path_factory.mktemp("sdist"), "build", "--sdist", "--outdir")


def _members(sdist: Path) -> set[str]:
    with tarfile.open(sdist) as archive:
        return {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}


def test_the_sdist_holds_the_sources_and_the_built_extension(sdist):
    members = _members(sdist)
    for needed in (
        "pyproject.toml",
        "README.md",
        "flowbook/__init__.py",
        "flowbook/datastore/s3direct.py",
        "extension/package.json",
        "extension/install.json",
        "extension/src/index.ts",
        "flowbook/labextension/package.json",
        "flowbook/labextension/static/style.js",
    ):
        assert needed in members, needed
    assert any(
        re.fullmatch(r"flowbook/labextension/static/remoteEntry\.[0-9a-f]+\.js", n) for n in members
    )
    for left_out in ("extension/node_modules", "extension/lib", ".ci", "benchmarks", ".venv"):
        assert not [n for n in members if n == left_out or n.startswith(left_out + "/")], left_out


def test_a_wheel_builds_from_the_sdist_without_node(sdist, tmp_path):
    bin_dir = Path(sys.executable).parent
    assert not any((bin_dir / name).exists() for name in ("node", "nodejs"))
    out = tmp_path / "wheel"
    env = dict(os.environ, PATH=str(bin_dir))  # no node: jlpm cannot build, must not need to
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(sdist)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (wheel,) = out.glob("flowbook-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.endswith(f"/{SHARE}/static/style.js") for n in names), names[:20]
    assert "flowbook/datastore/s3direct.py" in names
