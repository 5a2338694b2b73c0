"""OUTPUT, written in input order: JSON lines or a folder of DocBin shards.

A writer builds its output under a hidden ``.NAME.partial`` path next to
OUTPUT and moves it into place only when the run succeeds, so a failed run
never leaves a half-written OUTPUT (nor removes an earlier run's).
"""
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Dict, Iterator, Union

from .errors import AnnotateError
from .records import FIELDS_KEY, Record
from .rows import compose_row, jsonl_line

OUTPUT_SUFFIXES = (".jsonl", ".spacy")
DEFAULT_SHARD_SIZE = 10_000


def check_paths(input_path: Path, output: Path) -> None:
    """OUTPUT must be .jsonl or .spacy, and never inside or equal to INPUT.

    input_path (Path): INPUT.
    output (Path): OUTPUT.
    RAISES (AnnotateError): OUTPUT has another suffix or lies in INPUT.
    """
    if output.suffix not in OUTPUT_SUFFIXES:
        raise AnnotateError(f"{output}: the output must end in .jsonl or .spacy")
    source, target = Path(input_path).resolve(), Path(output).resolve()
    if target == source or source in target.parents:
        raise AnnotateError(f"{output}: the output must not be the input or lie inside it")


def _partial_path(path: Path) -> Path:
    # Hidden, so that a folder of outputs read as input later skips it.
    return path.with_name(f".{path.name}.partial")


class JsonlWriter:
    """Rows as JSON lines, written to a hidden temporary file that replaces OUTPUT only on success.

    path (Path): OUTPUT, a .jsonl file.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.partial = _partial_path(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._handle: IO[str] = self.partial.open("w", encoding="utf8", newline="\n")

    def write(self, record: Record, annotation: Dict[str, Any], doc: Any = None) -> None:
        """Write one document's row.

        record (Record): the input document.
        annotation (Dict[str, Any]): its annotation.
        doc (Optional[Doc]): unused here; a .spacy output needs it.
        """
        self._handle.write(jsonl_line(compose_row(record, annotation)) + "\n")

    def commit(self) -> None:
        """Close the file and move it to OUTPUT."""
        self._handle.close()
        self.partial.replace(self.path)

    def abort(self) -> None:
        """Close and remove the temporary file; OUTPUT stays as it was."""
        self._handle.close()
        self.partial.unlink(missing_ok=True)


class DocBinWriter:
    """Docs as a folder of DocBin shards (000000.spacy, 000001.spacy, ...), in input order.

    Each doc keeps ``doc._.early_exit`` (``store_user_data=True``) and, for
    .jsonl input, its carried fields in ``doc.user_data["fields"]``. Reading
    back, DocBin gives arrays as tuples (msgpack's use_list=False), so
    ``exit_layers`` is a tuple there. spaCy reads such a folder as a corpus
    (``spacy train`` / ``evaluate`` take it as a path).

    path (Path): OUTPUT, a folder ending in .spacy.
    shard_size (int): documents per shard.
    """

    def __init__(self, path: Path, shard_size: int = DEFAULT_SHARD_SIZE) -> None:
        from spacy.tokens import DocBin

        if shard_size < 1:
            raise AnnotateError(f"--shard-size must be at least 1; got {shard_size}")
        self.path = Path(path)
        self.shard_size = shard_size
        self.partial = _partial_path(self.path)
        if self.partial.exists():
            shutil.rmtree(self.partial)
        self.partial.mkdir(parents=True)
        self._new_bin = lambda: DocBin(store_user_data=True)
        self._bin = self._new_bin()
        self._shards = 0

    def write(self, record: Record, annotation: Dict[str, Any], doc: Any = None) -> None:
        """Add one processed doc; a full shard goes to disk.

        record (Record): the input document (its carried fields go with the doc).
        annotation (Dict[str, Any]): its annotation (the doc already holds it).
        doc (Optional[Doc]): the processed doc; required.
        """
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
        """Write the last shard and move the folder to OUTPUT."""
        if len(self._bin) or not self._shards:
            self._flush()  # an empty input still gives one (empty) shard that loads
        _remove_old_output(self.path)
        self.partial.replace(self.path)

    def abort(self) -> None:
        """Remove the temporary folder; OUTPUT stays as it was."""
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
    """A writer for OUTPUT's format; OUTPUT is replaced only when the block succeeds.

    output (Path): OUTPUT; a .spacy suffix gives a DocBinWriter, else a JsonlWriter.
    shard_size (int): documents per shard of a .spacy output.
    YIELDS (Writer): the writer.
    """
    writer: Writer = DocBinWriter(output, shard_size) if Path(output).suffix == ".spacy" else JsonlWriter(output)
    try:
        yield writer
    except BaseException:
        writer.abort()
        raise
    writer.commit()
