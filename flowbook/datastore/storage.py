"""Raw storage under one root URL: bytes in, bytes out, every write atomic.

Two implementations of one small interface:

* :class:`LocalStorage` for a directory (plain paths and ``file://`` URLs). It uses
  ``os`` directly because it sits on every task's hot path; each object is written
  to a temporary file under ``<root>/tmp`` and renamed into place, so a reader never
  sees half an object, even when the writer is killed with SIGKILL.
* :class:`FsspecStorage` for any other fsspec URL (``s3://...``, ``memory://...``).
  A single PUT is atomic on object stores, so objects are uploaded whole.

Paths are ``/``-separated and relative to the root.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable

from ..exceptions import DatastoreError

TYPE_CHECKING = False  # typing costs ~6 ms to import; annotations are strings here
if TYPE_CHECKING:
    from typing import Any, BinaryIO


class Storage:
    """The interface both storages implement."""

    url: str
    is_local: bool = False

    def exists(self, path: str) -> bool:
        raise NotImplementedError

    def read_bytes(self, path: str) -> bytes:
        raise NotImplementedError

    def open_read(self, path: str) -> BinaryIO:
        raise NotImplementedError

    def read_buffer(self, path: str) -> bytearray | memoryview:
        """The whole object as a writable buffer (so values built on it are writable)."""
        with self.open_read(path) as handle:
            data = bytearray(handle.read())
        return data

    def read_buffer_and_identity(self, path: str) -> tuple[bytearray | memoryview, list | None]:
        """``read_buffer``, and the identity of the file it read (see ``file_identity``)
        where the storage has files."""
        return self.read_buffer(path), None

    def write_bytes(self, path: str, data: bytes) -> None:
        """Write ``data`` at ``path`` atomically, replacing any earlier object."""
        self.write_chunks(path, [data])

    def write_chunks(self, path: str, chunks: Iterable[bytes | memoryview]) -> None:
        """Write the concatenation of ``chunks`` at ``path`` atomically."""
        raise NotImplementedError

    def list(self, path: str) -> list[str]:
        """Names (not paths) directly under ``path``; empty when it does not exist."""
        raise NotImplementedError

    def local_path(self, path: str) -> str | None:
        """A filesystem path for ``path`` when the storage is local, else None."""
        return None

    def check_writable(self) -> None:
        """Raise DatastoreError (one line) unless objects can be written here."""
        probe = f"tmp/probe-{os.urandom(8).hex()}"
        try:
            self.write_bytes(probe, b"ok")
            self.delete(probe)
        except DatastoreError:
            raise
        except Exception as exc:  # every backend fails differently
            raise DatastoreError(f"Datastore {self.url} is not writable: {exc}") from None

    def delete(self, path: str) -> None:
        raise NotImplementedError


def file_identity(status: os.stat_result) -> list:
    """What tells one version of a file from another: device, inode, size, and the
    modification and change times in nanoseconds. Rewriting a file, replacing it,
    or even restoring its modification time afterwards changes it (the change time
    cannot be set)."""
    return [status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns, status.st_ctime_ns]


#: Per datastore root: whether its file system has fine-grained change times.
_FINE_TIMESTAMPS: dict[str, bool] = {}


def _start_reader(reader: Any, fd: int, size: int) -> None:
    """Size the new file and start ``reader`` on a read-only mapping of all of it (the
    mapping shares the page cache, so it sees each write as soon as it returns)."""
    import mmap

    os.ftruncate(fd, size)
    reader.start_on(memoryview(mmap.mmap(fd, size, access=mmap.ACCESS_READ)))


#: Objects from this size on are mapped, not read (see LocalStorage.read_buffer).
MAP_FROM = 1 << 20
#: Large buffers are written in slices of this size.
WRITE_SLICE = 8 << 20


class LocalStorage(Storage):
    is_local = True

    def __init__(self, root: str, create: bool = True) -> None:
        root = os.path.abspath(os.path.expanduser(root))
        self.url = root
        self.root = root
        self._tmp = os.path.join(root, "tmp")
        self._made_dirs: set[str] = set()
        if not os.path.isdir(root):
            parent = os.path.dirname(root)
            if not create or not os.path.isdir(parent):
                raise DatastoreError(
                    f"Datastore {root} does not exist"
                    + ("" if os.path.isdir(parent) else f" (nor does its parent {parent})")
                    + "; create it or point FLOWBOOK_DATASTORE / --datastore elsewhere."
                )
            try:
                os.makedirs(root, exist_ok=True)
            except OSError as exc:
                raise DatastoreError(
                    f"Cannot create datastore {root}: {exc.strerror or exc}."
                ) from None

    def _full(self, path: str) -> str:
        return os.path.join(self.root, path)

    def local_path(self, path: str) -> str:
        return self._full(path)

    def exists(self, path: str) -> bool:
        return os.path.exists(self._full(path))

    def read_bytes(self, path: str) -> bytes:
        with open(self._full(path), "rb") as handle:
            return handle.read()

    def open_read(self, path: str) -> BinaryIO:
        return open(self._full(path), "rb")

    def ensure_dir(self, directory: str) -> None:
        if directory in self._made_dirs:
            return
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as exc:
            raise self._write_error(directory, exc) from None
        self._made_dirs.add(directory)

    def read_buffer(self, path: str) -> bytearray | memoryview:
        """The whole object as a writable buffer. From ``MAP_FROM`` bytes on it is a
        copy-on-write mapping of the file: nothing is read until it is touched, no
        fresh memory is filled, and writing to it never changes the file."""
        return self.read_buffer_and_identity(path)[0]

    def read_buffer_and_identity(self, path: str) -> tuple[bytearray | memoryview, list]:
        fd = os.open(self._full(path), os.O_RDONLY)
        try:
            status = os.fstat(fd)
            identity = file_identity(status)
            size = status.st_size
            if size >= MAP_FROM:
                import mmap

                return memoryview(mmap.mmap(fd, size, access=mmap.ACCESS_COPY)), identity
            buffer = bytearray(size)
            view = memoryview(buffer)
            while view:
                got = os.readv(fd, [view])
                if not got:  # the file shrank under us: the caller sees a short buffer
                    return memoryview(buffer)[: size - len(view)], identity
                view = view[got:]
            return buffer, identity
        finally:
            os.close(fd)

    def write_chunks(self, path: str, chunks: Iterable[bytes | memoryview]) -> None:
        self.commit_temp(self.write_temp(path, chunks), path)

    def write_temp(
        self, path: str, chunks: Iterable[bytes | memoryview], reader: Any = None
    ) -> str:
        """Write ``chunks`` to a new temporary file (errors name ``path``); its name.

        ``reader`` (a ``hashing.PieceHashers``) reads the file while it is written:
        it is started on a read-only mapping of the whole file, and told after each
        slice how many bytes are in."""
        self.ensure_dir(self._tmp)
        tmp = os.path.join(self._tmp, f"{os.getpid()}-{os.urandom(8).hex()}")
        mode = os.O_WRONLY if reader is None else os.O_RDWR
        try:
            fd = os.open(tmp, mode | os.O_CREAT | os.O_EXCL, 0o644)
        except OSError as exc:
            raise self._write_error(path, exc) from None
        try:
            if reader is not None:
                chunks = list(chunks)
                _start_reader(reader, fd, sum(memoryview(c).nbytes for c in chunks))
            written = 0
            with os.fdopen(fd, "wb", buffering=0) as handle:
                for chunk in chunks:
                    view = memoryview(chunk).cast("B")
                    while view:  # in slices: large buffers go out without a copy
                        count = handle.write(view[:WRITE_SLICE])
                        view = view[count:]
                        written += count
                        if reader is not None:
                            reader.written(written)
        except BaseException as exc:
            self.discard_temp(tmp)
            if isinstance(exc, OSError):
                raise self._write_error(path, exc) from None
            raise
        return tmp

    def commit_temp(
        self, tmp: str, path: str, keep_existing: bool = False, identify: bool = False
    ) -> list | None:
        """Rename a temporary file to ``path`` (atomic); with ``keep_existing`` an
        object already there stays and the temporary file is dropped. With
        ``identify``, the identity of the file now at ``path`` when it is this one."""
        target = self._full(path)
        try:
            self.ensure_dir(os.path.dirname(target))
            if keep_existing and os.path.exists(target):
                self.discard_temp(tmp)
                return None
            os.replace(tmp, target)
        except BaseException as exc:
            self.discard_temp(tmp)
            if isinstance(exc, OSError):
                raise self._write_error(path, exc) from None
            raise
        if not identify or not self.fine_timestamps():
            return None
        try:
            return file_identity(os.stat(target))
        except OSError:  # written all the same; readers will hash it
            return None

    def check_writable(self) -> None:
        super().check_writable()
        self.fine_timestamps()  # probed here, before tasks are forked, so they inherit it

    def fine_timestamps(self) -> bool:
        """Whether writing to a file here always changes its change time (ctime), even
        twice within a clock tick: true on file systems with fine-grained timestamps
        (multigrain ctime, Linux 6.13+ on ext4, xfs, btrfs, tmpfs); false with coarse
        ones, where a file's identity cannot vouch for its bytes. Probed once per
        datastore and process (and inherited by forked tasks)."""
        known = _FINE_TIMESTAMPS.get(self.root)
        if known is None:
            known = _FINE_TIMESTAMPS[self.root] = self._probe_timestamps()
        return known

    def _probe_timestamps(self) -> bool:
        probe = os.path.join(self._tmp, f"{os.getpid()}-{os.urandom(8).hex()}.clock")
        changes = set()
        try:
            self.ensure_dir(self._tmp)
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                for byte in (b"a", b"b", b"c"):
                    os.write(fd, byte)
                    changes.add(os.fstat(fd).st_ctime_ns)
            finally:
                os.close(fd)
                os.unlink(probe)
        except (OSError, DatastoreError):
            return False
        return len(changes) == 3

    @staticmethod
    def discard_temp(tmp: str) -> None:
        try:
            os.unlink(tmp)
        except OSError:
            pass

    def _write_error(self, path: str, exc: OSError) -> DatastoreError:
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return DatastoreError(f"Datastore {self.root} is read-only: cannot write {path}.")
        if exc.errno == errno.ENOSPC:
            return DatastoreError(f"Datastore {self.root} is full: cannot write {path}.")
        return DatastoreError(f"Datastore {self.root}: cannot write {path}: {exc.strerror or exc}.")

    def list(self, path: str) -> list[str]:
        try:
            return os.listdir(self._full(path))
        except (FileNotFoundError, NotADirectoryError):
            return []

    def delete(self, path: str) -> None:
        try:
            os.unlink(self._full(path))
        except FileNotFoundError:
            pass


class FsspecStorage(Storage):
    def __init__(self, url: str, storage_options: dict | None = None) -> None:
        import fsspec  # imported only for remote datastores: it is slow to import

        self.url = url.rstrip("/")
        try:
            self.fs, self.root = fsspec.core.url_to_fs(self.url, **(storage_options or {}))
        except (ImportError, ValueError) as exc:
            raise DatastoreError(f"Cannot open datastore {url}: {exc}") from None
        self.root = self.root.rstrip("/")

    def _full(self, path: str) -> str:
        return f"{self.root}/{path}" if path else self.root

    def exists(self, path: str) -> bool:
        return self.fs.exists(self._full(path))

    def read_bytes(self, path: str) -> bytes:
        return self.fs.cat_file(self._full(path))

    def open_read(self, path: str) -> BinaryIO:
        return self.fs.open(self._full(path), "rb")

    def read_buffer(self, path: str) -> bytearray | memoryview:
        with self.fs.open(self._full(path), "rb") as handle:
            buffer = bytearray(handle.size)
            got = handle.readinto(buffer)
        return buffer if got == len(buffer) else memoryview(buffer)[:got]

    def write_chunks(self, path: str, chunks: Iterable[bytes | memoryview]) -> None:
        data = b"".join(bytes(c) if isinstance(c, memoryview) else c for c in chunks)
        try:
            self.fs.pipe_file(self._full(path), data)
        except PermissionError as exc:
            raise DatastoreError(f"Datastore {self.url} is read-only: {exc}") from None
        except OSError as exc:
            raise DatastoreError(f"Datastore {self.url}: cannot write {path}: {exc}") from None

    def list(self, path: str) -> list[str]:
        full = self._full(path)
        try:
            entries = self.fs.ls(full, detail=False, refresh=True)
        except FileNotFoundError:
            return []
        prefix = full.rstrip("/") + "/"
        names = []
        for entry in entries:
            entry = entry.rstrip("/")
            if entry.startswith(prefix):
                names.append(entry[len(prefix) :])
            else:
                names.append(entry.rsplit("/", 1)[-1])
        return [n for n in names if n]

    def delete(self, path: str) -> None:
        try:
            self.fs.rm_file(self._full(path))
        except FileNotFoundError:
            pass


def default_datastore_url() -> str:
    return os.environ.get("FLOWBOOK_DATASTORE") or os.path.join(os.getcwd(), ".flowbook")


def open_storage(url: str | None = None, create: bool = True) -> Storage:
    """The storage for a datastore URL (default: ``FLOWBOOK_DATASTORE`` or ./.flowbook)."""
    url = url or default_datastore_url()
    if url.startswith("file://"):
        return LocalStorage(url[len("file://") :], create=create)
    if "://" not in url:
        return LocalStorage(url, create=create)
    return FsspecStorage(url)
