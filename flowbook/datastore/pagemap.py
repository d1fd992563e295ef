"""Whether a copy-on-write file mapping still holds exactly the file's bytes.

A large blob is read by mapping its file privately (``mmap.ACCESS_COPY``): a page
nobody wrote to is the file's page from the page cache, and the first write to a
page gives this process its own anonymous copy. Linux reports, per virtual page, in
``/proc/self/pagemap`` whether a page is present, swapped, and file-backed. So a
mapping none of whose pages is an anonymous copy (present and not file-backed, or
swapped out, which only anonymous pages can be) still reads as the file, which was
checked against its hash when it was mapped. The task uses this to see that an
artifact it read and did not change needs neither hashing nor writing again.

Anything this module cannot tell (another OS, no ``/proc``, a read-only buffer)
answers ``None``, and the caller hashes instead.
"""

from __future__ import annotations

import os

PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
ENTRY = 8  # bytes per page in /proc/self/pagemap

# The top byte of an entry holds bits 56..63: 63 present, 62 swapped, 61 file-page
# or shared-anonymous. A page was written (copied) when it is swapped, or present
# without being a file page.
_WRITTEN = bytes(
    1 if (top & 0x40) or ((top & 0x80) and not (top & 0x20)) else 0 for top in range(256)
)


def address_of(buffer: memoryview) -> int | None:
    """The address of a buffer's first byte, or None when it cannot be found."""
    if buffer.nbytes == 0 or buffer.readonly or not buffer.c_contiguous:
        return None
    import ctypes

    try:
        return ctypes.addressof(ctypes.c_char.from_buffer(buffer))
    except (TypeError, ValueError):
        return None


def unwritten(address: int, length: int) -> bool | None:
    """Whether no page of ``[address, address + length)`` of this process's private
    file mappings was written to; None when the kernel cannot tell us."""
    if length <= 0:
        return True
    first = address // PAGE
    last = (address + length - 1) // PAGE
    try:
        fd = os.open("/proc/self/pagemap", os.O_RDONLY)
    except OSError:
        return None
    try:
        wanted = (last - first + 1) * ENTRY
        entries = os.pread(fd, wanted, first * ENTRY)
    except OSError:
        return None
    finally:
        os.close(fd)
    if len(entries) != wanted:
        return None
    return 1 not in entries[ENTRY - 1 :: ENTRY].translate(_WRITTEN)
