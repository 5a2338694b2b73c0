"""Keeping resident memory flat while a pipeline streams millions of docs.

Two causes of growth, found with glibc's mallinfo2 while streaming the demo
corpus (benchmarks/stress.py):

- oneDNN's primitive cache. On x86 CPUs torch runs GELU (and other
  elementwise ops) through oneDNN, which builds and caches one primitive per
  tensor shape (up to 1,024 of them). Every batch has new shapes, so the cache
  churns forever, and its long-lived allocations land between the large,
  short-lived activation buffers, pinning glibc's heap: the heap grew from
  0.35 to 0.84 GiB over 12,000 docs while the bytes in use stayed at 0.17 GiB.
  Inference therefore runs with torch's own kernels (`native_kernels`): the
  heap stays at 0.18 GiB, and prediction is faster, since no kernel is built
  per shape (the matrix products go to MKL either way).
- Free memory that glibc keeps in its arenas. The components can call
  `malloc_trim(0)` every `heap_trim_interval` docs to hand it back.

Where there is no malloc_trim (macOS, Windows, musl) trimming is a no-op.
"""
import ctypes
import sys
from contextlib import contextmanager
from functools import lru_cache
from typing import Callable, Iterator, Optional

import torch


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


@contextmanager
def native_kernels() -> Iterator[None]:
    """Run the block with oneDNN switched off, so torch uses its own CPU kernels.

    The switch is process-wide while the block runs (torch has no per-thread
    one); it is restored on exit, also after an error.
    """
    backend = torch.backends.mkldnn
    before = backend.enabled
    backend.enabled = False
    try:
        yield
    finally:
        backend.enabled = before


def validate_interval(value: object, field: str = "heap_trim_interval") -> int:
    """An interval in docs, >= 0; `field` names it in the error."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"'{field}' must be an integer >= 0 (0: never trim); got {value!r}")
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
