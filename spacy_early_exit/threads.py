"""One rule for the torch thread count of every command and training script."""
import os
from contextlib import contextmanager
from typing import Iterator, Optional

# Environment variables a user or a job script sets to cap a process's threads.
CAP_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def environment_cap() -> Optional[int]:
    """The smallest positive thread count set in OMP_NUM_THREADS / MKL_NUM_THREADS, or None."""
    values = []
    for name in CAP_VARIABLES:
        try:
            value = int(os.environ.get(name, ""))
        except ValueError:
            continue
        if value > 0:
            values.append(value)
    return min(values) if values else None


def set_torch_threads(requested: int, capped: bool = True) -> int:
    """Set torch's intra-op threads to `requested`, capped by the environment.

    A job script that exports OMP_NUM_THREADS=1 (benchmarks/train_corpus.sh
    does, to share 2 cores between two jobs) means it: a project default of 2
    threads must not override it, since more threads than free cores makes
    training many times slower.

    requested (int): the thread count asked for; 0 keeps torch's default.
    capped (bool): apply the environment's cap. False for a count set per
        worker of one run (annotate's --threads-per-worker, a Ray actor's CPU
        share), which is that run's own decision about its cores.
    RETURNS (int): the thread count torch now uses.
    """
    import torch

    if requested < 0:
        raise ValueError(f"threads must be >= 0; got {requested}")
    cap = environment_cap() if capped else None
    if requested:
        torch.set_num_threads(min(requested, cap) if cap else requested)
    return torch.get_num_threads()


@contextmanager
def torch_threads(requested: Optional[int], capped: bool = True) -> Iterator[int]:
    """torch's intra-op threads set as set_torch_threads sets them, for the block only.

    The previous count comes back afterwards, so a library call (annotate run
    from Python) leaves the caller's torch setting as it found it.

    requested (Optional[int]): the thread count; None or 0 keeps torch's setting.
    capped (bool): apply the environment's cap (see set_torch_threads).
    YIELDS (int): the thread count torch uses in the block.
    """
    import torch

    previous = torch.get_num_threads()
    try:
        yield set_torch_threads(requested or 0, capped=capped)
    finally:
        torch.set_num_threads(previous)
