"""What every command does with its inputs: one-line failures (exit 2), checked
pipeline and data loading, output files that say where they went.

Shared by cli.py and the command modules beside it (cli_visualize.py).
"""
from pathlib import Path
from typing import Any, Dict, NoReturn, Optional

import typer


def _fail(message: str) -> NoReturn:
    """Print one error line (no traceback, no usage box that wraps long paths) and exit with status 2."""
    typer.echo(f"Error: {message}", err=True)
    raise typer.Exit(2)


def _check_pipeline(path: Path) -> Path:
    """Fail in one line unless `path` is a pipeline folder (see loading.check_pipeline_dir)."""
    from .loading import PipelineError, check_pipeline_dir

    try:
        return check_pipeline_dir(path)
    except PipelineError as err:
        _fail(str(err))


def _write(path: Path, text: str) -> None:
    """Write an output file (making its folder) and say where it went."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf8")
    typer.echo(f"Wrote {path}")


def _check_precision(value: str) -> str:
    """Fail in one line on a precision that is not one of the known ones."""
    from .encoder.precision import validate_precision

    try:
        return validate_precision(value)
    except ValueError as err:
        _fail(str(err))


def _load_pipeline(path: Path, config: Optional[Dict[str, Any]] = None):
    """spacy.load an early-exit pipeline, or fail in one line naming the path."""
    from .loading import PipelineError, load_pipeline

    try:
        return load_pipeline(path, config=config)
    except PipelineError as err:
        _fail(str(err))


def _load_examples(nlp, path: Path, limit: int = 0):
    """Gold examples from a .spacy file (the first `limit`), or fail in one line."""
    from .tools.data import DataFileError, load_examples

    try:
        return load_examples(nlp, path, limit)
    except DataFileError as err:
        _fail(str(err))
