"""Writing chosen exit settings: config overrides as JSON, and pipeline copies that carry them.

Exit settings live in a pipeline's config, so `spacy.load(path, config=...)`
applies a chosen setting at load time, and a copy whose config.cfg carries the
values loads with them.
"""
import json
from pathlib import Path
from typing import Any, Dict, Optional

from spacy.language import Language
from thinc.api import Config

from .evaluate import early_exit_pipes


def config_overrides(nlp: Language, fields: Dict[str, Any]) -> Dict[str, Any]:
    """Dotted config overrides that set `fields` on every early-exit component:
    the form `spacy.load(path, config=...)` accepts."""
    return {f"components.{name}.{key}": value for name, _ in early_exit_pipes(nlp) for key, value in fields.items()}


def target_stem(target: float) -> str:
    """File stem of a target: 2.0 -> "2x", 2.5 -> "2.5x"."""
    return f"{target:g}x"


def write_overrides(overrides: Dict[str, Any], path: Path) -> Path:
    """Write config overrides as JSON (load with `spacy.load(p, config=json.load(f))`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(overrides, indent=2) + "\n", encoding="utf8")
    return path


def apply_overrides(config: Config, overrides: Dict[str, Any]) -> Config:
    """Set dotted `overrides` in `config`, in place; every section must exist.

    config (Config): an uninterpolated pipeline config.
    overrides (Dict[str, Any]): e.g. {"components.tokee_ner.threshold": 0.3}.
    RETURNS (Config): the same config.
    """
    for dotted, value in overrides.items():
        *sections, key = dotted.split(".")
        table = config
        for section in sections:
            if section not in table:
                raise KeyError(f"Config has no section {'.'.join(sections)!r} for override {dotted!r}")
            table = table[section]
        table[key] = value
    return config


def save_tuned_pipeline(nlp: Language, overrides: Dict[str, Any], path: Path) -> Path:
    """Save `nlp` to `path` with `overrides` written into its config.cfg.

    Exit settings live in the config (spacy.load reads them from there), so a
    copy whose config carries the chosen values loads with them.
    """
    Path(path).parent.mkdir(parents=True, exist_ok=True)  # nlp.to_disk makes only the last folder
    nlp.to_disk(path)
    config_path = Path(path) / "config.cfg"
    # interpolate=False keeps ${...} references as they were.
    config = apply_overrides(Config().from_disk(config_path, interpolate=False), overrides)
    config.to_disk(config_path)
    return Path(path)


def write_tuned(
    nlp: Language, report: Dict[str, Any], configs_dir: Optional[Path], pipelines_dir: Optional[Path]
) -> None:
    """Write each reachable target's overrides and/or tuned pipeline copy; records the paths in `report`.

    nlp (Language): the tuned pipeline.
    report (Dict[str, Any]): `tune`'s report (updated in place).
    configs_dir (Optional[Path]): folder for `<target>x.json` overrides.
    pipelines_dir (Optional[Path]): folder for `<target>x/` pipeline copies.
    """
    for entry in report["targets"]:
        if not entry["reachable"]:
            continue
        stem = target_stem(entry["target"])
        if configs_dir is not None:
            entry["config_path"] = str(write_overrides(entry["overrides"], Path(configs_dir) / f"{stem}.json"))
        if pipelines_dir is not None:
            entry["pipeline_path"] = str(save_tuned_pipeline(nlp, entry["overrides"], Path(pipelines_dir) / stem))
