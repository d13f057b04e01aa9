"""Give freed heap memory back to the operating system between the stages of a long job.

glibc's malloc keeps freed memory in the process unless it sits at the top of the heap. The
pose stage of a 200-keyframe reconstruction frees a few hundred MB of small depth maps and
features spread through the heap; kept, they add to the next stage's memory instead of being
reused by it (open3d's fusion allocates its own), and the job's peak RSS is their sum.
`malloc_trim(0)` hands those pages back (madvise), in a few milliseconds.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import cache
from typing import Any


@cache
def _libc() -> Any | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None  # glibc only


def release_free_memory() -> bool:
    """Return the heap's free pages to the OS; False where the C library cannot (not glibc)."""
    libc = _libc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True
