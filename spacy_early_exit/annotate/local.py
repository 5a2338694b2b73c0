"""The local engine: ``nlp.pipe`` in this process, or in forked worker processes."""
from collections import deque
from typing import Any, Deque, Dict, Iterable, Iterator, Optional, Sequence, Tuple

from ..threads import torch_threads
from .errors import AnnotateError, error_summary
from .records import DEFAULT_BATCH_SIZE, Record, chunks, describe_range
from .rows import RowSpec


def _batch_failed(batch: Sequence[Record], err: BaseException) -> AnnotateError:
    return AnnotateError(f"Annotating {describe_range(batch[0].where, batch[-1].where)} failed: {error_summary(err)}")


def run_local(
    nlp: Any,
    records: Iterable[Record],
    *,
    workers: int = 1,
    threads_per_worker: Optional[int] = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> Iterator[Tuple[Record, Dict[str, Any], Any]]:
    """Annotate records with ``nlp.pipe`` in this process, or in `workers` forked ones.

    nlp (Language): the loaded pipeline.
    records (Iterable[Record]): the input documents, in order.
    workers (int): processes; more than 1 uses ``nlp.pipe(n_process=workers)``.
    threads_per_worker (Optional[int]): torch threads; None = torch's default
        with one worker. A forked worker runs one thread (the OpenMP pool does
        not survive a fork), so more than 1 with several workers is an error.
    batch_size (int): documents per batch.
    YIELDS (Tuple[Record, Dict[str, Any], Doc]): in input order.
    """
    spec = RowSpec.from_nlp(nlp)
    if workers > 1 and threads_per_worker not in (None, 1):
        raise AnnotateError(
            "The local engine forks its workers, and a forked worker runs one torch thread: "
            "use --threads-per-worker 1 with --workers > 1, or --engine ray"
        )
    if workers == 1:
        yield from _in_process(nlp, spec, records, threads_per_worker, batch_size)
    else:
        yield from _forked(nlp, spec, records, workers, batch_size)


def _in_process(
    nlp: Any, spec: RowSpec, records: Iterable[Record], threads: Optional[int], batch_size: int
) -> Iterator[Tuple[Record, Dict[str, Any], Any]]:
    # Uncapped: --threads-per-worker is this run's own choice of cores, and
    # the caller's torch setting comes back when the run ends.
    with torch_threads(threads, capped=False):
        for batch in chunks(records, batch_size):
            try:
                docs = list(nlp.pipe([r.text for r in batch], batch_size=batch_size))
                annotations = [spec.annotate(doc) for doc in docs]
            except Exception as err:
                raise _batch_failed(batch, err) from err
            yield from zip(batch, annotations, docs)


def _forked(
    nlp: Any, spec: RowSpec, records: Iterable[Record], workers: int, batch_size: int
) -> Iterator[Tuple[Record, Dict[str, Any], Any]]:
    # spaCy sends batch_size texts to each worker and returns them in order;
    # a failing batch comes back as an error in its first slot, so the
    # records not yet answered begin with the failing batch.
    pending: Deque[Record] = deque()

    def texts() -> Iterator[str]:
        for record in records:
            pending.append(record)
            yield record.text

    stream = nlp.pipe(texts(), batch_size=batch_size, n_process=workers)
    while True:
        try:
            doc = next(stream)
        except StopIteration:
            return
        except Exception as err:
            if not pending:
                raise AnnotateError(f"nlp.pipe failed: {type(err).__name__}: {err}") from err
            raise _batch_failed(list(pending)[:batch_size], err) from err
        record = pending.popleft()
        yield record, spec.annotate(doc), doc
