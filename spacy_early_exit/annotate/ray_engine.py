"""The Ray engine: annotate with Ray Data, one pipeline copy per actor, texts in, plain rows out.

Ray is the optional ``ray`` extra (``pip install "spacy-early-exit[ray]"``)
and is imported only when used. :func:`annotate_dataset` is the function for
a Ray Dataset you already have; :func:`run_ray` is ``annotate --engine ray``.

Each actor loads the pipeline from its path once and sets its own torch
threads (a fresh Ray worker process, unlike a forked one, can run several).
The path must be readable at the same place by every worker: on a cluster, a
shared filesystem mounted on every node, or a pipeline package installed on
every node. Neither a pipeline object nor a ``Doc`` goes through Ray's object
store: pickling a loaded pipeline fails on its read-only buffers, and Docs
are costly to move. Batches of texts go in, Arrow columns of plain values
come out.
"""
import logging
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Tuple, Union

from ..threads import set_torch_threads
from .arrow_rows import ROW_COLUMN, TEXT_COLUMN, annotation_table, annotations_from_table, text_table
from .errors import AnnotateError, error_summary
from .pipeline import check_pipeline_config, load_pipeline
from .records import DEFAULT_BATCH_SIZE, Record, chunks, describe_range, read_records
from .rows import RowSpec

INSTALL_COMMAND = 'pip install "spacy-early-exit[ray]"'
# Batches per Ray block in the CLI's dataset: enough blocks to keep every
# actor busy to the end, few enough that Ray's per-block cost stays small.
BATCHES_PER_BLOCK = 4
_BATCH_FAILED = re.compile(r"BatchFailed: rows (\d+) to (\d+) \(column 'row'\) failed: ([^\n]*)")
_ERROR_LINE = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?([A-Z]\w*(?:Error|Exception|Failed)): (.+)$", re.MULTILINE)


class BatchFailed(RuntimeError):
    """A batch that a worker could not annotate; the message names its rows."""


def import_ray() -> Any:
    """The ray module with Ray Data, or an AnnotateError that gives the install command."""
    try:
        import ray
        import ray.data  # noqa: F401  (Ray Data is the `data` extra of ray)
    except ImportError as err:
        raise AnnotateError(f"--engine ray needs Ray, an optional extra: {INSTALL_COMMAND} ({err})") from None
    return ray


# -- the worker ---------------------------------------------------------------------


class PipelineWorker:
    """A Ray Data callable class: loads the pipeline once, annotates Arrow batches.

    pipeline_path (str): the pipeline, readable from this worker.
    threads_per_worker (int): torch threads for this worker.
    config (Optional[Dict[str, Any]]): spacy.load config overrides.
    text_column (str): the column with the texts.
    batch_size (int): nlp.pipe's batch size.
    id_column (Optional[str]): a column naming each row (e.g. its input line),
        used to say which rows a failing batch held.
    keep_docs (bool): add a "doc_bytes" column (``Doc.to_bytes``, which keeps
        ``doc._.early_exit``) for writing DocBins on the driver.
    """

    def __init__(
        self,
        pipeline_path: str,
        threads_per_worker: int,
        config: Optional[Dict[str, Any]],
        text_column: str,
        batch_size: int,
        id_column: Optional[str],
        keep_docs: bool,
    ) -> None:
        # Uncapped: the actor's share of the cores is what Ray reserved for it.
        set_torch_threads(threads_per_worker, capped=False)
        self.nlp = load_pipeline(pipeline_path, config)
        self.spec = RowSpec.from_nlp(self.nlp)
        self.text_column = text_column
        self.batch_size = batch_size
        self.id_column = id_column
        self.keep_docs = keep_docs

    def __call__(self, batch: Any) -> Any:
        texts = batch.column(self.text_column).to_pylist()
        try:
            for i, text in enumerate(texts):
                if not isinstance(text, str):
                    raise ValueError(f"row {i} of the batch has {text!r} in {self.text_column!r}, not a string")
            docs = list(self.nlp.pipe(texts, batch_size=self.batch_size))
            annotations = [self.spec.annotate(doc) for doc in docs]
        except Exception as err:
            raise BatchFailed(f"{self._rows(batch, texts)} failed: {error_summary(err)}") from err
        docs_bytes = [doc.to_bytes(exclude=["tensor"]) for doc in docs] if self.keep_docs else None
        return annotation_table(batch, self.spec, annotations, docs_bytes)

    def _rows(self, batch: Any, texts: List[Any]) -> str:
        if self.id_column and self.id_column in batch.column_names:
            ids = batch.column(self.id_column).to_pylist()
            return f"rows {ids[0]} to {ids[-1]} (column {self.id_column!r})"
        return f"a batch of {len(texts)} rows starting with {str(texts[0])[:40]!r}" if texts else "an empty batch"


def _worker_path(pipeline_path: Union[str, Path]) -> str:
    # An existing path is made absolute here: a worker's current folder is
    # not the driver's. Anything else (an installed pipeline package) as is.
    path = Path(pipeline_path)
    return str(path.resolve()) if path.exists() else str(pipeline_path)


def annotate_dataset(
    ds: Any,
    pipeline_path: Union[str, Path],
    *,
    workers: int,
    threads_per_worker: int = 1,
    batch_size: int = DEFAULT_BATCH_SIZE,
    config: Optional[Dict[str, Any]] = None,
    text_column: str = TEXT_COLUMN,
    id_column: Optional[str] = None,
    keep_docs: bool = False,
) -> Any:
    """Annotate a Ray Dataset's texts with a trained pipeline: one actor per pipeline copy.

    The pipeline is loaded once per actor from `pipeline_path`, which every
    worker must be able to read at that same path (a shared filesystem on a
    cluster). The returned Dataset is lazy; it keeps the input's columns and
    adds the annotation columns: "words" (segmenter), "tags" / "pos"
    (tagger), "ents" (NER: a list of {start, end, label} with character
    offsets), and "exit_layers", "flops", "full_flops" (see RowSpec).

    Rows come out in input order only with
    ``ray.data.DataContext.get_current().execution_options.preserve_order = True``;
    otherwise carry an id column and sort, or join on it.

    ds (ray.data.Dataset): the input, with a string column `text_column`.
    pipeline_path (Union[str, Path]): the pipeline folder (or installed package name).
    workers (int): actors, each with its own pipeline copy.
    threads_per_worker (int): torch threads and Ray CPUs per actor.
    batch_size (int): rows per batch (and nlp.pipe's batch size).
    config (Optional[Dict[str, Any]]): spacy.load config overrides, e.g.
        {"components.tokee_ner.threshold": 0.3}.
    text_column (str): the column with the texts.
    id_column (Optional[str]): a column whose values a failing batch's error names.
    keep_docs (bool): also add "doc_bytes" (``Doc.to_bytes``, record included).
    RETURNS (ray.data.Dataset): the annotated dataset.
    """
    ray = import_ray()
    if workers < 1 or threads_per_worker < 1 or batch_size < 1:
        raise AnnotateError("workers, threads_per_worker and batch_size must be at least 1")
    return ds.map_batches(
        PipelineWorker,
        batch_size=batch_size,
        batch_format="pyarrow",
        # `compute` is what `concurrency=workers` became (deprecated since Ray 2.51).
        compute=ray.data.ActorPoolStrategy(size=workers),
        num_cpus=threads_per_worker,
        udf_modifying_row_count=False,
        fn_constructor_kwargs={
            "pipeline_path": _worker_path(pipeline_path),
            "threads_per_worker": threads_per_worker,
            "config": dict(config or {}),
            "text_column": text_column,
            "batch_size": batch_size,
            "id_column": id_column,
            "keep_docs": keep_docs,
        },
    )


# -- the CLI's engine ------------------------------------------------------------------


@contextmanager
def ray_session(num_cpus: int) -> Iterator[Any]:
    """Ray, ready: as it is when this process already initialized it; else the
    cluster that RAY_ADDRESS names or that `ray start` runs on this machine
    (address="auto"); else a local instance with `num_cpus` CPUs. On exit it
    shuts down only what it began here: the local instance, or this driver's
    connection (the cluster keeps running)."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(logging_level=logging.WARNING)
    else:
        try:
            ray.init(address="auto", logging_level=logging.WARNING)
        except ConnectionError:
            ray.init(num_cpus=num_cpus, include_dashboard=False, logging_level=logging.WARNING)
    try:
        yield ray
    finally:
        ray.shutdown()


@contextmanager
def _quiet_ordered(ds: Any) -> Iterator[None]:
    # Order kept by Ray (so the driver's reorder buffer stays small), and
    # Ray's own progress bars off: the command prints its own progress.
    context = ds.context
    saved = (context.execution_options.preserve_order, context.enable_progress_bars)
    logger = logging.getLogger("ray.data")
    level = logger.level
    context.execution_options.preserve_order = True
    context.enable_progress_bars = False
    logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        context.execution_options.preserve_order, context.enable_progress_bars = saved
        logger.setLevel(level)


def _text_dataset(ray: Any, records: Iterable[Record], rows_per_block: int) -> Any:
    return ray.data.from_arrow([text_table(block) for block in chunks(records, rows_per_block)])


def _in_order(rows: Iterable[Tuple[int, Dict[str, Any], Optional[bytes]]]) -> Iterator[Tuple[int, Dict[str, Any], Optional[bytes]]]:
    """Rows by row id from 0, whatever order they arrive in."""
    pending: Dict[int, Tuple[int, Dict[str, Any], Optional[bytes]]] = {}
    expected = 0
    for row in rows:
        pending[row[0]] = row
        while expected in pending:
            yield pending.pop(expected)
            expected += 1
    if pending:
        raise AnnotateError(f"The Ray engine lost rows: row {expected} never came back")


def _engine_error(err: BaseException, input_path: Path) -> AnnotateError:
    """The worker's own message, with a failing batch's rows turned into input lines."""
    text = str(err)
    failed = _BATCH_FAILED.search(text)
    if failed:
        first, last = int(failed[1]), int(failed[2])
        where = {}
        for record in read_records(input_path):
            if record.index in (first, last):
                where[record.index] = record.where
            if record.index >= last:
                break
        if first in where and last in where:
            return AnnotateError(f"Annotating {describe_range(where[first], where[last])} failed on a Ray worker: {failed[3]}")
    errors = [f"{m[1]}: {m[2]}" for m in _ERROR_LINE.finditer(text) if "Ray" not in m[1] and m[1] != "UserCodeException"]
    return AnnotateError(f"The Ray engine failed: {errors[0] if errors else text.strip().splitlines()[-1]}")


def run_ray(
    pipeline: Union[str, Path],
    input_path: Path,
    total: int,
    *,
    workers: int,
    threads_per_worker: int,
    batch_size: int,
    overrides: Optional[Dict[str, Any]] = None,
    keep_docs: bool = False,
) -> Iterator[Tuple[Record, Dict[str, Any], Any]]:
    """``annotate --engine ray``: records of INPUT through Ray actors, back in input order.

    Only row ids and texts go to the workers; carried fields stay with the
    driver, which reads INPUT a second time while it writes.
    YIELDS (Tuple[Record, Dict[str, Any], Optional[Doc]]): the Doc only with `keep_docs`.
    """
    import_ray()
    check_pipeline_config(pipeline, overrides)
    if total == 0:
        return
    need = workers * threads_per_worker
    with ray_session(need) as ray:
        have = ray.cluster_resources().get("CPU", 0)
        if have < need:
            raise AnnotateError(
                f"The Ray cluster has {have:g} CPUs; {workers} workers x {threads_per_worker} threads need {need}"
            )
        # Whole batches per block (a failing batch is then one batch of
        # input lines), and at least two blocks per worker where the input
        # allows, so that no actor idles on a small input.
        batches_per_block = max(1, min(BATCHES_PER_BLOCK, total // (batch_size * workers * 2)))
        ds = _text_dataset(ray, read_records(input_path), batch_size * batches_per_block)
        out = annotate_dataset(
            ds, pipeline, workers=workers, threads_per_worker=threads_per_worker, batch_size=batch_size,
            config=overrides, id_column=ROW_COLUMN, keep_docs=keep_docs,
        )
        vocab = None
        if keep_docs:
            from spacy.tokens import Doc
            from spacy.vocab import Vocab

            vocab = Vocab()
        records = read_records(input_path)
        with _quiet_ordered(out):
            batches = out.iter_batches(batch_format="pyarrow", batch_size=None)
            rows = (row for table in batches for row in annotations_from_table(table))
            done = 0
            try:
                for row_id, annotation, doc_bytes in _in_order(rows):
                    record = next(records)
                    if record.index != row_id:
                        raise AnnotateError(f"The Ray engine returned row {row_id} where row {record.index} belongs")
                    doc = Doc(vocab).from_bytes(doc_bytes) if vocab is not None else None
                    yield record, annotation, doc
                    done += 1
                if done != total:
                    raise AnnotateError(f"The Ray engine returned {done} of {total} rows")
            except AnnotateError:
                raise
            except Exception as err:
                raise _engine_error(err, input_path) from err
