"""The pipeline a run annotates with: its --config overrides, and loading or checking it.

Loading goes through the package's shared loading.load_pipeline; what this
module adds is annotate's own error: one AnnotateError line that names the
pipeline and the overrides, whatever failed (a Ray worker's error reaches the
driver as traceback text, so only a one-line message survives the trip).
"""
import json
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Union

from .errors import AnnotateError, error_summary


def parse_overrides(items: Sequence[str]) -> Dict[str, Any]:
    """KEY=VALUE strings to a spacy.load(config=...) dict.

    Values follow spaCy's CLI rule for config overrides: JSON when they parse
    as JSON (0.3, true, null, [1, 2]), else the plain string. The stdlib
    parser reads them, not srsly's, which gives 0.30000000000000004 for 0.3.

    items (Sequence[str]): the --config values.
    RETURNS (Dict[str, Any]): dotted config path -> value.
    RAISES (AnnotateError): an item is not KEY=VALUE with a dotted KEY.
    """
    overrides: Dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise AnnotateError(f"--config {item!r}: expected KEY=VALUE, e.g. components.tokee_ner.threshold=0.3")
        if "." not in key or not all(key.split(".")):
            raise AnnotateError(f"--config {item!r}: the key must be a dotted config path such as components.tokee_ner.threshold")
        try:
            overrides[key] = json.loads(value)
        except ValueError:
            overrides[key] = value
    return overrides


def load_pipeline(pipeline: Union[str, Path], overrides: Optional[Dict[str, Any]] = None) -> Any:
    """spacy.load with overrides; errors name the pipeline and the overrides.

    pipeline (Union[str, Path]): a pipeline folder or an installed pipeline package.
    overrides (Optional[Dict[str, Any]]): spacy.load config overrides.
    RETURNS (Language): the loaded pipeline (RowSpec.from_nlp checks its components).
    RAISES (AnnotateError): anything failed while loading.
    """
    # Imported here: loading imports spaCy, and the CLI imports this package
    # at startup, when `--help` should not wait for spaCy.
    from ..loading import PipelineError
    from ..loading import load_pipeline as load_checked_pipeline

    try:
        # No folder check: a package name is a valid PIPELINE here, and a
        # wrong path's spaCy error already names it.
        return load_checked_pipeline(pipeline, dict(overrides or {}), require_early_exit=False, check_folder=False)
    except Exception as err:
        # The shared loader wraps spaCy's read errors; the summary names the original.
        cause = err.__cause__ if isinstance(err, PipelineError) and err.__cause__ is not None else err
        given = f" with --config {overrides}" if overrides else ""
        raise AnnotateError(f"Could not load the pipeline {pipeline}{given}: {error_summary(cause)}") from cause


def check_pipeline_config(pipeline: Union[str, Path], overrides: Optional[Dict[str, Any]]) -> None:
    """Cheap checks for a driver that never loads the model: the path and the overrides.

    An unknown config section then fails before any worker starts, not on
    every worker at once.

    pipeline (Union[str, Path]): the pipeline folder the workers will load.
    overrides (Optional[Dict[str, Any]]): spacy.load config overrides.
    RAISES (AnnotateError): there is no config.cfg, or the overrides do not apply to it.
    """
    from spacy.util import load_config

    path = Path(pipeline)
    if not (path / "config.cfg").is_file():
        raise AnnotateError(
            f"No pipeline at {pipeline} (no config.cfg). With --engine ray, PIPELINE must be a path that "
            "every worker can read, e.g. on a shared filesystem"
        )
    try:
        load_config(path / "config.cfg", overrides=dict(overrides or {}))
    except Exception as err:
        raise AnnotateError(f"--config {overrides}: {type(err).__name__}: {err}") from err
