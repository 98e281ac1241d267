"""Process-wide settings that make training on a CPU faster.

PyTorch allocates every CPU tensor with the C library's `malloc`. glibc serves
blocks above its mmap threshold with a fresh `mmap` and returns freed memory at
the top of the heap to the system once it exceeds the trim threshold, so a training
step that frees and re-allocates its activations (tens of MiB) would touch new pages
again every step, paying a page fault per page in system time. Keeping freed memory
in the process (both thresholds raised) lets the next step reuse those pages.

The console scripts call `keep_freed_memory` before anything else;
library users can call it themselves. The cost is that the process keeps its peak
heap size until it exits, which a training or sampling process does anyway.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

__all__ = ["available_memory", "keep_freed_memory", "freed_memory_kept"]

_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers
_M_MMAP_THRESHOLD = -3
_applied = False


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds so that freed tensors are reused.

    Returns whether the setting is in force (False off Linux/glibc, where nothing
    is changed). Safe to call more than once.
    """
    global _applied
    if _applied:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries have no mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    _applied = bool(mallopt(_M_MMAP_THRESHOLD, 1 << 30)) and bool(
        mallopt(_M_TRIM_THRESHOLD, (1 << 31) - 1)
    )
    return _applied


def freed_memory_kept() -> bool:
    """Whether `keep_freed_memory` is in force in this process."""
    return _applied


def available_memory() -> int | None:
    """The bytes of memory the system can give this process without swapping:
    `MemAvailable` of `/proc/meminfo` (Linux), else the free pages `sysconf` reports;
    `None` where neither is known."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import os

        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
