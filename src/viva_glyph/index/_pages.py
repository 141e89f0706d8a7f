"""Dropping the pages of a memory-mapped input once they have been read.

Pages of a file mapping that were read count in the process's resident set
until the kernel needs them back. An index built from a large memory-mapped
``.npy`` would otherwise show the whole file in its RSS although it holds only the codes.
``madvise(MADV_DONTNEED)`` on the rows already encoded gives them back at once
(they are read again from the file if touched later).
"""

from __future__ import annotations

import mmap
from typing import Any

import numpy as np

__all__ = ["drop_pages"]


def drop_pages(array: Any, start: int, stop: int) -> None:
    """Release the pages of rows [start, stop) of a read-only ``np.memmap``; else nothing."""
    mm = getattr(array, "_mmap", None)
    advice = getattr(mmap, "MADV_DONTNEED", None)
    if not isinstance(mm, mmap.mmap) or advice is None or stop <= start:
        return
    if not isinstance(array, np.ndarray) or not array.flags.c_contiguous:
        return
    base = np.frombuffer(mm, dtype=np.uint8).ctypes.data
    rows = array[start:stop]
    a = rows.ctypes.data - base
    b = a + rows.nbytes
    page = mmap.PAGESIZE
    a -= a % page
    b = min(b + (-b % page), len(mm))
    if 0 <= a < b:
        mm.madvise(advice, a, b - a)
