"""One processed doc as one plain, JSON-ready row.

Both engines build rows here (the Ray engine on its workers, with the same
:class:`RowSpec`), so both give byte-identical JSONL.
"""
import json
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Tuple

from .errors import AnnotateError
from .records import Record

RECORD_KEYS = ("exit_layers", "flops", "full_flops")
# The keys a component may fill (EarlyExitPipe.row_fields); each has a fixed
# Arrow type in arrow_rows.py.
FIELD_KEYS = ("words", "tags", "pos", "ents")
# Every key a row's annotation may have.
ANNOTATION_KEYS = FIELD_KEYS + RECORD_KEYS


@dataclass(frozen=True)
class RowSpec:
    """What a pipeline's rows hold, as its early-exit components declare it.

    components (Tuple[str, ...]): the early-exit components, in pipeline order.
    fields (Tuple[Tuple[str, Callable[[Any], Any]], ...]): each annotation key
        with the function that reads it off a doc (EarlyExitPipe.row_fields),
        in pipeline order: "words" (segmenter), "tags" / "pos" (tagger),
        "ents" (NER). A key two components fill appears once, the first's.

    The exit record: "exit_layers" is the last early-exit component's (one
    entry per final token, so per word after a segmenter); "flops" and
    "full_flops" add up every early-exit component's cost of the doc.
    """

    components: Tuple[str, ...]
    fields: Tuple[Tuple[str, Callable[[Any], Any]], ...]

    @property
    def annotations(self) -> Tuple[str, ...]:
        """The annotation keys, in row order."""
        return tuple(key for key, _ in self.fields)

    @classmethod
    def from_nlp(cls, nlp: Any) -> "RowSpec":
        """The spec of a loaded pipeline: each early-exit component names its fields.

        nlp (Language): a loaded pipeline with at least one early-exit component.
        RETURNS (RowSpec): its components and annotation fields.
        RAISES (AnnotateError): the pipeline has no early-exit component, or
            one names a field that rows have no column for.
        """
        from ..pipes.base import EncoderOwner, TaskHead

        # Records come from the encoders (a shared tokee_transformer writes one
        # for all its heads); fields from the task components.
        components: List[str] = []
        fields: Dict[str, Callable[[Any], Any]] = {}
        for name, pipe in nlp.pipeline:
            if isinstance(pipe, EncoderOwner):
                components.append(name)
            if not isinstance(pipe, TaskHead):
                continue
            for key, read in pipe.row_fields().items():
                # Arrow columns have a fixed type per key (arrow_rows.py).
                if key not in FIELD_KEYS:
                    raise AnnotateError(f"Component '{name}' fills the row field {key!r}; rows have {list(FIELD_KEYS)}")
                fields.setdefault(key, read)
        if not components:
            raise AnnotateError(f"The pipeline has no early-exit component (tokee_*); its components: {nlp.pipe_names}")
        return cls(tuple(components), tuple(fields.items()))

    def annotate(self, doc: Any) -> Dict[str, Any]:
        """One doc's annotations and exit record.

        doc (Doc): a doc processed by the pipeline.
        RETURNS (Dict[str, Any]): the annotation keys, then RECORD_KEYS.
        RAISES (AnnotateError): a component left no doc._.early_exit record.
        """
        row: Dict[str, Any] = {key: read(doc) for key, read in self.fields}
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

    record (Record): the input document.
    annotation (Dict[str, Any]): its annotation (RowSpec.annotate).
    RETURNS (Dict[str, Any]): the row.
    """
    row = {k: v for k, v in record.fields.items() if k != "text" and k not in annotation}
    row["text"] = record.text
    row.update(annotation)
    return row


def jsonl_line(row: Dict[str, Any]) -> str:
    """One JSON line, UTF-8 text kept as is (emoji stay emoji).

    row (Dict[str, Any]): a row (compose_row).
    RETURNS (str): the line, without its newline.
    """
    line = json.dumps(row, ensure_ascii=False)
    # Line separators that JSON allows unescaped would split the line for a
    # reader that uses str.splitlines: escape them.
    return line.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029").replace("\x85", "\\u0085")
