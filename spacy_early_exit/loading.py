"""Load a saved pipeline, or fail in one sentence that names the path.

spacy.load on a wrong path raises deep inside spaCy (E052, E053, a missing
config), and a command-line user sees a long traceback for what is a typo.
These checks run first and say what is wrong with the path itself.
"""
from pathlib import Path
from typing import Any, Dict, Optional, Union

from spacy.language import Language

PathLike = Union[str, Path]
# What spacy.load reads from a pipeline folder before anything else.
REQUIRED_FILES = ("config.cfg", "meta.json")


class PipelineError(ValueError):
    """A path that is not a loadable early-exit pipeline; the message names it."""


def check_pipeline_dir(path: PathLike) -> Path:
    """Check that `path` looks like a saved spaCy pipeline folder, without loading it.

    path (PathLike): the pipeline folder.
    RETURNS (Path): the path.
    RAISES (PipelineError): it is missing, a file, or lacks config.cfg/meta.json.
    """
    path = Path(path)
    if not path.exists():
        raise PipelineError(f"No such pipeline folder: {path}")
    if not path.is_dir():
        raise PipelineError(f"Not a pipeline folder (it is a file): {path}")
    missing = [name for name in REQUIRED_FILES if not (path / name).is_file()]
    if missing:
        raise PipelineError(f"Not a spaCy pipeline folder (no {' or '.join(missing)}): {path}")
    return path


def check_pipeline_name(name: PathLike) -> PathLike:
    """Check a pipeline that may be a folder or an installed pipeline package.

    A name that is an installed package (``en_core_web_sm``) is left to
    spacy.load; anything else must be a pipeline folder, so that a typo in a
    path fails here in one line rather than as spaCy's E050/E052.

    name (PathLike): a pipeline folder or the name of an installed pipeline package.
    RETURNS (PathLike): the name, unchanged.
    RAISES (PipelineError): it is no package and not a pipeline folder (check_pipeline_dir).
    """
    from spacy.util import is_package

    # The command line hands over a Path even for a package name.
    if not Path(name).exists() and is_package(str(name)):
        return name
    check_pipeline_dir(name)
    return name


def load_pipeline(
    path: PathLike,
    config: Optional[Dict[str, Any]] = None,
    require_early_exit: bool = True,
    check_folder: bool = True,
) -> Language:
    """spacy.load a checked pipeline folder.

    path (PathLike): the pipeline folder.
    config (Optional[Dict[str, Any]]): dotted config overrides for spacy.load.
    require_early_exit (bool): fail when no component is an early-exit pipe.
    check_folder (bool): check the folder first (check_pipeline_dir). False
        hands `path` to spacy.load as it is, so that it may also name an
        installed pipeline package (as a Ray worker's pipeline may).
    RETURNS (Language): the loaded pipeline.
    RAISES (PipelineError): the folder is not a pipeline, spaCy cannot read it,
        or (with require_early_exit) it has no early-exit component.
    """
    import spacy

    from .pipes.owner import EncoderOwner

    if check_folder:
        path = check_pipeline_dir(path)
    try:
        nlp = spacy.load(path, config=config or {})
    except (OSError, ValueError) as err:
        moved = _moved_fields(path)
        if moved:
            raise PipelineError(
                f"The pipeline {path} was saved by an earlier version: these config fields moved: {moved}. "
                f"Run: python -m spacy_early_exit migrate {path}"
            ) from err
        # spaCy's own read errors (E050-E053, bad meta/config) land here, and
        # config values its checks reject; for those the fields are kept, for
        # the rest the first line of the message, which says which file.
        first = config_error_fields(err) or (str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__)
        raise PipelineError(f"Cannot load the pipeline {path}: {first}") from err
    # A standalone tokee_* component or a shared tokee_transformer: whatever owns an encoder.
    if require_early_exit and not any(isinstance(pipe, EncoderOwner) for _, pipe in nlp.pipeline):
        raise PipelineError(f"The pipeline {path} has no early-exit component (its pipes: {nlp.pipe_names})")
    return nlp


def config_error_fields(err: BaseException) -> str:
    """The fields and reasons of a config validation error, on one line ("" for other errors).

    spaCy's config errors (confection's ConfigValidationError) print the whole
    resolved config after the field lines; the field lines are what a user needs.

    err (BaseException): any error.
    RETURNS (str): e.g. "tokee_ner -> threshold: 2.0 is not a number in [0, 1]", or "".
    """
    errors = getattr(err, "errors", None)
    if not isinstance(errors, (list, tuple)) or not all(isinstance(e, dict) and "loc" in e for e in errors):
        return ""
    parts = []
    for error in errors:
        where = " -> ".join(str(part) for part in error["loc"])
        # "at root:" is the checker's path inside the value: noise for a plain field.
        reason = str(error.get("msg", "")).removeprefix("at root: ")
        parts.append(f"{where}: {reason}" if reason else where)
    return "; ".join(parts)


def _moved_fields(path: PathLike) -> str:
    """What an old pipeline's config.cfg still has in the old places ("" if nothing)."""
    from spacy.util import load_config

    from .tools.migrate import describe_moves, moved_fields

    config_path = Path(path) / "config.cfg"
    if not config_path.is_file():
        return ""
    try:
        return describe_moves(moved_fields(load_config(config_path, interpolate=False)))
    except Exception:  # an unreadable config: spaCy's own message says why
        return ""
