"""Raw storage under one root URL: bytes in, bytes out, every write atomic.

Two implementations of one small interface:

* :class:`LocalStorage` for a directory (plain paths and ``file://`` URLs). It uses
  ``os`` directly because it sits on every task's hot path; each object is written
  to a temporary file under ``<root>/tmp`` and renamed into place, so a reader never
  sees half an object, even when the writer is killed with SIGKILL.
* :class:`FsspecStorage` for any other fsspec URL (``s3://...``, ``memory://...``).
  A single PUT is atomic on object stores, so objects are uploaded whole. On S3
  ``open_storage`` gives ``s3storage.DirectS3Storage`` instead where it can, whose
  requests are sent without s3fs.

Paths are ``/``-separated and relative to the root.

Reading a datastore unpickles what is in it, so whoever can write a datastore can
run code as whoever reads it (see docs/security.md). A local root that every user
can write is refused unless ``FLOWBOOK_TRUST_DATASTORE=1``, and one owned by
another user is warned about once per process (:func:`check_trust`).
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Iterable

from ..exceptions import DatastoreError, FlowbookWarning

TYPE_CHECKING = False  # typing costs ~6 ms to import; annotations are strings here
if TYPE_CHECKING:
    import builtins
    from types import FrameType
    from typing import Any, BinaryIO


#: Set to 1 to use a local datastore that every user can write, knowingly.
TRUST_ENV = "FLOWBOOK_TRUST_DATASTORE"
#: Below this much free space, a local datastore's disk is reported as full.
LOW_SPACE = 1 << 20
#: fsspec protocols whose file system lives in one process's memory: tasks, which
#: run in processes of their own, would neither see nor keep what is written there.
PROCESS_LOCAL = {"memory": "fsspec's memory file system lives in one process's memory"}


class UntrustedDatastoreError(DatastoreError):
    """A local datastore that every user can write: reading it could run their code."""

    headline = "untrusted datastore"


class DatastoreNotSharedError(DatastoreError):
    """A datastore that the run's task processes cannot share (process-local)."""

    headline = "datastore not shared between processes"


class DatastoreWriteError(DatastoreError):
    """An object could not be written: the disk is full, the datastore read-only...

    ``root`` is the datastore, ``what`` what could not be written (a path, or
    ``"artifact 'model'"``), ``reason`` the system's words (``"No space left on
    device"``) and ``errno`` its number (None when unknown)."""

    headline = "cannot write to the datastore"

    def __init__(
        self,
        message: str = "",
        root: str = "",
        what: str = "",
        reason: str = "",
        errno: int | None = None,
    ) -> None:
        super().__init__(message)
        self.root = root
        self.what = what
        self.reason = reason
        self.errno = errno

    @classmethod
    def from_os_error(cls, root: str, what: str, exc: OSError) -> DatastoreWriteError:
        reason = exc.strerror or str(exc)
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            message = f"Datastore {root} is read-only: cannot write {what}."
        elif exc.errno == errno.ENOSPC:
            message = f"Datastore {root} is full: cannot write {what}."
        else:
            message = f"Datastore {root}: cannot write {what}: {reason}."
        return cls(message, root, what, reason, exc.errno)

    def about(self, what: str) -> DatastoreWriteError:
        """The same failure, saying that it was ``what`` that could not be written."""
        if self.errno is not None:
            return self.from_os_error(self.root, what, OSError(self.errno, self.reason))
        message = f"Datastore {self.root}: cannot write {what}: {self.reason}."
        return type(self)(message, self.root, what, self.reason, self.errno)


class DatastoreTrustWarning(FlowbookWarning):
    """A local datastore is owned by another user, who can run code as its readers."""


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

    def write_new(self, path: str, chunks: Iterable[bytes | memoryview]) -> bool:
        """Write the concatenation of ``chunks`` at ``path`` atomically unless an
        object is there already (it is left as it is); whether this call wrote it.
        For content-addressed objects, whose bytes their name fixes."""
        if self.exists(path):
            return False
        self.write_chunks(path, chunks)
        return True

    def prepare_for_tasks(self) -> None:
        """Called in a process that will fork task processes, before it forks: do
        once what each task would otherwise do for itself."""

    def list(self, path: str) -> list[str]:
        """Names (not paths) directly under ``path``; empty when it does not exist."""
        raise NotImplementedError

    def task_modules(self) -> builtins.list[str]:  # (list: the method above)
        """Modules a process that runs tasks imports to reach this storage (a Dask
        worker's task server imports them before it forks tasks)."""
        return []

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

    def process_local_reason(self) -> str | None:
        """Why objects written here are seen by this process only, or None."""
        return None

    def check_usable_by_tasks(self) -> None:
        """What a run checks before it starts a task: the datastore is shared by
        processes (tasks run in processes of their own and write their results
        here) and writable. Raises a one-line DatastoreError otherwise."""
        reason = self.process_local_reason()
        if reason is not None:
            raise DatastoreNotSharedError(
                f"Datastore {self.url} cannot hold a run: {reason}, and every task runs "
                "in a process of its own. Use a directory or a shared object store "
                "(s3://...) instead."
            )
        self.check_writable()
        self.prepare_for_tasks()

    def space_problem(self) -> str | None:
        """A phrase saying that the datastore's disk is (nearly) full, e.g. "the disk
        holding /root/.flowbook is full (12 KiB free)"; None when it is not, or when
        nobody can tell (object stores)."""
        return None

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
#: Local roots this process has checked and accepted (forked tasks inherit it).
_TRUSTED_ROOTS: set[str] = set()
#: Directories a datastore creates: never writable by every user (the umask may
#: still take the group's write bit away).
DIR_MODE = 0o775


def replace_file(path: str, data: bytes) -> bool:
    """Write ``data`` to the local file ``path`` whole or not at all (a temporary
    file renamed over it); False, leaving nothing behind, when it cannot be written."""
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        return False
    return True


def make_dirs(path: str) -> None:
    """``os.makedirs(path, exist_ok=True)``, with every directory it makes (not only
    the last, as ``os.makedirs`` does) in ``DIR_MODE``."""
    try:
        os.mkdir(path, DIR_MODE)
    except FileExistsError:
        return
    except FileNotFoundError:
        parent = os.path.dirname(path)
        if parent == path:
            raise
        make_dirs(parent)
        try:
            os.mkdir(path, DIR_MODE)
        except FileExistsError:
            pass


def trust_overridden() -> bool:
    """Whether ``FLOWBOOK_TRUST_DATASTORE`` says to use any local datastore knowingly."""
    return os.environ.get(TRUST_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def check_trust(root: str) -> None:
    """Refuse a local datastore root that every user can write; warn (once per process
    and root) when another user owns it. One ``os.stat`` the first time a process
    meets a root, nothing after.

    Reading a datastore unpickles what is in it: whoever can write it can run code
    as the reader. A world-writable root is refused even with the sticky bit (as
    ``/tmp``): the sticky bit stops others from deleting or renaming what is there,
    not from creating what is not there yet (``flows/``, ``blobs/``, a new flow's
    directory), and this check looks at the root alone. ``FLOWBOOK_TRUST_DATASTORE=1``
    accepts such a root, and silences the warning."""
    if root in _TRUSTED_ROOTS:
        return
    if trust_overridden():
        _TRUSTED_ROOTS.add(root)
        return
    try:
        status = os.stat(root)
    except OSError:  # missing or unreadable: the storage itself says so when used
        return
    if status.st_mode & 0o002:
        raise UntrustedDatastoreError(
            f"Datastore {root} is writable by every user (mode {status.st_mode & 0o7777:o}), "
            "so anyone on this machine could plant data in it that runs code as you when "
            "flowbook reads it; use a directory only you can write (chmod o-w it if it is "
            f"yours), or set {TRUST_ENV}=1 to use it knowingly."
        )
    geteuid = getattr(os, "geteuid", None)
    me = geteuid() if geteuid is not None else status.st_uid
    # root (uid 0) can run code as anyone already: owning a datastore adds nothing
    if status.st_uid not in (me, 0):
        _warn_other_owner(root, status.st_uid)
    _TRUSTED_ROOTS.add(root)


def _warn_other_owner(root: str, uid: int) -> None:
    import warnings

    try:
        import pwd

        owner = f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except (ImportError, KeyError):
        owner = f"uid {uid}"
    warnings.warn(
        f"Datastore {root} is owned by another user, {owner}, who can run code as you "
        f"through what you read from it; set {TRUST_ENV}=1 if you trust them.",
        DatastoreTrustWarning,
        stacklevel=_caller_stacklevel(),
    )


def _caller_stacklevel() -> int:
    """The stacklevel of the first frame outside flowbook (so the warning names the
    user's line, not flowbook's)."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
    frame: FrameType | None = sys._getframe(1)
    level = 1
    while frame is not None and frame.f_code.co_filename.startswith(package):
        frame = frame.f_back
        level += 1
    return level


def _human_size(size: float) -> str:
    if size < 1024:
        return f"{size} bytes"
    for unit in ("KiB", "MiB", "GiB"):
        size /= 1024
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if size >= 10 else f"{size:.1f} {unit}"
    return ""  # pragma: no cover


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

    def __init__(self, root: str, create: bool = True, trusted: bool = False) -> None:
        """The datastore in directory ``root`` (created when missing if ``create`` and
        its parent exists). It is refused when every user can write it (see
        ``check_trust``) unless ``trusted``: the caller's process checked it already
        (a task, whose scheduler opened the same root before starting it)."""
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
                make_dirs(root)
            except OSError as exc:
                raise DatastoreError(
                    f"Cannot create datastore {root}: {exc.strerror or exc}."
                ) from None
        if not trusted:
            check_trust(root)

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
            make_dirs(directory)
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
            written = 0
            with os.fdopen(fd, "wb", buffering=0) as handle:  # closes fd whatever happens
                if reader is not None:
                    chunks = list(chunks)
                    _start_reader(reader, fd, sum(memoryview(c).nbytes for c in chunks))
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

    def _write_error(self, path: str, exc: OSError) -> DatastoreWriteError:
        if os.path.isabs(path):  # a directory ensure_dir could not make
            path = os.path.relpath(path, self.root)
        return DatastoreWriteError.from_os_error(self.root, path, exc)

    def space_problem(self) -> str | None:
        try:
            status = os.statvfs(self.root)
        except OSError:
            return None
        geteuid = getattr(os, "geteuid", None)
        # root may use the blocks reserved for it; others only the available ones
        blocks = status.f_bfree if geteuid is not None and geteuid() == 0 else status.f_bavail
        free = blocks * status.f_frsize
        if free < LOW_SPACE:
            return f"the disk holding {self.root} is full ({_human_size(free)} free)"
        if status.f_files and not status.f_favail:
            return f"the disk holding {self.root} is full (no free inodes)"
        return None

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


#: fsspec protocols whose file systems cache directory listings unless told not to.
LISTING_CACHE_PROTOCOLS = ("s3", "s3a", "gs", "gcs", "abfs", "az", "adl")
#: Large objects are read in ranges of this size, this many at once.
PARALLEL_PART_SIZE = 64 * 2**20
PARALLEL_PARTS = 8
#: On S3, objects from this size on are uploaded in parts of UPLOAD_PART_SIZE,
#: UPLOAD_PARTS at once (S3's minimum part size is 5 MiB).
MULTIPART_FROM = 64 * 2**20
UPLOAD_PART_SIZE = 16 * 2**20
UPLOAD_PARTS = 10
#: Blobs under this size are written with one conditional PUT (``If-None-Match: *``)
#: instead of a HEAD and a PUT; larger ones are looked for first (not sent twice).
CONDITIONAL_PUT_BELOW = 8 * 2**20
#: How many times a read whose body broke off is tried again.
READ_RETRIES = 3


#: This process's botocore session for S3 datastores (see _s3_session).
_S3_SESSION: list = []
#: This process's SSL contexts for S3 clients, by verify settings (see _s3_http_session).
_SSL_CONTEXTS: dict[tuple, Any] = {}
_HTTP_SESSION_CLASS: list = []
#: S3 clients made for the processes this one forks, and never used here, by the
#: file system's options: (the pid that made it, the file system holding it).
_SPARE_CLIENTS: dict[str, tuple[int, Any]] = {}


def _s3_session() -> Any:
    """One aiobotocore session per process for every S3 datastore it opens.

    A session holds no connection and no event loop, only what botocore read from
    its data files (S3's service model, the endpoint rules), which it keeps once its
    first client has read them. So it survives a fork: the scheduler's session has
    read them by the time it writes the run's record, the task server is forked
    after that, and every task's new S3 client starts from them instead of parsing
    them again (a 30-split foreach on moto: 5.1 s -> 3.9 s here). None when
    aiobotocore is not installed (s3fs then makes its own)."""
    if not _S3_SESSION:
        try:
            from aiobotocore.session import AioSession
        except ImportError:
            return None
        _S3_SESSION.append(AioSession())
    return _S3_SESSION[0]


def _s3_http_session() -> type | None:
    """aiobotocore's HTTP session class, made to share its SSL contexts within the
    process (and with the processes it forks); None when that is not possible.

    Every new S3 client builds an SSL context and loads the system's certificate
    bundle into it (about 30 ms of CPU, even for an ``http://`` endpoint). A task is
    a fresh process with a fresh client, so each task paid it; an SSL context is
    meant to be shared by connections, and the task server's, built before it forks,
    is shared by every task."""
    if _HTTP_SESSION_CLASS:
        return _HTTP_SESSION_CLASS[0]
    try:
        from aiobotocore.httpsession import AIOHTTPSession
    except ImportError:
        AIOHTTPSession = None  # noqa: N806
    build: Any = getattr(AIOHTTPSession, "_build_ssl_contexts", None)  # (aiobotocore: untyped)
    if AIOHTTPSession is None or build is None:
        _HTTP_SESSION_CLASS.append(None)
        return None

    class SharedSSLSession(AIOHTTPSession):
        def _build_ssl_contexts(self, proxy_url: Any) -> Any:
            key = (
                repr(getattr(self, "_verify", None)),
                getattr(self, "_cert_file", None),
                getattr(self, "_key_file", None),
                proxy_url,
            )
            contexts = _SSL_CONTEXTS.get(key)
            if contexts is None:
                contexts = _SSL_CONTEXTS[key] = build(self, proxy_url)
            return contexts

    _HTTP_SESSION_CLASS.append(SharedSSLSession)
    return SharedSSLSession


def _client_error_code(exc: BaseException) -> str:
    """The S3 error code (``"PreconditionFailed"``, ``"InvalidRange"``) behind an
    error s3fs translated, or ""."""
    cause = exc.__cause__ or exc.__context__
    response = getattr(cause, "response", None) or getattr(exc, "response", None)
    if isinstance(response, dict):
        return str((response.get("Error") or {}).get("Code", ""))
    return ""


def _body_errors() -> tuple[type[BaseException], ...]:
    """What a response body that broke off raises (aiohttp's and asyncio's errors)."""
    import asyncio

    errors: tuple[type[BaseException], ...] = (OSError, asyncio.TimeoutError)
    try:
        import aiohttp
    except ImportError:
        return errors
    return (*errors, aiohttp.ClientError)


def _write_failed(url: str, path: str, exc: OSError) -> DatastoreWriteError:
    if isinstance(exc, PermissionError):
        return DatastoreWriteError(
            f"Datastore {url} is read-only: {exc}", url, path, str(exc), exc.errno
        )
    return DatastoreWriteError(f"Datastore {url}: cannot write {path}: {exc}", url, path, str(exc))


class FsspecStorage(Storage):
    """Any fsspec file system. On S3 (s3fs), objects are read and written with S3's
    own requests, one per object where one is enough: ``exists`` is one HEAD (s3fs
    adds a LIST when the key is missing, to look for a directory), a record is read
    with one GET (s3fs's ``cat_file`` asks for the size first), a large object is
    read in ranges at once without asking for its size, and uploaded in parts from
    the value's own buffers."""

    #: S3 requests sent without s3fs (``s3storage.DirectS3Storage``); None here
    direct: Any = None

    def __init__(self, url: str, storage_options: dict | None = None) -> None:
        self.url = url.rstrip("/")
        self._options = dict(storage_options or {})
        self._fs: Any = None
        self._open_fs()

    @property
    def fs(self) -> Any:
        """The fsspec file system (made at first use by ``DirectS3Storage``)."""
        if self._fs is None:
            self._open_fs()
        return self._fs

    def _open_fs(self) -> None:
        import fsspec  # imported only for remote datastores: it is slow to import

        options = dict(self._options)
        protocol = self.url.split("://", 1)[0]
        if protocol in LISTING_CACHE_PROTOCOLS:
            # s3fs (and gcsfs, adlfs) cache directory listings per process: another
            # process's writes (a task on a Dask worker) would stay invisible here
            options.setdefault("use_listings_cache", False)
        is_s3 = protocol in ("s3", "s3a")
        if is_s3 and "session" not in options:
            session = _s3_session()
            if session is not None:
                options["session"] = session
        if is_s3:
            http_session = _s3_http_session()
            config = dict(options.get("config_kwargs") or {})
            if http_session is not None and "http_session_cls" not in config:
                config["http_session_cls"] = http_session
                options["config_kwargs"] = config
        endpoint = os.environ.get("FLOWBOOK_S3_ENDPOINT_URL")
        if endpoint and is_s3:
            client_kwargs = dict(options.get("client_kwargs") or {})
            client_kwargs.setdefault("endpoint_url", endpoint)
            options["client_kwargs"] = client_kwargs
        try:
            fs, root = fsspec.core.url_to_fs(self.url, **options)
        except (ImportError, ValueError, TypeError) as exc:
            raise DatastoreError(f"Cannot open datastore {self.url}: {exc}") from None
        self._fs, self.root = fs, root.rstrip("/")
        self.s3 = is_s3 and hasattr(fs, "_call_s3") and hasattr(fs, "split_path")
        if self.s3:
            self._adopt_spare_client()

    def task_modules(self) -> list[str]:
        """What a process that runs tasks on this datastore imports to reach it."""
        return ["fsspec", type(self.fs).__module__.split(".")[0]]

    def _options_key(self) -> str:
        """The file system's options, as a key that a forked process computes alike
        (fsspec's own token includes the process id)."""
        return repr(sorted(self.fs.storage_options.items(), key=lambda item: item[0]))

    def _adopt_spare_client(self) -> None:
        """In a process forked after ``prepare_for_tasks``: take the client the parent
        made for it, instead of making one (~12 ms of CPU, and the pages of the
        parent's botocore models it would touch and so copy). The client has never
        sent a request: it holds no connection and no event loop (aiobotocore makes
        its HTTP session at the first request, in this process's loop)."""
        token = self._options_key()
        spare = _SPARE_CLIENTS.get(token)
        if spare is None or spare[0] == os.getpid() or getattr(self.fs, "_s3", None) is not None:
            return
        del _SPARE_CLIENTS[token]  # this process's copy: adopted once
        spare_fs = spare[1]
        names = ("_s3", "_s3creator", "_kwargs_helper")
        if all(getattr(spare_fs, name, None) is not None for name in names):
            for name in names:
                setattr(self.fs, name, getattr(spare_fs, name))

    def _full(self, path: str) -> str:
        return f"{self.root}/{path}" if path else self.root

    def _s3_key(self, path: str) -> tuple[str, str]:
        bucket, key, _ = self.fs.split_path(self._full(path))
        return bucket, key

    def _sync(self, coroutine_function: Any, *args: Any, **kwargs: Any) -> Any:
        from fsspec.asyn import sync

        return sync(self.fs.loop, coroutine_function, *args, **kwargs)

    def prepare_for_tasks(self) -> None:
        """Do now, once, what every task process forked from this one would otherwise
        do for itself: on S3, read botocore's S3 model and endpoint rules into the
        session, build the SSL context, and make a spare client that each forked
        process takes as its own (see ``_adopt_spare_client``). No request is sent."""
        if not self.s3:
            return
        try:
            self.fs.connect()
            session_class = _s3_http_session()
            if session_class is not None:
                session_class()._build_ssl_contexts(None)
            token = self._options_key()
            spare = _SPARE_CLIENTS.get(token)
            if spare is None or spare[0] != os.getpid():
                # a client for the next forked process (see _adopt_spare_client)
                spare_fs = type(self.fs)(skip_instance_cache=True, **self.fs.storage_options)
                spare_fs.connect()
                _SPARE_CLIENTS[token] = (os.getpid(), spare_fs)
        except Exception:  # only ever a head start: each task makes its own client
            pass

    # ------------------------------------------------------------ reading
    def exists(self, path: str) -> bool:
        if not self.s3:
            return self.fs.exists(self._full(path))
        bucket, key = self._s3_key(path)
        try:
            self._sync(self.fs._call_s3, "head_object", Bucket=bucket, Key=key)
        except FileNotFoundError:
            return False
        return True

    def read_bytes(self, path: str) -> bytes:
        if not self.s3:
            return self.fs.cat_file(self._full(path))
        return bytes(self._sync(self._s3_read, *self._s3_key(path), False))

    def open_read(self, path: str) -> BinaryIO:
        return self.fs.open(self._full(path), "rb")

    def read_buffer(self, path: str) -> bytearray | memoryview:
        if self.s3:
            return self._sync(self._s3_read, *self._s3_key(path), True)
        full = self._full(path)
        if getattr(self.fs, "async_impl", False):
            size = self.fs.size(full)
            if size is not None and size >= PARALLEL_PART_SIZE * 2:
                return self._read_parts(full, size)
        with self.fs.open(full, "rb") as handle:
            buffer = bytearray(handle.size)
            got = handle.readinto(buffer)
        return buffer if got == len(buffer) else memoryview(buffer)[:got]

    async def _s3_read(self, bucket: str, key: str, in_parts: bool) -> bytearray:
        """The whole object in one buffer. Without ``in_parts``: one GET. With it:
        a GET of its first ``PARALLEL_PART_SIZE`` bytes, which also tells its size,
        then the rest in ranges, ``PARALLEL_PARTS`` at once (each only if the object
        is still the one first read: ``If-Match`` its ETag)."""
        import asyncio

        call = self.fs._call_s3
        if not in_parts:
            response = await call("get_object", Bucket=bucket, Key=key)
            return await self._s3_body(response, bucket, key, None, 0)
        try:
            response = await call(
                "get_object", Bucket=bucket, Key=key, Range=f"bytes=0-{PARALLEL_PART_SIZE - 1}"
            )
        except OSError as exc:
            if _client_error_code(exc) != "InvalidRange":
                raise
            # an empty object has no byte 0
            response = await call("get_object", Bucket=bucket, Key=key)
            return await self._s3_body(response, bucket, key, None, 0)
        total = response.get("ContentLength") or 0
        content_range = response.get("ContentRange") or ""
        if content_range.rpartition("/")[2].isdigit():
            total = int(content_range.rpartition("/")[2])
        buffer = bytearray(total)
        view = memoryview(buffer)
        first = await self._s3_body(response, bucket, key, view, 0)
        etag = response.get("ETag")
        limit = asyncio.Semaphore(PARALLEL_PARTS)

        async def fetch(start: int) -> None:
            end = min(start + PARALLEL_PART_SIZE, total)
            extra = {"IfMatch": etag} if etag else {}
            async with limit:
                part = await call(
                    "get_object", Bucket=bucket, Key=key, Range=f"bytes={start}-{end - 1}", **extra
                )
                await self._s3_body(part, bucket, key, view[start:end], start)

        await asyncio.gather(*(fetch(s) for s in range(first, total, PARALLEL_PART_SIZE)))
        return buffer

    async def _s3_body(
        self, response: dict, bucket: str, key: str, into: memoryview | None, start: int
    ) -> Any:
        """Read a GET's body: into ``into`` (exactly its length; the count read is
        returned), or whole (a bytearray). A body that breaks off is asked for again,
        from where it broke off (``READ_RETRIES`` times)."""
        body = response["Body"]
        filled = 0
        chunks: list[bytes] = []
        tries = 0
        while True:
            try:
                try:
                    async for chunk in body.iter_chunks(1 << 20):
                        if into is not None:
                            if filled + len(chunk) > len(into):
                                raise OSError(f"s3://{bucket}/{key}: longer than asked for")
                            into[filled : filled + len(chunk)] = chunk
                        else:
                            chunks.append(chunk)
                        filled += len(chunk)
                finally:
                    body.close()
                break
            except _body_errors() as exc:
                tries += 1
                if tries > READ_RETRIES or isinstance(exc, (FileNotFoundError, PermissionError)):
                    raise
                end = "" if into is None else str(start + len(into) - 1)
                extra = {"Range": f"bytes={start + filled}-{end}"}
                if response.get("ETag"):
                    extra["IfMatch"] = response["ETag"]
                response = await self.fs._call_s3("get_object", Bucket=bucket, Key=key, **extra)
                body = response["Body"]
        if into is None:
            return bytearray(b"".join(chunks))
        if filled != len(into) and len(into) <= (response.get("ContentLength") or 0):
            raise OSError(f"s3://{bucket}/{key}: short read at {start} ({filled} of {len(into)})")
        return filled

    def _read_parts(self, full: str, size: int) -> bytearray:
        """A large object read in ranges at once (as it was written: in parts)."""
        import asyncio

        from fsspec.asyn import sync

        buffer = bytearray(size)
        view = memoryview(buffer)
        limit = asyncio.Semaphore(PARALLEL_PARTS)

        async def fetch(start: int) -> None:
            end = min(start + PARALLEL_PART_SIZE, size)
            async with limit:
                data = await self.fs._cat_file(full, start=start, end=end)
            if len(data) != end - start:
                raise OSError(f"{full}: short read at {start} ({len(data)} of {end - start})")
            view[start:end] = data

        async def fetch_all() -> None:
            await asyncio.gather(*(fetch(s) for s in range(0, size, PARALLEL_PART_SIZE)))

        sync(self.fs.loop, fetch_all)
        return buffer

    # ------------------------------------------------------------ writing
    def write_chunks(self, path: str, chunks: Iterable[bytes | memoryview]) -> None:
        self._write(path, list(chunks), exclusive=False)

    def write_new(self, path: str, chunks: Iterable[bytes | memoryview]) -> bool:
        """On S3: a small object is one PUT with ``If-None-Match: *`` (S3 refuses it
        when the key exists); a large one is looked for first, so that it is not
        sent again."""
        parts = list(chunks)
        size = sum(memoryview(part).nbytes for part in parts)
        if not self.s3 or size >= CONDITIONAL_PUT_BELOW:
            return super().write_new(path, parts)
        return self._write(path, parts, exclusive=True)

    def _write(self, path: str, parts: list, exclusive: bool) -> bool:
        try:
            if self.s3:
                return self._sync(self._s3_write, *self._s3_key(path), parts, exclusive)
            # one copy at most: bytes.join takes memoryviews as they are
            data = parts[0] if len(parts) == 1 and isinstance(parts[0], bytes) else b"".join(parts)
            self.fs.pipe_file(self._full(path), data)
            return True
        except OSError as exc:
            raise _write_failed(self.url, path, exc) from None

    async def _s3_write(self, bucket: str, key: str, parts: list, exclusive: bool) -> bool:
        """PUT the concatenation of ``parts`` (one PUT, or a multipart upload from
        ``MULTIPART_FROM`` bytes on). With ``exclusive``, not over an existing object:
        False when there is one."""
        views = [memoryview(part).cast("B") for part in parts]
        size = sum(view.nbytes for view in views)
        call = self.fs._call_s3
        if size < MULTIPART_FROM:
            data = b"".join(views)
            extra = {"IfNoneMatch": "*"} if exclusive else {}
            try:
                await call("put_object", Bucket=bucket, Key=key, Body=data, **extra)
            except FileExistsError:
                return False
            except OSError as exc:
                # a conditional write racing another one for the same key
                if exclusive and _client_error_code(exc) in (
                    "PreconditionFailed",
                    "ConditionalRequestConflict",
                ):
                    return False
                raise
            return True
        await self._s3_multipart(bucket, key, views, size)
        return True

    async def _s3_multipart(self, bucket: str, key: str, views: list, size: int) -> None:
        """A multipart upload, ``UPLOAD_PARTS`` parts at once; each part is copied
        once from the value's buffers (S3 wants bytes), only while it is sent. The
        object appears whole when the upload completes, or not at all (aborted)."""
        import asyncio

        from .s3direct import slice_of

        call = self.fs._call_s3
        upload = await call("create_multipart_upload", Bucket=bucket, Key=key)
        upload_id = upload["UploadId"]
        limit = asyncio.Semaphore(UPLOAD_PARTS)
        offsets = list(range(0, size, UPLOAD_PART_SIZE))

        def part_bytes(start: int) -> bytes:
            return bytes(slice_of(views, start, min(start + UPLOAD_PART_SIZE, size)))

        async def send(number: int, start: int) -> dict:
            async with limit:
                out = await call(
                    "upload_part",
                    Bucket=bucket,
                    Key=key,
                    PartNumber=number,
                    UploadId=upload_id,
                    Body=part_bytes(start),
                )
            return {"PartNumber": number, "ETag": out["ETag"]}

        try:
            done = await asyncio.gather(*(send(i + 1, s) for i, s in enumerate(offsets)))
            await call(
                "complete_multipart_upload",
                Bucket=bucket,
                Key=key,
                UploadId=upload_id,
                MultipartUpload={"Parts": list(done)},
            )
        except BaseException:
            try:
                await call("abort_multipart_upload", Bucket=bucket, Key=key, UploadId=upload_id)
            except Exception:  # the upload is left for the bucket's lifecycle rules
                pass
            raise

    def process_local_reason(self) -> str | None:
        """Process-local when fsspec's file system (or one it wraps, as ``dir::`` or
        ``simplecache::`` do) keeps its files in this process's memory."""
        fs, depth = self.fs, 0
        while fs is not None and depth < 8:
            protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
            for protocol in protocols:
                if protocol in PROCESS_LOCAL:
                    return PROCESS_LOCAL[protocol]
            if any(kind.__name__ == "MemoryFileSystem" for kind in type(fs).__mro__):
                return PROCESS_LOCAL["memory"]
            fs = getattr(fs, "fs", None) or getattr(fs, "sync_fs", None)
            depth += 1
        return None

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


def open_storage(url: str | None = None, create: bool = True, trusted: bool = False) -> Storage:
    """The storage for a datastore URL (default: ``FLOWBOOK_DATASTORE`` or ./.flowbook).

    A local root that every user can write is refused (``UntrustedDatastoreError``)
    unless ``trusted`` (see ``LocalStorage``) or ``FLOWBOOK_TRUST_DATASTORE=1``."""
    url = url or default_datastore_url()
    if url.startswith("file://"):
        return LocalStorage(url[len("file://") :], create=create, trusted=trusted)
    if "://" not in url:
        return LocalStorage(url, create=create, trusted=trusted)
    if url.startswith(("s3://", "s3a://")):
        from .s3storage import direct_s3_storage

        direct = direct_s3_storage(url)
        if direct is not None:
            return direct
    return FsspecStorage(url)
