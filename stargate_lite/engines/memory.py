"""Handing freed memory back to the system on glibc, where a CPU process would otherwise keep it.

glibc's malloc keeps freed blocks of up to 32 MiB in its heap for reuse, and PyTorch's CPU tensors live there:
after a training step, or a model freed between stages, the process's resident memory stays at its high-water
mark, fragmentation included, well above what its tensors hold (benchmarks/README.md, "Memory").
`malloc_trim` returns the free pages.
"""

from __future__ import annotations

import ctypes
import functools
import sys


@functools.cache
def _malloc_trim():
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (musl)
        return None


def trim_heap() -> None:
    """Return the heap's free pages to the system (a few milliseconds; nothing where malloc is not glibc's)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
