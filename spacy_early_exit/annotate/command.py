"""The body of ``python -m spacy_early_exit annotate``: options checked, INPUT through an engine into OUTPUT."""
import sys
from contextlib import closing
from pathlib import Path
from typing import IO, Any, Dict, Optional, Union

from .errors import AnnotateError, PipelinePathError
from .local import run_local
from .pipeline import load_pipeline
from .progress import Progress, done_line
from .records import DEFAULT_BATCH_SIZE, count_records, read_records
from .writers import DEFAULT_SHARD_SIZE, check_paths, open_writer

ENGINES = ("local", "ray")


def annotate_corpus(
    pipeline: Union[str, Path],
    input_path: Union[str, Path],
    output: Union[str, Path],
    *,
    engine: str = "local",
    workers: int = 1,
    threads_per_worker: Optional[int] = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    overrides: Optional[Dict[str, Any]] = None,
    shard_size: int = DEFAULT_SHARD_SIZE,
    progress_every: float = 10.0,
    stream: Optional[IO[str]] = None,
    quiet: bool = False,
) -> Dict[str, Any]:
    """Annotate INPUT with PIPELINE and write OUTPUT in input order.

    pipeline (Union[str, Path]): a trained pipeline folder (with engine "ray",
        a path that every worker can read).
    input_path (Union[str, Path]): .txt, .jsonl, .spacy, or a folder of them.
    output (Union[str, Path]): .jsonl (rows) or .spacy (a folder of DocBin shards).
    engine (str): "local" (nlp.pipe) or "ray" (Ray Data).
    workers (int): processes (local) or actors (ray), each with its own pipeline copy.
    threads_per_worker (Optional[int]): torch threads per worker; None = torch's
        default for one local worker, else 1.
    batch_size (int): documents per batch.
    overrides (Optional[Dict[str, Any]]): spacy.load config overrides.
    shard_size (int): documents per .spacy shard.
    progress_every (float): seconds between progress lines on `stream`.
    stream (Optional[IO[str]]): where progress and the summary go; None = stderr.
    quiet (bool): no progress lines and no summary line.
    RETURNS (Dict[str, Any]): the summary (documents, words, seconds, FLOPs).
    RAISES (PipelinePathError): `pipeline` is no pipeline folder or package.
    RAISES (AnnotateError): bad options, or the pipeline fails to load or run.
    """
    input_path, output = Path(input_path), Path(output)
    stream = None if quiet else (stream or sys.stderr)
    if engine not in ENGINES:
        raise AnnotateError(f"--engine must be one of {list(ENGINES)}; got {engine!r}")
    if workers < 1 or batch_size < 1 or (threads_per_worker is not None and threads_per_worker < 1):
        raise AnnotateError("--workers, --threads-per-worker and --batch-size must be at least 1")
    check_pipeline(pipeline)
    if engine == "ray":
        # Lazy: the Ray engine imports this package, and Ray is an optional extra.
        from .ray_engine import import_ray

        import_ray()  # without the extra, fail before reading anything
    check_paths(input_path, output)
    total = count_records(input_path)  # every line checked before any work starts
    progress = Progress(total, stream, progress_every)
    keep_docs = output.suffix == ".spacy"
    with open_writer(output, shard_size) as writer:
        if engine == "local":
            nlp = load_pipeline(pipeline, overrides)
            results = run_local(
                nlp, read_records(input_path), workers=workers, threads_per_worker=threads_per_worker, batch_size=batch_size
            )
        else:
            from .ray_engine import run_ray

            results = run_ray(
                pipeline, input_path, total, workers=workers, threads_per_worker=threads_per_worker or 1,
                batch_size=batch_size, overrides=overrides, keep_docs=keep_docs,
            )
        # closing(): a failed write ends the engine at once (a Ray session
        # shuts down then, not when the generator is collected).
        with closing(results):
            for record, annotation, doc in results:
                writer.write(record, annotation, doc)
                progress.add(annotation)
    summary = {
        "engine": engine, "workers": workers, "threads_per_worker": threads_per_worker,
        "batch_size": batch_size, "output": str(output), **progress.summary(),
    }
    if stream is not None:
        print(done_line(summary, output), file=stream, flush=True)
    return summary


def check_pipeline(pipeline: Union[str, Path]) -> None:
    """Fail in one line, before reading any input, unless PIPELINE can be a pipeline.

    pipeline (Union[str, Path]): a pipeline folder or an installed pipeline package.
    RAISES (PipelinePathError): it is neither (the message names the path).
    """
    # Lazy: loading imports spaCy, and `--help` should not wait for it.
    from ..loading import PipelineError, check_pipeline_name

    try:
        check_pipeline_name(pipeline)
    except PipelineError as err:
        raise PipelinePathError(str(err)) from None
