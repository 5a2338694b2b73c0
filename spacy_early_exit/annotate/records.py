"""INPUT as ordered records: the .txt, .jsonl and .spacy readers.

Record numbering: ``Record.index`` counts documents from 0 over all input
files; ``Record.where`` names the file and the 1-based line (``.txt``,
``.jsonl``) or document (``.spacy``) it came from. Every reader keeps line i
as document i (an empty line is an empty document), so output row i answers
input line i.
"""
import codecs
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Tuple

from .errors import InputError

INPUT_SUFFIXES = (".txt", ".jsonl", ".spacy")
# Where a .spacy file keeps a document's carried .jsonl fields (read here,
# written by writers.DocBinWriter).
FIELDS_KEY = "fields"
# Documents per batch that an engine annotates at once.
DEFAULT_BATCH_SIZE = 64
# A surrogate escape (\ud800-\udfff) in a JSON line may decode to a lone
# surrogate, which no UTF-8 output can hold; only such lines get the slow check.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
# A reader yields (1-based number in its file, text, carried fields).
Numbered = Tuple[int, str, Dict[str, Any]]


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
        """RETURNS (str): "doc" for a .spacy file, else "line"."""
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
    """'a.txt lines 3-9', 'a.txt line 3' or 'a.txt line 60 to b.txt line 2'.

    first (Location): the first document of the range.
    last (Location): the last document of the range.
    RETURNS (str): the range, for an error message.
    """
    if first == last:
        return str(first)
    if first.path == last.path:
        return f"{first.path} {first.unit}s {first.number}-{last.number}"
    return f"{first} to {last}"


def input_files(path: Path) -> List[Path]:
    """The input files of INPUT: the file itself, or a folder's .txt, .jsonl and
    .spacy files (recursively, hidden ones skipped), sorted by relative path.

    path (Path): INPUT.
    RETURNS (List[Path]): the files, in reading order.
    RAISES (InputError): INPUT is missing, of another type, or an empty folder.
    """
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
    """Every document of INPUT, in order; raises InputError at the first malformed one.

    path (Path): INPUT, a file or a folder.
    YIELDS (Record): the documents.
    """
    index = 0
    for file in input_files(path):
        reader = _read_docbin if file.suffix == ".spacy" else _read_text_file
        for number, text, fields in reader(file):
            yield Record(index, text, fields, Location(file, number))
            index += 1


def count_records(path: Path) -> int:
    """Read all of INPUT once: the number of documents, or the first malformed line's InputError.

    path (Path): INPUT.
    RETURNS (int): the number of documents.
    """
    return sum(1 for _ in read_records(path))


def chunks(records: Iterable[Record], size: int) -> Iterator[List[Record]]:
    """Consecutive lists of `size` records (the last one may be shorter).

    records (Iterable[Record]): the records, in order.
    size (int): records per list, at least 1.
    YIELDS (List[Record]): the lists.
    """
    chunk: List[Record] = []
    for record in records:
        chunk.append(record)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


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


def _read_text_file(path: Path) -> Iterator[Numbered]:
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


def _read_docbin(path: Path) -> Iterator[Numbered]:
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
