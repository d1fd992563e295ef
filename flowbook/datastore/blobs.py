"""Content-addressed artifact blobs: ``blobs/<sha[:2]>/<sha>``, written once, verified on read.

Small values (at most ``INLINE_LIMIT`` bytes once serialized) are not written as
files: their bytes travel inline, base64-encoded, in the artifact's index entry
(``{"sha", "type", "size", "inline"}``). They keep the name they would have as a
file, and reading them verifies it the same way, so dedup, merges and resume
compare them exactly like stored blobs. A task with a few small artifacts then
writes no blob file at all, and a reader of 1000 tasks opens no blob file.

Blob format (version 1)::

    b"FBK1" | uint32 header length | header JSON | pickle stream | buffer 0 | buffer 1 | ...

The header is ``{"v": 1, "p": <pickle bytes>, "b": [<buffer bytes>, ...]}``. Objects
are pickled with cloudpickle, protocol 5, with out-of-band buffers: a NumPy array's
data is never copied into the pickle stream, it is written straight from the array's
memory and read straight into fresh buffers that the unpickled array adopts. The
blob's name is the SHA-256 of all its bytes, so equal values are stored once, and a
blob whose bytes no longer match its name is reported as corrupt.
"""

from __future__ import annotations

import functools
import hashlib
import json
import pickle
import struct

from ..exceptions import ArtifactError, CorruptBlobError, DatastoreError
from ..plain import Plain
from . import pickling
from .storage import Storage

MAGIC = b"FBK1"
FORMAT_VERSION = 1
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
    return [MAGIC + _LEN.pack(len(header)) + header, stream, *raws]


def content_hash(chunks: list[bytes | memoryview]) -> tuple[str, int]:
    hasher = hashlib.sha256()
    size = 0
    for chunk in chunks:
        hasher.update(chunk)
        size += memoryview(chunk).nbytes
    return hasher.hexdigest(), size


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
        sha, size = content_hash(chunks)
        if inline and size <= INLINE_LIMIT:
            return StoredBlob(sha, size, b"".join(chunks))
        path = self.path(sha)
        if not self.storage.exists(path):
            self.storage.write_chunks(path, chunks)
        return StoredBlob(sha, size)

    def get(self, sha: str, what: str = "", inline: bytes | None = None) -> Any:
        """Load the object stored under ``sha`` (from ``inline`` bytes when given);
        ``what`` names it in errors."""
        what = what or f"blob {sha[:12]}"
        if inline is not None:
            return _decode_inline(inline, sha, what)
        path = self.path(sha)
        try:
            handle = self.storage.open_read(path)
        except FileNotFoundError:
            raise DatastoreError(
                f"{what}: its blob {sha[:12]} is missing from datastore {self.storage.url}."
            ) from None
        with handle:
            hasher = hashlib.sha256()
            prefix = _read_exact(handle, 8, what, sha)
            hasher.update(prefix)
            if prefix[:4] != MAGIC:
                raise CorruptBlobError(f"{what}: blob {sha[:12]} is corrupt (bad header).")
            (header_len,) = _LEN.unpack(prefix[4:])
            header_bytes = _read_exact(handle, header_len, what, sha)
            hasher.update(header_bytes)
            try:
                header = json.loads(header_bytes)
                if header["v"] != FORMAT_VERSION:
                    raise DatastoreError(
                        f"{what}: blob {sha[:12]} has format version {header['v']}, "
                        f"this flowbook reads version {FORMAT_VERSION}."
                    )
            except (ValueError, KeyError, TypeError):
                raise CorruptBlobError(
                    f"{what}: blob {sha[:12]} is corrupt (unreadable header)."
                ) from None
            stream = _read_exact(handle, header["p"], what, sha)
            hasher.update(stream)
            buffers = []
            for length in header["b"]:
                buf = bytearray(length)
                view = memoryview(buf)
                filled = 0
                while filled < length:
                    got = handle.readinto(view[filled:])
                    if not got:
                        raise CorruptBlobError(f"{what}: blob {sha[:12]} is corrupt (truncated).")
                    filled += got
                hasher.update(buf)
                buffers.append(buf)
            if handle.read(1):
                raise CorruptBlobError(f"{what}: blob {sha[:12]} is corrupt (trailing bytes).")
        if hasher.hexdigest() != sha:
            raise CorruptBlobError(
                f"{what}: blob {sha[:12]} is corrupt: its content does not match its hash."
            )
        try:
            return pickle.loads(stream, buffers=buffers)
        except Exception as exc:
            raise ArtifactError(
                f"{what} cannot be unpickled here ({type(exc).__name__}: {exc})."
            ) from None


@functools.lru_cache(maxsize=256)
def _parse_header(header: bytes) -> dict:
    """Small blobs share a handful of headers (``{"v":1,"p":5,"b":[]}``): parse each once."""
    return json.loads(header)


def _decode_inline(data: bytes, sha: str, what: str) -> Any:
    """An inline blob's value, after checking its bytes against its name."""
    if hashlib.sha256(data).hexdigest() != sha:
        raise CorruptBlobError(
            f"{what}: inline blob {sha[:12]} is corrupt: its content does not match its hash."
        )
    try:
        if data[:4] != MAGIC:
            raise ValueError("bad magic")
        (header_len,) = _LEN.unpack_from(data, 4)
        header = _parse_header(data[8 : 8 + header_len])
        start = 8 + header_len
        stream = data[start : start + header["p"]]
        buffers = []
        offset = start + header["p"]
        for length in header["b"]:
            buffers.append(data[offset : offset + length])
            offset += length
    except (ValueError, KeyError, TypeError, struct.error):
        raise CorruptBlobError(f"{what}: inline blob {sha[:12]} is corrupt.") from None
    try:
        return pickle.loads(stream, buffers=buffers)
    except Exception as exc:
        raise ArtifactError(
            f"{what} cannot be unpickled here ({type(exc).__name__}: {exc})."
        ) from None


def _read_exact(handle, size: int, what: str, sha: str) -> bytes:
    data = handle.read(size)
    if len(data) != size:
        raise CorruptBlobError(f"{what}: blob {sha[:12]} is corrupt (truncated).")
    return data
