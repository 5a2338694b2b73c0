"""Rows as Arrow columns, the form in which they travel between Ray workers and the driver.

Plain Arrow columns, not Docs or Python objects, cross Ray's object store:
they are cheap to move and need no pickling. pyarrow (which Ray Data brings)
is imported only when a table is built.
"""
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from .records import Record
from .rows import ANNOTATION_KEYS, RECORD_KEYS, RowSpec

# The driver's dataset: each record's index and its text.
ROW_COLUMN = "row"
TEXT_COLUMN = "text"
# Doc.to_bytes of each doc, for a .spacy output written on the driver.
DOC_COLUMN = "doc_bytes"


def _arrow_types() -> Dict[str, Any]:
    import pyarrow as pa

    strings = pa.list_(pa.string())
    entity = pa.struct([("start", pa.int64()), ("end", pa.int64()), ("label", pa.string())])
    return {
        "words": strings,
        "tags": strings,
        "pos": strings,
        "ents": pa.list_(entity),
        "exit_layers": pa.list_(pa.int64()),
        "flops": pa.int64(),
        "full_flops": pa.int64(),
        DOC_COLUMN: pa.large_binary(),
    }


def text_table(records: Sequence[Record]) -> Any:
    """A block of the driver's dataset: the records' indices and texts.

    records (Sequence[Record]): the records of one block.
    RETURNS (pyarrow.Table): columns ROW_COLUMN (int64) and TEXT_COLUMN (string).
    """
    import pyarrow as pa

    return pa.table({
        ROW_COLUMN: pa.array([r.index for r in records], pa.int64()),
        TEXT_COLUMN: pa.array([r.text for r in records], pa.string()),
    })


def annotation_table(batch: Any, spec: RowSpec, annotations: List[Dict[str, Any]], docs: Optional[List[bytes]] = None) -> Any:
    """The batch's columns with the annotation columns appended (replacing same-named ones).

    Types are fixed per key (not inferred), so a batch in which no doc has an
    entity has the same schema as any other. "ents" is a list of
    {start, end, label} structs: a JSON row's [start, end, label] triple
    mixes types, which an Arrow list cannot.

    batch (pyarrow.Table): the input batch.
    spec (RowSpec): what the annotations hold.
    annotations (List[Dict[str, Any]]): one per row of `batch` (RowSpec.annotate).
    docs (Optional[List[bytes]]): Doc.to_bytes per row, for a DOC_COLUMN.
    RETURNS (pyarrow.Table): the annotated batch.
    """
    import pyarrow as pa

    types = _arrow_types()
    keys = list(spec.annotations) + list(RECORD_KEYS)
    columns: Dict[str, Any] = {}
    for key in keys:
        values = [a[key] for a in annotations]
        if key == "ents":
            values = [[{"start": s, "end": e, "label": label} for s, e, label in ents] for ents in values]
        columns[key] = pa.array(values, type=types[key])
    if docs is not None:
        columns[DOC_COLUMN] = pa.array(docs, type=types[DOC_COLUMN])
    table = batch.select([name for name in batch.column_names if name not in columns])
    for name, array in columns.items():
        table = table.append_column(name, array)
    return table


def annotations_from_table(table: Any) -> Iterator[Tuple[Any, Dict[str, Any], Optional[bytes]]]:
    """Back from Arrow: (row id, annotation as the local engine makes it, doc bytes or None).

    table (pyarrow.Table): an annotated batch with a ROW_COLUMN.
    YIELDS (Tuple[Any, Dict[str, Any], Optional[bytes]]): one per row, in table order.
    """
    names = table.column_names
    keys = [name for name in names if name in ANNOTATION_KEYS]
    columns = {key: table.column(key).to_pylist() for key in keys}
    if "ents" in columns:
        columns["ents"] = [[[e["start"], e["end"], e["label"]] for e in ents] for ents in columns["ents"]]
    ids = table.column(ROW_COLUMN).to_pylist()
    docs = table.column(DOC_COLUMN).to_pylist() if DOC_COLUMN in names else [None] * len(ids)
    for i, row_id in enumerate(ids):
        yield row_id, {key: columns[key][i] for key in keys}, docs[i]
