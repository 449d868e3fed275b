"""Process-level settings for long CPU jobs.

glibc's malloc serves an allocation from ``mmap`` (returned to the system on free) only above a
threshold that it *raises* every time an mmapped block is freed, up to 32 MiB. A search or rollout
job frees key/value caches of many MiB at every step, so after the first few steps the tensors of
1-32 MiB it allocates come from the heap, and a heap can only give memory back from its top: one
live tensor above a freed region keeps the whole region resident. Measured on the known-gold
testbed's search stage (RESULTS.md section 5, 2 cores, 24 GiB): resident memory between batches
grew from 4 to 11.5 GiB after one batch of 4 prompts and the process was killed for memory at
24 GiB after 56 prompts; with a fixed 1 MiB threshold it fell back to about 4.3 GiB after every batch
(peaks 8-10 GiB).

:func:`limit_heap_retention` fixes the thresholds through ``mallopt`` (the same effect as starting
the process with ``MALLOC_MMAP_THRESHOLD_`` and ``MALLOC_TRIM_THRESHOLD_`` set). It is a no-op off
glibc, when the user set those variables, or with ``SP_PRM_MALLOC_TUNING=0``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

# mallopt parameters from glibc's <malloc.h>.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8

_applied: bool | None = None


def limit_heap_retention(mmap_threshold: int = 1 << 20, trim_threshold: int = 1 << 20,
                         arena_max: int = 2) -> bool:
    """Fix glibc malloc's mmap and trim thresholds so freed tensors return to the system.

    Returns whether the settings were applied (once per process; later calls return the first answer).
    """
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if not sys.platform.startswith("linux") or os.environ.get("SP_PRM_MALLOC_TUNING", "1") == "0":
        return False
    if any(k in os.environ for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_ARENA_MAX")):
        return False  # the user chose; leave it
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = all(mallopt(p, v) == 1 for p, v in ((M_MMAP_THRESHOLD, mmap_threshold),
                                             (M_TRIM_THRESHOLD, trim_threshold), (M_ARENA_MAX, arena_max)))
    _applied = ok
    return ok
