"""``python -m spacy_early_exit annotate``: the command line of the annotate package.

Kept apart from cli.py so that the command is one registration line there;
heavy imports (spaCy, torch, Ray) happen only when the command runs.
"""
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer

from .annotate import DEFAULT_BATCH_SIZE, DEFAULT_SHARD_SIZE, AnnotateError, InputError, annotate_corpus, parse_overrides
from .annotate.errors import PipelinePathError


class Engine(str, Enum):
    local = "local"
    ray = "ray"


def per_worker_threads(value: str) -> Optional[int]:
    """--threads-per-worker as annotate_corpus takes it: None for auto, else a count >= 1.

    value (str): "auto" or a count.
    RETURNS (Optional[int]): None (annotate's default per engine) or the count.
    """
    from .threads import AUTO, parse_threads

    try:
        setting = parse_threads(value)
    except ValueError:
        setting = 0
    if setting == AUTO:
        return None
    if not setting:
        raise typer.BadParameter(f"must be 'auto' or an integer >= 1; got {value!r}", param_hint="--threads-per-worker")
    return int(setting)


def annotate_command(
    pipeline: Path = typer.Argument(..., metavar="PIPELINE", help="Trained pipeline folder; with --engine ray, a path every worker can read (a shared filesystem)"),
    input_path: Path = typer.Argument(..., metavar="INPUT", help=".txt (one document per line), .jsonl (a \"text\" field; other fields are carried), .spacy, or a folder of them"),
    output: Path = typer.Argument(..., metavar="OUTPUT", help=".jsonl (one line per input document, in input order) or .spacy (a folder of DocBin shards)"),
    engine: Engine = typer.Option(Engine.local, "--engine", help="local: nlp.pipe (n_process for --workers > 1); ray: Ray Data on a running cluster, else a local one"),
    workers: int = typer.Option(1, "--workers", min=1, help="Processes (local) or Ray actors, each with its own pipeline copy"),
    threads_per_worker: str = typer.Option("auto", "--threads-per-worker", help="torch threads per worker: a count, or auto (one local worker: the top-level --threads choice, itself auto by default; else 1)"),
    batch_size: int = typer.Option(DEFAULT_BATCH_SIZE, "--batch-size", min=1, help="Documents per batch"),
    config: List[str] = typer.Option([], "--config", metavar="KEY=VALUE", help="KEY=VALUE config override for the run, repeatable, e.g. components.tokee_ner.threshold=0.3"),
    shard_size: int = typer.Option(DEFAULT_SHARD_SIZE, "--shard-size", min=1, help="Documents per DocBin shard (.spacy output)"),
) -> None:
    """Annotate a corpus at scale; rows keep the input order and carry each document's exit record.

    Progress and a summary (documents and words per second, FLOPs speed-up) go
    to stderr. Malformed input fails before any work, naming the file and line.
    """
    try:
        annotate_corpus(
            pipeline, input_path, output,
            engine=engine.value, workers=workers, threads_per_worker=per_worker_threads(threads_per_worker),
            batch_size=batch_size, overrides=parse_overrides(config), shard_size=shard_size,
        )
    except (InputError, AnnotateError) as err:
        typer.echo(f"annotate: error: {err}", err=True)
        # 2 for a wrong PIPELINE path, as every other command gives; 1 for a failed run.
        raise typer.Exit(2 if isinstance(err, PipelinePathError) else 1) from None
