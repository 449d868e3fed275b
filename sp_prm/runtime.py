"""Process-level settings for long CPU jobs.

glibc's malloc serves an allocation from ``mmap`` (returned to the system on free) only above a
threshold that it *raises* every time an mmapped block is freed, up to 32 MiB. A search or rollout
job frees key/value caches of many MiB at every step, so after the first few steps the tensors of
1-32 MiB it allocates come from the heap, and a heap can only give memory back from its top: one
live tensor above a freed region keeps the whole region resident. On the known-gold testbed's search
stage (RESULTS.md section 5, 2 cores, 24 GiB) the process was killed for memory at 24 GiB after 56
prompts; the cause was a reference cycle in the KV layers (fixed in ``decoding/kv.py``), which the
heap's retention made worse.

:func:`limit_heap_retention` fixes the thresholds through ``mallopt`` (the same effect as starting
the process with ``MALLOC_MMAP_THRESHOLD_`` and ``MALLOC_TRIM_THRESHOLD_`` set). It is **opt-in**
(``SP_PRM_MALLOC_TUNING=1``): once the KV layers' reference cycle was removed (the real cause of that
growth), the gold search's memory stayed bounded without it (about 4 GiB between batches against 1-2 GiB
with it) while the fixed thresholds made every 1+ MiB tensor a fresh ``mmap`` with its page faults:
policy sampling ran 1.24-1.38x slower with them (``bench/bench_heap.py``; BENCHMARKS.md, "Search memory").
Turn it on for a long CPU job on a machine short of memory. It is a no-op off glibc and when the user set
the ``MALLOC_*`` variables themselves.
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
    """Fix glibc malloc's mmap and trim thresholds so freed tensors return to the system, where
    ``SP_PRM_MALLOC_TUNING=1`` asks for it.

    Returns whether the settings were applied (once per process; later calls return the first answer).
    """
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if not sys.platform.startswith("linux") or os.environ.get("SP_PRM_MALLOC_TUNING", "0") != "1":
        return False  # opt-in: it trades sampling speed for memory (module docstring)
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
