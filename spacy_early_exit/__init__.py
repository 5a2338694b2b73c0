"""Token-level early exit (TOKEE/SENTEE) for transformer sequence labeling in spaCy.

Importing this package is cheap; the spaCy components register themselves
through entry points when a pipeline names them.
"""
import os
from typing import Any

# OpenMP threads that wait for work sleep instead of spinning. A spinning
# thread burns the core that another job needs, so beside a busy process
# torch's default (spin, then sleep) ran a 2-thread training loop at 13 steps/s
# where PASSIVE ran it at 20. libgomp reads this once, when torch loads, so it
# is set here, before any torch import of ours; a value the user set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.2.0"
# Loaded on first use (PEP 562), so `import spacy_early_exit` stays cheap.
LAZY = {"render": "tools.visualize", "screenshot": "tools.visualize"}
__all__ = ["render", "screenshot"]


def __getattr__(name: str) -> Any:
    if name in LAZY:
        from importlib import import_module

        return getattr(import_module(f".{LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
