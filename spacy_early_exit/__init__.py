"""Token-level early exit (TOKEE/SENTEE) for transformer sequence labeling in spaCy.

Importing this package is cheap; the spaCy components register themselves
through entry points when a pipeline names them.
"""
from typing import Any

__version__ = "0.2.0"
# Loaded on first use (PEP 562), so `import spacy_early_exit` stays cheap.
LAZY = {"render": "tools.visualize", "screenshot": "tools.visualize"}
__all__ = ["render", "screenshot"]


def __getattr__(name: str) -> Any:
    if name in LAZY:
        from importlib import import_module

        return getattr(import_module(f".{LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
