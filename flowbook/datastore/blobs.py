"""Content-addressed artifact blobs: ``blobs/<sha[:2]>/<sha>``, written once, verified on read.

Blob format (version 2)::

    b"FBK2" | uint32 header length | header JSON | pickle stream
           | padding | buffer 0 | padding | buffer 1 | ...

The header is ``{"v": 2, "p": <pickle bytes>, "b": [<buffer bytes>, ...]}``; every
buffer starts at a multiple of 64 bytes from the start of the blob (zero padding).
Objects are pickled with protocol 5 and out-of-band buffers (see pickling.py), so a
NumPy array's data is never copied into the pickle stream: it is written straight
from the array's memory. Reading a large local blob maps its file copy-on-write and
hands slices of the mapping to the unpickler, so the array *is* the mapped file
(aligned, writable, and writing to it never changes the blob); nothing is copied
and no fresh memory is filled.

A blob's name is its tree hash (hashing.py): equal values are stored once, and a
blob whose bytes no longer match its name is reported as corrupt before anything
is unpickled. Version 1 blobs (``FBK1``, no padding, named by the plain SHA-256 of
their bytes) are still read.

Small values (at most ``INLINE_LIMIT`` bytes once serialized) are not written as
files: their bytes travel inline, base64-encoded, in the artifact's index entry
(``{"sha", "type", "size", "inline"}``). They keep the name they would have as a
file, and reading them verifies it the same way, so dedup, merges and resume
compare them exactly like stored blobs. A task with a few small artifacts then
writes no blob file at all, and a reader of 1000 tasks opens no blob file.

Blobs of a remote datastore (S3) are also kept in a cache on this machine
(:class:`BlobCache`): the splits of a foreach read the list they split, and
usually the same parent artifacts, so the first task on a machine downloads a
blob and the others read it from the local disk. Every read from the cache checks
the bytes against the blob's name, as a read from the datastore does.
"""

from __future__ import annotations

import functools
import os
import struct

from .. import jsonio
from ..exceptions import ArtifactError, CorruptBlobError, DatastoreError
from ..plain import Plain
from . import hashing, pickling
from .pickling import cpickle
from .storage import DatastoreWriteError, LocalStorage, Storage

MAGIC = b"FBK2"
LEGACY_MAGIC = b"FBK1"
FORMAT_VERSION = 2
ALIGN = 64
_LEN = struct.Struct("<I")
INLINE_LIMIT = 1024


TYPE_CHECKING = False  # typing costs ~6 ms to import; annotations are strings here
if TYPE_CHECKING:
    from typing import Any


class StoredBlob(Plain):
    """Where ``put`` stored a value: its name, its size, its bytes when inline, and
    the identity of the file when this put wrote it after hashing exactly those
    bytes (see ``BlobStore.load``)."""

    def __init__(
        self, sha: str, size: int, inline: bytes | None = None, file_id: list | None = None
    ) -> None:
        self.sha = sha
        self.size = size
        self.inline = inline
        self.file_id = file_id


def type_name(obj: Any) -> str:
    kind = type(obj)
    module = kind.__module__
    return kind.__qualname__ if module == "builtins" else f"{module}.{kind.__qualname__}"


class Serialized(Plain):
    """An object as a blob, in parts: the bytes before the buffers (magic, header,
    pickle stream) and the out-of-band buffers, which are not copied."""

    def __init__(self, prefix: bytes, stream: bytes, raws: list[memoryview]) -> None:
        self.prefix = prefix
        self.stream = stream
        self.raws = raws

    def chunks(self) -> list[bytes | memoryview]:
        """The blob's bytes as consecutive chunks (zero padding before each buffer)."""
        chunks: list[bytes | memoryview] = [self.prefix, self.stream]
        offset = len(self.prefix) + len(self.stream)
        for raw in self.raws:
            padding = -offset % ALIGN
            if padding:
                chunks.append(bytes(padding))
            chunks.append(raw)
            offset += padding + raw.nbytes
        return chunks

    @property
    def size(self) -> int:
        return sum(memoryview(chunk).nbytes for chunk in self.chunks())


def serialize(obj: Any, artifact_name: str = "") -> Serialized:
    """The blob of ``obj``, without copying large buffers."""
    buffers: list[cpickle.PickleBuffer] = []
    try:
        stream = pickling.dumps(obj, buffer_callback=buffers.append)
        raws = [buf.raw() for buf in buffers]
    except BufferError:  # a non-contiguous buffer: keep it in-band
        stream = pickling.dumps(obj)
        raws = []
    except Exception as exc:
        what = f"artifact '{artifact_name}'" if artifact_name else "object"
        raise ArtifactError(
            f"Cannot store {what} of type {type_name(obj)}: it cannot be pickled "
            f"({type(exc).__name__}: {exc})."
        ) from None
    header = jsonio.dumps(
        {"v": FORMAT_VERSION, "p": len(stream), "b": [r.nbytes for r in raws]}
    ).encode()
    return Serialized(MAGIC + _LEN.pack(len(header)) + header, stream, raws)


class MappedBlob(Plain):
    """A blob read by mapping its file: the mapping, where the pickle stream ends,
    and where each buffer starts in it (see ``BlobStore.put_again``)."""

    def __init__(self, view: memoryview, stream_end: int, starts: list[int]) -> None:
        self.view = view
        self.stream_end = stream_end
        self.starts = starts

    def holds(self, serialized: Serialized) -> bool:
        """Whether ``serialized`` is, byte for byte, this mapped blob: the same bytes
        up to the buffers, buffers that *are* the mapping's at the same places, and a
        mapping no page of which was written since it was read (pagemap.py)."""
        from . import pagemap

        view = self.view
        prefix, stream = serialized.prefix, serialized.stream
        if len(prefix) + len(stream) != self.stream_end or len(serialized.raws) != len(self.starts):
            return False
        if bytes(view[: self.stream_end]) != prefix + stream:
            return False
        base = pagemap.address_of(view)
        if base is None:
            return False
        for raw, start in zip(serialized.raws, self.starts, strict=True):
            if raw.nbytes and pagemap.address_of(raw) != base + start:
                return False
        return pagemap.unwritten(base, view.nbytes) is True


def _what(artifact_name: str) -> str:
    return f"artifact '{artifact_name}'" if artifact_name else "a blob"


#: ``FLOWBOOK_BLOB_CACHE``: the directory of the machine's blob cache for remote
#: datastores, or ``off``; default: ``flowbook-blob-cache-<uid>`` in the temp dir.
CACHE_ENV = "FLOWBOOK_BLOB_CACHE"
#: The cache keeps at most about this many bytes (the least recently used go first).
CACHE_LIMIT = 2 << 30
#: Blobs a task writes are kept in the cache up to this size (larger ones when read).
CACHE_ON_WRITE_BELOW = 64 << 20
#: Per process: the cache directory (False: none), found once and inherited by forks.
_CACHE_ROOT: list = []


def blob_cache_root() -> str | None:
    """This machine's blob cache directory, made (mode 0700) when missing; None when
    the cache is off or the directory is not a directory of this user's."""
    if _CACHE_ROOT:
        return _CACHE_ROOT[0] or None
    value = os.environ.get(CACHE_ENV, "").strip()
    root = None
    if value.lower() not in ("0", "off", "no", "false"):
        if not value:
            import tempfile

            value = os.path.join(tempfile.gettempdir(), f"flowbook-blob-cache-{os.getuid()}")
        try:
            os.makedirs(value, 0o700, exist_ok=True)
            status = os.lstat(value)
            import stat

            if stat.S_ISDIR(status.st_mode) and status.st_uid == os.getuid():
                root = value
        except OSError:
            root = None
    _CACHE_ROOT.append(root or False)
    return root


class BlobCache:
    """Blobs of one remote datastore, kept on this machine's disk by name.

    A blob's bytes never change (its name is their hash), so a copy of them is as
    good as the original; it is kept only once the datastore holds the blob (after
    its upload, or read from there and checked), so a hit also says that the
    datastore has it. Readers check every blob they take from here against its name
    (a bad copy is dropped and the datastore read instead). Files are written under
    a temporary name and renamed, so a reader never sees half of one; when the
    cache holds more than ``CACHE_LIMIT`` bytes, the least recently used go."""

    def __init__(self, root: str, url: str) -> None:
        import hashlib

        self.dir = os.path.join(root, hashlib.sha256(url.encode()).hexdigest()[:24])

    @classmethod
    def for_storage(cls, storage: Storage) -> BlobCache | None:
        """The cache of ``storage``'s blobs; None for a local or a process-local one."""
        if storage.is_local or storage.process_local_reason() is not None:
            return None
        root = blob_cache_root()
        return cls(root, storage.url) if root else None

    def _path(self, sha: str) -> str:
        return os.path.join(self.dir, sha)

    def get(self, sha: str) -> bytearray | memoryview | None:
        """The cached bytes of ``sha`` (a copy-on-write mapping from 1 MiB on), or None."""
        from .storage import MAP_FROM

        try:
            fd = os.open(self._path(sha), os.O_RDONLY)
        except OSError:
            return None
        try:
            size = os.fstat(fd).st_size
            if size >= MAP_FROM:
                import mmap

                data: bytearray | memoryview = memoryview(
                    mmap.mmap(fd, size, access=mmap.ACCESS_COPY)
                )
            else:
                data = bytearray(size)
                view, got = memoryview(data), 0
                while got < size:
                    count = os.readv(fd, [view[got:]])
                    if not count:
                        break
                    got += count
            os.utime(fd)  # recently used
            return data
        except OSError:
            return None
        finally:
            os.close(fd)

    def put(self, sha: str, chunks: list) -> None:
        """Keep ``sha``'s bytes (best effort: a full or read-only disk just skips it)."""
        path = self._path(sha)
        if os.path.exists(path):
            return
        tmp = f"{path}.{os.getpid()}-{os.urandom(4).hex()}.tmp"
        try:
            os.makedirs(self.dir, 0o700, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                for chunk in chunks:
                    view = memoryview(chunk).cast("B")
                    while view:
                        view = view[os.write(fd, view[: 8 << 20]) :]
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except OSError:
            LocalStorage.discard_temp(tmp)
            return
        # looking at the whole cache costs a stat per file: on average once per
        # 1/64 of the limit written (the limit is loose by about that much)
        import random

        if random.random() * (CACHE_LIMIT >> 6) < os.path.getsize(path):
            self._trim()

    def drop(self, sha: str) -> None:
        try:
            os.unlink(self._path(sha))
        except OSError:
            pass

    def _trim(self) -> None:
        """Remove the least recently used blobs (of every datastore) while the cache
        holds more than ``CACHE_LIMIT`` bytes, down to three quarters of it."""
        root = os.path.dirname(self.dir)
        entries = []
        try:
            for directory in os.scandir(root):
                if directory.is_dir(follow_symlinks=False):
                    for entry in os.scandir(directory.path):
                        status = entry.stat(follow_symlinks=False)
                        entries.append((status.st_mtime, status.st_size, entry.path))
        except OSError:
            return
        total = sum(size for _, size, _ in entries)
        if total <= CACHE_LIMIT:
            return
        for _, size, path in sorted(entries):
            try:
                os.unlink(path)
            except OSError:
                continue
            total -= size
            if total <= CACHE_LIMIT * 3 // 4:
                break


class BlobStore:
    """Put and get Python objects by content hash."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        #: this machine's copies of a remote datastore's blobs (None: local, or off)
        self.cache = BlobCache.for_storage(storage)
        #: blobs this process read from the cache, not the datastore (see put_again)
        self.from_cache: set[str] = set()

    @staticmethod
    def path(sha: str) -> str:
        return f"blobs/{sha[:2]}/{sha}"

    def put(
        self,
        obj: Any,
        artifact_name: str = "",
        inline: bool = False,
        serialized: Serialized | None = None,
    ) -> StoredBlob:
        """Store ``obj``; with ``inline``, a small value is returned, not written."""
        if serialized is None:
            serialized = serialize(obj, artifact_name)
        chunks = serialized.chunks()
        size = sum(memoryview(chunk).nbytes for chunk in chunks)
        if inline and size <= INLINE_LIMIT:
            data = b"".join(chunks)
            return StoredBlob(hashing.blob_name([data])[0], size, data)
        try:
            if size >= hashing.PARALLEL_FROM and self.storage.is_local:
                sha, file_id = self._write_while_hashing(chunks)
                return StoredBlob(sha, size, file_id=file_id)
            sha, _ = hashing.blob_name(chunks)
            self._write_named(sha, chunks)
        except DatastoreWriteError as exc:  # name the artifact, not "blobs/..."
            raise exc.about(_what(artifact_name)) from None
        return StoredBlob(sha, size)

    def put_again(
        self, obj: Any, artifact_name: str, inline: bool, sha: str, mapped: MappedBlob | None
    ) -> StoredBlob:
        """Store ``obj``, which was read from the blob file ``sha`` (mapped or not).
        When its mapping shows it unchanged (``MappedBlob.holds``) nothing is hashed
        or written; else it is hashed once and written only under a new name."""
        serialized = serialize(obj, artifact_name)
        if mapped is not None and mapped.holds(serialized):
            return StoredBlob(sha, serialized.size)
        chunks = serialized.chunks()
        name, size = hashing.blob_name(chunks)
        if inline and size <= INLINE_LIMIT:
            return StoredBlob(name, size, b"".join(chunks))
        # changed: the blob ``sha`` exists, this one may not; or read from this
        # machine's cache: the datastore had it when it was cached, and must still
        if name != sha or sha in self.from_cache:
            try:
                self._write_named(name, chunks)
            except DatastoreWriteError as exc:
                raise exc.about(_what(artifact_name)) from None
        return StoredBlob(name, size)

    def _write_named(self, sha: str, chunks: list[bytes | memoryview]) -> None:
        """Write the blob ``sha`` unless it exists (its name is already known): a
        stored blob is never written over (on S3 a small one is a single conditional
        PUT, see ``Storage.write_new``)."""
        self.storage.write_new(self.path(sha), chunks)
        size = sum(memoryview(chunk).nbytes for chunk in chunks)
        if self.cache is not None and size < CACHE_ON_WRITE_BELOW:
            self.cache.put(sha, chunks)

    def _write_while_hashing(self, chunks: list[bytes | memoryview]) -> tuple[str, list | None]:
        """A large blob: write it to a temporary file while two threads hash its
        pieces, then rename it to its name (or drop it if that blob exists). Its
        name, and the identity of the file when this call wrote it.

        The threads hash the file as it is written (a mapping of it, piece by piece
        behind the writer), not the value's memory: the name is the hash of exactly
        the bytes in the file, even if another thread of the step is still changing
        the value, so the file's identity can vouch for it (see ``load``)."""
        storage = self.storage
        if TYPE_CHECKING:  # put() calls this for a local storage only
            assert isinstance(storage, LocalStorage)
        hashers = hashing.PieceHashers()
        try:
            tmp = storage.write_temp("blobs/", chunks, hashers)
        except BaseException:
            hashers.stop(early=True)
            raise
        try:
            sha = hashers.name()
        except BaseException:
            storage.discard_temp(tmp)
            raise
        file_id = storage.commit_temp(tmp, self.path(sha), keep_existing=True, identify=True)
        return sha, file_id

    def get(self, sha: str, what: str = "", inline: bytes | None = None) -> Any:
        """Load the object stored under ``sha`` (from ``inline`` bytes when given);
        ``what`` names it in errors."""
        return self.load(sha, what, inline)[0]

    def load(
        self,
        sha: str,
        what: str = "",
        inline: bytes | None = None,
        file_id: list | None = None,
    ) -> tuple[Any, MappedBlob | None]:
        """Like ``get``, and the mapping the value lives in when its file was mapped.

        The bytes are checked against ``sha`` unless the file is still the very file
        its writer hashed as it wrote it: ``file_id`` is the identity the writer
        recorded (``StoredBlob.file_id``), and any later change to the file (a
        rewrite, a replacement, an edit that restores its modification time) gives
        it another identity, so it is checked."""
        what = what or f"blob {sha[:12]}"
        if inline is not None:
            return decode(bytearray(inline), sha, what, "inline blob"), None
        if self.cache is not None:
            cached = self.cache.get(sha)
            if cached is not None:
                try:
                    value = decode(cached, sha, what, "cached blob")
                    self.from_cache.add(sha)
                    return value, None
                except CorruptBlobError:  # a bad copy: the datastore has the blob
                    self.cache.drop(sha)
        try:
            data, found_id = self.storage.read_buffer_and_identity(self.path(sha))
        except FileNotFoundError:
            raise DatastoreError(
                f"{what}: its blob {sha[:12]} is missing from datastore {self.storage.url}."
            ) from None
        layout: list = []
        verify = file_id is None or found_id != list(file_id)
        value = decode(data, sha, what, "blob", layout, verify)
        if self.cache is not None and len(data) <= CACHE_LIMIT // 4:
            self.cache.put(sha, [data])  # checked by decode: the datastore's bytes
        if layout and isinstance(data, memoryview):
            import mmap  # (imported by the storage when it mapped the file)

            if isinstance(data.obj, mmap.mmap):
                return value, MappedBlob(data, *layout)
        return value, None


def decode(
    data: bytearray | memoryview,
    sha: str,
    what: str,
    kind: str = "blob",
    layout: list | None = None,
    verify: bool = True,
) -> Any:
    """The value in a blob's bytes, after checking them against the blob's name
    (unless ``verify`` is false: the caller knows they are the bytes that were hashed).

    ``data`` is writable (a bytearray, or a copy-on-write mapping): arrays built on
    it are writable, as they were when they were stored. ``layout``, when given,
    receives where the pickle stream ends and where each buffer starts."""
    view = memoryview(data).cast("B")
    where = f"{what}: {kind} {sha[:12]} is corrupt"
    magic = bytes(view[:4])
    if magic not in (MAGIC, LEGACY_MAGIC) or len(view) < 8:
        raise CorruptBlobError(f"{where} (bad header).")
    (header_len,) = _LEN.unpack_from(view, 4)
    if header_len > len(view) - 8:
        raise CorruptBlobError(f"{where} (bad header).")
    try:
        header = _parse_header(bytes(view[8 : 8 + header_len]))
        stream_length, lengths = int(header["p"]), [int(n) for n in header["b"]]
    except (ValueError, KeyError, TypeError):
        raise CorruptBlobError(f"{where} (unreadable header).") from None
    if header.get("v") not in (1, 2):
        raise DatastoreError(
            f"{what}: {kind} {sha[:12]} has format version {header.get('v')}, "
            f"this flowbook reads versions 1 and {FORMAT_VERSION}."
        )
    aligned = magic == MAGIC
    stream_end = offset = 8 + header_len + stream_length
    starts = []
    for length in lengths:
        if aligned:
            offset += -offset % ALIGN
        starts.append(offset)
        offset += length
    if len(view) < offset:
        raise CorruptBlobError(f"{where} (truncated).")
    if len(view) > offset:
        raise CorruptBlobError(f"{where} (trailing bytes).")
    if verify:
        name = hashing.blob_name([view])[0] if aligned else hashing.legacy_name(view)
        if name != sha:
            raise CorruptBlobError(f"{where}: its content does not match its hash.")
    stream = view[8 + header_len : stream_end]
    buffers = [view[start : start + length] for start, length in zip(starts, lengths, strict=True)]
    if layout is not None and aligned:
        layout.extend((stream_end, starts))
    try:
        return cpickle.loads(stream, buffers=buffers)
    except Exception as exc:
        raise ArtifactError(
            f"{what} cannot be unpickled here ({type(exc).__name__}: {exc})."
        ) from None


@functools.lru_cache(maxsize=256)
def _parse_header(header: bytes) -> dict:
    """Small blobs share a handful of headers (``{"v":2,"p":5,"b":[]}``): parse each once.
    (The cached dict is shared: callers only read it.)"""
    return jsonio.loads(header)
