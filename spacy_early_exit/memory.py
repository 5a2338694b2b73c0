"""Handing freed heap memory back to the operating system during long streams.

Every batch allocates tensors of new shapes (rows are as long as their docs),
and glibc's malloc keeps what they free in its arenas' free lists rather than
returning it. Streaming 100,000 docs through a pipeline grew the resident size
from 1.2 GiB at 10k docs to 2.1 GiB at 100k (benchmarks/stress.py) although
nearly all of it was free: one `malloc_trim(0)` brought it back to 0.6 GiB.
The components therefore call it every `heap_trim_interval` docs. That lowers
the curve (1.8 GiB at 100k docs) but does not flatten it: live tensors keep
the arenas fragmented between trims. jemalloc, preloaded, keeps it flat.

Where there is no malloc_trim (macOS, Windows, musl) this is a no-op; with
jemalloc preloaded, glibc's trim finds nothing to hand back.
"""
import ctypes
import sys
from functools import lru_cache
from typing import Callable, Optional


@lru_cache(maxsize=None)
def _malloc_trim() -> Optional[Callable[[int], int]]:
    """glibc's malloc_trim from the running process, or None where there is none."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)  # the C library this process already uses
    except OSError:
        return None
    trim = getattr(libc, "malloc_trim", None)
    if trim is None:
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def release_free_heap() -> bool:
    """Return the allocator's free pages to the OS.

    RETURNS (bool): whether a trim call was available and ran.
    """
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


def validate_interval(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"'heap_trim_interval' must be an integer >= 0 (0: never trim); got {value!r}")
    return value


class HeapTrimmer:
    """Counts processed docs and releases free heap memory every `interval` docs.

    interval (int): docs between trims; 0 turns trimming off.
    """

    def __init__(self, interval: int) -> None:
        self.interval = validate_interval(interval)
        self.pending = 0
        self.trims = 0

    def count(self, n_docs: int) -> bool:
        """Record `n_docs` processed docs; RETURNS whether a trim ran now."""
        if not self.interval:
            return False
        self.pending += n_docs
        if self.pending < self.interval:
            return False
        self.pending = 0
        self.trims += 1
        return release_free_heap()
