"""``python -m spacy_early_exit annotate``: the command line of the annotate package.

Kept apart from cli.py so that the command is one registration line there;
heavy imports (spaCy, torch, Ray) happen only when the command runs.
"""
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer

from .annotate import DEFAULT_BATCH_SIZE, DEFAULT_SHARD_SIZE, AnnotateError, InputError, annotate_corpus, parse_overrides


class Engine(str, Enum):
    local = "local"
    ray = "ray"


def annotate_command(
    pipeline: Path = typer.Argument(..., metavar="PIPELINE", help="Trained pipeline folder; with --engine ray, a path every worker can read (a shared filesystem)"),
    input_path: Path = typer.Argument(..., metavar="INPUT", help=".txt (one document per line), .jsonl (a \"text\" field; other fields are carried), .spacy, or a folder of them"),
    output: Path = typer.Argument(..., metavar="OUTPUT", help=".jsonl (one line per input document, in input order) or .spacy (a folder of DocBin shards)"),
    engine: Engine = typer.Option(Engine.local, "--engine", help="local: nlp.pipe (n_process for --workers > 1); ray: Ray Data on a running cluster, else a local one"),
    workers: int = typer.Option(1, "--workers", min=1, help="Processes (local) or Ray actors, each with its own pipeline copy"),
    threads_per_worker: Optional[int] = typer.Option(None, "--threads-per-worker", min=1, help="torch threads per worker (default: torch's own with one local worker, else 1)"),
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
            engine=engine.value, workers=workers, threads_per_worker=threads_per_worker,
            batch_size=batch_size, overrides=parse_overrides(config), shard_size=shard_size,
        )
    except (InputError, AnnotateError) as err:
        typer.echo(f"annotate: error: {err}", err=True)
        raise typer.Exit(1) from None
