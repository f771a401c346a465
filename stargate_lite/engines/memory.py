"""Handing freed memory back to the system on glibc, where a CPU process would otherwise keep it.

glibc's malloc keeps freed blocks of up to 32 MiB in its heap for reuse, and PyTorch's CPU tensors live there:
after a training step, or a model freed between stages, the process's resident memory stays at its high-water
mark, fragmentation included, well above what its tensors hold (benchmarks/README.md, "Memory").
`malloc_trim` returns the free pages.
"""

from __future__ import annotations

import ctypes
import functools
import gc
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


def release_memory() -> None:
    """Free what the last stage dropped, reference cycles included, and give the memory back: CUDA's cached blocks
    to the driver, where a training child or a server can use them (`torch.cuda.empty_cache`), and the freed heap
    to the system, so that a CPU process's resident memory does not carry each stage's peak into the next."""
    gc.collect()
    torch = sys.modules.get("torch")  # never imported here just to find that nothing is cached
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
    trim_heap()
