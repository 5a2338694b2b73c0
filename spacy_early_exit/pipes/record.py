"""``doc._.early_exit``: what each early-exit component spent on a doc."""
from typing import TYPE_CHECKING, Any, Dict, Optional

from spacy.tokens import Doc

if TYPE_CHECKING:  # the encoder (torch) stays unimported for readers of records
    from ..layers.types import DocPrediction

EXTENSION = "early_exit"
if not Doc.has_extension(EXTENSION):
    # One dict per doc, keyed by component name; created on first write so
    # that docs never share a default dict.
    Doc.set_extension(EXTENSION, default=None)


def write_record(doc: Doc, component: str, prediction: "DocPrediction") -> None:
    """Store one component's exit layers and FLOPs on the doc.

    doc (Doc): the annotated doc.
    component (str): the component's name, the record's key.
    prediction (DocPrediction): what the encoder returned for the doc.
    """
    records = doc._.get(EXTENSION)
    if records is None:
        records = {}
        doc._.set(EXTENSION, records)
    records[component] = {
        "exit_layers": prediction.exit_layers.tolist(),
        "flops": prediction.flops,
        "full_flops": prediction.full_flops,
    }


def read_record(doc: Doc, component: str) -> Optional[Dict[str, Any]]:
    """One component's record on a doc; None when it has not run on it."""
    records = doc._.get(EXTENSION)
    return None if records is None else records.get(component)
