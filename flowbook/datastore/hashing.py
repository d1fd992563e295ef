"""The name of a blob: a SHA-256 tree hash that two cores can compute together.

A blob's bytes are cut into pieces of ``PIECE`` bytes (8 MiB; a small blob is one
piece); its name is the SHA-256 of the concatenated SHA-256 digests of the pieces.
The pieces are independent, so a large blob is hashed by two threads
(hashlib releases the GIL), while it is being written or while it is being
checked after a read: 500 MB take about 0.17 s on two cores instead of 0.32 s.

Format version 1 blobs were named by the plain SHA-256 of all their bytes;
:func:`legacy_name` still checks them.
"""

from __future__ import annotations

try:  # CPython's own SHA-256: loads in no time, hashes small values fast enough
    from _sha2 import sha256 as _builtin_sha256  # Python 3.12+
except ImportError:
    try:
        from _sha256 import sha256 as _builtin_sha256
    except ImportError:  # pragma: no cover
        _builtin_sha256 = None

TYPE_CHECKING = False  # typing costs ~6 ms to import; annotations are strings here
if TYPE_CHECKING:
    from collections.abc import Sequence

PIECE = 8 << 20
#: From this size on, pieces are hashed by threads (below it a thread
#: costs more than it saves).
PARALLEL_FROM = 16 << 20
THREADS = 2


def pieces(chunks: Sequence[bytes | bytearray | memoryview]) -> list[list[memoryview]]:
    """The blob's bytes (given as consecutive chunks) cut into pieces, without copying."""
    result: list[list[memoryview]] = [[]]
    room = PIECE
    for chunk in chunks:
        view = memoryview(chunk).cast("B")
        while len(view):
            if not room:
                result.append([])
                room = PIECE
            part = view[:room]
            result[-1].append(part)
            room -= len(part)
            view = view[len(part) :]
    return result


#: Up to this many bytes, CPython's built-in SHA-256 hashes; above it OpenSSL's
#: (3-4x faster with the CPU's SHA instructions, but loading libcrypto through
#: ``hashlib`` costs a few ms, which a run that stores only small values never pays).
BUILTIN_UP_TO = 64 << 10


def sha256(size: int):
    """A SHA-256 hasher suited to ``size`` bytes of input."""
    if size <= BUILTIN_UP_TO and _builtin_sha256 is not None:
        return _builtin_sha256()
    import hashlib

    return hashlib.sha256()


def digest(parts: list[memoryview]) -> bytes:
    """The SHA-256 digest of one piece."""
    hasher = sha256(sum(len(part) for part in parts))
    for part in parts:
        hasher.update(part)
    return hasher.digest()


def name_of_digests(digests: Sequence[bytes]) -> str:
    joined = b"".join(digests)
    hasher = sha256(len(joined))
    hasher.update(joined)
    return hasher.hexdigest()


def blob_name(chunks: Sequence[bytes | bytearray | memoryview]) -> tuple[str, int]:
    """The name and the size of the blob made of ``chunks``."""
    cut = pieces(chunks)
    size = sum(len(part) for piece in cut for part in piece)
    if size < PARALLEL_FROM:
        return name_of_digests([digest(piece) for piece in cut]), size
    hashers = PieceHashers()
    hashers.start(cut, ready=size)
    return hashers.name(), size


class PieceHashers:
    """``THREADS`` threads hashing the pieces of a blob; ``name()`` waits for them.

    The bytes may still be arriving: a piece is hashed once ``written`` says that
    many bytes are there (this is how a blob is hashed from its file while the file
    is being written). Plain threads, not ``concurrent.futures``, which imports
    ``logging`` (a few ms in every task that stores a large value). They are gone
    once ``name()`` returns, so a process that hashed can still fork safely."""

    def __init__(self) -> None:
        import threading

        self._changed = threading.Condition()
        self._threads: list = []
        self._cut: list[list[memoryview]] = []
        self._digests: list[bytes | None] = []
        self._ready = 0
        self._stop = False
        self._error: BaseException | None = None

    def start(self, cut: list[list[memoryview]], ready: int = 0) -> None:
        """Start hashing ``cut`` (from ``pieces``), of which ``ready`` bytes are there."""
        import threading

        self._cut, self._ready = cut, ready
        self._digests = [None] * len(cut)
        self._threads = [
            threading.Thread(target=self._work, args=(first,), name="flowbook-hash", daemon=True)
            for first in range(min(THREADS, len(cut)))
        ]
        for thread in self._threads:
            thread.start()

    def start_on(self, data: memoryview) -> None:
        """Start hashing ``data``, none of which is there yet (see ``written``)."""
        self.start(pieces([data]), ready=0)

    def written(self, count: int) -> None:
        """``count`` bytes from the start are there now."""
        with self._changed:
            self._ready = count
            self._changed.notify_all()

    def _work(self, first: int) -> None:
        end = 0
        for index in range(len(self._cut)):
            end += sum(len(part) for part in self._cut[index])
            if index % THREADS != first:
                continue
            with self._changed:
                while self._ready < end and not self._stop:
                    self._changed.wait()
                if self._stop:
                    return
            try:
                self._digests[index] = digest(self._cut[index])
            except BaseException as exc:  # handed to the caller by name()
                self._error = exc
                return

    def name(self) -> str:
        """The blob's name, once every piece is hashed."""
        self.stop()
        if self._error is not None:
            raise self._error
        return name_of_digests(self._digests)  # type: ignore[arg-type]

    def stop(self, early: bool = False) -> None:
        """Wait for the threads (``early``: after the piece each one is hashing)."""
        if early:
            with self._changed:
                self._stop = True
                self._changed.notify_all()
        for thread in self._threads:
            thread.join()
        self._cut = []  # let go of the bytes (a mapping can then be closed)


def legacy_name(data: bytes | bytearray | memoryview) -> str:
    """How format version 1 named a blob: the SHA-256 of all its bytes."""
    hasher = sha256(memoryview(data).nbytes)
    hasher.update(data)
    return hasher.hexdigest()
