"""Token-level early exit (TOKEE/SENTEE) for transformer sequence labeling in spaCy.

Importing this package is cheap; the spaCy components register themselves
through entry points when a pipeline names them.
"""
import os
from typing import Any

# OpenMP threads that wait for work spin only briefly (3,000 rounds, tens of
# microseconds), then sleep. libgomp's default spins 300,000 rounds: beside one
# busy process a 2-thread stage 1 then ran at 0.36 updates/s against 3.5 quiet.
# PASSIVE (no spin) fixes that (2.41) but costs 18% on a quiet machine (2.90);
# 3,000 rounds keeps the quiet speed (3.47) and most of the protection (2.11),
# and `threads = auto` avoids the contention at start (1 thread: 2.59).
# Figures: benchmarks/results/thread_contention.json. libgomp reads this once,
# when torch loads, so it is set here, before any torch import of ours; a wait
# policy or spin count the user set wins.
SPIN_ROUNDS = "3000"
if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
    os.environ["GOMP_SPINCOUNT"] = SPIN_ROUNDS

__version__ = "0.2.0"
# Loaded on first use (PEP 562), so `import spacy_early_exit` stays cheap.
LAZY = {"render": "tools.visualize", "screenshot": "tools.visualize"}
__all__ = ["render", "screenshot"]


def __getattr__(name: str) -> Any:
    if name in LAZY:
        from importlib import import_module

        return getattr(import_module(f".{LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
