"""Nested config tables (``[components.<name>.<block>]``) read into frozen records.

spaCy validates a factory's top-level arguments; a nested table reaches the
factory as a plain dict. These helpers give every block the same checks and
the same messages, which name the block and the key.
"""
import dataclasses
from typing import Any, Dict, Mapping, Optional, Type


def block_defaults(cls: Type[Any]) -> Dict[str, Any]:
    """A dataclass's field defaults, as the config table they stand for."""
    return {f.name: f.default for f in dataclasses.fields(cls)}


def read_block(block: str, cfg: Optional[Mapping[str, Any]], cls: Type[Any]) -> Dict[str, Any]:
    """The block's values with the defaults filled in.

    block (str): the table's name in messages, e.g. "fine_tuning".
    cfg (Optional[Mapping[str, Any]]): the table as the factory got it; None = all defaults.
    cls (Type[Any]): the dataclass whose fields are the allowed keys.
    RAISES (ValueError): `cfg` is not a table, or has keys the block does not know.
    """
    if cfg is None:
        cfg = {}
    if not isinstance(cfg, Mapping):
        raise ValueError(f"'{block}' must be a table of settings; got {cfg!r}")
    defaults = block_defaults(cls)
    unknown = set(cfg) - set(defaults)
    if unknown:
        raise ValueError(f"Unknown '{block}' settings {sorted(unknown)}; expected {sorted(defaults)}")
    return {**defaults, **cfg}


def is_number(value: Any) -> bool:
    """An int or float that is not a bool (config booleans are ints to Python)."""
    return not isinstance(value, bool) and isinstance(value, (int, float))
