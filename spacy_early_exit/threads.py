"""One rule for the torch thread count of every command and training script."""
import os
from typing import Optional

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


def set_torch_threads(requested: int) -> int:
    """Set torch's intra-op threads to `requested`, capped by the environment.

    A job script that exports OMP_NUM_THREADS=1 (benchmarks/train_corpus.sh
    does, to share 2 cores between two jobs) means it: a project default of 2
    threads must not override it, since more threads than free cores makes
    training many times slower.

    requested (int): the thread count asked for; 0 keeps torch's default.
    RETURNS (int): the thread count torch now uses.
    """
    import torch

    if requested < 0:
        raise ValueError(f"threads must be >= 0; got {requested}")
    cap = environment_cap()
    if requested:
        torch.set_num_threads(min(requested, cap) if cap else requested)
    return torch.get_num_threads()
