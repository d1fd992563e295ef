"""The code package a deployed flow's pods run: made at deploy time, content-hashed.

A gzipped tar of:

- ``flow/``: the flow file and the other Python files of its directory (recursively,
  skipping hidden directories, ``__pycache__`` and virtualenvs), or for a notebook
  only its exported flow file, so exploration cells never reach it;
- ``flowbook/``: flowbook's own Python files, so every pod runs the flowbook that
  deployed the flow whatever the image holds;
- ``MANIFEST.json``: the flow's name, the flow file's name, flowbook's version.

The tar is deterministic (sorted names, no times or owners), so the same code gives
the same SHA-256 and is uploaded once, to ``packages/<Flow>/<sha256>.tgz`` under the
datastore's root. A pod fetches and unpacks it with :mod:`flowbook.deploy.pod`.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile

from ..exceptions import FlowbookError

#: Directories never packaged.
SKIPPED_DIRS = {"__pycache__", "node_modules", "site-packages", "venv", "env"}
#: Above this many bytes of flow code a package is refused (a data directory by mistake).
MAX_CODE_BYTES = 50 * 1024 * 1024
MANIFEST = "MANIFEST.json"


class CodePackage:
    """A built package: its bytes, their SHA-256, and where it goes in the datastore."""

    def __init__(self, flow_name: str, flow_file: str, data: bytes) -> None:
        self.flow_name = flow_name
        self.flow_file = flow_file
        self.data = data
        self.sha = hashlib.sha256(data).hexdigest()

    @property
    def key(self) -> str:
        """The package's path under the datastore's root."""
        return package_key(self.flow_name, self.sha)


def package_key(flow_name: str, sha: str) -> str:
    return f"packages/{flow_name}/{sha}.tgz"


def _python_files(directory: str) -> list[tuple[str, str]]:
    """(path on disk, name in the package) of the .py files under ``directory``."""
    found = []
    for root, dirs, files in os.walk(directory):
        dirs[:] = sorted(
            d for d in dirs if not d.startswith(".") and d not in SKIPPED_DIRS and "-" not in d
        )
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(root, name)
                found.append((path, os.path.relpath(path, directory).replace(os.sep, "/")))
    return found


def _flowbook_files() -> list[tuple[str, str]]:
    import flowbook

    package_dir = os.path.dirname(os.path.abspath(flowbook.__file__))
    return [
        (path, "flowbook/" + name)
        for path, name in _python_files(package_dir)
        if not name.startswith("examples/")
    ]


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    info.mtime = 0
    tar.addfile(info, io.BytesIO(data))


def build_package(
    flow_name: str,
    flow_file: str | None = None,
    flow_source: str | None = None,
) -> CodePackage:
    """The package of a flow file (with its directory's Python files) or, with
    ``flow_source``, of a notebook's exported flow (that one file only)."""
    from flowbook import __version__

    entries: dict[str, bytes] = {}
    if flow_source is not None:
        file_name = f"{flow_name}.py"
        entries[f"flow/{file_name}"] = flow_source.encode()
    else:
        if flow_file is None:
            raise FlowbookError("build_package needs a flow file or a flow's source.")
        directory = os.path.dirname(os.path.abspath(flow_file))
        file_name = os.path.basename(flow_file)
        total = 0
        for path, name in _python_files(directory):
            with open(path, "rb") as handle:
                entries[f"flow/{name}"] = handle.read()
            total += len(entries[f"flow/{name}"])
            if total > MAX_CODE_BYTES:
                raise FlowbookError(
                    f"The Python files under {directory} exceed {MAX_CODE_BYTES >> 20} MB; "
                    "deploy from a directory holding only the flow's code."
                )
        if f"flow/{file_name}" not in entries:
            with open(flow_file, "rb") as handle:
                entries[f"flow/{file_name}"] = handle.read()
    for path, name in _flowbook_files():
        with open(path, "rb") as handle:
            entries[name] = handle.read()
    manifest = {"flow_name": flow_name, "flow_file": file_name, "flowbook_version": __version__}
    entries[MANIFEST] = json.dumps(manifest, sort_keys=True).encode()
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(entries):
            _add(tar, name, entries[name])
    data = gzip.compress(raw.getvalue(), mtime=0)
    return CodePackage(flow_name, file_name, data)


def upload_package(package: CodePackage, datastore_url: str) -> str:
    """Store the package under its hash (once); its key."""
    from ..datastore import open_storage

    storage = open_storage(datastore_url)
    if not storage.exists(package.key):
        storage.write_bytes(package.key, package.data)
    return package.key


def unpack(data: bytes, sha: str, directory: str) -> dict:
    """Check ``data`` against ``sha`` and unpack it into ``directory`` (made if
    missing, reused when a complete unpacking is there); the manifest."""
    got = hashlib.sha256(data).hexdigest()
    if got != sha:
        raise FlowbookError(f"The code package's SHA-256 is {got}, expected {sha}.")
    done = os.path.join(directory, ".complete")
    if not os.path.exists(done):
        os.makedirs(directory, exist_ok=True)
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            for member in tar.getmembers():
                name = member.name
                if not member.isfile() or name.startswith("/") or ".." in name.split("/"):
                    raise FlowbookError(f"The code package holds an unsafe entry {name!r}.")
            tar.extractall(directory, filter="data")
        with open(done, "w") as handle:
            handle.write(sha)
    with open(os.path.join(directory, MANIFEST)) as handle:
        return json.load(handle)
