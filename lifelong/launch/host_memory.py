"""Host memory: keep freed blocks in the process instead of handing them back to the OS.

glibc serves an allocation above its mmap threshold with a fresh mapping and returns a free heap
top above its trim threshold to the OS. A CPU training step frees and re-allocates the same
few-MB activations every step, so each step page-faults and zero-fills them again (~1,500 faults
per tiny_gpt2 step). Raising both thresholds keeps those pages: ~10% faster CPU steps and ~7x
fewer faults (measured; benchmarks/overhead.py). jemalloc or tcmalloc by LD_PRELOAD do the same;
this needs nothing installed.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 256 << 20  # larger allocations still get their own mapping
TRIM_THRESHOLD_BYTES = 1 << 30  # at most this much freed memory is kept at the heap's top


def keep_freed_host_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process; False where there is no glibc
    mallopt (macOS, musl), which leaves the allocator as it was."""
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
