"""Bring a pipeline saved before the nested config blocks up to date.

Pipelines saved before version 0.2 keep `learn_rate`, `backbone_lr_factor`,
`embedding_lr_factor`, `warmup_steps`, `extend_vocab` and `heap_trim_interval`
at the component's top level; they now live in the `fine_tuning` and `memory`
blocks (pipes/settings.py). Only config.cfg changes: the weights are the same.
"""
from pathlib import Path
from typing import List, Tuple, Union

from spacy.util import load_config
from thinc.api import Config

from ..pipes.settings import migrate_component

# Every factory whose config moved.
FACTORIES = ("tokee_ner", "tokee_tagger", "tokee_segmenter")


def moved_fields(config: Config) -> List[Tuple[str, str]]:
    """The (old, new) dotted keys a config still has in the old places."""
    moves = []
    for name, block in config.get("components", {}).items():
        if block.get("factory") in FACTORIES:
            _, moved = migrate_component(dict(block))
            moves += [(f"components.{name}.{old}", f"components.{name}.{new}") for old, new in moved]
    return moves


def migrate_config(config: Config) -> Tuple[Config, List[Tuple[str, str]]]:
    """A copy of `config` with the old fields moved; RETURNS it and the moves."""
    data = config.copy()
    moves: List[Tuple[str, str]] = []
    for name, block in data.get("components", {}).items():
        if block.get("factory") in FACTORIES:
            new, moved = migrate_component(dict(block))
            data["components"][name] = new
            moves += [(f"components.{name}.{old}", f"components.{name}.{new_key}") for old, new_key in moved]
    return Config(data), moves


def migrate_pipeline(path: Union[str, Path]) -> List[Tuple[str, str]]:
    """Rewrite a saved pipeline's config.cfg in place (the old one is kept as
    config.cfg.bak); RETURNS the moves, none when it was already current."""
    config_path = Path(path) / "config.cfg"
    if not config_path.is_file():
        raise ValueError(f"Not a spaCy pipeline folder (no config.cfg): {path}")
    config = load_config(config_path, interpolate=False)
    migrated, moves = migrate_config(config)
    if moves:
        backup = config_path.with_name("config.cfg.bak")
        backup.write_text(config_path.read_text(encoding="utf8"), encoding="utf8")
        migrated.to_disk(config_path)
    return moves


def describe_moves(moves: List[Tuple[str, str]]) -> str:
    """One line naming what moved where."""
    return "; ".join(f"{old} -> {new}" for old, new in moves)
