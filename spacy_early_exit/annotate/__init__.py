"""Annotate a corpus with a trained pipeline: records in, plain rows out.

This package is the engine-independent part of ``python -m spacy_early_exit
annotate``, one idea a module:

- ``records``: INPUT (.txt, .jsonl, .spacy, or a folder of them) as ordered records;
- ``rows``: a processed doc as a JSON-ready row (:class:`RowSpec`);
- ``writers``: OUTPUT (``.jsonl`` rows or ``.spacy`` shards), in input order;
- ``progress``: progress lines and the closing summary;
- ``pipeline``: --config overrides and loading the pipeline;
- ``local``: the local engine (``nlp.pipe``);
- ``ray_engine``: the Ray engine (Ray Data actors), imported only by ``--engine ray``;
- ``arrow_rows``: rows as Arrow columns, for the Ray engine;
- ``command``: :func:`annotate_corpus`, the command's body;
- ``errors``: :class:`InputError`, :class:`AnnotateError`, one-line summaries.

The Ray engine (``ray_engine``) builds its rows with the same :class:`RowSpec`
and writes them with the same writers, so both engines give byte-identical
JSONL. Nothing here imports it except lazily, when ``--engine ray`` runs, so
that Ray stays an optional extra.

Record numbering: ``Record.index`` counts documents from 0 over all input
files; ``Record.where`` names the file and the 1-based line (``.txt``,
``.jsonl``) or document (``.spacy``) it came from.
"""
from .command import ENGINES, annotate_corpus
from .errors import AnnotateError, InputError, error_summary
from .local import run_local
from .pipeline import check_pipeline_config, load_pipeline, parse_overrides
from .progress import Progress
from .records import (
    DEFAULT_BATCH_SIZE,
    FIELDS_KEY,
    INPUT_SUFFIXES,
    Location,
    Record,
    chunks,
    count_records,
    describe_range,
    input_files,
    read_records,
)
from .rows import ANNOTATION_KEYS, RECORD_KEYS, RowSpec, compose_row, jsonl_line
from .writers import DEFAULT_SHARD_SIZE, OUTPUT_SUFFIXES, DocBinWriter, JsonlWriter, Writer, check_paths, open_writer

__all__ = [
    "ANNOTATION_KEYS",
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_SHARD_SIZE",
    "ENGINES",
    "FIELDS_KEY",
    "INPUT_SUFFIXES",
    "OUTPUT_SUFFIXES",
    "RECORD_KEYS",
    "AnnotateError",
    "DocBinWriter",
    "InputError",
    "JsonlWriter",
    "Location",
    "Progress",
    "Record",
    "RowSpec",
    "Writer",
    "annotate_corpus",
    "check_paths",
    "check_pipeline_config",
    "chunks",
    "compose_row",
    "count_records",
    "describe_range",
    "error_summary",
    "input_files",
    "jsonl_line",
    "load_pipeline",
    "open_writer",
    "parse_overrides",
    "read_records",
    "run_local",
]
