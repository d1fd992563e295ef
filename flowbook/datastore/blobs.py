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
"""

from __future__ import annotations

import functools
import json
import pickle
import struct

from ..exceptions import ArtifactError, CorruptBlobError, DatastoreError
from ..plain import Plain
from . import hashing, pickling
from .storage import Storage

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
    """Where ``put`` stored a value: its name, its size, and its bytes when inline."""

    def __init__(self, sha: str, size: int, inline: bytes | None = None) -> None:
        self.sha = sha
        self.size = size
        self.inline = inline


def type_name(obj: Any) -> str:
    kind = type(obj)
    module = kind.__module__
    return kind.__qualname__ if module == "builtins" else f"{module}.{kind.__qualname__}"


def serialize(obj: Any, artifact_name: str = "") -> list[bytes | memoryview]:
    """The blob's bytes as chunks, without copying large buffers."""
    buffers: list[pickle.PickleBuffer] = []
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
    header = json.dumps(
        {"v": FORMAT_VERSION, "p": len(stream), "b": [r.nbytes for r in raws]},
        separators=(",", ":"),
    ).encode()
    chunks: list[bytes | memoryview] = [MAGIC + _LEN.pack(len(header)) + header, stream]
    offset = 8 + len(header) + len(stream)
    for raw in raws:
        padding = -offset % ALIGN
        if padding:
            chunks.append(bytes(padding))
        chunks.append(raw)
        offset += padding + raw.nbytes
    return chunks


class BlobStore:
    """Put and get Python objects by content hash."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    @staticmethod
    def path(sha: str) -> str:
        return f"blobs/{sha[:2]}/{sha}"

    def put(self, obj: Any, artifact_name: str = "", inline: bool = False) -> StoredBlob:
        """Store ``obj``; with ``inline``, a small value is returned, not written."""
        chunks = serialize(obj, artifact_name)
        size = sum(memoryview(chunk).nbytes for chunk in chunks)
        if inline and size <= INLINE_LIMIT:
            data = b"".join(chunks)
            return StoredBlob(hashing.blob_name([data])[0], size, data)
        if size >= hashing.PARALLEL_FROM and self.storage.is_local:
            return StoredBlob(self._write_while_hashing(chunks), size)
        sha, _ = hashing.blob_name(chunks)
        path = self.path(sha)
        if not self.storage.exists(path):
            self.storage.write_chunks(path, chunks)
        return StoredBlob(sha, size)

    def _write_while_hashing(self, chunks: list[bytes | memoryview]) -> str:
        """A large blob: write it to a temporary file while two threads hash its
        pieces, then rename it to its name (or drop it if that blob exists)."""
        storage = self.storage
        with hashing.start_pool() as pool:
            futures = hashing.submit_pieces(pool, chunks)
            try:
                tmp = storage.write_temp("blobs/", chunks)
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
            try:
                sha = hashing.name_of_digests([future.result() for future in futures])
            except BaseException:
                storage.discard_temp(tmp)
                raise
        storage.commit_temp(tmp, self.path(sha), keep_existing=True)
        return sha

    def get(self, sha: str, what: str = "", inline: bytes | None = None) -> Any:
        """Load the object stored under ``sha`` (from ``inline`` bytes when given);
        ``what`` names it in errors."""
        what = what or f"blob {sha[:12]}"
        if inline is not None:
            return decode(bytearray(inline), sha, what, "inline blob")
        try:
            data = self.storage.read_buffer(self.path(sha))
        except FileNotFoundError:
            raise DatastoreError(
                f"{what}: its blob {sha[:12]} is missing from datastore {self.storage.url}."
            ) from None
        return decode(data, sha, what, "blob")


def decode(data: bytearray | memoryview, sha: str, what: str, kind: str = "blob") -> Any:
    """The value in a blob's bytes, after checking them against the blob's name.

    ``data`` is writable (a bytearray, or a copy-on-write mapping): arrays built on
    it are writable, as they were when they were stored."""
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
    offset = 8 + header_len + stream_length
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
    name = hashing.blob_name([view])[0] if aligned else hashing.legacy_name(view)
    if name != sha:
        raise CorruptBlobError(f"{where}: its content does not match its hash.")
    stream = view[8 + header_len : 8 + header_len + stream_length]
    buffers = [view[start : start + length] for start, length in zip(starts, lengths, strict=True)]
    try:
        return pickle.loads(stream, buffers=buffers)
    except Exception as exc:
        raise ArtifactError(
            f"{what} cannot be unpickled here ({type(exc).__name__}: {exc})."
        ) from None


@functools.lru_cache(maxsize=256)
def _parse_header(header: bytes) -> dict:
    """Small blobs share a handful of headers (``{"v":2,"p":5,"b":[]}``): parse each once.
    (The cached dict is shared: callers only read it.)"""
    return json.loads(header)
