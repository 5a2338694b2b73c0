"""Token-level early exit (TOKEE/SENTEE) for transformer sequence labeling in spaCy.

Importing this package is cheap; the spaCy components register themselves
through entry points when a pipeline names them.
"""
__version__ = "0.1.0"
