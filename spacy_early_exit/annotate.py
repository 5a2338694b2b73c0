"""Annotate a corpus with a trained pipeline: records in, plain rows out.

This module is the engine-independent part of ``python -m spacy_early_exit
annotate``: it reads INPUT into ordered records, turns each processed doc into
a JSON-ready row, writes rows (``.jsonl``) or docs (``.spacy`` shards) in input
order, reports progress, and runs the local engine (``nlp.pipe``). The Ray
engine (``distributed.py``) builds its rows with the same :class:`RowSpec` and
writes them with the same writers, so both engines give byte-identical JSONL.

Record numbering: ``Record.index`` counts documents from 0 over all input
files; ``Record.where`` names the file and the 1-based line (``.txt``,
``.jsonl``) or document (``.spacy``) it came from.
"""
import codecs
import json
import re
import shutil
import sys
import time
from collections import deque
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Deque, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

INPUT_SUFFIXES = (".txt", ".jsonl", ".spacy")
OUTPUT_SUFFIXES = (".jsonl", ".spacy")
ENGINES = ("local", "ray")
# Where a .spacy output keeps a document's carried .jsonl fields.
FIELDS_KEY = "fields"
RECORD_KEYS = ("exit_layers", "flops", "full_flops")
# Every key a row's annotation may have, in the order rows list them.
ANNOTATION_KEYS = ("words", "tags", "pos", "ents") + RECORD_KEYS
DEFAULT_BATCH_SIZE = 64
DEFAULT_SHARD_SIZE = 10_000
# A surrogate escape (\ud800-\udfff) in a JSON line may decode to a lone
# surrogate, which no UTF-8 output can hold; only such lines get the slow check.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


class InputError(ValueError):
    """Malformed input; the message names the file and the line."""


class AnnotateError(RuntimeError):
    """A run that cannot go on: bad options, a pipeline that does not load, a failing batch."""


# -- input -----------------------------------------------------------------------


@dataclass(frozen=True)
class Location:
    """Where a document came from.

    path (Path): the input file.
    number (int): the 1-based line (.txt, .jsonl) or document (.spacy).
    """

    path: Path
    number: int

    @property
    def unit(self) -> str:
        return "doc" if self.path.suffix == ".spacy" else "line"

    def __str__(self) -> str:
        return f"{self.path} {self.unit} {self.number}"


@dataclass(frozen=True)
class Record:
    """One input document.

    index (int): its 0-based position over the whole input.
    text (str): the text to annotate.
    fields (Dict[str, Any]): the other fields of a .jsonl line, in their order.
    where (Location): the file and line it came from.
    """

    index: int
    text: str
    fields: Dict[str, Any]
    where: Location


def describe_range(first: Location, last: Location) -> str:
    """'a.txt lines 3-9', 'a.txt line 3' or 'a.txt line 60 to b.txt line 2'."""
    if first == last:
        return str(first)
    if first.path == last.path:
        return f"{first.path} {first.unit}s {first.number}-{last.number}"
    return f"{first} to {last}"


def input_files(path: Path) -> List[Path]:
    """The input files of INPUT: the file itself, or a folder's .txt, .jsonl and
    .spacy files (recursively, hidden ones skipped), sorted by relative path."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"No such input: {path}")
    if path.is_file():
        if path.suffix not in INPUT_SUFFIXES:
            raise InputError(f"{path}: the input must be a {', '.join(INPUT_SUFFIXES)} file or a folder of them")
        return [path]
    found = [
        p for p in path.rglob("*")
        if p.is_file() and p.suffix in INPUT_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(path).parts)
    ]
    if not found:
        raise InputError(f"{path}: the folder holds no {', '.join(INPUT_SUFFIXES)} files")
    return sorted(found, key=lambda p: p.relative_to(path).parts)


def read_records(path: Path) -> Iterator[Record]:
    """Every document of INPUT, in order; raises InputError at the first malformed one."""
    index = 0
    for file in input_files(path):
        reader = _read_docbin if file.suffix == ".spacy" else _read_text_file
        for number, text, fields in reader(file):
            yield Record(index, text, fields, Location(file, number))
            index += 1


def count_records(path: Path) -> int:
    """Read all of INPUT once: the number of documents, or the first malformed line's InputError."""
    return sum(1 for _ in read_records(path))


def _lines(path: Path) -> Iterator[Tuple[int, str]]:
    # Binary reading splits on "\n" only: str.splitlines would also split on
    # \x0b, \x1c, \u2028 and others, and line i would no longer be document i.
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, 1):
            if raw.endswith(b"\n"):
                raw = raw[:-1]
            if raw.endswith(b"\r"):
                raw = raw[:-1]
            if number == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8):]
            try:
                yield number, raw.decode("utf8")
            except UnicodeDecodeError as err:
                raise InputError(f"{path} line {number}: not valid UTF-8 (byte {err.start + 1} of the line)") from None


def _read_text_file(path: Path) -> Iterator[Tuple[int, str, Dict[str, Any]]]:
    for number, line in _lines(path):
        if path.suffix == ".txt":
            yield number, line, {}
        else:
            text, fields = _parse_json_line(path, number, line)
            yield number, text, fields


def _parse_json_line(path: Path, number: int, line: str) -> Tuple[str, Dict[str, Any]]:
    where = f"{path} line {number}"
    if not line.strip():
        return "", {}  # an empty line is an empty document, so line i stays document i
    try:
        value = json.loads(line)
    except json.JSONDecodeError as err:
        raise InputError(f"{where}: not valid JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(value, dict):
        raise InputError(f'{where}: expected a JSON object with a "text" field, got {_json_type(value)}')
    if "text" not in value:
        raise InputError(f'{where}: no "text" field (it has {", ".join(map(repr, list(value)[:8])) or "no fields"})')
    text = value.pop("text")
    if not isinstance(text, str):
        raise InputError(f'{where}: "text" must be a string, got {_json_type(text)}')
    if _SURROGATE_ESCAPE.search(line):
        try:
            json.dumps([text, value], ensure_ascii=False).encode("utf8")
        except UnicodeEncodeError:
            raise InputError(f"{where}: a \\u escape makes a lone surrogate, which is not valid Unicode") from None
    return text, value


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _read_docbin(path: Path) -> Iterator[Tuple[int, str, Dict[str, Any]]]:
    from spacy.tokens import DocBin
    from spacy.vocab import Vocab

    try:
        docbin = DocBin().from_disk(path)
    except Exception as err:
        raise InputError(f"{path}: not a readable DocBin ({type(err).__name__}: {err})") from None
    for number, doc in enumerate(docbin.get_docs(Vocab()), 1):
        fields = doc.user_data.get(FIELDS_KEY)
        yield number, doc.text, _as_lists(fields) if isinstance(fields, dict) else {}


def _as_lists(value: Any) -> Any:
    # DocBin reads user data with msgpack's use_list=False: arrays come back
    # as tuples. Carried fields go back out as JSON arrays.
    if isinstance(value, dict):
        return {k: _as_lists(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_as_lists(v) for v in value]
    return value


# -- rows --------------------------------------------------------------------------


@dataclass(frozen=True)
class RowSpec:
    """What a pipeline's rows hold, read from its early-exit components.

    components (Tuple[str, ...]): the early-exit components, in pipeline order.
    annotations (Tuple[str, ...]): the annotation keys: "words" (segmenter),
        "tags" / "pos" (tagger), "ents" (NER), in pipeline order.

    The exit record: "exit_layers" is the last early-exit component's (one
    entry per final token, so per word after a segmenter); "flops" and
    "full_flops" add up every early-exit component's cost of the doc.
    """

    components: Tuple[str, ...]
    annotations: Tuple[str, ...]

    @classmethod
    def from_nlp(cls, nlp: Any) -> "RowSpec":
        """nlp (Language): a loaded pipeline with at least one early-exit component."""
        from .pipes.base import EarlyExitPipe
        from .pipes.ner import EarlyExitNER
        from .pipes.segmenter import EarlyExitSegmenter
        from .pipes.tagger import EarlyExitTagger

        components: List[str] = []
        keys: List[str] = []
        for name, pipe in nlp.pipeline:
            if not isinstance(pipe, EarlyExitPipe):
                continue
            components.append(name)
            if isinstance(pipe, EarlyExitSegmenter):
                keys.append("words")
            elif isinstance(pipe, EarlyExitTagger):
                keys.extend((["tags"] if pipe.attribute == "tag" else []) + (["pos"] if pipe.writes_pos else []))
            elif isinstance(pipe, EarlyExitNER):
                keys.append("ents")
        if not components:
            raise AnnotateError(f"The pipeline has no early-exit component (tokee_*); its components: {nlp.pipe_names}")
        return cls(tuple(components), tuple(dict.fromkeys(keys)))

    def annotate(self, doc: Any) -> Dict[str, Any]:
        """doc (Doc): a processed doc. RETURNS (Dict[str, Any]): its annotations and exit record."""
        row: Dict[str, Any] = {}
        for key in self.annotations:
            if key == "words":
                row[key] = [token.text for token in doc]
            elif key == "tags":
                row[key] = [token.tag_ for token in doc]
            elif key == "pos":
                row[key] = [token.pos_ for token in doc]
            else:
                row[key] = [[ent.start_char, ent.end_char, ent.label_] for ent in doc.ents]
        records = doc._.early_exit or {}
        missing = [name for name in self.components if name not in records]
        if missing:
            raise AnnotateError(f"No doc._.early_exit record from {missing}: is the component disabled?")
        row["exit_layers"] = list(records[self.components[-1]]["exit_layers"])
        row["flops"] = sum(int(records[name]["flops"]) for name in self.components)
        row["full_flops"] = sum(int(records[name]["full_flops"]) for name in self.components)
        return row


def compose_row(record: Record, annotation: Dict[str, Any]) -> Dict[str, Any]:
    """The output row: carried fields (in input order), "text", then the annotation.

    A carried field named like an output key is replaced by the output's value.
    """
    row = {k: v for k, v in record.fields.items() if k != "text" and k not in annotation}
    row["text"] = record.text
    row.update(annotation)
    return row


def jsonl_line(row: Dict[str, Any]) -> str:
    """One JSON line, UTF-8 text kept as is (emoji stay emoji)."""
    line = json.dumps(row, ensure_ascii=False)
    # Line separators that JSON allows unescaped would split the line for a
    # reader that uses str.splitlines: escape them.
    return line.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029").replace("\x85", "\\u0085")


# -- output ------------------------------------------------------------------------


def check_paths(input_path: Path, output: Path) -> None:
    """OUTPUT must be .jsonl or .spacy, and never inside or equal to INPUT."""
    if output.suffix not in OUTPUT_SUFFIXES:
        raise AnnotateError(f"{output}: the output must end in .jsonl or .spacy")
    source, target = Path(input_path).resolve(), Path(output).resolve()
    if target == source or source in target.parents:
        raise AnnotateError(f"{output}: the output must not be the input or lie inside it")


class JsonlWriter:
    """Rows as JSON lines, written to a hidden temporary file that replaces OUTPUT only on success."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.partial = self.path.with_name(f".{self.path.name}.partial")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._handle: IO[str] = self.partial.open("w", encoding="utf8", newline="\n")

    def write(self, record: Record, annotation: Dict[str, Any], doc: Any = None) -> None:
        self._handle.write(jsonl_line(compose_row(record, annotation)) + "\n")

    def commit(self) -> None:
        self._handle.close()
        self.partial.replace(self.path)

    def abort(self) -> None:
        self._handle.close()
        self.partial.unlink(missing_ok=True)


class DocBinWriter:
    """Docs as a folder of DocBin shards (000000.spacy, 000001.spacy, ...), in input order.

    Each doc keeps ``doc._.early_exit`` (``store_user_data=True``) and, for
    .jsonl input, its carried fields in ``doc.user_data["fields"]``. Reading
    back, DocBin gives arrays as tuples (msgpack's use_list=False), so
    ``exit_layers`` is a tuple there. spaCy reads such a folder as a corpus
    (``spacy train`` / ``evaluate`` take it as a path).
    """

    def __init__(self, path: Path, shard_size: int = DEFAULT_SHARD_SIZE) -> None:
        from spacy.tokens import DocBin

        if shard_size < 1:
            raise AnnotateError(f"--shard-size must be at least 1; got {shard_size}")
        self.path = Path(path)
        self.shard_size = shard_size
        self.partial = self.path.with_name(f".{self.path.name}.partial")
        if self.partial.exists():
            shutil.rmtree(self.partial)
        self.partial.mkdir(parents=True)
        self._new_bin = lambda: DocBin(store_user_data=True)
        self._bin = self._new_bin()
        self._shards = 0

    def write(self, record: Record, annotation: Dict[str, Any], doc: Any = None) -> None:
        if doc is None:
            raise AnnotateError("A .spacy output needs the processed doc")
        if record.fields:
            doc.user_data[FIELDS_KEY] = dict(record.fields)
        self._bin.add(doc)
        if len(self._bin) >= self.shard_size:
            self._flush()

    def _flush(self) -> None:
        self._bin.to_disk(self.partial / f"{self._shards:06d}.spacy")
        self._shards += 1
        self._bin = self._new_bin()

    def commit(self) -> None:
        if len(self._bin) or not self._shards:
            self._flush()  # an empty input still gives one (empty) shard that loads
        _remove_old_output(self.path)
        self.partial.replace(self.path)

    def abort(self) -> None:
        shutil.rmtree(self.partial, ignore_errors=True)


def _remove_old_output(path: Path) -> None:
    # Replace an earlier run's output, never a folder that holds anything else.
    if path.is_dir():
        others = [p for p in path.iterdir() if not (p.is_file() and p.suffix == ".spacy")]
        if others:
            raise AnnotateError(f"{path} exists and holds more than .spacy shards ({others[0].name}); not replacing it")
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


Writer = Union[JsonlWriter, DocBinWriter]


@contextmanager
def open_writer(output: Path, shard_size: int = DEFAULT_SHARD_SIZE) -> Iterator[Writer]:
    """A writer for OUTPUT's format; OUTPUT is replaced only when the block succeeds."""
    writer: Writer = DocBinWriter(output, shard_size) if Path(output).suffix == ".spacy" else JsonlWriter(output)
    try:
        yield writer
    except BaseException:
        writer.abort()
        raise
    writer.commit()


# -- progress ----------------------------------------------------------------------


@dataclass
class Progress:
    """Counts documents, words and FLOPs; reports to `stream` every `every` seconds.

    total (int): the number of input documents.
    stream (Optional[IO[str]]): where lines go (stderr by default); None = silent.
    every (float): seconds between progress lines.
    """

    total: int
    stream: Optional[IO[str]] = None
    every: float = 10.0
    docs: int = 0
    words: int = 0
    flops: int = 0
    full_flops: int = 0
    started: float = field(default_factory=time.perf_counter)
    first_doc: Optional[float] = None
    _last_report: float = 0.0

    def __post_init__(self) -> None:
        self._last_report = self.started

    def add(self, annotation: Dict[str, Any]) -> None:
        now = time.perf_counter()
        if self.first_doc is None:
            self.first_doc = now
        self.docs += 1
        self.words += len(annotation["exit_layers"])
        self.flops += annotation["flops"]
        self.full_flops += annotation["full_flops"]
        if self.stream is not None and now - self._last_report >= self.every:
            self._last_report = now
            print(f"annotate: {self.line(now)}", file=self.stream, flush=True)

    @property
    def speedup(self) -> Optional[float]:
        """Corpus FLOPs speed-up so far: sum(full_flops) / sum(flops); None before any FLOPs."""
        return self.full_flops / self.flops if self.flops else None

    def line(self, now: Optional[float] = None) -> str:
        seconds = max((now or time.perf_counter()) - self.started, 1e-9)
        share = f" ({self.docs / self.total:.0%})" if self.total else ""
        speedup = f"{self.speedup:.2f}x" if self.speedup else "n/a"
        return (
            f"{self.docs:,}/{self.total:,} docs{share}  {self.docs / seconds:,.0f} docs/s  "
            f"{self.words / seconds:,.0f} words/s  FLOPs speed-up {speedup}"
        )

    def summary(self) -> Dict[str, Any]:
        """The run's figures; `startup_seconds` runs until the first document came back."""
        seconds = max(time.perf_counter() - self.started, 1e-9)
        return {
            "docs": self.docs,
            "words": self.words,
            "seconds": round(seconds, 3),
            "startup_seconds": round((self.first_doc or self.started) - self.started, 3),
            "docs_per_second": round(self.docs / seconds, 2),
            "words_per_second": round(self.words / seconds, 2),
            "flops": self.flops,
            "full_flops": self.full_flops,
            "speedup": round(self.speedup, 4) if self.speedup else None,
        }


# -- config overrides ----------------------------------------------------------------


def parse_overrides(items: Sequence[str]) -> Dict[str, Any]:
    """KEY=VALUE strings to a spacy.load(config=...) dict.

    Values follow spaCy's CLI rule for config overrides: JSON when they parse
    as JSON (0.3, true, null, [1, 2]), else the plain string. The stdlib
    parser reads them, not srsly's, which gives 0.30000000000000004 for 0.3.
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
    """spacy.load with overrides; errors name the pipeline and the overrides."""
    import spacy

    try:
        return spacy.load(pipeline, config=dict(overrides or {}))
    except Exception as err:
        given = f" with --config {overrides}" if overrides else ""
        # One line: a Ray worker's error reaches the driver as traceback text.
        raise AnnotateError(f"Could not load the pipeline {pipeline}{given}: {error_summary(err)}") from err


# -- the local engine ----------------------------------------------------------------


@contextmanager
def torch_threads(count: Optional[int]) -> Iterator[None]:
    """torch's intra-op threads set to `count` (None: unchanged) for the block."""
    import torch

    previous = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _chunks(records: Iterable[Record], size: int) -> Iterator[List[Record]]:
    chunk: List[Record] = []
    for record in records:
        chunk.append(record)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def error_summary(err: BaseException) -> str:
    """'Type: message' on one line; for an error that wraps a traceback (spaCy's
    multiprocessing, Ray), the traceback's last line, which names the original."""
    text = str(err).strip()
    last = text.splitlines()[-1].strip() if text else ""
    if "\n" in text and re.match(r"^[\w.]+(Error|Exception): ", last):
        return last
    return f"{type(err).__name__}: {' | '.join(line.strip() for line in text.splitlines() if line.strip())}"


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
        with torch_threads(threads_per_worker):
            for batch in _chunks(records, batch_size):
                try:
                    docs = list(nlp.pipe([r.text for r in batch], batch_size=batch_size))
                    annotations = [spec.annotate(doc) for doc in docs]
                except Exception as err:
                    raise _batch_failed(batch, err) from err
                yield from zip(batch, annotations, docs)
        return
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


# -- the command's body ----------------------------------------------------------------


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
    """
    input_path, output = Path(input_path), Path(output)
    stream = None if quiet else (stream or sys.stderr)
    if engine not in ENGINES:
        raise AnnotateError(f"--engine must be one of {list(ENGINES)}; got {engine!r}")
    if workers < 1 or batch_size < 1 or (threads_per_worker is not None and threads_per_worker < 1):
        raise AnnotateError("--workers, --threads-per-worker and --batch-size must be at least 1")
    if engine == "ray":
        from .distributed import import_ray

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
            from .distributed import run_ray

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
        speedup = f"{summary['speedup']:.2f}x" if summary["speedup"] else "n/a"
        print(
            f"annotate: done: {summary['docs']:,} docs, {summary['words']:,} words in {summary['seconds']:.1f} s "
            f"({summary['docs_per_second']:,.0f} docs/s, {summary['words_per_second']:,.0f} words/s; "
            f"first doc after {summary['startup_seconds']:.1f} s); FLOPs speed-up {speedup}; wrote {output}",
            file=stream, flush=True,
        )
    return summary
