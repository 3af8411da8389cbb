"""Freed tensor memory goes back to the operating system at once (Linux, glibc).

On CPU, torch takes tensor memory from glibc's malloc. glibc serves a large block (at first
>= 128 KiB) with its own mmap and unmaps it when freed, but every such free raises that
threshold to the block's size (up to 32 MiB): from then on, blocks of that size come from the
heap, and a freed heap block stays in the process. A forward and backward allocates and frees
thousands of activation-sized blocks, so the heap fills with free holes and the resident size
grows far past what is alive. Fixing the threshold at 128 KiB (mallopt M_MMAP_THRESHOLD, which
also turns the raising off) keeps the resident size close to the live tensors; measured in
bench/RESULTS.md, "Memory plan".
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number (malloc.h)
THRESHOLD_BYTES = 128 * 1024  # glibc's initial value


def return_freed_memory() -> bool:
    """Set glibc's mmap threshold to 128 KiB for the rest of the process; True where it was set
    (Linux with glibc), False elsewhere (nothing changes)."""
    if not sys.platform.startswith("linux") or not (name := ctypes.util.find_library("c")):
        return False
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.mallopt(M_MMAP_THRESHOLD, THRESHOLD_BYTES))
    except (OSError, AttributeError):  # musl and others: no mallopt
        return False
