"""An S3 datastore whose requests ``s3direct`` sends, without s3fs.

:func:`direct_s3_storage` gives one when this process's AWS settings are ones
``s3direct.DirectS3`` reads (else ``open_storage`` falls back to
``storage.FsspecStorage``, where s3fs sends every request). The same requests,
one per operation where one is enough, as the s3fs path (see docs/datastore.md);
s3fs is made only if a caller asks for a file object (``open_read``).
"""

from __future__ import annotations

import os

from . import storage  # (its part sizes, read when used: both ways to S3 share them)
from .storage import FsspecStorage, _write_failed

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from .s3direct import DirectS3

#: This process's DirectS3, by the environment it was made from (see _direct_s3).
_DIRECT: dict[tuple, Any] = {}


def direct_s3_storage(url: str) -> DirectS3Storage | None:
    """The storage of ``url`` (``s3://bucket/prefix``) with requests sent directly,
    or None when its settings or its bucket need s3fs."""
    root = url.split("://", 1)[1].strip("/")
    direct = _direct_s3()
    if direct is None or not direct.serves(root.partition("/")[0]):
        return None
    return DirectS3Storage(url, direct)


def _direct_s3() -> DirectS3 | None:
    """This process's ``DirectS3`` for its AWS settings (one per process, so its
    connections are kept between datastore objects), or None when they need s3fs.
    Made again when the environment's AWS settings change."""
    from .s3direct import DirectS3

    key = tuple(
        sorted(
            (name, value)
            for name, value in os.environ.items()
            if name.startswith(("AWS_", "FLOWBOOK_S3", "FSSPEC_"))
            or name.lower().endswith("_proxy")
        )
    )
    if key not in _DIRECT:
        _DIRECT.clear()
        _DIRECT[key] = DirectS3.from_environment()
    return _DIRECT[key]


class DirectS3Storage(FsspecStorage):
    """S3 objects read, written, listed and deleted with ``s3direct``'s requests."""

    def __init__(self, url: str, direct: DirectS3) -> None:
        self.url = url.rstrip("/")
        self._options = {}
        self._fs = None  # made at first use (open_read), see FsspecStorage.fs
        self.s3 = True
        self.direct = direct
        self.root = self.url.split("://", 1)[1].strip("/")

    def task_modules(self) -> list[str]:
        return [__name__, "flowbook.datastore.s3direct", "http.client", "hmac"]

    def _s3_key(self, path: str) -> tuple[str, str]:
        bucket, _, key = self._full(path).partition("/")
        return bucket, key

    def prepare_for_tasks(self) -> None:
        """Read the credentials and build the SSL context before forking (and
        prepare s3fs too if this process has used it)."""
        try:
            self.direct.prepare()
        except Exception:  # a head start only
            pass
        if self._fs is not None:
            super().prepare_for_tasks()

    def process_local_reason(self) -> str | None:
        return None

    def exists(self, path: str) -> bool:
        return self.direct.head(*self._s3_key(path))

    def read_bytes(self, path: str) -> bytes:
        return self.direct.get(*self._s3_key(path))

    def read_buffer(self, path: str) -> bytearray | memoryview:
        bucket, key = self._s3_key(path)
        return self.direct.read(bucket, key, storage.PARALLEL_PART_SIZE, storage.PARALLEL_PARTS)

    def _write(self, path: str, parts: list, exclusive: bool) -> bool:
        """One PUT below ``MULTIPART_FROM`` bytes (with ``exclusive``, only if the key
        is free), else a multipart upload from the parts' own memory."""
        views = [memoryview(part).cast("B") for part in parts]
        bucket, key = self._s3_key(path)
        try:
            if sum(view.nbytes for view in views) < storage.MULTIPART_FROM:
                data = views[0] if len(views) == 1 else b"".join(views)
                return self.direct.put(bucket, key, data, exclusive)
            self.direct.upload(bucket, key, views, storage.UPLOAD_PART_SIZE, storage.UPLOAD_PARTS)
            return True
        except OSError as exc:
            raise _write_failed(self.url, path, exc) from None

    def list(self, path: str) -> list[str]:
        bucket, key = self._s3_key(path)
        try:
            return self.direct.list(bucket, key.rstrip("/") + "/" if key else "")
        except FileNotFoundError:  # (the bucket)
            return []

    def delete(self, path: str) -> None:
        try:
            self.direct.delete(*self._s3_key(path))
        except FileNotFoundError:  # (the bucket)
            pass
