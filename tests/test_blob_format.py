"""Blob files: format 2 (aligned buffers), tree-hash names, mapped reads, old blobs."""

from __future__ import annotations

import hashlib
import json
import mmap
import pickle
import struct

import pytest

from flowbook.datastore import hashing
from flowbook.datastore.blobs import ALIGN, BlobStore
from flowbook.datastore.records import Datastore
from flowbook.exceptions import CorruptBlobError

np = pytest.importorskip("numpy")

BIG = 5_000_000  # float64 values: 40 MB, more than hashing.PARALLEL_FROM


@pytest.fixture
def store(tmp_path) -> BlobStore:
    return Datastore(str(tmp_path / "ds")).blobs


def _file(store: BlobStore, sha: str):
    from pathlib import Path

    return Path(store.storage.local_path(store.path(sha)))


def _tree_name(data: bytes) -> str:
    """The tree hash, computed here independently of flowbook."""
    piece = 8 << 20
    digests = [
        hashlib.sha256(data[i : i + piece]).digest() for i in range(0, max(len(data), 1), piece)
    ]
    return hashlib.sha256(b"".join(digests)).hexdigest()


def test_a_large_array_round_trips_mapped_aligned_and_writable(store):
    array = np.random.default_rng(1).random(BIG)
    stored = store.put(array, "array")
    path = _file(store, stored.sha)
    on_disk = path.read_bytes()
    assert stored.size == len(on_disk) > array.nbytes
    assert _tree_name(on_disk) == stored.sha
    assert on_disk[:4] == b"FBK2"

    loaded = store.get(stored.sha, what="Artifact 'array'")
    assert np.array_equal(loaded, array)
    assert loaded.flags.aligned and loaded.flags.writeable
    owner = loaded
    while not isinstance(owner, memoryview):
        owner = owner.base
    assert isinstance(owner.obj, mmap.mmap)  # the array is the mapped file, not a copy
    loaded[:1000] = -1.0  # copy-on-write: the blob never changes
    assert path.read_bytes() == on_disk
    assert np.array_equal(store.get(stored.sha), array)
    assert not list((path.parents[2] / "tmp").iterdir())


def test_buffers_start_on_aligned_offsets(store):
    values = {"a": np.arange(3, dtype=np.int8), "b": np.arange(7, dtype=np.float64)}
    stored = store.put(values, "values")
    data = _file(store, stored.sha).read_bytes()
    (header_len,) = struct.unpack_from("<I", data, 4)
    header = json.loads(data[8 : 8 + header_len])
    offset = 8 + header_len + header["p"]
    for length in header["b"]:
        offset += -offset % ALIGN
        assert offset % ALIGN == 0
        offset += length
    assert offset == len(data)
    loaded = store.get(stored.sha)
    assert all(np.array_equal(loaded[k], values[k]) for k in values)


def test_small_and_odd_arrays(store):
    cases = [np.float64(3.5), np.arange(20)[::3], np.zeros((0, 4)), np.arange(12).reshape(3, 4).T]
    for value in cases:
        loaded = store.get(store.put(value).sha)
        assert np.array_equal(loaded, value) and loaded.dtype == value.dtype
        assert loaded.shape == np.shape(value)


def test_equal_values_share_one_file(store):
    first = store.put(np.arange(BIG // 10), "x")
    second = store.put(np.arange(BIG // 10), "y")
    assert first.sha == second.sha
    blobs = [p for p in _file(store, first.sha).parents[1].rglob("*") if p.is_file()]
    assert len(blobs) == 1
    big = store.put(np.ones(BIG), "big")  # the large path: written while hashed
    again = store.put(np.ones(BIG), "big")
    assert big.sha == again.sha and _file(store, big.sha).is_file()
    assert not list((_file(store, big.sha).parents[2] / "tmp").iterdir())


def test_a_version_1_blob_still_loads(store):
    stream = pickle.dumps({"old": [1, 2]}, protocol=5)
    header = json.dumps({"v": 1, "p": len(stream), "b": []}, separators=(",", ":")).encode()
    data = b"FBK1" + struct.pack("<I", len(header)) + header + stream
    sha = hashlib.sha256(data).hexdigest()
    store.storage.write_bytes(store.path(sha), data)
    assert store.get(sha) == {"old": [1, 2]}
    # and with an out-of-band buffer, unpadded, as version 1 wrote it
    array = np.arange(10, dtype=np.int16)
    buffers: list = []
    stream = pickle.dumps(array, protocol=5, buffer_callback=buffers.append)
    raw = bytes(buffers[0].raw())
    header = json.dumps({"v": 1, "p": len(stream), "b": [len(raw)]}).encode()
    data = b"FBK1" + struct.pack("<I", len(header)) + header + stream + raw
    sha = hashlib.sha256(data).hexdigest()
    store.storage.write_bytes(store.path(sha), data)
    assert np.array_equal(store.get(sha), array)


@pytest.mark.parametrize("damage", ["flip", "truncate", "append", "magic"])
def test_a_damaged_large_blob_is_refused(store, damage):
    stored = store.put(np.random.default_rng(2).random(BIG), "array")
    path = _file(store, stored.sha)
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0x01
    elif damage == "truncate":
        del data[-4096:]
    elif damage == "append":
        data += b"\0"
    else:
        data[:4] = b"XXXX"
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptBlobError, match="Artifact 'array' of task F/1/s/1: blob .* corrupt"):
        store.get(stored.sha, what="Artifact 'array' of task F/1/s/1")


def test_names_follow_the_tree_hash_for_every_size():
    for size in (0, 1, (8 << 20) - 1, 8 << 20, (8 << 20) + 1, 17 << 20):
        data = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
        # cut into uneven chunks: the pieces must not depend on how the bytes arrive
        a = min(3, size)
        b = max(a, size // 2)
        chunks = [data[:a], data[a:b], data[b:]]
        assert hashing.blob_name(chunks) == (_tree_name(data), size)


def _blob_files(store: BlobStore) -> list:
    root = _file(store, "00").parents[1]
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_a_mapped_value_left_unchanged_is_neither_hashed_nor_written_again(store, monkeypatch):
    from flowbook.datastore.blobs import serialize

    stored = store.put(np.random.default_rng(3).random(BIG), "array")
    value, mapped = store.load(stored.sha)
    assert mapped is not None
    value[::4096].sum()  # reading pages does not count as changing them
    assert mapped.holds(serialize(value))

    def no_hashing(chunks):
        raise AssertionError("hashed an unchanged mapped value")

    monkeypatch.setattr(hashing, "blob_name", no_hashing)
    again = store.put_again(value, "array", True, stored.sha, mapped)
    assert (again.sha, again.size, again.inline) == (stored.sha, stored.size, None)
    assert _blob_files(store) == [_file(store, stored.sha)]


def test_a_mapped_value_changed_in_place_is_stored_anew(store):
    from flowbook.datastore.blobs import serialize

    original = np.random.default_rng(4).random(BIG)
    stored = store.put(original, "array")
    value, mapped = store.load(stored.sha)
    value[BIG // 2] = -1.0  # one page becomes the task's own copy
    assert not mapped.holds(serialize(value))
    changed = store.put_again(value, "array", True, stored.sha, mapped)
    assert changed.sha != stored.sha
    assert store.get(changed.sha)[BIG // 2] == -1.0
    assert np.array_equal(store.get(stored.sha), original)  # the parent's blob is intact

    other, mapped = store.load(stored.sha)  # a new shape over the same bytes is a change too
    other.shape = (BIG // 2, 2)
    reshaped = store.put_again(other, "array", True, stored.sha, mapped)
    assert reshaped.sha != stored.sha and store.get(reshaped.sha).shape == (BIG // 2, 2)


def test_equal_bytes_the_mapping_cannot_vouch_for_are_hashed_not_written(store, monkeypatch):
    stored = store.put(np.arange(BIG, dtype=np.float64), "array")
    value, mapped = store.load(stored.sha)
    files = _blob_files(store)
    hashed = []
    real_blob_name = hashing.blob_name
    monkeypatch.setattr(hashing, "blob_name", lambda c: hashed.append(1) or real_blob_name(c))
    copy = value.copy()  # the same bytes elsewhere in memory
    again = store.put_again(copy, "array", True, stored.sha, mapped)
    assert again.sha == stored.sha and hashed and _blob_files(store) == files
    hashed.clear()
    not_mapped = store.put_again(value, "array", True, stored.sha, None)  # e.g. read from S3
    assert not_mapped.sha == stored.sha and hashed and _blob_files(store) == files


def test_the_file_its_writer_hashed_is_not_hashed_again(store, monkeypatch):
    array = np.random.default_rng(5).random(BIG)
    stored = store.put(array, "array")  # the large path: hashed while written
    assert stored.file_id is not None
    monkeypatch.setattr(hashing, "blob_name", lambda chunks: pytest.fail("hashed again"))
    value, _ = store.load(stored.sha, file_id=stored.file_id)
    assert np.array_equal(value, array)


def _hash_calls(monkeypatch) -> list:
    calls: list = []
    real_blob_name = hashing.blob_name
    monkeypatch.setattr(hashing, "blob_name", lambda c: calls.append(1) or real_blob_name(c))
    return calls


def test_a_blob_file_changed_after_its_writer_is_hashed_and_refused(store, monkeypatch):
    import os

    stored = store.put(np.random.default_rng(6).random(BIG), "array")
    path = _file(store, stored.sha)
    before = path.stat()
    with open(path, "r+b") as handle:  # one byte flipped in place, same size
        handle.seek(before.st_size // 2)
        byte = handle.read(1)
        handle.seek(before.st_size // 2)
        handle.write(bytes([byte[0] ^ 1]))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # and the mtime put back
    calls = _hash_calls(monkeypatch)
    with pytest.raises(CorruptBlobError, match="Artifact 'array'.*does not match its hash"):
        store.load(stored.sha, what="Artifact 'array'", file_id=stored.file_id)
    assert calls


def test_a_blob_file_replaced_by_an_equal_copy_is_hashed_and_read(store, monkeypatch):
    import shutil

    array = np.arange(BIG, dtype=np.float64)
    stored = store.put(array, "array")
    path = _file(store, stored.sha)
    shutil.copy(path, str(path) + ".copy")
    (path.parent / (path.name + ".copy")).replace(path)  # same bytes, another file
    calls = _hash_calls(monkeypatch)
    value, _ = store.load(stored.sha, file_id=stored.file_id)
    assert calls and np.array_equal(value, array)


def test_a_value_changing_while_it_is_stored_still_gets_a_consistent_blob(store):
    """A thread of the step may still be changing a value when the step ends: the
    blob is hashed from the file as written, so its name always matches its bytes."""
    import threading

    array = np.zeros(8 << 20)  # 64 MiB, eight pieces
    stop = threading.Event()

    def keep_changing() -> None:
        while not stop.is_set():
            np.add(array, 1, out=array)  # NumPy lets go of the GIL meanwhile

    changer = threading.Thread(target=keep_changing)
    changer.start()
    try:
        stored = store.put(array, "array")
    finally:
        stop.set()
        changer.join()
    assert _tree_name(_file(store, stored.sha).read_bytes()) == stored.sha
    value, _ = store.load(stored.sha)  # hashed again: it must match
    assert value.shape == array.shape


def test_no_file_identity_where_change_times_are_coarse(store, monkeypatch):
    from flowbook.datastore import storage

    monkeypatch.setitem(storage._FINE_TIMESTAMPS, store.storage.root, False)
    stored = store.put(np.ones(BIG), "array")
    assert stored.file_id is None and _file(store, stored.sha).is_file()
